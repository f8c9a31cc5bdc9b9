"""Data: the embedded datasets (shipped inside wheels, no download) and an ImageFolder tree."""

from reluvit.data.datamodules import DATASETS, EmbeddedDataModule, ImageFolderDataModule, build_datamodule

__all__ = ["DATASETS", "EmbeddedDataModule", "ImageFolderDataModule", "build_datamodule"]

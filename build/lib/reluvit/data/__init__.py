"""Data: the embedded datasets (shipped inside wheels, no download) and an ImageFolder tree."""

import importlib

# Loaded on first use: the data modules import torch and Lightning, which the light submodules (splits, embedded:
# a dry run's cost estimate) do without
__all__ = ["DATASETS", "EmbeddedDataModule", "ImageFolderDataModule", "build_datamodule"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'reluvit.data' has no attribute {name!r}")
    return getattr(importlib.import_module("reluvit.data.datamodules"), name)

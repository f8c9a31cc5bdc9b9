"""LightningDataModules. Images reach the model as float tensors with values in [-1, 1] (big_vision
``value_range(-1, 1)``); batch sizes here are per device (the global batch is the recipe's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from reluvit.data.embedded import EMBEDDED, stratified_split


class EpochSampler(Sampler[int]):
    """The training order of every rank, from one permutation that depends only on (seed, epoch): rank r of W takes
    every W-th index, so batch i of all ranks together is batch i of a single-process run with the global batch,
    and all ranks get the same number of batches. ``position()`` gives (epoch, batches already trained in it),
    read when an epoch's iteration starts: a run resumed from a mid-epoch checkpoint skips exactly those.
    """

    def __init__(self, size: int, seed: int, batch_size: int, rank: int, world: int,
                 position: Callable[[], tuple[int, int]]) -> None:
        self.seed, self.batch_size, self.rank, self.world, self.position = seed, batch_size, rank, world, position
        self.global_batch = batch_size * world
        self.size = size // self.global_batch * self.global_batch  # drop the last, partial global batch

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self) -> Iterator[int]:
        epoch, done = self.position()
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return iter(order[done * self.global_batch:][self.rank::self.world].tolist())


def training_sampler(module: pl.LightningDataModule, size: int, seed: int, batch_size: int) -> EpochSampler:
    """An :class:`EpochSampler` for ``module``'s trainer (its rank, world size and loop position)."""
    trainer = module.trainer
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    sampler = EpochSampler(size, seed, batch_size, rank, world,
                           lambda: training_position(trainer, len(sampler) // batch_size))
    return sampler


def training_position(trainer: pl.Trainer | None, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches already trained in it) of the fit loop; a restart from a mid-epoch checkpoint has its
    completed-batch counter restored before the loader is iterated."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    done = loop.epoch_loop.batch_progress.current.completed
    return loop.epoch_progress.current.processed, done if 0 < done < batches_per_epoch else 0


class EmbeddedDataModule(pl.LightningDataModule):
    """An embedded dataset held in memory as tensors, split once by ``split_seed`` (independent of the run's
    ``seed``, so every run of a sweep validates on the same images)."""

    def __init__(self, name: str, batch_size: int, val_size: int, split_seed: int = 0, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        self.name, self.batch_size, self.val_size = name, batch_size, val_size
        self.split_seed, self.num_workers, self.seed = split_seed, num_workers, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        data = EMBEDDED[self.name]()
        images = torch.from_numpy(data.images).unsqueeze(1) * 2 - 1
        labels = torch.from_numpy(data.labels)
        train, val = stratified_split(data.labels, self.val_size, self.split_seed)
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])

    def train_dataloader(self) -> DataLoader:
        sampler = training_sampler(self, len(self.train_set), self.seed, self.batch_size)
        return DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True, generator=self._generator(),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers, generator=self._generator())

    def _generator(self) -> torch.Generator:
        """Loaders draw their workers' base seed from this, not from torch's global generator, so where a run
        creates its loaders (a restart creates one mid-epoch) does not shift the global random stream."""
        return torch.Generator().manual_seed(self.seed)


class ImageFolderDataModule(pl.LightningDataModule):
    """A torchvision ``ImageFolder`` tree with ``train/`` and ``val/`` subfolders, preprocessed as big_vision does
    (train: Inception crop 5-100 % area, flip, RandAugment(n, m); eval: shorter side to 256/224 of the crop, centre
    crop)."""

    def __init__(self, path: str, batch_size: int, img_size: int = 224, num_workers: int = 8,
                 randaug_layers: int = 0, randaug_magnitude: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.path, self.batch_size, self.img_size, self.num_workers = Path(path), batch_size, img_size, num_workers
        self.seed = seed
        self.randaug_layers, self.randaug_magnitude = randaug_layers, randaug_magnitude

    def setup(self, stage: str | None = None) -> None:
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        to_unit_range = [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
        train = [T.RandomResizedCrop(self.img_size, scale=(0.05, 1.0)), T.RandomHorizontalFlip()]
        if self.randaug_layers:
            from timm.data.auto_augment import rand_augment_transform

            train.append(rand_augment_transform(f"rand-m{self.randaug_magnitude}-n{self.randaug_layers}",
                                                {"img_mean": (128, 128, 128)}))
        resize = round(self.img_size * 256 / 224)
        self.train_set = ImageFolder(self.path / "train", T.Compose(train + to_unit_range))
        self.val_set = ImageFolder(self.path / "val", T.Compose([T.Resize(resize), T.CenterCrop(self.img_size),
                                                                 *to_unit_range]))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, drop_last=True, pin_memory=True,
                          sampler=training_sampler(self, len(self.train_set), self.seed, self.batch_size),
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers, pin_memory=True)


DATASETS = (*EMBEDDED, "imagefolder")


def build_datamodule(data_cfg, batch_size: int, randaug: tuple[int, int], seed: int) -> pl.LightningDataModule:
    """The data module a ``data`` config describes, with the per-device batch and the recipe's RandAugment."""
    if data_cfg.dataset == "imagefolder":
        return ImageFolderDataModule(data_cfg.path, batch_size, data_cfg.img_size, data_cfg.num_workers, *randaug,
                                     seed=seed)
    return EmbeddedDataModule(data_cfg.dataset, batch_size, data_cfg.val_size, data_cfg.split_seed,
                              data_cfg.num_workers, seed)

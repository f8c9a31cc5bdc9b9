"""LightningDataModules: embedded arrays, an ImageFolder tree, webdataset shards, synthetic images. Images reach the
model as float tensors with values in [-1, 1] (big_vision ``value_range(-1, 1)``); batch sizes here are per device
(the global batch is the recipe's).

The tree and the shards train on ``train_split`` (``train`` or a slice such as big_vision's ``train[:99%]``,
:mod:`reluvit.data.splits`) and, with ``minival_split`` (``train[99%:]``), validate on those held-out training images
as a second loader beside ``val``. A slice is taken over the split's samples in a fixed order: the shards' file
order (:mod:`reluvit.data.stream`), or for a tree a permutation of its sorted files seeded by ``split_seed`` (the
sorted order would put whole classes in minival)."""

from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from reluvit.data.dali import (
    DaliLoader,
    Encoded,
    build_pipeline,
    dali_randaug_arguments,
    encoded_batch,
    epoch_seed,
    loader_fallback,
    resolve_loader,
)
from reluvit.data.embedded import EMBEDDED, load, validation_split
from reluvit.data.preprocess import EvalTransform, TrainTransform
from reluvit.data.seeding import seeded_draws
from reluvit.data.shards import read_info
from reluvit.data.splits import parse_split
from reluvit.data.stream import BadDataError, ShardStream, check_workers
from reluvit.errors import COUNT, check_range

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """The training order of every rank, from one permutation that depends only on (seed, epoch): rank r of W takes
    every W-th index, so batch i of all ranks together is batch i of a single-process run with the global batch,
    and all ranks get the same number of batches. ``position()`` gives (epoch, batches already trained in it),
    read when an epoch's iteration starts: a run resumed from a mid-epoch checkpoint skips exactly those.
    ``keyed``: yield ``(epoch, index)``, the key of the sample's augmentation draws (:class:`SeededSamples`).
    """

    def __init__(self, size: int, seed: int, batch_size: int, rank: int, world: int,
                 position: Callable[[], tuple[int, int]], keyed: bool = False) -> None:
        self.seed, self.batch_size, self.rank, self.world, self.position = seed, batch_size, rank, world, position
        self.global_batch = batch_size * world
        self.size = size // self.global_batch * self.global_batch  # drop the last, partial global batch
        self.keyed = keyed

    def __len__(self) -> int:
        return self.size // self.world

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        epoch, done = self.position()
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        indices = order[done * self.global_batch:][self.rank::self.world].tolist()
        return iter([(epoch, i) for i in indices] if self.keyed else indices)


def training_sampler(module: pl.LightningDataModule, size: int, seed: int, batch_size: int) -> EpochSampler:
    """A keyed :class:`EpochSampler` for ``module``'s trainer (its rank, world size and loop position)."""
    trainer = module.trainer
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    sampler = EpochSampler(size, seed, batch_size, rank, world,
                           lambda: training_position(trainer, len(sampler) // batch_size), keyed=True)
    return sampler


class SeededSamples(Dataset):
    """A map-style training set read by keys ``(epoch, i)`` (a keyed :class:`EpochSampler`'s): item i of
    ``dataset``, its random draws (augmentation) seeded by (``seed``, epoch, i), whichever worker reads it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with seeded_draws((self.seed, epoch, index)):
            return self.dataset[index]


def training_position(trainer: pl.Trainer | None, batches_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches already trained in it) of the fit loop; a restart from a mid-epoch checkpoint has its
    completed-batch counter restored before the loader's first batch (:class:`DeferredLoader`)."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    done = loop.epoch_loop.batch_progress.current.completed
    return loop.epoch_progress.current.processed, done if 0 < done < batches_per_epoch else 0


class DeferredLoader(DataLoader):
    """A DataLoader whose epoch starts (asks its sampler or stream for the trainer's position) at the first batch
    asked for. Lightning makes the training iterator before it restores a checkpoint (to count the schedule's
    steps), and a loader with workers asks its sampler for indices as soon as its iterator is made: only at the
    first batch is the position of a resumed epoch known."""

    def __iter__(self):
        self.start_epoch()
        yield from super().__iter__()

    def start_epoch(self) -> None:
        """What the loader does as its epoch starts (the sampler is asked by the DataLoader itself)."""


class IndexedDataModule(pl.LightningDataModule):
    """The loaders of map-style ``train_set`` and ``val_set``: training in the :class:`EpochSampler`'s order (rank,
    epoch, mid-epoch position), each sample's draws seeded by its key (:class:`SeededSamples`), so the batches are
    the same for any worker count."""

    batch_size: int
    num_workers: int
    seed: int
    pin_memory = False  # page-locked batches: worth it for images made by workers, not for tensors in memory

    def train_dataloader(self) -> DataLoader:
        sampler = training_sampler(self, len(self.train_set), self.seed, self.batch_size)
        return DeferredLoader(SeededSamples(self.train_set, self.seed), self.batch_size, sampler=sampler,
                              drop_last=True, generator=loader_generator(self.seed), num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, num_workers=self.num_workers,
                          generator=loader_generator(self.seed), pin_memory=self.pin_memory)


class EmbeddedDataModule(IndexedDataModule):
    """An embedded dataset held in memory as tensors, split once by ``split_seed`` (independent of the run's
    ``seed``, so every run of a sweep validates on the same images)."""

    def __init__(self, dataset: str, batch_size: int, val_size: int | None = None, split_seed: int = 0,
                 num_workers: int = 0, seed: int = 0, path: str | None = None) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.val_size, self.path = dataset, batch_size, val_size, path
        self.split_seed, self.num_workers, self.seed = split_seed, num_workers, seed

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        data = load(self.dataset, self.path, self.split_seed)
        images = torch.from_numpy(data.images).unsqueeze(1) * 2 - 1
        labels = torch.from_numpy(data.labels)
        train, val = validation_split(data, self.val_size, self.split_seed)
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])



def loader_generator(seed: int) -> torch.Generator:
    """Loaders draw their workers' base seed from this, not from torch's global generator, so neither where a run
    creates its loaders (a restart creates one mid-epoch) nor how often (once with persistent workers, each epoch
    without) shifts the global random stream (mixup's)."""
    return torch.Generator().manual_seed(seed)


def read_bytes(path: str) -> bytes:
    """An image file's bytes, decoded by the transform (which can then decode at reduced size)."""
    return Path(path).read_bytes()


def tree_classes(path: str | Path, num_classes: int | None = None) -> dict[str, int]:
    """The class index of each class folder of an ImageFolder tree, for every split: ``train/``'s folders in sorted
    order (torchvision's). ``val/`` may lack some of them, never hold others (its images would be scored as other
    classes); ``num_classes``: the count the config gives the model. Raises ValueError, one line."""
    train, val = Path(path) / "train", Path(path) / "val"
    classes = _class_folders(train)
    if not classes:
        raise ValueError(f"{train} holds no class folders")
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"{train} has {len(classes)} class folders, the config data.num_classes={num_classes}")
    if others := sorted(set(_class_folders(val)) - set(classes)):
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ValueError(f"{val} has classes that {train} has not: {shown}")
    return {name: index for index, name in enumerate(classes)}


def _class_folders(split: Path) -> list[str]:
    """torchvision's ``find_classes`` of a split folder; none for a missing or empty one."""
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(str(split))[0]
    except FileNotFoundError:
        return []


def tree_files(path: str | Path, split: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """The images of ``split`` (``train``, ``val``) of an ImageFolder tree, (file, class index), in torchvision's
    sorted order, labelled by ``class_to_idx`` (:func:`tree_classes`) whatever folders the split lacks."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    return make_dataset(str(Path(path) / split), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def training_files(path: str | Path) -> list[tuple[str, int]]:
    """The training images of an ImageFolder tree, (file, class index), in torchvision's sorted order."""
    return tree_files(path, "train", tree_classes(path))


def split_size(dataset: str, path: str | Path) -> int | None:
    """The samples of the ``train`` split of a tree or a shard directory, what its slices are taken of; None when
    it lists none (no train split in ``_info.json``, no class folders)."""
    if dataset == "shards":
        return read_info(path).get("splits", {}).get("train", {}).get("num_samples")
    try:
        return len(training_files(path))
    except FileNotFoundError:  # torchvision's, for a tree without class folders
        return None


def folder_selection(size: int, split: str, seed: int) -> np.ndarray:
    """The file indices of ``split`` (``train`` or a slice of it) of a tree of ``size`` training files: the slice of
    a permutation seeded by ``seed``. The whole split keeps the sorted order (the sampler shuffles it anyway, and runs
    trained before slices existed resume in the same order)."""
    selected = parse_split(split)
    if selected.whole:
        return np.arange(size)
    lo, hi = selected.bounds(size)
    return np.random.default_rng(seed).permutation(size)[lo:hi]


class FolderImages(Dataset):
    """The files ``files[i]`` (path, class index) for i in ``indices``, read and transformed on access. A file that
    cannot be read or decoded is logged by name, counted and replaced by the next one that can (so batches keep their
    size), as the shard stream skips bad samples; more than ``max_bad_fraction`` of the files bad stop the run
    (:class:`reluvit.data.stream.BadDataError`, naming the last)."""

    def __init__(self, files: list[tuple[str, int]], indices: np.ndarray, transform: Callable,
                 max_bad_fraction: float = 0.01) -> None:
        self.files, self.indices, self.transform = files, indices, transform
        self.max_bad_fraction = max_bad_fraction
        self.bad = multiprocessing.Value("i", 0)  # counted in every loader worker (they fork from this process)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        for step in range(len(self.indices)):
            path, label = self.files[self.indices[(i + step) % len(self.indices)]]
            try:
                return self.transform(read_bytes(path)), label
            except Exception as e:  # noqa: BLE001 - every kind of unreadable image is counted and replaced
                self._count_bad(path, e)
        raise BadDataError("no image of the split can be read")

    def _count_bad(self, path: str, error: Exception) -> None:
        with self.bad.get_lock():
            self.bad.value += 1
            bad = self.bad.value
        reason = f"{type(error).__name__}: {error}"
        if bad > self.max_bad_fraction * len(self.indices):
            raise BadDataError(f"{bad} bad images, more than max_bad_fraction={self.max_bad_fraction} of "
                               f"{len(self.indices)} allows; the last: {path} ({reason})")
        log.warning("skipping %s (%s): replaced by the next image", path, reason)


class ImageFolderDataModule(IndexedDataModule):
    """A torchvision ``ImageFolder`` tree with ``train/`` and ``val/`` subfolders, preprocessed as big_vision does
    (:mod:`reluvit.data.preprocess`); training on ``train_split`` of ``train/``, and validating on ``val/`` and, when
    given, ``minival_split`` of ``train/``."""

    pin_memory = True

    def __init__(self, path: str, batch_size: int, img_size: int = 224, num_workers: int = 0,
                 augment: dict | None = None, seed: int = 0, train_split: str = "train",
                 minival_split: str | None = None, split_seed: int = 0, num_classes: int | None = None,
                 max_bad_fraction: float = 0.01) -> None:
        super().__init__()
        self.path, self.batch_size, self.img_size, self.num_workers = Path(path), batch_size, img_size, num_workers
        self.seed, self.num_classes, self.max_bad_fraction = seed, num_classes, max_bad_fraction
        self.augment = augment or {}  # TrainTransform's augmentation arguments (RandAugment, crop_antialias)
        self.train_split, self.minival_split, self.split_seed = train_split, minival_split, split_seed

    def setup(self, stage: str | None = None) -> None:
        classes = tree_classes(self.path, self.num_classes)  # one class list labels every split
        files = tree_files(self.path, "train", classes)
        train = TrainTransform(self.img_size, 3, **self.augment)
        selection = folder_selection(len(files), self.train_split, self.split_seed)
        self.train_set = FolderImages(files, selection, train, self.max_bad_fraction)
        val = tree_files(self.path, "val", classes)
        self.val_set = FolderImages(val, np.arange(len(val)), EvalTransform(self.img_size), self.max_bad_fraction)
        self.minival_set = None
        if self.minival_split:
            minival = folder_selection(len(files), self.minival_split, self.split_seed)
            self.minival_set = FolderImages(files, minival, EvalTransform(self.img_size), self.max_bad_fraction)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [DataLoader(images, self.batch_size, num_workers=self.num_workers, pin_memory=True,
                              generator=loader_generator(self.seed))
                   for images in (self.val_set, self.minival_set) if images is not None]
        return loaders if len(loaders) > 1 else loaders[0]


class EpochLoader(DeferredLoader):
    """A loader over a :class:`ShardStream` that tells the stream its epoch and mid-epoch position each time an
    epoch starts; workers are started per epoch, so they receive that position. Its iterator draws from
    :func:`loader_generator`: a resumed epoch makes it after the checkpoint's generators are restored."""

    def __init__(self, stream: ShardStream, position: Callable[[], tuple[int, int]], num_workers: int,
                 pin_memory: bool | None = None) -> None:
        pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        super().__init__(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                         generator=loader_generator(stream.seed))
        self.position = position

    def start_epoch(self) -> None:
        self.dataset.set_position(*self.position())


class ShardDataModule(pl.LightningDataModule):
    """Webdataset shards written by ``reluvit shards`` (``<path>/{train,val}-NNNNNN.tar`` + ``_info.json``),
    streamed by :class:`ShardStream` with big_vision's preprocessing: training on ``train_split``, validating on
    ``val`` and, when given, ``minival_split``. ``loader`` (:data:`reluvit.data.dali.LOADERS`): who decodes and
    augments, the stream's workers (reference) or DALI (:mod:`reluvit.data.dali`), fed by the same stream.
    ``num_workers`` must divide ``stream_slots`` (each worker serves whole slots of the stream)."""

    def __init__(self, path: str, batch_size: int, img_size: int, in_chans: int, num_classes: int,
                 num_workers: int = 0, augment: dict | None = None, seed: int = 0,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, train_split: str = "train",
                 minival_split: str | None = None, loader: str = "auto", stream_slots: int = 24) -> None:
        super().__init__()
        check_workers(num_workers, stream_slots)
        self.loader = resolve_loader(loader, "shards")
        self.loader_fallback = loader_fallback(loader, "shards")
        if self.loader_fallback:
            log.warning(self.loader_fallback)
        self.path, self.batch_size, self.img_size, self.in_chans = path, batch_size, img_size, in_chans
        self.num_classes, self.num_workers, self.seed = num_classes, num_workers, seed
        self.train_split, self.minival_split = train_split, minival_split
        self.augment = augment or {}  # TrainTransform's augmentation arguments (RandAugment, crop_antialias)
        self.randaug = dali_randaug_arguments(self.augment) if self.loader == "dali" else None
        self.stream_options = {"shuffle_buffer": shuffle_buffer, "max_bad_fraction": max_bad_fraction,
                               "stream_slots": stream_slots}
        self.info = read_info(path)  # a missing directory fails here, at start, with the path named
        if self.info["num_classes"] != num_classes:
            raise ValueError(f"{path}: the shards have {self.info['num_classes']} classes, the config "
                             f"data.num_classes={num_classes}")
        self.label_set = self.info["label_set"]
        self.streams: list[ShardStream] = []

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far by this rank's loaders."""
        return sum(s.skipped for s in self.streams)

    def _stream(self, split: str, transform, train: bool, **options) -> ShardStream:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        stream = ShardStream(self.path, split, transform, self.batch_size, train=train,
                             num_classes=self.num_classes, seed=self.seed, rank=rank, world=world,
                             **self.stream_options, **options)
        self.streams.append(stream)
        return stream

    def _loader(self, split: str, train: bool) -> DataLoader | DaliLoader:
        """The batches of ``split``, at the trainer's position in training."""
        if self.loader == "dali":
            stream = self._stream(split, Encoded(self.img_size, train), train, collate=encoded_batch)
        else:
            transform = (TrainTransform(self.img_size, self.in_chans, **self.augment) if train
                         else EvalTransform(self.img_size, self.in_chans))
            stream = self._stream(split, transform, train)
        position = (lambda: training_position(self.trainer, len(stream))) if train else (lambda: (0, 0))
        if self.loader == "reference":
            return EpochLoader(stream, position, self.num_workers)
        encoded = EpochLoader(stream, position, self.num_workers, pin_memory=False)
        pipeline = functools.partial(
            build_pipeline, size=self.img_size, in_chans=self.in_chans, train=train,
            randaug=self.randaug if train else (0, 0), batch_size=self.batch_size,
            num_threads=max(self.num_workers, 1),
            device_id=torch.cuda.current_device() if torch.cuda.is_available() else None)
        return DaliLoader(encoded, pipeline, lambda: epoch_seed(self.seed, position()[0], stream.rank))

    def train_dataloader(self) -> DataLoader | DaliLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader | DaliLoader | list[DataLoader | DaliLoader]:
        splits = ["val", *([self.minival_split] if self.minival_split else [])]
        loaders = [self._loader(split, train=False) for split in splits]
        return loaders if len(loaders) > 1 else loaders[0]


class SyntheticImages(Dataset):
    """``size`` random images (uniform in [-1, 1]) with random labels. Item i is drawn, each time it is read, from a
    generator seeded by (``seed``, ``first`` + i) (numpy's SeedSequence mixes both; torch's CPU generator would keep
    32 bits of one number): the set is fixed by the seed, yet nothing is held in memory."""

    def __init__(self, size: int, img_size: int, in_chans: int, num_classes: int, seed: int, first: int = 0) -> None:
        self.size, self.shape, self.num_classes = size, (in_chans, img_size, img_size), num_classes
        self.seed, self.first = seed, first

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} of {self.size} synthetic images")
        generator = np.random.default_rng([self.seed, self.first + index])
        image = generator.random(self.shape, dtype=np.float32) * 2 - 1
        return torch.from_numpy(image), int(generator.integers(self.num_classes))


class SyntheticDataModule(IndexedDataModule):
    """Random images at ``img_size`` for throughput and memory checks without a dataset: ``num_samples`` training
    and ``val_size`` validation images (disjoint draws), fixed by ``split_seed`` (not the run's ``seed``, which
    orders the training images as for any dataset)."""

    def __init__(self, batch_size: int, img_size: int, in_chans: int, num_classes: int, num_samples: int,
                 val_size: int, split_seed: int = 0, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        for name, value in (("num_samples", num_samples), ("val_size", val_size), ("num_classes", num_classes)):
            check_range(name, value, COUNT)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory = torch.cuda.is_available()
        images = {"img_size": img_size, "in_chans": in_chans, "num_classes": num_classes, "seed": split_seed}
        self.train_set = SyntheticImages(num_samples, **images)
        self.val_set = SyntheticImages(val_size, **images, first=num_samples)



DATAMODULES = {**dict.fromkeys(EMBEDDED, EmbeddedDataModule), "imagefolder": ImageFolderDataModule,
               "shards": ShardDataModule, "synthetic": SyntheticDataModule}
DATASETS = tuple(DATAMODULES)


def build_datamodule(data: Mapping, batch_size: int, augment: dict, seed: int) -> pl.LightningDataModule:
    """The data module of ``data.dataset``, the ``data`` keys spread into it as its arguments (those it takes: a
    key is its argument's name), with the per-device batch, the training images' augmentation
    (:func:`reluvit.run.build.train_augmentation`: TrainTransform's arguments) and the run's seed."""
    module = DATAMODULES[data["dataset"]]
    given = {**data, "batch_size": batch_size, "augment": augment, "seed": seed}
    return module(**{key: given[key] for key in inspect.signature(module).parameters if key in given})

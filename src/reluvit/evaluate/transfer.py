"""The few-shot transfer sets (paper.md §5a) and their preprocessing, read from a prepared folder tree, webdataset
shards (``reluvit shards``) or, as stand-ins at CPU scale, the embedded datasets.

A prepared dataset is ``<path>/train/<class>/<image>`` and ``<path>/val/<class>/<image>``, where ``val/`` holds the
dataset's *test* split (the split names ``reluvit shards`` reads, so the same tree can be written to shards). ColHist
and UC Merced have a single split in TFDS (train[:N] / train[N:]): their tree is ``<path>/<class>/<image>`` and the
test images are held out of it by ``reluvit.data.shards.hold_out`` (seed 0), the very split that
``reluvit shards <tree> <out> --val-count <test_count>`` writes, so both formats evaluate on the same images.

Preprocessing (big_vision ``resize(256)|central_crop(224)|value_range(-1, 1)``, train and test): bilinear resize to a
square (aspect ratio not kept) of ``size * 256 / 224``, then the central ``size`` x ``size``; ``size`` is the model's
input size, so the 28-px models see the same geometry as the paper's 224-px ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from reluvit.data.datamodules import read_bytes
from reluvit.data.embedded import EMBEDDED, validation_split
from reluvit.data.preprocess import MODES, open_image
from reluvit.data.shards import INFO, Item, hold_out, list_source, read_info
from reluvit.data.stream import ShardStream


@dataclass(frozen=True)
class TransferSet:
    title: str  # the paper's name
    num_classes: int
    test_count: int | None = None  # test images held out of the single TFDS split (train[N:]); None: a val/ split


TRANSFER_SETS = {
    "birds": TransferSet("Caltech Birds (CUB-200-2011)", 200),
    "caltech": TransferSet("Caltech101", 102),  # TFDS counts the background class
    "cars": TransferSet("Stanford Cars", 196),
    "cifar100": TransferSet("CIFAR-100", 100),
    "dtd": TransferSet("DTD", 47),
    "col_hist": TransferSet("ColHist", 8, test_count=3000),  # 5000 tiles: train[:2000], train[2000:]
    "pets": TransferSet("Oxford-IIIT Pets", 37),
    "uc_merced": TransferSet("UC Merced", 21, test_count=1100),  # 2100 images: train[:1000], train[1000:]
}
NAMES = (*TRANSFER_SETS, *EMBEDDED)  # the embedded datasets are stand-ins at CPU scale: no path needed
HOLD_OUT_SEED = 0  # `reluvit shards`'s default seed


def resize_crop(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel values in [0, 255] (CHW or NCHW) -> the few-shot input in [-1, 1]: bilinear resize to a square of
    ``size * 256 / 224`` without antialiasing (TF's ``tf.image.resize``), central crop ``size``."""
    side = round(size * 256 / 224)
    pixels = F.resize(pixels, [side, side], interpolation=InterpolationMode.BILINEAR, antialias=False)
    return F.center_crop(pixels, [size, size]) / 127.5 - 1.0


class FewshotTransform:
    """The few-shot preprocessing of one encoded image; picklable (runs in loader workers)."""

    def __init__(self, size: int, in_chans: int = 3) -> None:
        self.size, self.mode = size, MODES[in_chans]

    def __call__(self, data: bytes) -> torch.Tensor:
        img = open_image(data)
        side = round(self.size * 256 / 224)
        img.draft(self.mode, (side, side))  # JPEG: decode at a reduced scale that still covers the resize
        return resize_crop(F.pil_to_tensor(img.convert(self.mode)).float(), self.size)


class EncodedImages(Dataset):
    """Image files of a folder tree, decoded and preprocessed on access."""

    def __init__(self, items: list[Item], transform: FewshotTransform) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(read_bytes(self.items[i].source)), self.items[i].label


class NoTransferPath(FileNotFoundError):
    """A transfer set whose path is not configured (no environment variable, no ``eval.fewshot.paths`` entry)."""


def load_transfer_set(name: str, path: str | None, size: int, in_chans: int, batch_size: int = 256,
                      num_workers: int = 0) -> tuple[DataLoader, DataLoader, int]:
    """(train loader, test loader, number of classes) of a transfer set; the loaders yield (images, labels) in a
    fixed order. A missing dataset raises FileNotFoundError (:class:`NoTransferPath` without a path), a malformed
    one ValueError."""
    if name in EMBEDDED:
        return (*_embedded(name, size, in_chans, batch_size), len(EMBEDDED[name]().classes))
    spec = TRANSFER_SETS[name]
    if not path:
        raise NoTransferPath(f"{name}: no path (RELUVIT_FEWSHOT_{name.upper()} or eval.fewshot.paths.{name})")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{name}: no dataset at {path}")
    transform = FewshotTransform(size, in_chans)
    if (Path(path) / INFO).exists():
        splits, num_classes = _shards(name, path, spec, transform, batch_size)
        loaders = [DataLoader(s, batch_size=None, num_workers=num_workers) for s in splits]
    else:
        splits, num_classes = _folder(name, path, spec, transform)
        loaders = [DataLoader(s, batch_size, num_workers=num_workers) for s in splits]
    if num_classes != spec.num_classes:
        raise ValueError(f"{name}: {path} has {num_classes} classes, the dataset has {spec.num_classes}")
    return loaders[0], loaders[1], num_classes


def _folder(name: str, path: str, spec: TransferSet, transform: FewshotTransform):
    items, classes, _ = list_source(path, "folder")
    if "all" in items:
        if spec.test_count is None:
            raise ValueError(f"{name}: {path} has no train/ and val/ (test split) subfolders")
        items = hold_out(items, spec.test_count, HOLD_OUT_SEED)
    elif set(items) != {"train", "val"}:
        raise ValueError(f"{name}: {path} needs both train/ and val/ (the test split)")
    return [EncodedImages(items[s], transform) for s in ("train", "val")], len(classes)


def _shards(name: str, path: str, spec: TransferSet, transform: FewshotTransform, batch_size: int):
    info = read_info(path)
    if "val" not in info["splits"]:
        hint = f" (write them with --val-count {spec.test_count})" if spec.test_count else ""
        raise ValueError(f"{name}: the shards at {path} have no val split (the test split){hint}")
    streams = [ShardStream(path, s, transform, batch_size, train=False, num_classes=info["num_classes"])
               for s in ("train", "val")]
    return streams, info["num_classes"]


def _embedded(name: str, size: int, in_chans: int, batch_size: int) -> tuple[DataLoader, DataLoader]:
    """Train and test = the dataset's own train and validation splits, so a model trained on the dataset is probed
    on images it never saw."""
    data = EMBEDDED[name]()
    pixels = torch.from_numpy(data.images).unsqueeze(1) * 255.0
    images = resize_crop(pixels, size).expand(-1, in_chans, -1, -1)
    labels = torch.from_numpy(data.labels)
    train, test = validation_split(data)
    return tuple(DataLoader(TensorDataset(images[i], labels[i]), batch_size) for i in (train, test))

"""ImageNet-ReaL and ImageNet-v2 top-1 accuracy, which big_vision's ``vit_i1k.py`` reports beside val (paper.md §3),
and what every held-out accuracy shares: an :class:`Evaluation` (batches of images with targets, and how a batch's
logits score) counted over a model by :func:`accuracy_counts`, in a training run's callback and in ``reluvit
evaluate`` alike.

* ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): ``real.json``, a list of 50 000 lists of i1k class ids, one
  per ILSVRC2012 validation image in number order (ILSVRC2012_val_00000001 ... _00050000). Accuracy: over the images
  with a non-empty list, the fraction whose top-1 prediction is in it. The images are ImageNet-1k's validation
  images, each numbered from its file name or shard sample key (``<wnid>_ILSVRC2012_val_00000001``).
* v2 (Recht et al. 2019; TFDS ``imagenet_v2:test``, whose default is the matched-frequency variant): 10 000 images
  in folders ``0/`` ... ``999/`` named by i1k class id, as the release unpacks. The folders are read by number:
  ImageFolder's lexicographic order would make ``10/`` class 2.

A run's logits become i1k predictions through :class:`reluvit.evaluate.i1k.I1kRestriction`: all of them for a run on
ImageNet-1k, the argmax over the i1k classes of its label set for a 21k run. Under ``eval.i1k.missing=exclude`` a
ReaL image counts only if one of its labels is a class the label set has (v2: as ``val/i1k_acc``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from reluvit.data.preprocess import EvalTransform
from reluvit.data.shards import IMAGE_SUFFIXES, Item
from reluvit.evaluate.i1k import I1kRestriction, i1k_val_loader
from reluvit.evaluate.transfer import EncodedImages

REAL_IMAGES = 50_000  # ILSVRC2012's validation images, which real.json lists in number order
I1K_CLASSES = 1000


class Evaluation(Protocol):
    """A held-out accuracy: ``metric`` is its logged name."""

    metric: str

    def batches(self, rank: int = 0, world: int = 1) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the images, as (images, targets)."""

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, counted) of one batch."""


def accuracy_counts(model: torch.nn.Module, evaluation: Evaluation, device: torch.device, rank: int = 0,
                    world: int = 1) -> tuple[int, int]:
    """(correct, counted) of ``model`` on this rank's share of ``evaluation`` (the caller sets eval mode, no-grad
    and precision)."""
    correct = counted = 0
    for images, targets in evaluation.batches(rank, world):
        c, n = evaluation.score(model(images.to(device, non_blocking=True)).float(), targets.to(device))
        correct, counted = correct + c, counted + n
    return correct, counted


def read_real_labels(path: str | Path) -> torch.Tensor:
    """``real.json`` as a table: row v - 1 holds the class ids of val image v, padded with -1 (a row of -1: no
    label). ValueError in one line when the file is not 50 000 lists of class ids."""
    stat = os.stat(path)
    return _real_table(str(path), stat.st_mtime_ns, stat.st_size).clone()


@functools.cache  # read once per file version: a sweep validates it for every point, a run at every validation
def _real_table(path: str, mtime_ns: int, size: int) -> torch.Tensor:
    try:
        lists = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__})") from None
    good = isinstance(lists, list) and all(
        isinstance(labels, list) and all(type(c) is int and 0 <= c < I1K_CLASSES for c in labels) for labels in lists)
    if not good or len(lists) != REAL_IMAGES:
        raise ValueError(f"{path} is not ImageNet-ReaL's real.json: a list of {REAL_IMAGES} lists of class ids "
                         f"0..{I1K_CLASSES - 1}")
    table = torch.full((REAL_IMAGES, max(map(len, lists))), -1, dtype=torch.long)
    for row, labels in enumerate(lists):
        table[row, :len(labels)] = torch.tensor(labels, dtype=torch.long)
    return table


class RealEvaluation:
    """``val/real_acc`` on the ImageNet-1k validation images at ``path`` (a shard directory, a tree with ``val/``, or
    ``<wnid>/`` folders)."""

    metric = "val/real_acc"

    def __init__(self, labels: torch.Tensor, restriction: I1kRestriction, path: str, img_size: int, in_chans: int,
                 batch_size: int, num_workers: int = 0) -> None:
        self.labels, self.restriction, self.path = labels, restriction, path
        self.img_size, self.in_chans, self.batch_size, self.num_workers = img_size, in_chans, batch_size, num_workers

    def batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, ILSVRC2012 val numbers)."""
        loader, _ = i1k_val_loader(self.path, self.img_size, self.in_chans, self.batch_size, self.num_workers,
                                   rank, world, numbered=True)
        return iter(loader)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        if len(targets) and not 1 <= int(targets.min()) <= int(targets.max()) <= len(self.labels):
            raise ValueError(f"{self.path}: an ILSVRC2012 val number outside 1..{len(self.labels)}")
        rows = self.labels.to(targets.device)[targets - 1]
        counted = (rows >= 0).any(1)
        if self.restriction.missing == "exclude":  # only images with a label the run can predict
            counted &= torch.isin(rows, self.restriction.present.to(rows.device)).any(1)
        correct = (rows == self.restriction.predict(logits)[:, None]).any(1) & counted
        return int(correct.sum()), int(counted.sum())


def v2_items(path: str | Path) -> list[Item]:
    """The images of an ImageNet-v2 folder (``<path>/<class id>/<image>``), ordered by class id then file name.
    ValueError in one line when it holds anything but class-id folders 0 ... 999."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{path!r} is not a directory (ImageNet-v2: folders 0/ ... 999/)")
    folders = [d for d in root.iterdir() if d.is_dir()]
    strays = [d.name for d in folders if not (d.name.isdigit() and int(d.name) < I1K_CLASSES)]
    if strays or not folders:
        raise ValueError(f"{path} holds {strays[:3] or 'no folders'}: ImageNet-v2 is folders named by class id, "
                         f"0/ ... {I1K_CLASSES - 1}/")
    return [Item(f"{d.name}/{f.stem}", str(f), f.stat().st_size, int(d.name))
            for d in sorted(folders, key=lambda d: int(d.name))
            for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]


class V2Evaluation:
    """``val/v2_acc`` on the ImageNet-v2 images at ``path``."""

    metric = "val/v2_acc"

    def __init__(self, restriction: I1kRestriction, path: str, img_size: int, in_chans: int, batch_size: int,
                 num_workers: int = 0) -> None:
        self.restriction, self.items = restriction, v2_items(path)
        self.transform, self.batch_size, self.num_workers = EvalTransform(img_size, in_chans), batch_size, num_workers

    def batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, i1k class ids)."""
        images = EncodedImages(self.items[rank::world], self.transform)
        return iter(DataLoader(images, self.batch_size, num_workers=self.num_workers))

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        return self.restriction.score(logits, targets)

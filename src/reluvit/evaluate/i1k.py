"""ImageNet-1k accuracy of a model trained on an ImageNet-21k label set, without fine-tuning (paper.md §5b): the
argmax of the logits restricted to the ImageNet-1k classes the run's label set contains, scored on ImageNet-1k
validation images. An i1k class the label set lacks (n04399382, teddy bear, for both 21k lists) can never be
predicted; its images count by the policy of :data:`reluvit.data.labels.MISSING_POLICIES` (default ``wrong``).
The validation images' loader also serves ImageNet-ReaL (:mod:`reluvit.evaluate.imagenet`), which labels each image
by its ILSVRC2012 val number."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from reluvit.data.labels import MISSING_POLICIES, i1k_to_i21k, wordnet_ids
from reluvit.data.preprocess import EvalTransform
from reluvit.data.shards import INFO, list_source, read_info
from reluvit.data.stream import ShardStream
from reluvit.evaluate.transfer import EncodedImages


class I1kRestriction:
    """Maps a run's logits (one per class of its label set, ``wnids``) to ImageNet-1k predictions."""

    def __init__(self, wnids: tuple[str, ...] | list[str], missing: str = "wrong") -> None:
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing={missing!r} is not one of: {', '.join(MISSING_POLICIES)}")
        mapping = i1k_to_i21k(wnids)
        self.missing = missing
        self.present = torch.tensor([i for i, j in enumerate(mapping) if j is not None])  # i1k class ids
        self.columns = torch.tensor([j for j in mapping if j is not None])  # their logit columns
        self.absent = torch.tensor([i for i, j in enumerate(mapping) if j is None], dtype=torch.long)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The i1k class id of the largest logit among the i1k classes of the label set."""
        return self.present.to(logits.device)[logits[:, self.columns.to(logits.device)].argmax(1)]

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        """(correct, counted) for i1k class ids ``targets``: under ``exclude`` images of absent classes are not
        counted; under ``wrong`` they count and are never correct."""
        correct = self.predict(logits) == targets
        counted = torch.ones_like(correct)
        if self.missing == "exclude":
            counted = ~torch.isin(targets, self.absent.to(targets.device))
        return int((correct & counted).sum()), int(counted.sum())


def is_21k_label_set(wnids) -> bool:
    """WordNet-id labels other than ImageNet-1k's own: the runs whose i1k accuracy needs the restriction."""
    return wnids is not None and tuple(wnids) != wordnet_ids("imagenet1k")


def run_wnids(dataset: str, path: str | None, label_set: str | None = None) -> tuple[str, ...] | None:
    """The WordNet ids of a run's classes: a named label set, else the shards' ``_info.json``, else an ImageFolder
    tree's class folders (when they are WordNet ids); None for data without them (the embedded datasets)."""
    if label_set:
        return wordnet_ids(label_set)
    if dataset == "shards":
        wnids = read_info(path)["wnids"]
        return tuple(wnids) if wnids else None
    if dataset == "imagefolder":
        names = sorted(p.name for p in (Path(path) / "train").iterdir() if p.is_dir())
        return tuple(names) if all(n.startswith("n") and n[1:].isdigit() for n in names) else None
    return None


VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")


def val_number(name: str) -> int:
    """The ILSVRC2012 validation image number (1 ... 50 000) in a file name or shard sample key."""
    found = VAL_NUMBER.search(name)
    if not found:
        raise ValueError(f"{name!r} holds no ILSVRC2012_val_NNNNNNNN number (ImageNet's validation file names)")
    return int(found[1])


def sample_val_number(sample: dict) -> int:
    """A shard sample's ILSVRC2012 val number, from its key (``<wnid>_ILSVRC2012_val_00000001``)."""
    return val_number(sample["__key__"])


def i1k_val_loader(path: str, img_size: int, in_chans: int, batch_size: int, num_workers: int = 0,
                   rank: int = 0, world: int = 1, numbered: bool = False) -> tuple[DataLoader, torch.Tensor]:
    """ImageNet-1k validation images (this rank's share) with big_vision's eval preprocessing, and the i1k class
    id of each of the loader's labels. ``path``: a shard directory (its val split), an ImageFolder tree with
    ``val/``, or a folder of ``<wnid>/`` class folders. ``numbered``: the loader's labels are instead each image's
    ILSVRC2012 val number (:func:`val_number`)."""
    transform = EvalTransform(img_size, in_chans)
    if (Path(path) / INFO).exists():
        info = read_info(path)
        stream = ShardStream(path, "val", transform, batch_size, train=False, num_classes=info["num_classes"],
                             rank=rank, world=world, target=sample_val_number if numbered else None)
        loader, wnids = DataLoader(stream, batch_size=None, num_workers=num_workers), info["wnids"]
    else:
        val = Path(path) / "val"  # listed alone: a tree's train/ would cost a stat of every training image
        items, wnids, _ = list_source(str(val if val.is_dir() else path), "folder")
        items = items.get("all")
        if items is None:
            raise ValueError(f"{path}: no val/ folder and no class folders")
        if numbered:
            items = [dataclasses.replace(it, label=val_number(it.key)) for it in items]
        loader = DataLoader(EncodedImages(items[rank::world], transform), batch_size, num_workers=num_workers)
    index = {w: i for i, w in enumerate(wordnet_ids("imagenet1k"))}
    unknown = sorted(set(wnids or ["(no WordNet ids)"]) - set(index))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} classes are not ImageNet-1k WordNet ids: {unknown[:3]}")
    return loader, torch.tensor([index[w] for w in wnids])


class I1kEvaluation:
    """``val/i1k_acc``: a 21k run's accuracy on the ImageNet-1k validation images at ``path`` (an
    :class:`reluvit.evaluate.imagenet.Evaluation`)."""

    metric = "val/i1k_acc"

    def __init__(self, restriction: I1kRestriction, path: str, img_size: int, in_chans: int, batch_size: int,
                 num_workers: int = 0) -> None:
        self.restriction, self.path, self.num_workers = restriction, path, num_workers
        self.img_size, self.in_chans, self.batch_size = img_size, in_chans, batch_size

    def batches(self, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share: (images, i1k class ids)."""
        loader, to_i1k = i1k_val_loader(self.path, self.img_size, self.in_chans, self.batch_size, self.num_workers,
                                        rank, world)
        return ((images, to_i1k[labels]) for images, labels in loader)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
        return self.restriction.score(logits, targets)

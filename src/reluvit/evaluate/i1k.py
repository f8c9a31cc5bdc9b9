"""ImageNet-1k accuracy of a model trained on an ImageNet-21k label set, without fine-tuning (paper.md §5b): the
argmax of the logits restricted to the ImageNet-1k classes the run's label set contains, scored on ImageNet-1k
validation images. An i1k class the label set lacks (n04399382, teddy bear, for both 21k lists) can never be
predicted; its images count by the policy of :data:`reluvit.data.labels.MISSING_POLICIES` (default ``wrong``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
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


def run_wnids(data_cfg, label_set: str | None = None) -> tuple[str, ...] | None:
    """The WordNet ids of a run's classes: a named label set, else the shards' ``_info.json``, else an ImageFolder
    tree's class folders (when they are WordNet ids); None for data without them (the embedded datasets)."""
    if label_set:
        return wordnet_ids(label_set)
    if data_cfg.dataset == "shards":
        wnids = read_info(data_cfg.path)["wnids"]
        return tuple(wnids) if wnids else None
    if data_cfg.dataset == "imagefolder":
        names = sorted(p.name for p in (Path(data_cfg.path) / "train").iterdir() if p.is_dir())
        return tuple(names) if all(n.startswith("n") and n[1:].isdigit() for n in names) else None
    return None


def i1k_val_loader(path: str, img_size: int, in_chans: int, batch_size: int, num_workers: int = 0,
                   rank: int = 0, world: int = 1) -> tuple[DataLoader, torch.Tensor]:
    """ImageNet-1k validation images (this rank's share) with big_vision's eval preprocessing, and the i1k class
    id of each of the loader's labels. ``path``: a shard directory (its val split), an ImageFolder tree with
    ``val/``, or a folder of ``<wnid>/`` class folders."""
    transform = EvalTransform(img_size, in_chans)
    if (Path(path) / INFO).exists():
        info = read_info(path)
        stream = ShardStream(path, "val", transform, batch_size, train=False, num_classes=info["num_classes"],
                             rank=rank, world=world)
        loader, wnids = DataLoader(stream, batch_size=None, num_workers=num_workers), info["wnids"]
    else:
        items, wnids, _ = list_source(path, "folder")
        items = items.get("val", items.get("all"))
        if items is None:
            raise ValueError(f"{path}: no val/ folder and no class folders")
        loader = DataLoader(EncodedImages(items[rank::world], transform), batch_size, num_workers=num_workers)
    index = {w: i for i, w in enumerate(wordnet_ids("imagenet1k"))}
    unknown = sorted(set(wnids or ["(no WordNet ids)"]) - set(index))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} classes are not ImageNet-1k WordNet ids: {unknown[:3]}")
    return loader, torch.tensor([index[w] for w in wnids])


def i1k_counts(model: torch.nn.Module, loader: DataLoader, to_i1k: torch.Tensor, restriction: I1kRestriction,
               device: torch.device) -> tuple[int, int]:
    """(correct, counted) over ``loader``, whose labels ``to_i1k`` maps to i1k class ids (the caller sets eval
    mode, no-grad and precision)."""
    correct = counted = 0
    for images, labels in loader:
        c, n = restriction.score(model(images.to(device, non_blocking=True)).float(), to_i1k[labels].to(device))
        correct, counted = correct + c, counted + n
    return correct, counted


class I1kAccuracy(pl.Callback):
    """Logs ``val/i1k_acc`` at the end of every validation (not the sanity check), every rank scoring its share of
    the ImageNet-1k validation images."""

    def __init__(self, restriction: I1kRestriction, path: str, img_size: int, in_chans: int, batch_size: int,
                 num_workers: int = 0) -> None:
        self.restriction, self.path, self.num_workers = restriction, path, num_workers
        self.img_size, self.in_chans, self.batch_size = img_size, in_chans, batch_size

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loader, to_i1k = i1k_val_loader(self.path, self.img_size, self.in_chans, self.batch_size,
                                        self.num_workers, trainer.global_rank, trainer.world_size)
        with trainer.precision_plugin.forward_context():  # the loop has set eval mode and inference mode
            correct, counted = i1k_counts(pl_module, loader, to_i1k, self.restriction, pl_module.device)
        totals = trainer.strategy.reduce(torch.tensor([correct, counted], dtype=torch.float64,
                                                      device=pl_module.device), reduce_op="sum")
        pl_module.log("val/i1k_acc", float(totals[0] / totals[1].clamp(min=1)))  # the same on every rank

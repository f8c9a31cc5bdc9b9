"""The few-shot linear probe as big_vision's ``fewshot_lsr`` (paper.md §5a): pre-logit features of a transfer set's
whole train and test splits, computed once and reused for every seed and shot count; per seed, a seeded per-class
draw of k training examples; ridge regression (:mod:`reluvit.evaluate.ridge`) with l2 = 1024, or l2 chosen from a
grid by cross-validation inside the few-shot set; accuracy on the full test split.

Metrics: ``fewshot/<dataset>/<k>shot/seed<s>``, their mean over seeds ``fewshot/<dataset>/<k>shot``, the mean over
datasets ``fewshot/<k>shot_mean`` and ``fewshot/num_datasets``, the number of datasets that mean is over.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reluvit.evaluate.ridge import probe_accuracies
from reluvit.evaluate.transfer import NoTransferPath, load_transfer_set

MAX_FOLDS = 5  # cross-validation folds for choosing l2 (at most one per shot)


class MissingTransferSet(UserWarning):
    """A configured transfer set that is not there (no path, or not a prepared dataset): it is skipped."""


def fewshot_indices(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
    """big_vision's draw: ``np.random.default_rng(seed)`` permutes each class's indices in class order and the first
    ``shots`` of each are taken (fewer where a class has fewer), so k-shot sets of one seed are nested."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return np.concatenate([idx[:shots] for idx in per_class])


def choose_l2(x: torch.Tensor, y: torch.Tensor, num_classes: int, grid: Sequence[float]) -> float | None:
    """The l2 of ``grid`` with the best mean accuracy over leave-shots-out folds of the few-shot set (fold f holds
    out every class's examples at draw positions = f mod folds, so only the k examples per class are used); None
    when there is one shot per class, where no example can be held out."""
    rank = torch.zeros(len(y), dtype=torch.long)  # position of each example among its class's draws
    for c in y.unique():
        rank[y == c] = torch.arange(int((y == c).sum()))
    folds = min(MAX_FOLDS, int(rank.max()) + 1)
    if folds < 2:
        return None
    scores = np.zeros(len(grid))
    for f in range(folds):
        held = rank % folds == f
        scores += probe_accuracies(x[~held], y[~held], x[held], y[held], num_classes, grid)
    return float(grid[int(np.argmax(scores))])


def fewshot_metrics(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                    num_classes: int, shots: Sequence[int], seeds: Sequence[int], l2: float = 1024.0,
                    l2_grid: Sequence[float] | None = None) -> dict[str, float]:
    """``<k>shot/seed<s>`` accuracies and their mean ``<k>shot`` over seeds from features (N, D) and labels; with
    ``l2_grid``, l2 is chosen per (k, seed) by :func:`choose_l2` (``<k>shot/seed<s>/l2``; 1-shot keeps ``l2``)."""
    (train_x, train_y), (test_x, test_y) = train, test
    out = {}
    for k in shots:
        for s in seeds:
            idx = torch.from_numpy(fewshot_indices(train_y.numpy(), num_classes, k, s))
            x, y = train_x[idx], train_y[idx]
            chosen = l2
            if l2_grid:
                chosen = choose_l2(x, y, num_classes, l2_grid) or l2
                out[f"{k}shot/seed{s}/l2"] = chosen
            out[f"{k}shot/seed{s}"] = probe_accuracies(x, y, test_x, test_y, num_classes, [chosen])[0]
        out[f"{k}shot"] = float(np.mean([out[f"{k}shot/seed{s}"] for s in seeds]))
    return out


@contextmanager
def evaluating(model: nn.Module):
    """Eval mode and no gradients for the duration; the previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's representation before the head: the mean of the final-LN tokens (gap) or the class token through
    the pre-logits layer, tanh(Dense(cls)) (tok with ``rep_size``)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def extract_features(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (float32, on the CPU) and labels of every example of ``loader``, in its order; bf16
    autocast on a GPU."""
    feats, labels = [], []
    with evaluating(model), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for images, y in loader:
            feats.append(pre_logits(model, images.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


class FewshotEvaluator:
    """The probe on every configured transfer set; missing ones are skipped, named in one warning per evaluator.

    Args:
        datasets: names of :data:`reluvit.evaluate.transfer.NAMES`.
        paths: dataset name -> prepared tree or shard directory (None: missing; the embedded sets need none).
        img_size, in_chans: the model's input.
    """

    def __init__(self, datasets: Sequence[str], paths: dict[str, str | None], img_size: int, in_chans: int,
                 shots: Sequence[int] = (1, 5, 10, 25), seeds: Sequence[int] = (0, 1, 2), l2: float = 1024.0,
                 l2_grid: Sequence[float] | None = None, batch_size: int = 256, num_workers: int = 0) -> None:
        self.datasets, self.paths, self.img_size, self.in_chans = list(datasets), dict(paths), img_size, in_chans
        self.shots, self.seeds, self.l2, self.l2_grid = list(shots), list(seeds), l2, l2_grid
        self.batch_size, self.num_workers = batch_size, num_workers
        self.warned = False

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        out, done, skipped, unset = {}, [], [], []
        for name in self.datasets:
            try:
                train, test, num_classes = load_transfer_set(name, self.paths.get(name), self.img_size,
                                                             self.in_chans, self.batch_size, self.num_workers)
            except NoTransferPath:
                unset.append(name)  # not configured: said once, in one line
                continue
            except (FileNotFoundError, ValueError) as e:
                skipped.append(str(e))
                continue
            results = fewshot_metrics(extract_features(model, train, device), extract_features(model, test, device),
                                      num_classes, self.shots, self.seeds, self.l2, self.l2_grid)
            out.update({f"fewshot/{name}/{key}": value for key, value in results.items()})
            done.append(name)
        if (skipped or unset) and not self.warned:
            reasons = [f"no path for {', '.join(unset)} (RELUVIT_FEWSHOT_<NAME> or eval.fewshot.paths)"] * bool(unset)
            warnings.warn(f"few-shot: skipping {len(skipped) + len(unset)} of {len(self.datasets)} transfer sets: "
                          + "; ".join(reasons + skipped), MissingTransferSet, stacklevel=2)
            self.warned = True
        if done:
            for k in self.shots:
                out[f"fewshot/{k}shot_mean"] = float(np.mean([out[f"fewshot/{d}/{k}shot"] for d in done]))
            out["fewshot/num_datasets"] = float(len(done))
        return out

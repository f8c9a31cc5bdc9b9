"""big_vision's few-shot classifier (``evaluators/fewshot_lsr.py``): closed-form ridge regression on standardised
features with a constant bias feature, one-vs-all targets in {-1, +1}, prediction by argmax.

Everything runs in float64. The ridge system is diagonalised once (``eigh`` of ``X^T X``, or of ``X X^T`` when there
are fewer examples than features: the dual form), so a whole grid of l2 values costs one decomposition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BIAS = 100.0  # the constant feature: large, so its weight is almost unregularised
STD_EPS = 1e-5


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets standardised with the training set's mean and (population) std + 1e-5, then the bias feature
    appended; float64."""
    train, test = train.double(), test.double()
    mean, std = train.mean(0), train.std(0, correction=0) + STD_EPS

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = (x - mean) / std
        return torch.cat([x, x.new_full((len(x), 1), BIAS)], dim=1)

    return prepare(train), prepare(test)


def ridge_weights(x: torch.Tensor, targets: torch.Tensor, l2s: Sequence[float]) -> list[torch.Tensor]:
    """``W = (X^T X + l2 I)^-1 X^T Y`` for each l2, in the primal form when N > D and the dual form
    ``X^T (X X^T + l2 I)^-1 Y`` otherwise (the same solution, through the smaller matrix)."""
    x, targets = x.double(), targets.double()
    if len(x) > x.shape[1]:
        eigvals, eigvecs = torch.linalg.eigh(x.T @ x)
        projected = eigvecs.T @ (x.T @ targets)
        return [eigvecs @ (projected / (eigvals + l2)[:, None]) for l2 in l2s]
    eigvals, eigvecs = torch.linalg.eigh(x @ x.T)
    projected = eigvecs.T @ targets
    return [x.T @ (eigvecs @ (projected / (eigvals + l2)[:, None])) for l2 in l2s]


def pm_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets ``2 * onehot - 1``."""
    return 2.0 * torch.nn.functional.one_hot(labels, num_classes).double() - 1.0


def probe_accuracies(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     num_classes: int, l2s: Sequence[float]) -> list[float]:
    """Test accuracy of the ridge classifier fitted on (train_x, train_y), one per l2."""
    train_x, test_x = standardise(train_x, test_x)
    weights = ridge_weights(train_x, pm_one_hot(train_y, num_classes), l2s)
    return [float(((test_x @ w).argmax(1) == test_y).double().mean()) for w in weights]

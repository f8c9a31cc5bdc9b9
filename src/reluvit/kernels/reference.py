"""Point-wise attention written with plain tensor operations: the L x L weights are materialised.

This is the path for CPUs, for attention masks and dropout, and for every ``h`` without a fused kernel; in float64
it is also the reference the fused kernel is tested against.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def reference_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: float,
    length_factor: float | torch.Tensor,
    keep: torch.Tensor | None = None,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``length_factor * h(scale * q k^T) v`` over the last two dims of (..., L, d) tensors; ``keep`` (boolean,
    broadcast to (..., L_q, L_k)) zeroes the pairs it marks False, ``dropout`` is applied to the weights."""
    weights = h((q * scale) @ k.transpose(-2, -1)) * length_factor
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v

"""Point-wise attention written with plain tensor operations: the L x L weights are materialised.

This is the path for CPUs, for attention masks and dropout, for every ``h`` without a fused kernel and for sigmoid
attention (``h(s) = sigmoid(s + b)``, no length factor); in float64 it is also the reference the fused kernel is
tested against.

Its memory is bounded: when the B x H x L_q x L_k weights would take more than ``max_weights_bytes``
(:data:`MAX_WEIGHTS_BYTES`, 1 GiB, by default) they are built a chunk of queries at a time, and under autograd each
chunk is recomputed in the backward pass (``torch.utils.checkpoint``), so that only one chunk's weights are ever
alive. The result is the same as unchunked: each query's row of weights is computed whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

# The largest attention weights built at once. S/16 at 224 px (6 heads, 197 tokens, bf16) reaches it at a micro-batch
# of 2306; a GPU holds one such chunk easily next to the rest of a training step.
MAX_WEIGHTS_BYTES = 1 << 30


def reference_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    h: Callable[[torch.Tensor], torch.Tensor],
    *,
    scale: float,
    length_factor: float | torch.Tensor | None,
    keep: torch.Tensor | None = None,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_weights_bytes: int | None = None,
) -> torch.Tensor:
    """``length_factor * h(scale * q k^T) v`` (``h(scale * q k^T) v`` when ``length_factor`` is None: no
    L x L product is made and saved) over the last two dims of (..., L, d) tensors; ``keep`` (boolean,
    broadcast to (..., L_q, L_k)) zeroes the pairs it marks False, ``dropout`` is applied to the weights. Weights
    over ``max_weights_bytes`` (None: :data:`MAX_WEIGHTS_BYTES`) are built in chunks of queries
    (:func:`query_chunk_rows`); with autograd each chunk is recomputed in the backward pass with the forward's
    random state, so dropout draws the same mask."""
    budget = MAX_WEIGHTS_BYTES if max_weights_bytes is None else max_weights_bytes
    rows = query_chunk_rows(math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2], weights_itemsize(q, k), budget)
    attend = partial(_attend, h=h, scale=scale, length_factor=length_factor, dropout=dropout)
    if rows >= q.shape[-2]:
        return attend(q, k, v, keep)
    recompute = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, length_factor) if isinstance(t, torch.Tensor))
    chunks = []
    for start in range(0, q.shape[-2], rows):
        part = (q[..., start:start + rows, :], k, v, _query_rows(keep, start, rows))
        chunks.append(checkpoint(attend, *part, use_reentrant=False) if recompute else attend(*part))
    return torch.cat(chunks, dim=-2)


def query_chunk_rows(batch_heads: int, n_q: int, n_k: int, itemsize: int, max_weights_bytes: int) -> int:
    """Queries per chunk so that ``batch_heads x rows x n_k`` weights of ``itemsize`` bytes stay within
    ``max_weights_bytes`` (at least one row); ``n_q`` when all the weights fit at once."""
    return max(1, min(n_q, max_weights_bytes // max(1, batch_heads * n_k * itemsize)))


def weights_itemsize(q: torch.Tensor, k: torch.Tensor) -> int:
    """Bytes per element of ``q k^T``: autocast's dtype when it casts the product (it leaves float64 alone)."""
    dtype = torch.promote_types(q.dtype, k.dtype)
    if torch.is_autocast_enabled(q.device.type) and dtype != torch.float64:
        dtype = torch.get_autocast_dtype(q.device.type)
    return dtype.itemsize


def _attend(q, k, v, keep, *, h, scale, length_factor, dropout) -> torch.Tensor:
    """The whole computation for some queries and all keys."""
    weights = h((q * scale) @ k.transpose(-2, -1))
    if length_factor is not None:
        weights = weights * length_factor
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v


def _query_rows(keep: torch.Tensor | None, start: int, rows: int) -> torch.Tensor | None:
    """The rows of a (..., L_q, L_k) mask for queries ``start:start + rows``; a mask broadcast over queries (a
    single row, or only a key dim) applies to every chunk as it is."""
    if keep is None or keep.dim() < 2 or keep.shape[-2] == 1:
        return keep
    return keep[..., start:start + rows, :]

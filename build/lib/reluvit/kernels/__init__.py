"""Implementations of point-wise attention ``L^-alpha * h(q.k * scale) v``, and the choice between them.

* ``fused``: Triton kernels (forward and backward) that never materialise the L x L weights, for h = relu, relu2;
* ``reference``: plain tensor operations (any h, masks, dropout; the CPU path and the tests' float64 reference).

Softmax attention is not here: it always runs ``F.scaled_dot_product_attention`` (``sdpa``).
"""

from __future__ import annotations

import torch

from reluvit.kernels.fused import FUSED_ACTIVATIONS, fused_pointwise_attention, unfusable_reason
from reluvit.kernels.reference import reference_pointwise_attention

IMPLS = ("auto", "fused", "reference")

__all__ = ["FUSED_ACTIVATIONS", "IMPLS", "fused_pointwise_attention", "reference_pointwise_attention",
           "select_impl", "unfusable_reason"]


def select_impl(impl: str, *, activation: str, device: torch.device, masked: bool = False,
                dropout: bool = False) -> str:
    """``"fused"`` or ``"reference"`` for one call of point-wise attention.

    ``auto`` is fused on CUDA when the kernel covers the call, else reference; ``fused`` raises a RuntimeError
    saying why when it cannot run (on CPU it runs only under the Triton interpreter, for tests)."""
    if impl == "reference" or (impl == "auto" and device.type != "cuda"):
        return "reference"
    reason = unfusable_reason(activation, device, masked=masked, dropout=dropout)
    if reason is None:
        return "fused"
    if impl == "fused":
        raise RuntimeError(f"attention impl='fused' cannot run: {reason}")
    return "reference"

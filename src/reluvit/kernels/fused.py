"""The Triton kernels of :mod:`reluvit.kernels.triton_pointwise` as a differentiable function of (q, k, v).

Triton is imported on first call, so CPU-only installs never need it.
"""

from __future__ import annotations

import os
from importlib.util import find_spec

import torch

FUSED_ACTIVATIONS = ("relu", "relu2")  # the h with a kernel (positive part, and its square)
MAX_HEAD_DIM = 256  # one tile of the head dim; 32, 64, 128 are exact, others are padded to a power of two


def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read at each call)."""
    if "TRITON_INTERPRET" not in os.environ:  # spares importing triton on the common path
        return False
    import triton

    return triton.knobs.runtime.interpret


def unfusable_reason(activation: str, device: torch.device, *, masked: bool = False,
                     dropout: bool = False) -> str | None:
    """Why the fused kernel cannot compute this call, or None when it can."""
    if activation not in FUSED_ACTIVATIONS:
        return f"activation {activation!r} has no fused kernel (fused: {', '.join(FUSED_ACTIVATIONS)})"
    if masked:
        return "the fused kernel takes no attention mask"
    if dropout:
        return "the fused kernel has no attention dropout"
    if device.type == "cuda":
        return None if find_spec("triton") else "triton is not installed"
    if device.type == "cpu" and interpreter_enabled():
        return None
    return (f"tensors are on {device.type}; the kernel needs CUDA, or on CPU the Triton interpreter "
            f"(TRITON_INTERPRET=1, slow, for tests)")


def fused_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    activation: str = "relu",
    length_factor: float | torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """``length_factor * h(scale * q k^T) v`` for (B, H, L, d) tensors (keys and values (B, H, L_k, d)), without
    materialising the L x L weights; ``scale`` defaults to ``d^-0.5``. CUDA tensors, or CPU tensors under the
    Triton interpreter. Under autocast the inputs are cast to its dtype, otherwise to their common dtype.

    A tensor ``length_factor`` (a learned alpha: shape () or (H, 1, 1)) multiplies the kernel's output outside it,
    so that autograd differentiates it; a number is applied to the float32 accumulators inside."""
    reason = unfusable_reason(activation, q.device)
    if reason:
        raise RuntimeError(reason)
    if q.dim() != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q (B, H, L_q, d) and k, v (B, H, L_k, d); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not 0 < q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {q.shape[-1]} is outside the kernel's range 1..{MAX_HEAD_DIM}")
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    inside = 1.0 if isinstance(length_factor, torch.Tensor) else float(length_factor)
    out = _FusedPointwiseAttention.apply(q.to(dtype), k.to(dtype), v.to(dtype), activation, scale, inside)
    return out * length_factor if isinstance(length_factor, torch.Tensor) else out


class _FusedPointwiseAttention(torch.autograd.Function):
    """Saves only q, k, v: the backward recomputes each tile of weights, and, with no normaliser, needs neither
    the output nor per-row statistics."""

    @staticmethod
    def forward(ctx, q, k, v, activation, scale, length_factor):
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        meta = _launch_args(q, k, activation, scale, length_factor)
        _kernel(q, "forward")[_grid(q, q.shape[2], "BLOCK_M")](q, k, v, out, *_strides(q, k, v, out), **meta)
        ctx.save_for_backward(q, k, v)
        ctx.meta = meta
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype)
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
        _kernel(q, "dk_dv")[_grid(q, k.shape[2], "BLOCK_N")](
            q, k, v, grad_out, dk, dv, *_strides(q, k, v, grad_out, dk, dv), **ctx.meta)
        _kernel(q, "dq")[_grid(q, q.shape[2], "BLOCK_M")](
            q, k, v, grad_out, dq, *_strides(q, k, v, grad_out, dq), **ctx.meta)
        return dq, dk, dv, None, None, None


def _kernel(q: torch.Tensor, name: str):
    from reluvit.kernels.triton_pointwise import kernels

    return kernels(interpret=q.device.type == "cpu")[name]


def _launch_args(q: torch.Tensor, k: torch.Tensor, activation: str, scale: float, length_factor: float) -> dict:
    import triton

    head_dim = q.shape[-1]
    return dict(
        H=q.shape[1], N_Q=q.shape[2], N_K=k.shape[2], scale=scale, length_factor=length_factor,
        ACTIVATION=activation, HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        # float32 products in full precision, as torch's matmul by default (no TF32); 16-bit: the backend's default
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
    )


def _grid(q: torch.Tensor, rows: int, block: str):
    """One program per block of ``rows`` per (batch, head), on one axis (the second is limited to 65535); the block
    size is the tuned config's."""
    return lambda meta: ((rows + meta[block] - 1) // meta[block] * q.shape[0] * q.shape[1],)


def _strides(*tensors: torch.Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()]

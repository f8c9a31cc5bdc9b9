"""The Triton kernels of :mod:`reluvit.kernels.triton_pointwise` as a differentiable function of (q, k, v): two
``torch.library`` custom ops (``reluvit::fused_pointwise_attention`` and its ``_backward``), which torch.compile
keeps whole in its graphs.

Triton is imported on first call, so CPU-only installs never need it.
"""

from __future__ import annotations

import os
from importlib.util import find_spec

import torch

FUSED_ACTIVATIONS = ("relu", "relu2")  # the h with a kernel (positive part, and its square)
MAX_HEAD_DIM = 256  # one tile of the head dim; 32, 64, 128 are exact, others are padded to a power of two


# torch.compile calls these two once, when tracing (it cannot trace triton's knobs, nor find_spec): a compiled
# graph keeps the answer of its tracing
@torch.compiler.assume_constant_result
def interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read at each eager call)."""
    if "TRITON_INTERPRET" not in os.environ:  # spares importing triton on the common path
        return False
    import triton

    return triton.knobs.runtime.interpret


@torch.compiler.assume_constant_result
def _triton_installed() -> bool:
    return find_spec("triton") is not None


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
        return None if _triton_installed() else "triton is not installed"
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
    out = _attention(q.to(dtype), k.to(dtype), v.to(dtype), activation, scale, inside)
    return out * length_factor if isinstance(length_factor, torch.Tensor) else out


# The kernels as torch.library custom ops, forward and backward, so that torch.compile traces attention as one
# opaque call (no graph break) from the fake functions' shapes, and autograd reaches the backward kernels. The
# forward saves only q, k, v: the backward recomputes each tile of weights, and, with no normaliser, needs neither
# the output nor per-row statistics.
@torch.library.custom_op("reluvit::fused_pointwise_attention", mutates_args=())
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, activation: str, scale: float,
               length_factor: float) -> torch.Tensor:
    out = _empty_like(q)
    meta = _launch_args(q, k, activation, scale, length_factor)
    _kernel(q, "forward")[_grid(q, q.shape[2], "BLOCK_M")](q, k, v, out, *_strides(q, k, v, out), **meta)
    return out


@_attention.register_fake
def _(q, k, v, activation, scale, length_factor):
    return _empty_like(q)


@torch.library.custom_op("reluvit::fused_pointwise_attention_backward", mutates_args=())
def _attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, activation: str,
                        scale: float, length_factor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = (_empty_like(t) for t in (q, k, v))
    meta = _launch_args(q, k, activation, scale, length_factor)
    _kernel(q, "dk_dv")[_grid(q, k.shape[2], "BLOCK_N")](
        q, k, v, grad_out, dk, dv, *_strides(q, k, v, grad_out, dk, dv), **meta)
    _kernel(q, "dq")[_grid(q, q.shape[2], "BLOCK_M")](
        q, k, v, grad_out, dq, *_strides(q, k, v, grad_out, dq), **meta)
    return dq, dk, dv


@_attention_backward.register_fake
def _(grad_out, q, k, v, activation, scale, length_factor):
    return _empty_like(q), _empty_like(k), _empty_like(v)


def _save_for_backward(ctx, inputs: tuple, output: torch.Tensor) -> None:
    q, k, v, *ctx.options = inputs  # options: activation, scale, length_factor
    ctx.save_for_backward(q, k, v)


def _differentiate(ctx, grad_out: torch.Tensor) -> tuple:
    q, k, v = ctx.saved_tensors
    return *_attention_backward(grad_out.to(q.dtype), q, k, v, *ctx.options), None, None, None


_attention.register_autograd(_differentiate, setup_context=_save_for_backward)


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of ``t``'s shape, dtype and device: the layout the kernels write, whatever ``t``'s
    strides (the fake functions must give the same)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


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

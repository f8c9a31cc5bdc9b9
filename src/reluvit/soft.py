"""SOFT, softmax-free attention with a Gaussian kernel (Lu et al., NeurIPS 2021, arXiv 2110.11945; IJCV version
"Softmax-free Linear Transformers", arXiv 2207.03341), pure PyTorch.

Per head, with the keys tied to the queries and ``q`` scaled by ``d^-1/4``, SOFT replaces ``softmax(QK^T/sqrt(d))``
by the Gaussian kernel ``S_ij = exp(-||q_i - q_j||^2 / 2)`` and approximates it through ``m`` landmarks
``q~`` (a strided convolution of the query grid + LayerNorm + GELU, stride ``sr``, so ``m = n / sr^2``):
``S V ~ K1 pinv(K2) K1^T V`` with ``K1 = G(q, q~)`` (n x m) and ``K2 = G(q~, q~)`` (m x m), linear in ``n``.
A depthwise convolution of V over the patch grid adds a local term. ``pinv`` is the Newton-Raphson (Schulz)
iteration :func:`newton_pinv`, run in float32 under autocast, with the analytic gradient of the inverse as its
backward instead of back-propagation through the iterations.

This module holds :class:`SoftAttention` (a timm ``attn_layer`` for the ViT grid, ``attention=soft``) and SOFT's own
4-stage pyramids, registered with timm as ``soft_tiny`` ... ``soft_huge``; ``python -m reluvit.soft`` (or
``reluvit soft-table``) prints their parameters and FLOPs at 224 px against the paper's table.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, DropPath, Mlp, trunc_normal_
from timm.models import register_model
from timm.models.vision_transformer import Block
from torch import nn
from torch.autograd.function import once_differentiable

from reluvit.errors import ArgumentError

NEWTON_ITERS = 20  # all 15 of SOFT's configs
SR = 2  # landmark stride of a layer at the length of /16: m = (grid side / 2)^2 landmarks
LOCAL_KERNEL = 3  # the depthwise convolution of the local term (0: none)
RIDGE = 0.01  # SOFT's plain kernel inverts K2 + 0.01 I; the IJCV normalised kernel adds nothing


# --- Newton-Raphson Moore-Penrose inverse --------------------------------------------------------------------------


def _newton_schulz(p: torch.Tensor, iters: int) -> torch.Tensor:
    """``V_{k+1} = 2 V_k - V_k P V_k`` from ``V_0 = a P^T``. It converges to ``pinv(P)`` whenever
    ``0 < a < 2 / sigma_max(P)^2``; ``sigma_max^2 <= ||P||_1 ||P||_inf``, so ``a = 0.9 * 2 / (||P||_1 ||P||_inf)``
    (SOFT's ``0.9 * 2 / max_rowsum^2`` for a symmetric kernel), per matrix.

    The IJCV code starts at ``2 / max_rowsum^2`` (one value for the whole batch) and halves it, up to 10 times, while
    ``max column-sum |I - P V_0| > 1.01``. That test is no convergence criterion: for a kernel whose off-diagonal
    mass exceeds its diagonal it fails for every ``a > 0``, the start shrinks 1024-fold and 20 steps then resolve
    only eigenvalues above ~lambda_max / 40. Both variants use the start above instead."""
    norms = p.abs().sum(-1).amax(-1) * p.abs().sum(-2).amax(-1)
    v = (0.9 * 2.0 / norms)[..., None, None] * p.mT
    for _ in range(iters):
        v = 2 * v - v @ p @ v
    return v


class _NewtonPinv(torch.autograd.Function):
    """Forward: :func:`_newton_schulz` of ``mat + ridge I`` (no graph through the iterations). Backward: the gradient
    of the inverse, ``dL/dP = -V^T (dL/dV) V^T`` (exact where ``P`` is invertible; SOFT's backward)."""

    @staticmethod
    def forward(ctx, mat: torch.Tensor, iters: int, ridge: float) -> torch.Tensor:
        p = mat + ridge * torch.eye(mat.shape[-1], dtype=mat.dtype, device=mat.device) if ridge else mat
        v = _newton_schulz(p, iters)
        ctx.save_for_backward(v)
        return v

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        return -(v.mT @ grad @ v.mT), None, None


def newton_pinv(mat: torch.Tensor, iters: int = NEWTON_ITERS, ridge: float = 0.0) -> torch.Tensor:
    """Moore-Penrose inverse of ``mat + ridge I`` (batched over leading dims) by ``iters`` Newton-Raphson steps, in
    float32 at least whatever the autocast dtype: 20 products of m x m matrices lose too much in bf16."""
    with torch.autocast(mat.device.type, enabled=False):
        mat = mat if mat.dtype == torch.float64 else mat.float()
        return _NewtonPinv.apply(mat, iters, ridge)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(-||a_i - b_j||^2 / 2)`` through ``||a||^2 + ||b||^2 - 2 a.b`` (matrix products, no n x m x d tensor);
    rounding can make the squared distance slightly negative, hence the clamp."""
    sq = a.square().sum(-1, keepdim=True) + b.square().sum(-1).unsqueeze(-2) - 2 * a @ b.mT
    return torch.exp(-0.5 * sq.clamp_min(0))


# --- the attention layer -------------------------------------------------------------------------------------------


class Landmarks(nn.Module):
    """SOFT's bottleneck tokens: ``Conv2d(d, d, sr, stride=sr, bias=False)`` over each head's query grid (shared by
    the heads), then LayerNorm(d) and GELU. A grid side that ``sr`` does not divide is zero-padded at the bottom and
    right (``m = ceil(h / sr) * ceil(w / sr)``); SOFT's own grids are always divisible."""

    def __init__(self, head_dim: int, sr: int, device=None, dtype=None) -> None:
        super().__init__()
        self.sr = sr
        self.conv = nn.Conv2d(head_dim, head_dim, sr, stride=sr, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(head_dim, device=device, dtype=dtype)
        self.act = nn.GELU()

    def forward(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, heads, _, d = q.shape
        grid = q.reshape(b * heads, h, w, d).permute(0, 3, 1, 2)
        grid = F.pad(grid, (0, -w % self.sr, 0, -h % self.sr))
        landmarks = self.conv(grid).flatten(2).transpose(1, 2).reshape(b, heads, -1, d)
        return self.act(self.norm(landmarks))


class SoftAttention(nn.Module):
    """SOFT attention as a timm ``attn_layer`` (``q``, ``v``, ``proj`` Linear layers; no key projection).

    Args:
        sr: landmark stride; ``sr=1`` takes the queries themselves as landmarks (m = n), which makes
            ``K1 pinv(K2) K1^T`` the full Gaussian kernel (an O(n^3) reference, not SOFT's ratio-1 branch).
        newton_iters: Newton-Raphson steps of the pseudo-inverse.
        local_kernel: side of the depthwise convolution of V (one kernel per head, shared by its channels, as
            SOFT's ``Conv2d(heads, heads, k, groups=heads)``); 0 drops the local term.
        sym_norm: the IJCV symmetric normalisation, ``D^-1/2 pinv(K2) D^-1/2`` with ``D = diag(rowsum K2)``.
        ridge: added to K2's diagonal before inverting; ``None``: SOFT's (0.01, or 0 with ``sym_norm``).
        gate, impl: the grid's attention options that SOFT does not have: only ``False`` and ``auto`` (or
            ``reference``) are accepted.
        qk_norm: LayerNorm on the (tied) queries, as the grid's other attentions.
        num_prefix_tokens: class/register tokens in front of the patches. They are queries and keys of the kernel
            term like any token (rows of K1) but are neither pooled into landmarks nor part of the local term (which
            is zero for them); the patches must form a square grid.

    ``attn_drop`` is accepted and unused: no attention matrix is ever formed.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        sr: int = SR,
        newton_iters: int = NEWTON_ITERS,
        local_kernel: int = LOCAL_KERNEL,
        sym_norm: bool = False,
        ridge: float | None = None,
        num_prefix_tokens: int = 0,
        gate: bool = False,
        impl: str = "auto",
        device=None,
        dtype=None,
        **_: object,  # timm passes keys only some layers use (norm_layer, scale_norm, depth, ...)
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        for key, value, low in (("sr", sr, 1), ("newton_iters", newton_iters, 0), ("local_kernel", local_kernel, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ArgumentError(key, f"{value!r} is not an integer >= {low}")
        if local_kernel and local_kernel % 2 == 0:
            raise ArgumentError("local_kernel", f"{local_kernel} is not odd (a centred 'same' convolution; 0: none)")
        if gate:
            raise ArgumentError("gate", "SOFT attention has no gate")
        if impl not in ("auto", "reference"):
            raise ArgumentError("impl", f"SOFT has no fused kernel: {impl!r} is not auto or reference")
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr, self.newton_iters, self.sym_norm = sr, newton_iters, sym_norm
        self.ridge = (0.0 if sym_norm else RIDGE) if ridge is None else ridge
        self.num_prefix_tokens = num_prefix_tokens
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=False, **dd) if qk_norm else nn.Identity()
        self.landmarks = Landmarks(self.head_dim, sr, **dd) if sr > 1 else None
        self.local = nn.Conv2d(num_heads, num_heads, local_kernel, padding=local_kernel // 2, groups=num_heads,
                               bias=False, **dd) if local_kernel else None
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return f"sr={self.sr}, newton_iters={self.newton_iters}, ridge={self.ridge}, sym_norm={self.sym_norm}"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("SOFT attention takes no mask: its low-rank kernel has no per-pair weights")
        B, N, C = x.shape
        h = w = math.isqrt(N - self.num_prefix_tokens)
        if h * w != N - self.num_prefix_tokens:
            raise ValueError(f"SOFT needs a square patch grid: {N} tokens minus {self.num_prefix_tokens} prefix "
                             "tokens is not a square")
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        q = self.q_norm(q) * self.head_dim**-0.25
        landmarks = q if self.landmarks is None else self.landmarks(q[:, :, self.num_prefix_tokens:], h, w)
        o = self.kernel_term(q, landmarks, v)
        if self.local is not None:
            o = o + self.local_term(v, h, w)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))

    def kernel_term(self, q: torch.Tensor, landmarks: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``K1 pinv(K2) K1^T V``, right to left (n m d + m^2 d + n m d, never n x n). In float32 under autocast:
        bf16 rounds ``||a||^2 + ||b||^2 - 2 a.b`` for nearby landmarks to noise and K2 is near-singular."""
        with torch.autocast(q.device.type, enabled=False):
            dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
            q, landmarks, v32 = q.to(dtype), landmarks.to(dtype), v.to(dtype)
            k1 = gaussian_kernel(q, landmarks)
            k2 = gaussian_kernel(landmarks, landmarks)
            inverse = newton_pinv(k2, self.newton_iters, self.ridge)
            if self.sym_norm:
                d = k2.sum(-1, keepdim=True).rsqrt()
                inverse = d * inverse * d.mT
            return (k1 @ (inverse @ (k1.mT @ v32))).to(v.dtype)

    def local_term(self, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The depthwise convolution of V over the patch grid (channels = heads, the head_dim as batch); zero for
        the prefix tokens."""
        b, heads, n, d = v.shape
        patches = v[:, :, self.num_prefix_tokens:].reshape(b, heads, h, w, d).permute(0, 4, 1, 2, 3)
        out = self.local(patches.reshape(b * d, heads, h, w)).reshape(b, d, heads, h * w).permute(0, 2, 3, 1)
        return F.pad(out, (0, 0, self.num_prefix_tokens, 0))


# --- SOFT's own models ---------------------------------------------------------------------------------------------


class SoftBlock(nn.Module):
    """SOFT's transformer block, post-LN: ``x = LN(x + attn(x))``, ``x = LN(x + FFN(x))``, FFN 4x with tanh-GELU
    (SOFT's blocks use 4x whatever the model's listed ``mlp_ratios``)."""

    def __init__(self, dim: int, num_heads: int, *, sr: int, local_kernel: int, newton_iters: int, sym_norm: bool,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = SoftAttention(dim, num_heads, qkv_bias=True, sr=sr, local_kernel=local_kernel,
                                  newton_iters=newton_iters, sym_norm=sym_norm)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=partial(nn.GELU, approximate="tanh"))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path(self.attn(x)))
        return self.norm2(x + self.drop_path(self.mlp(x)))


def _embedding(in_chans: int, dim: int, first: bool) -> nn.Sequential:
    """Conv patch embedding, conv3x3 + BN + ReLU: stride 4 in three convolutions (to 32, 32, dim channels) for the
    first stage, one stride-2 convolution for the others."""
    conv = partial(ConvNormAct, kernel_size=3, bias=True)  # SOFT's convolutions keep their bias before BN
    if first:
        return nn.Sequential(conv(in_chans, 32, stride=2), conv(32, 32, stride=1), conv(32, dim, stride=2))
    return nn.Sequential(conv(in_chans, dim, stride=2))


class SoftVisionTransformer(nn.Module):
    """SOFT's 4-stage pyramid: stages 1-3 of :class:`SoftBlock` (landmark strides 8/4/2 and local kernels 9/5/3,
    so m = 49 at 224 px), stage 4 timm's pre-LN softmax :class:`~timm.models.vision_transformer.Block` with a class
    token, whose final-LN output feeds the linear head. A learned position embedding per stage."""

    def __init__(self, embed_dims: tuple[int, ...], num_heads: tuple[int, ...], depths: tuple[int, ...], *,
                 img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, sr_ratios=(8, 4, 2),
                 local_kernels=(9, 5, 3), newton_iters: int = NEWTON_ITERS, sym_norm: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if img_size % 32:
            raise ValueError(f"img_size {img_size} is not a multiple of 32 (four stride-2 stages after stride 4)")
        self.num_classes, self.num_features = num_classes, embed_dims[-1]
        dpr = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())
        grids = [img_size // s for s in (4, 8, 16, 32)]
        inputs = (in_chans, *embed_dims[:-1])
        self.embeds = nn.ModuleList(_embedding(c_in, c, i == 0)
                                    for i, (c_in, c) in enumerate(zip(inputs, embed_dims, strict=True)))
        self.pos_embeds = nn.ParameterList(nn.Parameter(torch.zeros(1, g * g + (i == 3), c))
                                           for i, (g, c) in enumerate(zip(grids, embed_dims, strict=True)))
        self.pos_drop = nn.Dropout(drop_rate)
        self.stages = nn.ModuleList(
            nn.Sequential(*(SoftBlock(embed_dims[i], num_heads[i], sr=sr_ratios[i], local_kernel=local_kernels[i],
                                      newton_iters=newton_iters, sym_norm=sym_norm, drop_path=next(dpr))
                            for _ in range(depths[i])))
            for i in range(3))
        self.stages.append(nn.Sequential(*(
            Block(embed_dims[3], num_heads[3], mlp_ratio=4.0, qkv_bias=True, proj_drop=drop_rate,
                  drop_path=next(dpr), norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(depths[3]))))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[3]))
        self.norm = nn.LayerNorm(embed_dims[3], eps=1e-6)
        self.head = nn.Linear(embed_dims[3], num_classes) if num_classes else nn.Identity()
        for p in (*self.pos_embeds, self.cls_token):
            trunc_normal_(p, std=0.02)
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, (embed, pos, stage) in enumerate(zip(self.embeds, self.pos_embeds, self.stages, strict=True)):
            x = embed(x).flatten(2).transpose(1, 2)
            if i == 3:
                x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
            x = stage(self.pos_drop(x + pos))
            if i < 3:
                side = math.isqrt(x.shape[1])
                x = x.transpose(1, 2).reshape(len(x), -1, side, side)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x[:, 0] if pre_logits else self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(module: nn.Module) -> None:
    """SOFT's: truncated-normal (0.02) Linear weights, zero biases; LayerNorm ones and zeros."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# SOFT README (ImageNet-1k, 224 px): architecture, and the reported params (M), FLOPs (G) and top-1 (plain, norm).
SOFT_MODELS: dict[str, dict] = {
    "soft_tiny": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 2, 3, 2)),
    "soft_small": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 3, 20, 4)),
    "soft_medium": dict(embed_dims=(64, 128, 288, 512), num_heads=(2, 4, 9, 16), depths=(1, 3, 29, 5)),
    "soft_large": dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), depths=(1, 3, 40, 5)),
    "soft_huge": dict(embed_dims=(64, 128, 352, 512), num_heads=(2, 4, 11, 16), depths=(1, 5, 49, 5)),
}
PAPER_TABLE: dict[str, tuple[float, float, float, float]] = {
    "soft_tiny": (13, 1.9, 79.3, 79.4),
    "soft_small": (24, 3.3, 82.2, 82.4),
    "soft_medium": (45, 7.2, 82.9, 83.1),
    "soft_large": (64, 11.0, 83.1, 83.3),
    "soft_huge": (87, 16.3, 83.3, 83.4),
}


def _create(name: str, pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    if pretrained:
        raise ValueError(f"{name}: no pretrained weights are available")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm.create_model's, unused here
        kwargs.pop(key, None)
    return SoftVisionTransformer(**SOFT_MODELS[name], **kwargs)


@register_model
def soft_tiny(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create("soft_tiny", pretrained, **kwargs)


@register_model
def soft_small(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create("soft_small", pretrained, **kwargs)


@register_model
def soft_medium(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create("soft_medium", pretrained, **kwargs)


@register_model
def soft_large(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create("soft_large", pretrained, **kwargs)


@register_model
def soft_huge(pretrained: bool = False, **kwargs) -> SoftVisionTransformer:
    return _create("soft_huge", pretrained, **kwargs)


# --- parameters and FLOPs --------------------------------------------------------------------------------------------


def soft_attention_macs(grid: int, dim: int, heads: int, *, sr: int = SR, newton_iters: int = NEWTON_ITERS,
                        local_kernel: int = LOCAL_KERNEL, sym_norm: bool = False, ridge: float | None = None,
                        prefix_tokens: int = 0) -> tuple[int, int]:
    """Multiply-accumulates of one :class:`SoftAttention` forward on a grid x grid patch grid (matrix products and
    convolutions): (all of them, the part that SOFT's custom CUDA ops compute: the Gaussian-kernel distance products
    and the Newton-Raphson iterations, which a FLOP counter does not see in SOFT's code). ``sym_norm`` and ``ridge``
    are accepted with the layer's other options; they add no products."""
    d, n = dim // heads, grid * grid + prefix_tokens
    m = n if sr == 1 else math.ceil(grid / sr) ** 2
    kernels = heads * (n * m * d + m * m * d)
    newton = heads * newton_iters * 2 * m**3
    products = heads * (2 * n * m * d + m * m * d)  # K1^T V, pinv @ ., K1 @ .
    landmarks = 0 if sr == 1 else heads * m * d * d * sr * sr
    local = grid * grid * local_kernel**2 * dim
    return 3 * n * dim * dim + landmarks + kernels + newton + products + local, kernels + newton


def profile(name: str, img_size: int = 224) -> dict[str, float]:
    """Parameters (M) and forward GMACs of a registered SOFT model at ``img_size``: ``gmacs`` counts every matrix
    product and convolution (torch's FlopCounterMode, FLOPs / 2), ``gmacs_as_paper`` leaves out what SOFT's CUDA
    ops hide from a FLOP counter (see :func:`soft_attention_macs`), which is how the paper's table counts."""
    from timm import create_model
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name).eval()
    hidden = []
    for module in model.modules():
        if isinstance(module, SoftAttention):
            module.register_forward_hook(lambda mod, args, out: hidden.append(soft_attention_macs(
                math.isqrt(args[0].shape[1]), args[0].shape[2], mod.num_heads, sr=mod.sr,
                newton_iters=mod.newton_iters, local_kernel=mod.local.kernel_size[0])[1]))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, img_size, img_size))
    macs = counter.get_total_flops() / 2
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "gmacs": macs / 1e9,
            "gmacs_as_paper": (macs - sum(hidden)) / 1e9}


def table(names=tuple(SOFT_MODELS), img_size: int = 224) -> str:
    """Parameters and FLOPs (GMACs, the paper's "FLOPs") of SOFT's models against the paper's table."""
    lines = [f"{'model':<12} {'params M':>9} {'paper':>6} {'FLOPs G':>8} {'paper':>6} {'diff':>6} {'all ops G':>9}"]
    for name in names:
        p = profile(name, img_size)
        params, flops = PAPER_TABLE[name][:2]
        lines.append(f"{name:<12} {p['params_m']:>9.2f} {params:>6g} {p['gmacs_as_paper']:>8.2f} {flops:>6g} "
                     f"{p['gmacs_as_paper'] / flops - 1:>+6.1%} {p['gmacs']:>9.2f}")
    lines.append("FLOPs G: multiply-accumulates without the Gaussian-kernel distances and Newton-Raphson steps (SOFT's "
                 "CUDA ops, invisible to its FLOP counter); all ops G: with them.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())

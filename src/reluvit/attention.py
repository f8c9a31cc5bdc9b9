"""The attention family, as drop-in ``attn_layer`` classes for timm's ``VisionTransformer``.

Every member computes, per head, ``o_i = sum_j a_ij v_j`` from the logits ``s_ij = q_i . k_j / sqrt(d)``:

* ``softmax``: ``a_ij = softmax_j(s_ij)`` (through ``F.scaled_dot_product_attention``, the fused path);
* point-wise (arXiv 2309.08586 Sec. 3): ``a_ij = L^-alpha * h(s_ij)`` with no normalisation over ``j``,
  ``h`` one of :data:`POINTWISE`, ``L`` the number of keys (or of patch tokens only, ``seq_len="patches"``).

Options shared by all members: ``qk_norm`` (flax ``normalize_qk``: LayerNorm over head_dim on q and k, learnable
scale shared across heads, no bias, eps 1e-6) and ``gate`` (GAU-style: ``proj(g(W_g x) * concat_heads(o))``,
``g`` one of :data:`GATE_ACTIVATIONS`, ``"none"`` by default because the paper names no activation).

timm builds its attention with ``attn_layer(dim, num_heads=..., qkv_bias=..., ...)`` and checks
``issubclass(attn_layer, ...)``, so variants are real subclasses made by :func:`attention_layer`, not partials.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partialmethod

import torch
import torch.nn.functional as F
from torch import nn

# h of the point-wise family, applied to the scaled logits.
POINTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "relu2": lambda s: F.relu(s).square(),
    "gelu": F.gelu,  # exact erf form; gelu_approximate="tanh" selects flax's default
    "softplus": F.softplus,
    "identity": lambda s: s,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
}
ACTIVATIONS = ("softmax", *POINTWISE)
GATE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda g: g,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
}
SEQ_LEN_MODES = ("keys", "patches")
GELU_APPROXIMATIONS = ("none", "tanh")


class PointwiseAttention(nn.Module):
    """Multi-head self-attention with a selectable normaliser; the module layout (``qkv``, ``q_norm``, ``k_norm``,
    ``norm``, ``proj``) and state-dict keys match timm's ``Attention`` so weights move between the two."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] | None = None,
        *,
        activation: str = "relu",
        alpha: float = 1.0,
        gate: bool = False,
        gate_activation: str = "none",
        gelu_approximate: str = "none",
        seq_len: str = "keys",
        num_prefix_tokens: int = 0,
        device=None,
        dtype=None,
        **_: object,  # timm passes keys only some layers use (e.g. ``depth``); ignore the rest
    ) -> None:
        super().__init__()
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("gate_activation", gate_activation, tuple(GATE_ACTIVATIONS))
        _check_choice("gelu_approximate", gelu_approximate, GELU_APPROXIMATIONS)
        _check_choice("seq_len", seq_len, SEQ_LEN_MODES)
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite real >= 0, got {alpha!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        dd = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.activation = activation
        self.alpha = float(alpha)
        self.gelu_approximate = gelu_approximate
        self.seq_len = seq_len
        self.num_prefix_tokens = num_prefix_tokens

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        # flax normalize_qk: one scale vector of size head_dim shared by all heads, no bias, eps 1e-6.
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=False, **dd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6, bias=False, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.gate = nn.Linear(dim, dim, **dd) if gate else None
        self.gate_activation = gate_activation
        self.norm = norm_layer(dim, **dd) if scale_norm and norm_layer is not None else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        if self.activation == "softmax":
            return "activation=softmax"
        return f"activation={self.activation}, alpha={self.alpha}, seq_len={self.seq_len}"

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        if self.activation == "softmax":
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                dropout_p=self.attn_drop.p if self.training else 0.0,
            )
        else:
            o = self._pointwise(q, k, v, attn_mask, is_causal)

        o = self.norm(o.transpose(1, 2).reshape(B, N, C))
        if self.gate is not None:
            o = GATE_ACTIVATIONS[self.gate_activation](self.gate(x)) * o
        return self.proj_drop(self.proj(o))

    def _pointwise(self, q, k, v, attn_mask, is_causal) -> torch.Tensor:
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.activation == "gelu":
            a = F.gelu(logits, approximate=self.gelu_approximate)
        else:
            a = POINTWISE[self.activation](logits)
        a = a * self.length_factor(k.shape[-2])
        keep = _keep_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        if keep is not None:
            a = a.masked_fill(~keep, 0.0)
        return self.attn_drop(a) @ v

    def length_factor(self, num_keys: int) -> float:
        """``L^-alpha``: L counts every key, or only the patch tokens when ``seq_len="patches"``."""
        length = num_keys - self.num_prefix_tokens if self.seq_len == "patches" else num_keys
        return float(length) ** -self.alpha


def _keep_mask(attn_mask, is_causal, n_q, n_k, device) -> torch.Tensor | None:
    """Boolean mask of the (query, key) pairs that contribute. Additive float masks only make sense under a
    normaliser that maps -inf to 0 (softmax), so point-wise attention accepts boolean masks only."""
    keep = None
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError("point-wise attention takes a boolean attn_mask (True = attend)")
        keep = attn_mask
    if is_causal:
        causal = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()
        keep = causal if keep is None else keep & causal
    return keep


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def attention_layer(**options) -> type[PointwiseAttention]:
    """A ``PointwiseAttention`` subclass with ``options`` (``activation``, ``alpha``, ``gate``, ...) bound, for
    ``VisionTransformer(attn_layer=...)``. The options are checked here, once, rather than in every block."""
    PointwiseAttention(8, 1, **options)  # fail fast on bad options, with the same messages as the layer
    name = "".join(part.capitalize() for part in str(options.get("activation", "relu")).split("_")) + "Attention"
    return type(name, (PointwiseAttention,), {
        "__init__": partialmethod(PointwiseAttention.__init__, **options),
        "options": options,
        # made by type(), the class cannot be found by name when unpickling: rebuild it from its options
        "__reduce__": lambda self: (_unpickle_layer, (self.options, self.__dict__)),
    })


def _unpickle_layer(options: dict, state: dict) -> PointwiseAttention:
    layer = nn.Module.__new__(attention_layer(**options))
    layer.__dict__.update(state)
    return layer

"""The attention family, as drop-in ``attn_layer`` classes for timm's ``VisionTransformer``.

Every member computes, per head, ``o_i = sum_j a_ij v_j`` from the logits ``s_ij = q_i . k_j / sqrt(d)``:

* ``softmax``: ``a_ij = softmax_j(s_ij)`` (through ``F.scaled_dot_product_attention``, the fused path);
* point-wise (arXiv 2309.08586 Sec. 3): ``a_ij = L^-alpha * h(s_ij)`` with no normalisation over ``j``,
  ``h`` one of :data:`POINTWISE`, ``L`` the number of keys (or of patch tokens only, ``seq_len="patches"``);
  ``learn_alpha`` makes alpha a parameter per layer or per head, ``alpha = softplus(raw_alpha) >= 0``;
* ``sigmoid_attn`` (Ramapuram et al. 2024, arXiv 2409.04431): ``a_ij = sigmoid(s_ij + b)``, ``b = -log L`` unless
  ``sigmoid_bias`` is given (no ``L^-alpha`` factor: not the point-wise ``L^-alpha sigmoid``).

SOFT (``activation="soft"``), whose keys are its queries, is its own layer (:mod:`reluvit.soft`);
:func:`attention_layer` builds either from the ``attention`` config.

Options shared by all members: ``qk_norm`` (flax ``normalize_qk``: LayerNorm over head_dim on q and k, learnable
scale shared across heads, no bias, eps 1e-6) and ``gate`` (GAU-style: ``proj(g(W_g x) * concat_heads(o))``,
``g`` one of :data:`GATE_ACTIVATIONS`, ``"none"`` by default because the paper names no activation).

timm builds its attention with ``attn_layer(dim, num_heads=..., qkv_bias=..., ...)`` and checks
``issubclass(attn_layer, ...)``, so variants are real subclasses made by :func:`attention_layer`, not partials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial, partialmethod

import torch
import torch.nn.functional as F
from torch import nn

from reluvit import kernels
from reluvit.errors import ArgumentError, check_choice

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
SIGMOID_ATTENTION = "sigmoid_attn"
SOFT = "soft"  # reluvit.soft.SoftAttention
ACTIVATIONS = ("softmax", *POINTWISE, SIGMOID_ATTENTION)  # the members of PointwiseAttention
ATTENTIONS = (*ACTIVATIONS, SOFT)  # what attention_layer builds
LEARN_ALPHA = ("none", "layer", "head")  # alpha fixed, one learned alpha per layer, or one per head
GATE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda g: g,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
}
SEQ_LEN_MODES = ("keys", "patches")
GELU_APPROXIMATIONS = ("none", "tanh")
# Options that change values only: no parameter, no tensor's shape, nothing autograd saves (a learned alpha's
# starting value too). Layers that differ only in them are built alike (Figure 2's alpha axis).
VALUE_OPTIONS = ("alpha", "seq_len", "sigmoid_bias", "gelu_approximate")


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
        sigmoid_bias: float | None = None,
        learn_alpha: str = "none",
        impl: str = "auto",
        num_prefix_tokens: int = 0,
        device=None,
        dtype=None,
        **_: object,  # timm passes keys only some layers use (e.g. ``depth``); ignore the rest
    ) -> None:
        super().__init__()
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("gate_activation", gate_activation, tuple(GATE_ACTIVATIONS))
        check_choice("gelu_approximate", gelu_approximate, GELU_APPROXIMATIONS)
        check_choice("seq_len", seq_len, SEQ_LEN_MODES)
        check_choice("learn_alpha", learn_alpha, LEARN_ALPHA)
        check_choice("impl", impl, kernels.IMPLS)
        if impl == "fused" and activation != "softmax" and activation not in kernels.FUSED_ACTIVATIONS:
            raise ArgumentError("impl", f"'fused' has kernels for {', '.join(kernels.FUSED_ACTIVATIONS)} (softmax: "
                                        f"SDPA), not {activation!r}; use auto or reference")
        if isinstance(alpha, bool) or not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
            raise ArgumentError("alpha", f"{alpha!r} is not a finite real >= 0")
        if learn_alpha != "none" and activation not in POINTWISE:
            raise ArgumentError("learn_alpha", f"{learn_alpha!r} needs a point-wise activation "
                                               f"({', '.join(POINTWISE)}), not {activation!r}")
        if learn_alpha != "none" and alpha == 0:
            raise ArgumentError("alpha", "a learned alpha starts > 0 (alpha = softplus(raw) never reaches 0)")
        if sigmoid_bias is not None and not (isinstance(sigmoid_bias, int | float) and math.isfinite(sigmoid_bias)):
            raise ArgumentError("sigmoid_bias", f"{sigmoid_bias!r} is not a finite real (or None: -log L)")
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
        self.sigmoid_bias = sigmoid_bias
        self.num_prefix_tokens = num_prefix_tokens
        self.impl = impl  # point-wise attention: auto | fused | reference (reluvit.kernels.select_impl)
        # what the last forward ran (fused | sdpa | reference), for the run's compute accounting
        self.last_impl = {"softmax": "sdpa", SIGMOID_ATTENTION: "reference"}.get(activation)
        # softplus keeps alpha >= 0 and moves it about as fast as a plain parameter once alpha >~ 1
        self.raw_alpha = None if learn_alpha == "none" else nn.Parameter(torch.full(
            (num_heads, 1, 1) if learn_alpha == "head" else (), math.log(math.expm1(alpha)), **dd))

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
        if self.activation == SIGMOID_ATTENTION:
            return f"activation={self.activation}, bias={self.sigmoid_bias or '-log L'}, seq_len={self.seq_len}"
        alpha = self.alpha if self.raw_alpha is None else f"learned {tuple(self.raw_alpha.shape)} from {self.alpha}"
        return f"activation={self.activation}, alpha={alpha}, seq_len={self.seq_len}"

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
        elif self.activation == SIGMOID_ATTENTION:
            o = self._sigmoid_attention(q, k, v, attn_mask, is_causal)
        else:
            o = self._pointwise(q, k, v, attn_mask, is_causal)

        o = self.norm(o.transpose(1, 2).reshape(B, N, C))
        if self.gate is not None:
            o = GATE_ACTIVATIONS[self.gate_activation](self.gate(x)) * o
        return self.proj_drop(self.proj(o))

    def _pointwise(self, q, k, v, attn_mask, is_causal) -> torch.Tensor:
        factor = self.length_factor(k.shape[-2])
        self.last_impl = kernels.select_impl(self.impl, activation=self.activation, device=q.device,
                                             masked=attn_mask is not None or is_causal,
                                             dropout=self.training and self.attn_drop.p > 0)
        if self.last_impl == "fused":
            return kernels.fused_pointwise_attention(q, k, v, activation=self.activation, length_factor=factor,
                                                     scale=self.scale)
        h = POINTWISE[self.activation]
        if self.activation == "gelu":
            h = partial(F.gelu, approximate=self.gelu_approximate)
        keep = _keep_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        return kernels.reference_pointwise_attention(q, k, v, h, scale=self.scale, length_factor=factor, keep=keep,
                                                     dropout=self.attn_drop)

    def _sigmoid_attention(self, q, k, v, attn_mask, is_causal) -> torch.Tensor:
        bias = -math.log(self.seq_length(k.shape[-2])) if self.sigmoid_bias is None else self.sigmoid_bias
        keep = _keep_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
        return kernels.reference_pointwise_attention(q, k, v, lambda s: torch.sigmoid(s + bias), scale=self.scale,
                                                     length_factor=None, keep=keep, dropout=self.attn_drop)

    def seq_length(self, num_keys: int) -> int:
        """L: every key, or only the patch tokens when ``seq_len="patches"``."""
        return num_keys - self.num_prefix_tokens if self.seq_len == "patches" else num_keys

    def length_factor(self, num_keys: int) -> float | torch.Tensor:
        """``L^-alpha``; a tensor (shape () or (heads, 1, 1)) when alpha is learned."""
        if self.raw_alpha is not None:
            return torch.exp(-self.learned_alpha() * math.log(self.seq_length(num_keys)))
        return float(self.seq_length(num_keys)) ** -self.alpha

    def learned_alpha(self) -> torch.Tensor:
        return F.softplus(self.raw_alpha)


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


def attention_layer(activation: str = "relu", *, soft: Mapping | None = None, **options) -> type[nn.Module]:
    """The ``attn_layer`` class of timm's ``VisionTransformer`` for an ``attention`` config: SOFT for
    ``activation="soft"`` (its options under ``soft``), else :class:`PointwiseAttention` with ``options`` bound
    (``alpha``, ``gate``, ...: the options that do not apply to the chosen member are ignored, as softmax ignores
    alpha). The options are checked here, once, rather than in every block; errors name the option."""
    check_choice("activation", activation, ATTENTIONS)
    if activation == SOFT:
        from reluvit.soft import SoftAttention

        shared = {k: options[k] for k in ("gate", "impl", "num_prefix_tokens") if k in options}
        try:
            SoftAttention(8, 1, **(soft or {}))  # fail fast on bad options
        except ArgumentError as e:
            raise e.within("soft") from None
        SoftAttention(8, 1, **shared)
        return bound_layer(SoftAttention, "SoftAttention", {**(soft or {}), **shared})
    options = {"activation": activation, **options}
    PointwiseAttention(8, 1, **options)  # fail fast on bad options, with the same messages as the layer
    name = "".join(part.capitalize() for part in activation.split("_")) + "Attention"
    return bound_layer(PointwiseAttention, name, options)


def structure(attention: Mapping) -> dict:
    """An ``attention`` config without its :data:`VALUE_OPTIONS`: what decides the layer's parameters and tensors."""
    return {k: v for k, v in attention.items() if k not in VALUE_OPTIONS}


def bound_layer(base: type[nn.Module], name: str, options: dict) -> type[nn.Module]:
    """A subclass ``name`` of ``base`` whose ``__init__`` has ``options`` bound, picklable."""
    return type(name, (base,), {
        "__init__": partialmethod(base.__init__, **options),
        "options": options,
        # made by type(), the class cannot be found by name when unpickling: rebuild it from its options
        "__reduce__": lambda self: (_unpickle_layer, (base, name, self.options, self.__dict__)),
    })


def _unpickle_layer(base: type[nn.Module], name: str, options: dict, state: dict) -> nn.Module:
    layer = nn.Module.__new__(bound_layer(base, name, options))
    layer.__dict__.update(state)
    return layer

"""The ViT grid on timm: big_vision's model sizes, pooling heads and initialisers, with the attention family.

``create_model("S/16", attention={"activation": "relu", "alpha": 1.0})`` returns a plain ``timm``
``VisionTransformer`` whose blocks
use :class:`reluvit.attention.PointwiseAttention`; everything else (patch embedding, pre-LN blocks, MLP, pooling)
is timm's own, configured to match big_vision ``models/vit.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from timm.layers import lecun_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from reluvit.attention import attention_layer
from reluvit.errors import COUNT, ArgumentError, Range, check_choice, check_range
from reluvit.variants import parse_variant

POOLS = ("gap", "tok")


class PreLogits(nn.Sequential):
    """big_vision's ``rep_size=True`` representation layer, Dense(width) + tanh. It is installed as timm's
    ``fc_norm`` (applied between pooling and head), so ``forward_head(x, pre_logits=True)`` returns its output."""

    def __init__(self, width: int, device=None, dtype=None) -> None:
        super().__init__(nn.Linear(width, width, device=device, dtype=dtype), nn.Tanh())


def create_model(
    variant: str = "S/16",
    *,
    attention: Mapping | None = None,
    num_classes: int = 1000,
    img_size: int = 224,
    in_chans: int = 3,
    pool: str = "gap",
    rep_size: bool = False,
    head_bias_init: float = 0.0,
    **timm_kwargs,
) -> VisionTransformer:
    """Build a big_vision-style ViT with the given attention.

    Args:
        variant: ``"<size>/<patch>"``, size in :data:`reluvit.variants.SIZES` (big_vision's Ti, S, M, B, L, H,
            and reluvit's micro, mini, midi).
        attention: the keyword arguments of :func:`reluvit.attention.attention_layer` (the ``attention`` config:
            ``activation``, ``alpha``, ``qk_norm``, ``gate``, ..., ``soft``); missing keys take their defaults,
            ``qk_norm`` True (the paper's). ``None``: relu/L with qk-LayerNorm.
        pool: ``gap`` (mean of final-LN tokens, no class token; i21k recipe) or ``tok`` (class token; i1k recipe).
        rep_size: add big_vision's pre-logits Dense(width)+tanh (the i1k recipe).
        head_bias_init: constant head bias (-10 for i21k, -6.9 for i1k, big_vision); the head kernel is zero.
        timm_kwargs: passed to ``VisionTransformer`` last, so they can override the size (``embed_dim``, ...).

    Raises:
        reluvit.errors.ArgumentError: naming the refused argument (``attention.alpha``, ``pool``, ...).
    """
    _, patch = parse_variant(variant)
    for name, value in (("img_size", img_size), ("in_chans", in_chans), ("num_classes", num_classes)):
        check_range(name, value, COUNT)
    check_choice("pool", pool, POOLS)
    check_range("head_bias_init", head_bias_init, Range())
    if img_size % patch:
        raise ArgumentError("variant", f"patch size {patch} does not divide img_size {img_size}")
    attn_layer, qk_norm = attention_class(attention, pool)
    kwargs = dict(vit_arguments(variant, num_classes=num_classes, img_size=img_size, in_chans=in_chans, pool=pool,
                                qk_norm=qk_norm), weight_init="skip", attn_layer=attn_layer)
    kwargs.update(timm_kwargs)
    model = VisionTransformer(**kwargs)
    if rep_size:
        model.fc_norm = PreLogits(model.embed_dim, device=model.head.weight.device, dtype=model.head.weight.dtype)
    init_big_vision(model, head_bias_init)
    return model


def vit_arguments(variant: str, *, num_classes: int, img_size: int, in_chans: int, pool: str, qk_norm: bool) -> dict:
    """The arguments of timm's ``VisionTransformer`` (JSON values) for big_vision's ViT of ``variant``: all but the
    attention layer and the initialisation. ``timm.create_model("vit_base_patch16_224", **them)`` builds it too."""
    size, patch = parse_variant(variant)
    return dict(
        img_size=img_size, patch_size=patch, in_chans=in_chans, num_classes=num_classes,
        embed_dim=size.width, depth=size.depth, num_heads=size.heads, mlp_ratio=size.mlp_dim / size.width,
        qkv_bias=True, qk_norm=qk_norm,
        global_pool="avg" if pool == "gap" else "token", class_token=pool == "tok",
        fc_norm=False,  # big_vision applies the final LayerNorm to the tokens, then pools
        no_embed_class=True,  # big_vision adds the position embedding before prepending the class token
        act_layer="gelu_tanh",  # flax nn.gelu default
    )


def attention_class(attention: Mapping | None, pool: str) -> tuple[type[nn.Module], bool]:
    """The ``attn_layer`` class of an ``attention`` config for a model of ``pool`` pooling, and its ``qk_norm`` (timm
    passes that to every attention layer it builds). Refusals are named ``attention.<option>``."""
    attention = dict(attention or {})
    qk_norm = attention.pop("qk_norm", True)
    try:
        return attention_layer(**attention, num_prefix_tokens=prefix_tokens(pool)), qk_norm
    except ArgumentError as e:
        raise e.within("attention") from None


def prefix_tokens(pool: str) -> int:
    """Tokens in front of the patches: the class token of ``tok`` pooling."""
    return int(pool == "tok")


@torch.no_grad()
def init_big_vision(model: VisionTransformer, head_bias: float) -> None:
    """big_vision ``models/vit.py`` initialisers (flax defaults where it sets none): xavier-uniform kernels for
    q, k, v (each its own dim x dim matrix, not the fused qkv), out-projection, gate and MLP; zero biases except the
    MLP's N(0, 1e-6); lecun-normal patch embedding and pre-logits; position embedding N(0, 1/sqrt(width)); zero class
    token; zero head kernel with a constant bias. Parameters on the meta device are left as they are."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.device.type != "meta":
            if name == "head":
                nn.init.zeros_(module.weight)
                nn.init.constant_(module.bias, head_bias)
            elif name.startswith("fc_norm"):
                lecun_normal_(module.weight)
                nn.init.zeros_(module.bias)
            else:
                for chunk in module.weight.split(module.in_features) if name.endswith("qkv") else [module.weight]:
                    nn.init.xavier_uniform_(chunk)
                if module.bias is not None:
                    (nn.init.normal_(module.bias, std=1e-6) if ".mlp." in name else nn.init.zeros_(module.bias))
    if model.patch_embed.proj.weight.device.type != "meta":
        lecun_normal_(model.patch_embed.proj.weight)
        nn.init.zeros_(model.patch_embed.proj.bias)
        nn.init.normal_(model.pos_embed, std=1 / math.sqrt(model.embed_dim))
        if model.cls_token is not None:
            nn.init.zeros_(model.cls_token)


def forward_macs(variant: str, *, attention: Mapping | None = None, img_size: int = 224, num_classes: int = 1000,
                 pool: str = "gap", rep_size: bool = False, in_chans: int = 3, **_: object) -> int:
    """Analytic multiply-accumulates of one forward pass of ``create_model`` with the same arguments (matrix products
    only: patch embedding, q/k/v/out projections, the two L x L products, MLP, gate, pre-logits, head; SOFT's
    attention by :func:`reluvit.soft.soft_attention_macs`). Training FLOPs = 6 x this per image."""
    size, patch = parse_variant(variant)
    attention = attention or {}
    d, grid = size.width, img_size // patch
    n = grid**2 + prefix_tokens(pool)
    if attention.get("activation") == "soft":
        from reluvit.soft import soft_attention_macs

        mixing = soft_attention_macs(grid, d, size.heads, prefix_tokens=prefix_tokens(pool),
                                     **(attention.get("soft") or {}))[0]
    else:
        mixing = 4 * n * d * d + 2 * n * n * d + attention.get("gate", False) * n * d * d
    per_block = mixing + 2 * n * d * size.mlp_dim
    embed = grid**2 * patch * patch * in_chans * d
    return embed + size.depth * per_block + rep_size * d * d + d * num_classes

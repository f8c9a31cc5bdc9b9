"""The big_vision ViT grid on timm: sizes, parameter counts and MACs against spec Sec. 3 and timm's own ViT,
variant parsing, pooling heads, initialisers and the attention wiring.

Paper-scale models are built on the meta device (shapes only, no memory, no init), so the whole file stays fast.
"""

from __future__ import annotations

import math
import re
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from reluvit import SIZES, PointwiseAttention, create_model
from reluvit.attention import ATTENTIONS
from reluvit.errors import ArgumentError
from reluvit.models import forward_macs
from reluvit.variants import Size, parse_variant

BIG_VISION = {  # width, depth, mlp_dim, heads: spec Sec. 3 ("Table 2 of arXiv 2106.04560")
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}

# spec Sec. 3 "Size/cost at 224 px": params (M) i21k (gap, 21843 classes), i1k (tok + rep, 1000 classes), GMACs
SPEC_TABLE = {
    "S/32": (30.9, 23.0, 1.13),
    "S/16": (30.1, 22.2, 4.58),
    "S/8": (30.1, 22.2, 22.4),
    "B/32": (104.3, 88.8, 4.34),
    "B/16": (102.6, 87.2, 17.5),
    "L/16": (325.7, 305.4, 61.3),
}
I21K = {"pool": "gap", "num_classes": 21843}
I1K = {"pool": "tok", "rep_size": True, "num_classes": 1000}


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def analytic_params(width, depth, mlp, heads, *, patch, img=224, in_chans=3, num_classes, pool="gap",
                    rep_size=False, qk_norm=False, gate=False) -> int:
    """Parameter count of big_vision's ViT written out by hand (posemb over the patches only: it is added before the
    class token is prepended)."""
    per_block = (
        2 * width  # LN
        + 3 * width * width + 3 * width  # q, k, v with bias
        + width * width + width  # out projection
        + 2 * width  # LN
        + width * mlp + mlp + mlp * width + width  # MLP
        + (2 * (width // heads) if qk_norm else 0)  # query_ln / key_ln scales
        + (width * width + width if gate else 0)
    )
    return (
        patch * patch * in_chans * width + width  # patch embedding conv
        + (img // patch) ** 2 * width  # posemb
        + (width if pool == "tok" else 0)  # class token
        + depth * per_block
        + 2 * width  # encoder_norm
        + (width * width + width if rep_size else 0)
        + width * num_classes + num_classes
    )


# ---------------------------------------------------------------------------------------------------------------
# sizes and parameter counts


def test_sizes_are_big_vision():
    for name, (width, depth, mlp, heads) in BIG_VISION.items():
        assert SIZES[name] == Size(width, depth, mlp, heads), name


@pytest.mark.parametrize("patch", [8, 14, 16, 32])
@pytest.mark.parametrize("size", list(BIG_VISION))
def test_every_size_builds(size, patch):
    width, depth, mlp, heads = BIG_VISION[size]
    model = create_model(f"{size}/{patch}", attention=dict(activation="relu", qk_norm=True), num_classes=21843,
                         device="meta")
    assert model.embed_dim == width and len(model.blocks) == depth
    assert model.patch_embed.proj.kernel_size == (patch, patch) and model.patch_embed.proj.stride == (patch, patch)
    assert model.patch_embed.num_patches == (224 // patch) ** 2
    assert model.pos_embed.shape == (1, (224 // patch) ** 2, width)
    assert model.head.weight.shape == (21843, width)
    assert abs(model.norm.eps - 1e-6) < 1e-12
    for block in model.blocks:
        assert block.attn.num_heads == heads and block.attn.head_dim == width // heads
        assert block.mlp.fc1.out_features == mlp and block.mlp.fc2.out_features == width
        assert block.attn.qkv.bias is not None and abs(block.norm1.eps - 1e-6) < 1e-12
    assert n_params(model) == analytic_params(width, depth, mlp, heads, patch=patch, num_classes=21843,
                                              qk_norm=True)


@pytest.mark.parametrize("variant", ["Ti/16", "Ti/32"])
def test_small_real_model_forward(variant):
    torch.manual_seed(0)
    model = create_model(variant, attention=dict(activation="relu"), num_classes=7, pool="tok", rep_size=True).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 7) and torch.isfinite(y).all()
    width, depth, mlp, heads = BIG_VISION["Ti"]
    assert n_params(model) == analytic_params(width, depth, mlp, heads, patch=int(variant.split("/")[1]),
                                              num_classes=7, pool="tok", rep_size=True, qk_norm=True)


def test_mlp_uses_tanh_gelu():
    model = create_model("mini/4", img_size=28, in_chans=1, num_classes=10)
    s = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(model.blocks[0].mlp.act(s), F.gelu(s, approximate="tanh"))


@pytest.mark.parametrize("variant", list(SPEC_TABLE))
def test_param_counts_match_spec_table(variant):
    i21k, i1k, _ = SPEC_TABLE[variant]
    m21 = create_model(variant, attention=dict(activation="relu", qk_norm=False), device="meta", **I21K)
    m1 = create_model(variant, attention=dict(activation="relu", qk_norm=False), device="meta", **I1K)
    assert abs(n_params(m21) / 1e6 - i21k) <= 0.05
    assert abs(n_params(m1) / 1e6 - i1k) <= 0.05


@pytest.mark.parametrize("variant,timm_name", [("S/16", "vit_small_patch16_224"), ("B/16", "vit_base_patch16_224"),
                                               ("S/32", "vit_small_patch32_224"), ("L/16", "vit_large_patch16_224")])
def test_param_count_matches_timm_vit(variant, timm_name):
    """Same architecture as timm's ViT, except for one thing: big_vision adds the posemb before prepending the class
    token, so there is no posemb row for it (timm: ``no_embed_class=True``). With that flag the two models have the
    same parameters name for name; the stock timm model has exactly one extra posemb row (``width`` parameters)."""
    ours = create_model(variant, attention=dict(activation="softmax", qk_norm=False), pool="tok", num_classes=1000,
                        device="meta")
    same = timm.create_model(timm_name, pretrained=False, no_embed_class=True, device="meta")
    stock = timm.create_model(timm_name, pretrained=False, device="meta")
    assert n_params(ours) == n_params(same)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in same.state_dict().items()}
    assert n_params(stock) - n_params(ours) == ours.embed_dim
    assert stock.pos_embed.shape[1] == ours.pos_embed.shape[1] + 1


def test_qk_norm_and_gate_parameters():
    base = create_model("S/16", attention=dict(qk_norm=False), device="meta", **I21K)
    qk = create_model("S/16", attention=dict(qk_norm=True), device="meta", **I21K)
    gated = create_model("S/16", attention=dict(qk_norm=False, gate=True), device="meta", **I21K)
    assert n_params(qk) - n_params(base) == 12 * 2 * 64  # one head_dim scale for q and one for k per block
    assert n_params(gated) - n_params(base) == 12 * (384 * 384 + 384)


# ---------------------------------------------------------------------------------------------------------------
# MACs


@pytest.mark.parametrize("variant", list(SPEC_TABLE))
def test_forward_macs_match_spec_table(variant):
    gmacs = SPEC_TABLE[variant][2]
    macs = forward_macs(variant, img_size=224, num_classes=21843, pool="gap")
    assert abs(macs / 1e9 - gmacs) / gmacs <= 0.01


@pytest.mark.parametrize("variant,percent", [("S/32", 7.7), ("S/16", 7.6), ("S/8", 6.2), ("B/16", 7.9),
                                             ("L/16", 8.1)])
def test_gate_mac_overhead_matches_spec(variant, percent):
    base = forward_macs(variant, img_size=224, num_classes=21843)
    gated = forward_macs(variant, img_size=224, num_classes=21843, attention=dict(gate=True))
    assert abs(100 * (gated / base - 1) - percent) <= 0.06


@pytest.mark.parametrize(
    "variant,options",
    [
        ("mini/4", {}),
        ("mini/4", {"pool": "tok"}),
        ("mini/4", {"pool": "tok", "rep_size": True}),
        ("mini/4", {"attention": {"gate": True}}),
        ("mini/7", {"pool": "tok", "rep_size": True, "attention": {"gate": True}}),
        ("mini/2", {}),
    ],
    ids=str,
)
@pytest.mark.parametrize("activation", ["relu", "relu2"])
def test_forward_macs_match_flop_counter(variant, options, activation):
    """An independent count: torch's FlopCounterMode over a real forward (the point-wise path is explicit matmuls,
    which the counter sees; FLOPs = 2 x MACs). forward_macs takes create_model's arguments."""
    torch.manual_seed(0)
    options = {**options, "attention": {"activation": activation, **options.get("attention", {})},
               "img_size": 28, "in_chans": 1, "num_classes": 10}
    model = create_model(variant, **options).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    counted = counter.get_total_flops() / 2
    macs = forward_macs(variant, **options)
    assert counted > 0
    assert abs(macs - counted) / counted <= 0.01
    assert macs == counted  # both count exactly the matrix products (conv, linear, the two L x L products)


# ---------------------------------------------------------------------------------------------------------------
# variant parsing


@pytest.mark.parametrize("variant,size,patch", [("S/16", "S", 16), ("B/32", "B", 32), ("S/4", "S", 4),
                                                ("mini/2", "mini", 2), ("H/14", "H", 14), ("Ti/8", "Ti", 8)])
def test_parse_variant(variant, size, patch):
    assert parse_variant(variant) == (SIZES[size], patch)


def test_create_model_accepts_small_patches():
    s4 = create_model("S/4", device="meta")
    assert s4.patch_embed.num_patches == 56 * 56 and s4.embed_dim == 384
    mini = create_model("mini/2", img_size=28, in_chans=1, num_classes=10)
    assert mini.patch_embed.num_patches == 14 * 14 and mini.embed_dim == SIZES["mini"].width
    with torch.no_grad():
        assert mini(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("variant", ["X/16", "S16", "S/0", "S/", "/16", "s/16", "S/16/2", "S/-4", " S/16", ""])
def test_bad_variant_raises(variant):
    message = rf"^variant: {re.escape(repr(variant))} is not '<size>/<patch>'"
    for build in (parse_variant, partial(create_model, device="meta"),
                  partial(forward_macs, img_size=224, num_classes=10)):
        with pytest.raises(ArgumentError, match=message) as error:
            build(variant)
        assert error.value.name == "variant"


@pytest.mark.parametrize("variant,img_size", [("S/16", 100), ("S/32", 200), ("mini/3", 28)])
def test_patch_must_divide_img_size(variant, img_size):
    patch = variant.split("/")[1]
    with pytest.raises(ArgumentError, match=f"^variant: patch size {patch} does not divide img_size {img_size}$") as e:
        create_model(variant, img_size=img_size, device="meta")
    assert e.value.name == "variant"


def test_bad_pool_raises():
    with pytest.raises(ArgumentError, match="^pool: 'cls' is not one of: gap, tok$") as e:
        create_model("mini/4", img_size=28, pool="cls")
    assert e.value.name == "pool" and isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "attention,name,message",
    [
        ({"activation": "tanh"}, "attention.activation", f"'tanh' is not one of: {', '.join(ATTENTIONS)}"),
        ({"alpha": -1.0}, "attention.alpha", "-1.0 is not a finite real >= 0"),
        ({"activation": "softmax", "alpha": float("nan")}, "attention.alpha", "nan is not a finite real >= 0"),
        ({"gate": True, "gate_activation": "tanh"}, "attention.gate_activation", "'tanh' is not one of: none, "),
        ({"seq_len": "tokens"}, "attention.seq_len", "'tokens' is not one of: keys, patches"),
        ({"learn_alpha": "layer", "alpha": 0}, "attention.alpha", "a learned alpha starts > 0"),
        ({"activation": "soft", "gate": True}, "attention.gate", "SOFT attention has no gate"),
        ({"activation": "soft", "impl": "fused"}, "attention.impl", "SOFT has no fused kernel"),
        ({"activation": "soft", "soft": {"sr": 0}}, "attention.soft.sr", "0 is not an integer >= 1"),
        ({"activation": "soft", "soft": {"local_kernel": 4}}, "attention.soft.local_kernel", "4 is not odd"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_bad_attention_options_raise_through_create_model(attention, name, message):
    """create_model names the refused option by its place in its arguments: ``attention.<key>``."""
    with pytest.raises(ArgumentError, match=f"^{re.escape(name)}: {re.escape(message)}") as error:
        create_model("mini/4", img_size=28, attention=attention)
    assert error.value.name == name and isinstance(error.value, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# pooling heads and initialisers


def test_gap_has_no_class_token_tok_has_one():
    gap = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="gap")
    tok = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="tok")
    assert gap.cls_token is None and gap.num_prefix_tokens == 0 and gap.global_pool == "avg"
    assert tok.cls_token is not None and tok.cls_token.shape == (1, 1, 96)
    assert tok.num_prefix_tokens == 1 and tok.global_pool == "token"
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert gap.forward_features(x).shape == (2, 49, 96)
        assert tok.forward_features(x).shape == (2, 50, 96)


@pytest.fixture(scope="module")
def s16():
    """A real S/16 (i1k recipe: class token, pre-logits, head bias -6.9) with the gate on."""
    torch.manual_seed(0)
    return create_model("S/16", attention=dict(activation="relu", gate=True), pool="tok", rep_size=True,
                        num_classes=1000, head_bias_init=-6.9)


def test_head_zero_kernel_and_constant_bias(s16):
    assert torch.count_nonzero(s16.head.weight) == 0
    assert torch.equal(s16.head.bias, torch.full((1000,), -6.9))
    gap = create_model("mini/4", img_size=28, num_classes=10, head_bias_init=-10.0)
    assert torch.count_nonzero(gap.head.weight) == 0 and torch.equal(gap.head.bias, torch.full((10,), -10.0))
    default = create_model("mini/4", img_size=28, num_classes=10)
    assert torch.count_nonzero(default.head.bias) == 0


def test_posemb_and_class_token_init(s16):
    assert s16.pos_embed.shape == (1, 196, 384)
    std = s16.pos_embed.std().item()
    assert abs(std - 1 / math.sqrt(384)) <= 0.1 / math.sqrt(384)
    assert abs(s16.pos_embed.mean().item()) < 0.1 / math.sqrt(384)
    assert torch.count_nonzero(s16.cls_token) == 0


def test_qkv_blocks_are_each_xavier_uniform(s16):
    width = 384
    bound = math.sqrt(6 / (2 * width))
    for i, block in enumerate(s16.blocks):
        w = block.attn.qkv.weight
        assert w.shape == (3 * width, width)
        for name, chunk in zip("qkv", w.split(width), strict=True):
            peak = chunk.abs().max().item()
            assert 0.9 * bound < peak <= bound, (i, name, peak, bound)
            assert abs(chunk.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # uniform(-b, b): std b/sqrt(3)
        assert torch.count_nonzero(block.attn.qkv.bias) == 0


def test_other_initialisers(s16):
    width, mlp = 384, 1536
    square = math.sqrt(6 / (2 * width))
    for block in s16.blocks:
        for linear in (block.attn.proj, block.attn.gate):
            assert 0.9 * square < linear.weight.abs().max().item() <= square
            assert torch.count_nonzero(linear.bias) == 0
        for linear in (block.mlp.fc1, block.mlp.fc2):
            bound = math.sqrt(6 / (width + mlp))
            assert 0.9 * bound < linear.weight.abs().max().item() <= bound
            assert 0 < linear.bias.abs().max().item() < 1e-5  # N(0, 1e-6)
        assert torch.equal(block.attn.q_norm.weight, torch.ones(64)) and block.attn.q_norm.bias is None
    patch = s16.patch_embed.proj
    fan_in = 3 * 16 * 16
    assert abs(patch.weight.std().item() * math.sqrt(fan_in) - 1) < 0.1  # lecun normal
    assert torch.count_nonzero(patch.bias) == 0
    pre = s16.fc_norm[0]
    assert abs(pre.weight.std().item() * math.sqrt(width) - 1) < 0.1
    assert torch.count_nonzero(pre.bias) == 0


def test_init_is_seeded():
    torch.manual_seed(1)
    a = create_model("mini/4", img_size=28, num_classes=10)
    torch.manual_seed(1)
    b = create_model("mini/4", img_size=28, num_classes=10)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


# ---------------------------------------------------------------------------------------------------------------
# pre-logits


def test_rep_size_pre_logits_are_tanh_of_dense():
    torch.manual_seed(0)
    model = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="tok", rep_size=True).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(4, 1, 28, 28))
        pre = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    width = SIZES["mini"].width
    assert pre.shape == (4, width)
    assert pre.abs().max() < 1.0 and pre.abs().max() > 0.1
    dense = model.fc_norm[0]
    torch.testing.assert_close(pre, torch.tanh(F.linear(features[:, 0], dense.weight, dense.bias)))
    torch.testing.assert_close(logits, F.linear(pre, model.head.weight, model.head.bias))


def test_without_rep_size_pre_logits_are_pooled_tokens():
    torch.manual_seed(0)
    gap = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="gap").eval()
    tok = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="tok").eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        f_gap, f_tok = gap.forward_features(x), tok.forward_features(x)
        torch.testing.assert_close(gap.forward_head(f_gap, pre_logits=True), f_gap.mean(1))
        torch.testing.assert_close(tok.forward_head(f_tok, pre_logits=True), f_tok[:, 0])


def test_rep_size_respects_device_and_dtype():
    model = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="tok", rep_size=True,
                         dtype=torch.float64)
    assert model.fc_norm[0].weight.dtype == torch.float64
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28, dtype=torch.float64))
    meta = create_model("S/16", pool="tok", rep_size=True, device="meta")
    assert meta.fc_norm[0].weight.device.type == "meta"


# ---------------------------------------------------------------------------------------------------------------
# attention wiring


@pytest.mark.parametrize(
    "attention,alpha,extra",
    [
        ("relu", 1.0, {}),
        ("softmax", 1.0, {}),
        ("relu2", 0.5, {"qk_norm": False}),
        ("sigmoid", 2.0, {"gate": True, "gate_activation": "silu"}),
        ("gelu", 0.0, {"gelu_approximate": "tanh"}),
        ("identity", 1.5, {"pool": "tok", "seq_len": "patches"}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_block_uses_the_requested_attention(attention, alpha, extra):
    pool = {"pool": extra["pool"]} if "pool" in extra else {}  # a create_model argument, the rest attention's
    options = {key: value for key, value in extra.items() if key != "pool"}
    model = create_model("S/16", attention=dict(activation=attention, alpha=alpha, **options), device="meta", **pool)
    num_prefix = 1 if extra.get("pool") == "tok" else 0
    for block in model.blocks:
        attn = block.attn
        assert isinstance(attn, PointwiseAttention)
        assert attn.activation == attention and attn.alpha == alpha
        assert attn.num_prefix_tokens == num_prefix
        assert attn.seq_len == extra.get("seq_len", "keys")
        assert attn.gelu_approximate == extra.get("gelu_approximate", "none")
        assert (attn.gate is not None) == extra.get("gate", False)
        assert attn.gate_activation == extra.get("gate_activation", "none")
        qk_norm = extra.get("qk_norm", True)  # create_model's default: qk-layernorm on
        assert isinstance(attn.q_norm, torch.nn.LayerNorm) == qk_norm
        assert isinstance(attn.k_norm, torch.nn.LayerNorm) == qk_norm
    assert len({type(block.attn) for block in model.blocks}) == 1


def test_seq_len_patches_in_a_real_model():
    """With the class token and seq_len='patches', L is the number of patches (49 here), not of keys (50)."""
    model = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, pool="tok",
                         attention=dict(activation="relu", alpha=1.0, seq_len="patches"))
    attn = model.blocks[0].attn
    assert attn.length_factor(50) == pytest.approx(1 / 49)
    keys = create_model("mini/4", img_size=28, in_chans=1, num_classes=10, attention=dict(activation="relu", alpha=1.0),
                        pool="tok")
    assert keys.blocks[0].attn.length_factor(50) == pytest.approx(1 / 50)

"""The attention family against timm's stock ``Attention`` and an independent float64 numpy reference.

The reference below implements arXiv 2309.08586 Sec. 3 (spec Sec. 1) from the formulas alone, without calling any
reluvit code: per head ``s_ij = q_i . k_j / sqrt(d)``, ``a_ij = L^-alpha h(s_ij)`` (no normalisation over j) or
``softmax_j(s_ij)``, ``o_i = sum_j a_ij v_j``; optional flax ``normalize_qk`` (LayerNorm over head_dim, one learnable
scale shared by the heads, no bias, eps 1e-6) and an optional GAU-style gate ``g(x W_g^T + b_g)`` multiplied into
the concatenated heads before the output projection.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.special import erf, expit
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import VisionTransformer

from reluvit.attention import PointwiseAttention, attention_layer
from reluvit.errors import ArgumentError

POINTWISE_NAMES = ["relu", "relu2", "gelu", "softplus", "identity", "relu6", "sigmoid"]
# (activation, gelu_approximate): every point-wise h, the tanh form of gelu, and softmax.
ACTIVATION_CASES = [(h, "none") for h in POINTWISE_NAMES] + [("gelu", "tanh"), ("softmax", "none")]
ACTIVATION_IDS = [a if g == "none" else f"{a}-{g}" for a, g in ACTIVATION_CASES]
ALPHAS = [0.0, 0.5, 1.0, 2.0]
GATES = [None, "none", "silu", "sigmoid"]  # None = no gate; otherwise gate=True with that gate_activation

B, N, DIM, HEADS = 2, 50, 96, 3
REL_TOL = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# float64 numpy reference (independent of reluvit)


def _h(name: str, s: np.ndarray, gelu_approximate: str = "none") -> np.ndarray:
    if name == "relu":
        return np.maximum(s, 0.0)
    if name == "relu2":
        return np.maximum(s, 0.0) ** 2
    if name == "gelu" and gelu_approximate == "none":
        return 0.5 * s * (1.0 + erf(s / math.sqrt(2.0)))
    if name == "gelu" and gelu_approximate == "tanh":
        return 0.5 * s * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (s + 0.044715 * s**3)))
    if name == "softplus":
        return np.logaddexp(0.0, s)
    if name == "identity":
        return s
    if name == "relu6":
        return np.clip(s, 0.0, 6.0)
    if name == "sigmoid":
        return expit(s)
    raise AssertionError(name)


def _gate_fn(name: str, z: np.ndarray) -> np.ndarray:
    return {"none": z, "silu": z * expit(z), "sigmoid": expit(z)}[name]


def _layer_norm(t: np.ndarray, scale: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    mu = t.mean(-1, keepdims=True)
    var = ((t - mu) ** 2).mean(-1, keepdims=True)
    return (t - mu) / np.sqrt(var + eps) * scale


def _qkv_heads(x: np.ndarray, p: dict, heads: int):
    b, n, c = x.shape
    d = c // heads
    qkv = x @ p["qkv_w"].T + p["qkv_b"]  # (b, n, 3c), rows of W: [q | k | v], each split into heads
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, n, heads, d).transpose(0, 2, 1, 3) for i in range(3))
    if p.get("q_scale") is not None:
        q = _layer_norm(q, p["q_scale"])
        k = _layer_norm(k, p["k_scale"])
    return q, k, v


def reference_logits(x: np.ndarray, p: dict, heads: int) -> np.ndarray:
    q, k, _ = _qkv_heads(x, p, heads)
    return q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])


def reference(
    x: np.ndarray,
    p: dict,
    *,
    heads: int,
    activation: str,
    alpha: float = 1.0,
    gelu_approximate: str = "none",
    gate_activation: str = "none",
    length: int | None = None,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Float64 forward of one attention layer. ``length`` is L (default: number of keys); ``keep`` a boolean mask
    broadcastable to (B, H, N, N) of the (query, key) pairs that contribute."""
    b, n, c = x.shape
    q, k, v = _qkv_heads(x, p, heads)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    if activation == "softmax":
        if keep is not None:
            s = np.where(keep, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        a = e / e.sum(-1, keepdims=True)
    else:
        length = n if length is None else length
        a = float(length) ** -alpha * _h(activation, s, gelu_approximate)
        if keep is not None:
            a = np.where(keep, a, 0.0)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
    if p.get("gate_w") is not None:
        o = _gate_fn(gate_activation, x @ p["gate_w"].T + p["gate_b"]) * o
    return o @ p["proj_w"].T + p["proj_b"]


# ---------------------------------------------------------------------------------------------------------------
# helpers


pytestmark = pytest.mark.usefixtures("one_thread")


def make_layer(dim=DIM, heads=HEADS, *, qk_norm=False, gate=None, seed=0, qk_std=None, **options):
    """A float32 layer with random weights (q/k projections large enough that the logits reach beyond +-6, random
    LayerNorm scales and gate weights) and the same weights as float64 numpy arrays."""
    gate_kw = {} if gate is None else {"gate": True, "gate_activation": gate}
    cls = attention_layer(**options, **gate_kw)
    layer = cls(dim, num_heads=heads, qkv_bias=True, qk_norm=qk_norm).eval()
    rng = np.random.default_rng(seed)
    d = dim // heads
    if qk_std is None:  # logit std ~ (q std)^2 * (k std)^2 ... aim for |s| up to ~10
        qk_std = 1.3 / math.sqrt(dim) if qk_norm else 2.0 / math.sqrt(dim)
    w = rng.normal(0.0, 1.0 / math.sqrt(dim), (3 * dim, dim))
    w[: 2 * dim] *= qk_std * math.sqrt(dim)
    p = {
        "qkv_w": w,
        "qkv_b": rng.normal(0.0, 0.1, 3 * dim),
        "proj_w": rng.normal(0.0, 1.0 / math.sqrt(dim), (dim, dim)),
        "proj_b": rng.normal(0.0, 0.1, dim),
    }
    if qk_norm:
        p["q_scale"] = rng.uniform(0.5, 2.0, d)
        p["k_scale"] = rng.uniform(0.5, 2.0, d)
    if gate is not None:
        p["gate_w"] = rng.normal(0.0, 1.5 / math.sqrt(dim), (dim, dim))
        p["gate_b"] = rng.normal(0.0, 0.5, dim)
    p = {key: value.astype(np.float32).astype(np.float64) for key, value in p.items()}  # exactly the float32 values
    with torch.no_grad():
        layer.qkv.weight.copy_(torch.from_numpy(p["qkv_w"]))
        layer.qkv.bias.copy_(torch.from_numpy(p["qkv_b"]))
        layer.proj.weight.copy_(torch.from_numpy(p["proj_w"]))
        layer.proj.bias.copy_(torch.from_numpy(p["proj_b"]))
        if qk_norm:
            assert layer.q_norm.bias is None and layer.k_norm.bias is None
            layer.q_norm.weight.copy_(torch.from_numpy(p["q_scale"]))
            layer.k_norm.weight.copy_(torch.from_numpy(p["k_scale"]))
        if gate is not None:
            layer.gate.weight.copy_(torch.from_numpy(p["gate_w"]))
            layer.gate.bias.copy_(torch.from_numpy(p["gate_b"]))
    return layer, p


def make_input(b=B, n=N, dim=DIM, seed=1) -> tuple[torch.Tensor, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(b, n, dim)).astype(np.float32)
    return torch.from_numpy(x), x.astype(np.float64)


def rel_err(out: torch.Tensor, ref: np.ndarray) -> float:
    diff = np.abs(out.detach().double().numpy() - ref).max()
    return float(diff / np.abs(ref).max())


def run(layer, x, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return layer(x, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# softmax member == timm's stock Attention


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qknorm"])
@pytest.mark.parametrize("shape", [(2, 50, 96, 3), (1, 17, 64, 4), (3, 65, 128, 2)], ids=str)
@pytest.mark.parametrize("fused", [True, False], ids=["timm-fused", "timm-manual"])
def test_softmax_matches_timm_attention(qk_norm, shape, fused):
    b, n, dim, heads = shape
    torch.manual_seed(0)
    ours = attention_layer(activation="softmax")(dim, num_heads=heads, qkv_bias=True, qk_norm=qk_norm).eval()
    if qk_norm:
        with torch.no_grad():
            ours.q_norm.weight.uniform_(0.5, 2.0)
            ours.k_norm.weight.uniform_(0.5, 2.0)
    ln = functools.partial(torch.nn.LayerNorm, eps=1e-6, bias=False)
    stock = TimmAttention(dim, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=ln).eval()
    stock.load_state_dict(ours.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(stock.state_dict())
    stock.fused_attn = fused
    x = torch.randn(b, n, dim)
    torch.testing.assert_close(run(ours, x), run(stock, x), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# the whole family against the float64 reference


def test_reference_inputs_exercise_the_nonlinearities():
    """The random weights make logits beyond +-6 (relu6's clip, sigmoid's saturation, relu's zero side all
    matter), with and without qk-LayerNorm."""
    _, x = make_input()
    for qk_norm in (False, True):
        _, p = make_layer(qk_norm=qk_norm)
        s = reference_logits(x, p, HEADS)
        assert s.max() > 6.0 and s.min() < -6.0, (qk_norm, s.min(), s.max())
        assert 0.2 < (s > 0).mean() < 0.8


@pytest.mark.parametrize("gate", GATES, ids=lambda g: "nogate" if g is None else f"gate-{g}")
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qknorm"])
@pytest.mark.parametrize("alpha", ALPHAS, ids=lambda a: f"alpha{a}")
@pytest.mark.parametrize("activation,gelu_approximate", ACTIVATION_CASES, ids=ACTIVATION_IDS)
def test_matches_float64_reference(activation, gelu_approximate, alpha, qk_norm, gate):
    layer, p = make_layer(qk_norm=qk_norm, gate=gate, activation=activation, alpha=alpha,
                          gelu_approximate=gelu_approximate)
    xt, x = make_input()
    ref = reference(x, p, heads=HEADS, activation=activation, alpha=alpha, gelu_approximate=gelu_approximate,
                    gate_activation=gate or "none")
    out = run(layer, xt)
    assert out.dtype == torch.float32 and out.shape == (B, N, DIM)
    assert rel_err(out, ref) <= REL_TOL


@pytest.mark.parametrize("activation,gelu_approximate", ACTIVATION_CASES, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", [(1, 17, 64, 4), (3, 9, 48, 1)], ids=str)
def test_matches_float64_reference_other_shapes(activation, gelu_approximate, shape):
    b, n, dim, heads = shape
    layer, p = make_layer(dim, heads, qk_norm=True, gate="silu", activation=activation, alpha=1.0,
                          gelu_approximate=gelu_approximate)
    xt, x = make_input(b, n, dim)
    ref = reference(x, p, heads=heads, activation=activation, alpha=1.0, gelu_approximate=gelu_approximate,
                    gate_activation="silu")
    assert rel_err(run(layer, xt), ref) <= REL_TOL


def test_gelu_exact_and_tanh_differ():
    """The two gelu forms are really different functions here (so the two reference checks are not the same)."""
    xt, _ = make_input()
    exact, _ = make_layer(activation="gelu", gelu_approximate="none")
    tanh, _ = make_layer(activation="gelu", gelu_approximate="tanh")
    assert not torch.allclose(run(exact, xt), run(tanh, xt), atol=1e-6, rtol=0)


def test_default_is_relu_with_alpha_one():
    layer, p = make_layer()
    xt, x = make_input()
    assert layer.activation == "relu" and layer.alpha == 1.0
    assert rel_err(run(layer, xt), reference(x, p, heads=HEADS, activation="relu", alpha=1.0)) <= REL_TOL


# ---------------------------------------------------------------------------------------------------------------
# what L counts


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("activation", ["relu", "relu2", "sigmoid"])
def test_seq_len_patches_excludes_prefix_tokens(activation, alpha):
    xt, x = make_input()
    patches, p = make_layer(activation=activation, alpha=alpha, seq_len="patches", num_prefix_tokens=1)
    keys, p_keys = make_layer(activation=activation, alpha=alpha, seq_len="keys", num_prefix_tokens=1)
    ref_patches = reference(x, p, heads=HEADS, activation=activation, alpha=alpha, length=N - 1)
    ref_keys = reference(x, p_keys, heads=HEADS, activation=activation, alpha=alpha, length=N)
    out_patches, out_keys = run(patches, xt), run(keys, xt)
    assert rel_err(out_patches, ref_patches) <= REL_TOL
    assert rel_err(out_keys, ref_keys) <= REL_TOL
    # and the two really differ (only by the L^-alpha factor on the attention term)
    assert rel_err(out_patches, ref_keys) > 1e-3
    assert patches.length_factor(N) == pytest.approx((N - 1) ** -alpha)
    assert keys.length_factor(N) == pytest.approx(N**-alpha)


def test_seq_len_patches_without_prefix_tokens_is_keys():
    xt, x = make_input()
    layer, p = make_layer(activation="relu", alpha=1.0, seq_len="patches", num_prefix_tokens=0)
    assert rel_err(run(layer, xt), reference(x, p, heads=HEADS, activation="relu", length=N)) <= REL_TOL


# ---------------------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("activation,gelu_approximate", ACTIVATION_CASES, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("qk_norm,gate", [(False, None), (True, "silu"), (True, "sigmoid")],
                         ids=["plain", "qknorm-silu", "qknorm-sigmoid"])
def test_gradients_finite(activation, gelu_approximate, qk_norm, gate):
    torch.manual_seed(0)
    gate_kw = {} if gate is None else {"gate": True, "gate_activation": gate}
    layer = attention_layer(activation=activation, alpha=1.0, gelu_approximate=gelu_approximate, **gate_kw)(
        DIM, num_heads=HEADS, qkv_bias=True, qk_norm=qk_norm
    ).train()
    x = torch.randn(B, N, DIM, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    params = dict(layer.named_parameters())
    assert ("gate.weight" in params) == (gate is not None)
    assert ("q_norm.weight" in params) == qk_norm
    for name, param in params.items():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------------------
# option validation


@pytest.mark.parametrize(
    "options,key",
    [
        ({"activation": "tanh"}, "activation"),
        ({"activation": "Softmax"}, "activation"),
        ({"alpha": -0.5}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"gate": True, "gate_activation": "tanh"}, "gate_activation"),
        ({"gate_activation": "gelu"}, "gate_activation"),
        ({"gelu_approximate": "erf"}, "gelu_approximate"),
        ({"seq_len": "tokens"}, "seq_len"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v[k]}" for k in v),
)
def test_bad_options_raise_value_error_naming_the_key(options, key):
    pattern = rf"^{key}: "  # 'activation' must not be satisfied by 'gate_activation'
    for build in (attention_layer, functools.partial(PointwiseAttention, DIM, HEADS)):
        with pytest.raises(ArgumentError, match=pattern) as error:
            build(**options)
        assert error.value.name == key and isinstance(error.value, ValueError)


def test_dim_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="num_heads"):
        PointwiseAttention(100, num_heads=3)


# ---------------------------------------------------------------------------------------------------------------
# masks


def _random_keep(seed=3) -> np.ndarray:
    keep = np.random.default_rng(seed).random((N, N)) < 0.5
    np.fill_diagonal(keep, True)  # every query keeps at least one key (softmax would give NaN otherwise)
    return keep


MASK_CASES = [(a, m) for a in POINTWISE_NAMES + ["softmax"] for m in ("2d", "4d-per-batch", "causal", "2d+causal")
              if not (a == "softmax" and m == "2d+causal")]  # SDPA rejects attn_mask together with is_causal


@pytest.mark.parametrize("activation,mask_kind", MASK_CASES)
def test_boolean_mask_zeroes_masked_weights(activation, mask_kind):
    layer, p = make_layer(qk_norm=True, activation=activation, alpha=1.0)
    xt, x = make_input()
    causal = np.tril(np.ones((N, N), dtype=bool))
    kwargs = {}
    if mask_kind == "2d":
        keep = _random_keep()
        kwargs["attn_mask"] = torch.from_numpy(keep)
    elif mask_kind == "4d-per-batch":
        keep = np.stack([_random_keep(3), _random_keep(4)])[:, None]  # (B, 1, N, N)
        kwargs["attn_mask"] = torch.from_numpy(keep)
    elif mask_kind == "causal":
        keep = causal
        kwargs["is_causal"] = True
    else:
        keep = _random_keep() & causal
        kwargs["attn_mask"] = torch.from_numpy(_random_keep())
        kwargs["is_causal"] = True
    out = run(layer, xt, **kwargs)
    ref = reference(x, p, heads=HEADS, activation=activation, alpha=1.0, keep=keep)
    assert rel_err(out, ref) <= REL_TOL
    unmasked = reference(x, p, heads=HEADS, activation=activation, alpha=1.0)
    assert rel_err(out, unmasked) > 1e-3  # the mask changed something


def test_masked_keys_do_not_influence_output():
    """Changing the value/key inputs of a masked-out token leaves the queries that cannot see it unchanged."""
    layer, _ = make_layer(activation="relu2", alpha=0.5)
    xt, _ = make_input()
    out = run(layer, xt, is_causal=True)
    x2 = xt.clone()
    x2[:, -1] += 10.0  # the last token is visible to no earlier query
    out2 = run(layer, x2, is_causal=True)
    torch.testing.assert_close(out[:, :-1], out2[:, :-1], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, -1], out2[:, -1])


def test_pointwise_rejects_additive_float_mask():
    layer, _ = make_layer(activation="relu")
    xt, _ = make_input()
    with pytest.raises(TypeError, match="boolean"):
        run(layer, xt, attn_mask=torch.zeros(N, N))


# ---------------------------------------------------------------------------------------------------------------
# timm integration


@pytest.mark.parametrize("activation", ["softmax", "relu", "relu2"])
def test_attention_layer_is_a_class_timm_accepts(activation):
    cls = attention_layer(activation=activation, alpha=0.5, gate=True, gate_activation="silu")
    assert isinstance(cls, type) and issubclass(cls, PointwiseAttention) and cls is not PointwiseAttention
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=48, depth=2,
                              num_heads=3, qkv_bias=True, qk_norm=True, attn_layer=cls).eval()
    assert len(model.blocks) == 2
    for block in model.blocks:
        attn = block.attn
        assert type(attn) is cls
        assert attn.activation == activation and attn.alpha == 0.5
        assert attn.gate is not None and attn.gate_activation == "silu"
        assert attn.num_heads == 3 and attn.head_dim == 16
        assert isinstance(attn.q_norm, torch.nn.LayerNorm) and attn.q_norm.bias is None  # qk_norm passed through
    with torch.no_grad():
        y = model(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 5) and torch.isfinite(y).all()


def test_attention_layer_classes_are_independent():
    relu = attention_layer(activation="relu", alpha=1.0)
    sig = attention_layer(activation="sigmoid", alpha=2.0)
    a, b = relu(DIM, num_heads=HEADS), sig(DIM, num_heads=HEADS)
    assert (a.activation, a.alpha, b.activation, b.alpha) == ("relu", 1.0, "sigmoid", 2.0)


def test_model_with_attention_layers_pickles():
    """DDP spawn and submitit pickle modules: the classes made by attention_layer must survive it."""
    import pickle

    from reluvit import create_model

    model = create_model("mini/4", attention=dict(activation="relu2", alpha=0.5, gate=True), img_size=28, in_chans=1,
                         num_classes=10)
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert clone.blocks[0].attn.options == model.blocks[0].attn.options

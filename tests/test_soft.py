"""SOFT (reluvit.soft) against references computed independently: torch.linalg.pinv for the Newton-Raphson inverse,
the Gaussian kernel from explicit pairwise differences, the Nystrom formula with an exact (pseudo-)inverse,
gradcheck for the analytic backward, and the paper's table for SOFT-Tiny."""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from reluvit import soft
from reluvit.attention import attention_layer
from reluvit.errors import ArgumentError
from reluvit.models import create_model, forward_macs
from reluvit.soft import SoftAttention, newton_pinv

pytestmark = pytest.mark.usefixtures("one_thread")


def kernel(points: torch.Tensor) -> torch.Tensor:
    """exp(-||x_i - x_j||^2 / 2) from explicit differences (not reluvit's ||a||^2 + ||b||^2 - 2ab form)."""
    return torch.exp(-0.5 * (points[..., :, None, :] - points[..., None, :, :]).square().sum(-1))


def cross_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * (a[..., :, None, :] - b[..., None, :, :]).square().sum(-1))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


# --- the Newton-Raphson pseudo-inverse -------------------------------------------------------------------------------
# Measured after the default 20 iterations (relative max error against torch.linalg.pinv):
#   well conditioned (cond ~1-10):            float64 ~4e-15, float32 ~4e-7
#   ill conditioned (cond ~300):              float64 ~5e-6,  float32 ~1e-6
#   singular, duplicated landmarks (cond 1e15): float64 ~6e-10, float32 ~1e-7 (the Moore-Penrose inverse)
# 20 steps from a_0 = 1.8 / max_rowsum^2 resolve eigenvalues down to about lambda_max / 1400; below that NR acts as
# a spectral cut-off (cond ~2000 with a smooth spectrum: 40 steps are needed, checked below).


def landmarks(n: int, spread: float, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * spread


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["single", "batched"])
def test_newton_pinv_well_conditioned(dtype, tol, batch):
    k = kernel(landmarks(49, 0.3).expand(*batch, 49, 32) + 0.05 * torch.randn(*batch, 49, 32, dtype=torch.float64))
    cond = torch.linalg.cond(k)
    assert (cond > 3).all() and (cond < 30).all()
    assert rel_err(newton_pinv(k.to(dtype)), torch.linalg.pinv(k)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_newton_pinv_ill_conditioned(dtype, tol):
    k = kernel(landmarks(49, 0.15))
    assert 100 < torch.linalg.cond(k) < 1000
    assert rel_err(newton_pinv(k.to(dtype)), torch.linalg.pinv(k)) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_newton_pinv_singular_is_moore_penrose(dtype, tol):
    """Identical landmarks (flat image regions) make K2 exactly singular: NR gives its Moore-Penrose inverse."""
    x = landmarks(25, 0.6)
    k = kernel(torch.cat([x, x[:24]]))
    assert torch.linalg.matrix_rank(k) == 25
    v = newton_pinv(k.to(dtype))
    assert rel_err(v, torch.linalg.pinv(k, hermitian=True)) < tol
    assert rel_err(k @ v.double() @ k, k) < tol  # Penrose: K V K = K


def test_newton_pinv_needs_more_steps_below_its_cutoff():
    k = kernel(landmarks(49, 0.1))
    assert torch.linalg.cond(k) > 1000
    assert rel_err(newton_pinv(k, 20), torch.linalg.pinv(k)) > 0.1
    assert rel_err(newton_pinv(k, 40), torch.linalg.pinv(k)) < 1e-8


def test_newton_pinv_ridge():
    k = kernel(landmarks(49, 0.3))
    assert rel_err(newton_pinv(k, ridge=0.01), torch.linalg.inv(k + 0.01 * torch.eye(49, dtype=k.dtype))) < 1e-12


def test_newton_pinv_runs_in_float32_under_autocast():
    k = kernel(landmarks(16, 0.3)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = newton_pinv(k.bfloat16())
    assert v.dtype == torch.float32


def test_gradcheck_newton_pinv():
    """The analytic backward, -V^T G V^T, against finite differences of the (converged) forward, float64."""
    k = kernel(landmarks(6, 0.5)).requires_grad_()
    assert torch.autograd.gradcheck(newton_pinv, (k,))
    assert torch.autograd.gradcheck(lambda m: newton_pinv(m, ridge=0.01), (k,))


@pytest.mark.parametrize("sym_norm", [False, True], ids=["plain", "symnorm"])
def test_gradcheck_soft_attention_layer(sym_norm):
    torch.manual_seed(0)
    layer = SoftAttention(8, num_heads=2, qkv_bias=True, qk_norm=True, sr=2, sym_norm=sym_norm,
                          dtype=torch.float64)
    x = torch.randn(1, 16, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# --- the attention layer ------------------------------------------------------------------------------------------


def make_layer(num_heads: int = 2, **options) -> SoftAttention:
    torch.manual_seed(0)
    layer = SoftAttention(64, num_heads=num_heads, qkv_bias=True, **options).eval()
    with torch.no_grad():  # queries about as spread as qk-LayerNorm makes them
        layer.q.weight.normal_(0, 1 / 8)
    return layer


def queries_values(layer: SoftAttention, x: torch.Tensor):
    b, n, _ = x.shape
    q = layer.q(x).reshape(b, n, layer.num_heads, -1).transpose(1, 2).double()
    v = layer.v(x).reshape(b, n, layer.num_heads, -1).transpose(1, 2).double()
    return layer.q_norm(q.float()).double() * layer.head_dim**-0.25, v


def output(layer: SoftAttention, o: torch.Tensor) -> torch.Tensor:
    b, _, n, _ = o.shape
    return layer.proj.double()(o.transpose(1, 2).reshape(b, n, -1)).float()


@pytest.mark.parametrize("prefix", [0, 1], ids=["gap", "cls"])
@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qknorm"])
def test_sr1_is_full_gaussian_kernel_attention(qk_norm, prefix):
    """With the tokens as landmarks, K1 pinv(K2) K1^T V = S V, S the full Gaussian kernel, to float tolerance."""
    layer = make_layer(8, sr=1, local_kernel=0, ridge=0.0, qk_norm=qk_norm, num_prefix_tokens=prefix)
    x = torch.randn(2, 49 + prefix, 64)
    with torch.no_grad():
        out = layer(x)
        q, v = queries_values(layer, x)
        full = output(layer, kernel(q) @ v)
    assert rel_err(out, full) < 2e-5
    assert kernel(q).sum(-1).mean() > 1.5  # the kernel is not the identity: off-diagonal weights matter


@pytest.mark.parametrize("sym_norm", [False, True], ids=["plain", "symnorm"])
@pytest.mark.parametrize("side,prefix", [(14, 0), (7, 0), (14, 1)], ids=["14x14", "7x7-padded", "14x14-cls"])
def test_landmark_nystrom_matches_exact_inverse(side, prefix, sym_norm):
    """sr = 2: K1 pinv(K2) K1^T V with SOFT's landmarks, against an exact inverse, plus the depthwise local term
    as one grouped convolution per channel (the head's kernel repeated over its channels)."""
    layer = make_layer(sr=2, local_kernel=3, sym_norm=sym_norm, num_prefix_tokens=prefix)
    x = torch.randn(2, side * side + prefix, 64)
    with torch.no_grad():
        out = layer(x)
        q, v = queries_values(layer, x)
        lm = layer.landmarks.double()(q[:, :, prefix:], side, side)
        assert lm.shape[2] == math.ceil(side / 2) ** 2
        k1, k2 = cross_kernel(q, lm), kernel(lm)
        if sym_norm:
            d = k2.sum(-1).rsqrt()
            inverse = d[..., :, None] * torch.linalg.pinv(k2, hermitian=True) * d[..., None, :]
        else:
            inverse = torch.linalg.inv(k2 + 0.01 * torch.eye(k2.shape[-1], dtype=k2.dtype))
        glob = k1 @ inverse @ k1.mT @ v
        heads, dh = v.shape[1], v.shape[-1]
        grid = v[:, :, prefix:].transpose(-1, -2).reshape(2, heads * dh, side, side)
        weight = layer.local.weight.double().repeat_interleave(dh, 0)  # (heads * dh, 1, 3, 3)
        local = F.conv2d(grid, weight, padding=1, groups=heads * dh).reshape(2, heads, dh, -1).transpose(-1, -2)
        ref = output(layer, glob + F.pad(local, (0, 0, prefix, 0)))
    assert rel_err(out, ref) < 1e-4


def test_bf16_autocast_forward_and_backward():
    layer = make_layer(sr=2).train()
    x = torch.randn(2, 196, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.landmarks.conv.weight.grad).all()


@pytest.mark.parametrize("options,name,message", [
    ({"sr": 0}, "sr", "0 is not an integer >= 1"),
    ({"sr": 1.5}, "sr", "1.5 is not an integer >= 1"),
    ({"newton_iters": -1}, "newton_iters", "-1 is not an integer >= 0"),
    ({"local_kernel": 4}, "local_kernel", "4 is not odd"),
    ({"gate": True}, "gate", "SOFT attention has no gate"),
    ({"impl": "fused"}, "impl", "SOFT has no fused kernel"),
])
def test_bad_options(options, name, message):
    with pytest.raises(ArgumentError, match=f"^{name}: {re.escape(message)}") as error:
        SoftAttention(64, 2, **options)
    assert error.value.name == name and isinstance(error.value, ValueError)


def test_attention_layer_builds_soft_with_its_options():
    """attention_layer(activation="soft", soft=...) binds SOFT's options (and the grid's shared ones) to a
    SoftAttention subclass; refused options are named by their place in its arguments (``soft.<key>``)."""
    cls = attention_layer(activation="soft", soft=dict(sr=4, newton_iters=5, local_kernel=0, sym_norm=True),
                          num_prefix_tokens=1)
    assert isinstance(cls, type) and issubclass(cls, SoftAttention) and cls is not SoftAttention
    layer = cls(64, num_heads=2, qkv_bias=True)
    assert (layer.sr, layer.newton_iters, layer.local, layer.sym_norm) == (4, 5, None, True)
    assert layer.num_prefix_tokens == 1
    for options, name in [({"soft": {"sr": 0}}, "soft.sr"), ({"soft": {"local_kernel": 2}}, "soft.local_kernel"),
                          ({"gate": True}, "gate"), ({"impl": "fused"}, "impl")]:
        with pytest.raises(ArgumentError, match=f"^{re.escape(name)}: ") as error:
            attention_layer(activation="soft", **options)
        assert error.value.name == name


def test_masks_and_non_square_grids_are_refused():
    layer = make_layer()
    with pytest.raises(NotImplementedError, match="mask"):
        layer(torch.randn(1, 16, 64), is_causal=True)
    with pytest.raises(ValueError, match="square"):
        layer(torch.randn(1, 15, 64))


# --- in the ViT grid ------------------------------------------------------------------------------------------------


def test_vit_with_soft_attention_and_its_macs():
    """create_model(attention={"activation": "soft", ...}) has SOFT in every block, and forward_macs (same arguments)
    counts what FlopCounterMode counts."""
    from torch.utils.flop_counter import FlopCounterMode

    attention = dict(activation="soft", soft=dict(sr=2, newton_iters=20, local_kernel=3, sym_norm=False))
    model = create_model("micro/2", attention=attention, img_size=28, in_chans=1, num_classes=10).eval()
    assert sum(isinstance(m, SoftAttention) for m in model.modules()) == 2
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 1, 28, 28))
    macs = forward_macs("micro/2", attention=attention, img_size=28, num_classes=10, in_chans=1)
    assert counter.get_total_flops() / 2 == pytest.approx(macs, rel=0.01)


# --- SOFT's own models ------------------------------------------------------------------------------------------------


def test_soft_models_are_registered_with_timm():
    assert set(soft.SOFT_MODELS) <= set(timm.list_models("soft_*"))
    model = timm.create_model("soft_tiny", num_classes=7, img_size=64)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.sum().backward()
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("soft_tiny", pretrained=True)


def test_soft_tiny_matches_the_papers_table():
    params, flops = soft.PAPER_TABLE["soft_tiny"][:2]
    measured = soft.profile("soft_tiny")
    assert measured["params_m"] == pytest.approx(params, rel=0.03)
    assert measured["gmacs_as_paper"] == pytest.approx(flops, rel=0.03)
    assert measured["gmacs"] > measured["gmacs_as_paper"]

"""The fused point-wise attention kernel against the float64 reference, forward and backward.

On CPU the kernel runs in Triton's interpreter: the ``interpreted`` fixture sets ``TRITON_INTERPRET=1`` for the test
only, which is enough because :func:`reluvit.kernels.triton_pointwise.kernels` reads it per call (triton 3.9 reads
it when ``triton.jit`` wraps a function; see there). The interpreter runs the kernels' own code with the tiles of
``INTERPRETER_CONFIGS`` (64 queries x 32 keys), so the lengths below end mid-block on both sides and all but
L = 1 span several key blocks; it is slow (numpy per tile), so the long lengths run there once each, and in full
on CUDA only. What the interpreter cannot see, the GPU compilation, is checked by compiling each kernel for an
H100 without one.
"""

from __future__ import annotations

import pytest
import torch

from reluvit.attention import POINTWISE, PointwiseAttention
from reluvit.errors import ArgumentError
from reluvit.kernels import fused_pointwise_attention, reference_pointwise_attention, select_impl
from reluvit.models import create_model
from reluvit.run.train import attention_impl

triton = pytest.importorskip("triton")  # torch's CUDA wheels bring it; CPU-only installs test the reference path
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
LENGTHS = (1, 49, 50, 97, 197)
LONG_LENGTHS = (785, 1025)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (32, 64, 128)
# max |fused - reference| / max |reference|: float32 products are exact ("ieee"); 16-bit inputs round the weights
# to the input dtype before the second product, as FlashAttention does, and the result once more
TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the error on the scale of the result, whatever the magnitudes."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def interpreted(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def assert_matches_reference(device: str, length: int, dtype: torch.dtype, head_dim: int, activation: str = "relu",
                             batch: int = 1, heads: int = 2) -> None:
    """Output and gradients of q, k, v against autograd through the float64 reference on the same (rounded)
    inputs, with L^-1 as the length factor."""
    generator = torch.Generator().manual_seed(length * head_dim)
    q, k, v, grad = (torch.randn(batch, heads, length, head_dim, generator=generator).to(device, dtype)
                     for _ in range(4))
    inputs = [t.requires_grad_() for t in (q, k, v)]
    out = fused_pointwise_attention(*inputs, activation=activation, length_factor=1 / length)
    out.backward(grad)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = reference_pointwise_attention(*exact, POINTWISE[activation], scale=head_dim**-0.5, length_factor=1 / length)
    want.backward(grad.double())
    assert out.dtype == dtype and out.shape == want.shape
    for name, got, ref in [("out", out, want), *zip(("dq", "dk", "dv"), [t.grad for t in inputs],
                                                     [t.grad for t in exact], strict=True)]:
        error = relative_error(got, ref)
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.2e} ({dtype}, L={length}, d={head_dim})"


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_relu_matches_reference_interpreted(interpreted, length, dtype, head_dim):
    assert_matches_reference("cpu", length, dtype, head_dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", (50, 197))
def test_relu2_matches_reference_interpreted(interpreted, length, dtype):
    assert_matches_reference("cpu", length, dtype, 64, activation="relu2")


@pytest.mark.slow
@pytest.mark.parametrize(("length", "dtype"), [(785, torch.float32), (1025, torch.bfloat16)], ids=str)
def test_long_sequence_interpreted(interpreted, length, dtype):
    """The long lengths once each (785: the /8 models' 784 patches + class token), many blocks on both sides."""
    assert_matches_reference("cpu", length, dtype, 64, heads=1)


@CUDA
@pytest.mark.parametrize("activation", ("relu", "relu2"))
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS + LONG_LENGTHS)
def test_matches_reference_cuda(length, dtype, head_dim, activation):
    assert_matches_reference("cuda", length, dtype, head_dim, activation, batch=2, heads=3)


@pytest.mark.parametrize(("activation", "head_dim"), [("relu", 64), ("relu2", 80)])
def test_kernels_compile_for_hopper(activation, head_dim):
    """What the interpreter cannot check: each kernel, at its first GPU config, compiles for an H100 (sm_90) down
    to machine code (triton's bundled ptxas) within the shared memory; no GPU needed."""
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from reluvit.kernels import triton_pointwise

    pointers, floats = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"}, {"scale", "length_factor"}
    for name, fn in [("forward", triton_pointwise._forward), ("dk_dv", triton_pointwise._backward_dk_dv),
                     ("dq", triton_pointwise._backward_dq)]:
        config = triton_pointwise.GPU_CONFIGS[name][0]
        constants = {"ACTIVATION": activation, "HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
                     "DOT_PRECISION": None, **config.kwargs}
        params = list(inspect.signature(fn).parameters)
        signature = {p: "*bf16" if p in pointers else "fp32" if p in floats else "constexpr" if p in constants
                     else "i32" for p in params}
        kernel = triton.compile(ASTSource(triton.jit(fn), signature, {(params.index(k),): v
                                                                      for k, v in constants.items()}),
                                target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": config.num_warps, "num_stages": config.num_stages})
        assert kernel.asm["cubin"] and kernel.metadata.shared <= 227 * 1024, name


def _layers(activation: str = "relu", **options) -> tuple[PointwiseAttention, PointwiseAttention]:
    """The same attention layer (same weights) with impl fused and reference."""
    torch.manual_seed(0)
    fused = PointwiseAttention(96, num_heads=3, qkv_bias=True, qk_norm=True, activation=activation, impl="fused",
                               **options)
    reference = PointwiseAttention(96, num_heads=3, qkv_bias=True, qk_norm=True, activation=activation,
                                   impl="reference", **options)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("options", [{}, {"learn_alpha": "head", "alpha": 0.5}, {"gate": True}], ids=str)
def test_layer_fused_equals_reference(interpreted, options):
    """The layer's q, k, v are strided views of one qkv projection; gradients reach every weight, including a
    learned per-head alpha (multiplied outside the kernel)."""
    fused, reference = _layers(**options)
    x = torch.randn(2, 50, 96)
    outs = []
    for layer in (fused, reference):
        out = layer(x)
        out.square().sum().backward()
        outs.append(out)
    assert (fused.last_impl, reference.last_impl) == ("fused", "reference")
    assert relative_error(outs[0], outs[1]) < 1e-6
    for (name, p), q in zip(fused.named_parameters(), reference.parameters(), strict=True):
        assert relative_error(p.grad, q.grad) < 1e-6, name


def test_fused_under_autocast_takes_the_autocast_dtype(interpreted):
    """Under bf16 autocast the layer's v comes out of a Linear in bf16 and q, k out of LayerNorm in float32."""
    fused, reference = _layers()
    x = torch.randn(1, 49, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = fused(x), reference(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.02)


def test_auto_is_reference_on_cpu_and_fused_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = PointwiseAttention(64, num_heads=2, activation="relu")
    layer(torch.randn(1, 5, 64))
    assert layer.last_impl == "reference" and attention_impl(layer) == "reference"
    fused, _ = _layers()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused(torch.randn(1, 5, 96))


@pytest.mark.parametrize(("impl", "kwargs", "expected"), [
    ("auto", {"activation": "relu", "device": torch.device("cuda")}, "fused"),
    ("auto", {"activation": "relu2", "device": torch.device("cpu")}, "reference"),
    ("auto", {"activation": "gelu", "device": torch.device("cuda")}, "reference"),
    ("auto", {"activation": "relu", "device": torch.device("cuda"), "masked": True}, "reference"),
    ("auto", {"activation": "relu", "device": torch.device("cuda"), "dropout": True}, "reference"),
    ("reference", {"activation": "relu", "device": torch.device("cuda")}, "reference"),
    ("fused", {"activation": "relu", "device": torch.device("cuda")}, "fused"),
])
def test_select_impl(monkeypatch, impl, kwargs, expected):
    monkeypatch.setattr("reluvit.kernels.fused.find_spec", lambda name: object())  # as if triton were installed
    assert select_impl(impl, **kwargs) == expected


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"activation": "gelu", "device": torch.device("cuda")}, "no fused kernel"),
    ({"activation": "relu", "device": torch.device("cuda"), "masked": True}, "no attention mask"),
    ({"activation": "relu", "device": torch.device("cuda"), "dropout": True}, "no attention dropout"),
])
def test_forced_fused_says_why_it_cannot_run(kwargs, match):
    with pytest.raises(RuntimeError, match=match):
        select_impl("fused", **kwargs)


def test_impl_is_checked_where_it_is_set():
    with pytest.raises(ArgumentError, match="^impl: 'fused' has kernels for relu, relu2 .* not 'gelu'") as error:
        PointwiseAttention(64, num_heads=2, activation="gelu", impl="fused")
    assert error.value.name == "impl"
    with pytest.raises(ArgumentError, match="^impl: 'flash' is not one of: auto, ") as error:
        PointwiseAttention(64, num_heads=2, impl="flash")
    assert error.value.name == "impl"
    with pytest.raises(ArgumentError, match="^attention.impl: 'fused' has kernels for relu, relu2") as error:
        create_model("mini/4", img_size=28, attention=dict(activation="gelu", impl="fused"))
    assert error.value.name == "attention.impl"
    softmax = PointwiseAttention(64, num_heads=2, activation="softmax", impl="fused")  # softmax runs SDPA anyway
    assert attention_impl(softmax) == "sdpa"


def test_impl_is_checked_in_the_config(tiny_cfg):
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    with pytest.raises(ConfigError, match="attention.impl: 'fused' has kernels for relu, relu2"):
        validate(tiny_cfg("attention=gelu", "attention.impl=fused"))


def test_fig1_shows_measured_core_hours_and_analytic_flops(tmp_path, monkeypatch):
    """Fair compute accounting: core hours measure the kernels that ran, FLOPs do not; fig1 draws both rows."""
    import pandas as pd

    from reluvit.report import plots

    runs = pd.DataFrame([{"recipe": "smoke", "model": model, "variant": variant, "activation": activation,
                          "alpha": 1.0, "qk_norm": True, "gate": False, "status": "completed", "val_acc": acc,
                          "core_hours": hours, "train_flops": flops}
                         for model, variant, flops in [("mini4", "mini/4", 1e13), ("mini2", "mini/2", 4e13)]
                         for activation, acc, hours in [("softmax", 0.8, 0.01), ("relu", 0.79, 0.02)]])
    figure = plots.fig1(runs, models=["mini4", "mini2"], recipe="smoke", metrics={"accuracy": "val_acc"})
    axes = figure.axes
    assert [ax.get_xlabel() for ax in axes] == ["core hours", "training FLOPs"]
    relu_flops = [line for line in axes[1].lines if line.get_label() == "relu/L"][0].get_xdata()
    assert list(relu_flops) == [1e13, 4e13]
    assert "all 4 points present" in figure.texts[-1].get_text()  # each point counted once

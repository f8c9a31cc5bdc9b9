"""Memory planning (reluvit.run.memory): the analytic peak of a training step against the measured peak of small
models on CPU, the chunked point-wise reference path against the unchunked one, and the plan of
``trainer.micro_batch_size=auto`` / ``trainer.grad_checkpointing=auto``."""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from reluvit.attention import POINTWISE
from reluvit.kernels import reference
from reluvit.kernels.reference import query_chunk_rows, reference_pointwise_attention
from reluvit.models import create_model
from reluvit.run import memory
from reluvit.run.build import micro_batch_size
from reluvit.run.memory import MIN_USEFUL_MICRO_BATCH, SAVED_BY_H, Precision, TrainingStep, plan
from reluvit.run.schema import ConfigError
from reluvit.run.validate import precisions

pytestmark = pytest.mark.usefixtures("one_thread")


class PeakMemory(TorchDispatchMode):
    """The bytes of tensor storages alive while in the mode (those made by its ops and those given), and their peak:
    deterministic, unlike the process's resident memory."""

    def __init__(self, *tensors) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._alive: set[int] = set()
        self._track(tensors)

    def _track(self, tensors) -> None:
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in self._alive:
                storage = t.untyped_storage()
                self._alive.add(storage._cdata)
                self.live += storage.nbytes()
                weakref.finalize(storage, self._free, storage._cdata, storage.nbytes())
        self.peak = max(self.peak, self.live)

    def _free(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._track(out)
        return out


def measured_peak(architecture: dict, batch: int, grad_checkpointing: bool, precision: str) -> int:
    """Peak bytes of a training step as ViTClassifier and Lightning run it with gradient accumulation: two
    micro-batches of forward (sigmoid cross-entropy on one-hot targets) and backward, then AdamW (foreach, as on
    CUDA). Measured on the second step, when AdamW's states exist."""
    torch.manual_seed(0)
    model = create_model(**architecture)
    model.set_grad_checkpointing(grad_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    classes, side = architecture["num_classes"], architecture["img_size"]

    def step():
        images, labels = torch.randn(batch, 3, side, side), torch.randint(0, classes, (batch,))
        for _ in range(2):
            targets = F.one_hot(labels, classes).to(images.dtype)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                logits = model(images)
            F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").sum(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    step()
    with PeakMemory(list(model.parameters()), optimizer.state_dict()["state"]) as tracker:
        step()
    return tracker.peak


def architecture(attention: dict, pool: str = "gap", rep_size: bool = False) -> dict:
    """micro/4 at 64 px: 256 tokens, so that the attention weights weigh as much as the rest of a block."""
    return dict(variant="micro/4", img_size=64, num_classes=10, pool=pool, rep_size=rep_size, attention=attention)


SOFTMAX, RELU, GATED = {"activation": "softmax"}, {"activation": "relu"}, {"activation": "relu", "gate": True}


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("batch", [2, 8])
@pytest.mark.parametrize("attention", [SOFTMAX, RELU, GATED], ids=["softmax", "relu", "relu-gated"])
def test_estimate_within_25_percent_of_measured_peak(attention, batch, checkpointing):
    arch = architecture(attention)
    estimate = TrainingStep.of(arch, "32-true", "cpu").memory(batch, checkpointing).peak
    assert estimate == pytest.approx(measured_peak(arch, batch, checkpointing, "32-true"), rel=0.25)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
def test_estimate_under_autocast(checkpointing):
    """CPU autocast casts matmul inputs as CUDA's does (its LayerNorm keeps 16-bit inputs: the model knows)."""
    arch = architecture(RELU)
    estimate = TrainingStep.of(arch, "bf16-mixed", "cpu").memory(8, checkpointing).peak
    assert estimate == pytest.approx(measured_peak(arch, 8, checkpointing, "bf16-mixed"), rel=0.25)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize(("attention", "pool"), [
    ({"activation": "gelu", "qk_norm": False}, "gap"),
    ({"activation": "relu2", "learn_alpha": "head"}, "gap"),
    ({"activation": "identity", "learn_alpha": "layer"}, "tok"),
    ({"activation": "softplus", "gate": True, "gate_activation": "silu"}, "tok"),
    ({"activation": "sigmoid_attn"}, "gap"),
    ({"activation": "soft"}, "gap"),
    (SOFTMAX, "tok"),
], ids=["gelu-no-qk-norm", "relu2-alpha-per-head", "identity-alpha", "softplus-silu-gate", "sigmoid_attn", "soft",
        "softmax-tok"])
def test_estimate_of_every_path_and_precision(attention, pool, checkpointing, precision):
    arch = architecture(attention, pool, rep_size=pool == "tok")
    estimate = TrainingStep.of(arch, precision, "cpu").memory(8, checkpointing).peak
    assert estimate == pytest.approx(measured_peak(arch, 8, checkpointing, precision), rel=0.25)


@pytest.mark.parametrize("attention", [RELU, {"activation": "sigmoid_attn"}], ids=["relu", "sigmoid_attn"])
def test_estimate_of_chunked_reference_path(attention, monkeypatch):
    """Weights over the byte budget are chunked over queries: the model counts one chunk's weights, not all."""
    arch, batch = architecture(attention), 8
    whole = TrainingStep.of(arch, "32-true", "cpu").memory(batch).peak
    monkeypatch.setattr(reference, "MAX_WEIGHTS_BYTES", 1 << 20)  # 8 x 2 x 256^2 x 4 bytes: 8 chunks of 32 queries
    chunked = TrainingStep.of(arch, "32-true", "cpu").memory(batch).peak
    measured = measured_peak(arch, batch, False, "32-true")
    assert chunked == pytest.approx(measured, rel=0.25)
    assert chunked < 0.8 * whole


# --- the chunked reference path ----------------------------------------------------------------------------------


def explicit_attention(q, k, v, h, scale, length_factor, keep=None, dropped=None):
    """``length_factor * h(scale q k^T)``, masked and dropped (a fixed multiplier), times v: an einsum, whole."""
    weights = h(torch.einsum("...qd,...kd->...qk", q, k) * scale) * length_factor
    if keep is not None:
        weights = torch.where(keep, weights, torch.zeros((), dtype=weights.dtype))
    if dropped is not None:
        weights = weights * dropped
    return torch.einsum("...qk,...kd->...qd", weights, v)


def qkv(b=2, heads=3, n_q=10, n_k=7, d=4):
    torch.manual_seed(0)
    return [torch.randn(b, heads, n, d, dtype=torch.float64, requires_grad=True) for n in (n_q, n_k, n_k)]


def gradients(fn, tensors):
    out = fn(*tensors)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                tensors)
    return out, grads


@pytest.mark.parametrize("mask", ["none", "per-query", "keys-only", "2d"])
@pytest.mark.parametrize("activation", ["relu", "gelu", "identity"])
def test_chunked_equals_unchunked(activation, mask):
    q, k, v = qkv()
    keep = {"none": None, "per-query": torch.rand(2, 1, 10, 7) > 0.3, "keys-only": torch.rand(2, 1, 1, 7) > 0.3,
            "2d": torch.rand(10, 7) > 0.3}[mask]
    alpha = torch.tensor([[[0.5]], [[1.0]], [[2.0]]], dtype=torch.float64, requires_grad=True)  # learned, per head
    h = POINTWISE[activation]
    row_bytes = 2 * 3 * 7 * 8
    assert query_chunk_rows(6, 10, 7, 8, 3 * row_bytes) == 3  # 4 chunks: 3, 3, 3, 1 rows

    def chunked(q, k, v, alpha):
        return reference_pointwise_attention(q, k, v, h, scale=0.5, length_factor=alpha, keep=keep,
                                             max_weights_bytes=3 * row_bytes)

    def explicit(q, k, v, alpha):
        return explicit_attention(q, k, v, h, 0.5, alpha, keep)

    out, grads = gradients(chunked, [q, k, v, alpha])
    want, want_grads = gradients(explicit, [q, k, v, alpha])
    torch.testing.assert_close(out, want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)
    with torch.no_grad():  # inference: chunks without recomputation
        torch.testing.assert_close(chunked(q, k, v, alpha), want)


def test_chunked_dropout_recomputes_the_forward_mask():
    """Each chunk's backward reruns it under the forward's random state: the same mask, the matching gradients."""
    q, k, v = qkv()
    calls = []  # (weights, mask) of each chunk's forward, then of its recomputation

    def dropout(weights):
        mask = (torch.rand_like(weights) > 0.5).to(weights.dtype) * 2.0
        calls.append((weights.detach(), mask))
        return weights * mask

    def chunked(q, k, v):
        return reference_pointwise_attention(q, k, v, F.relu, scale=0.5, length_factor=0.1, dropout=dropout,
                                             max_weights_bytes=4 * 2 * 3 * 7 * 8)

    out, grads = gradients(chunked, [q, k, v])
    forward, recomputed = calls[:3], calls[3:]  # chunks of 4, 4 and 2 queries
    assert len(recomputed) == 3
    for weights, mask in recomputed:
        same_chunk = [m for w, m in forward if w.shape == weights.shape and torch.equal(w, weights)]
        assert len(same_chunk) == 1
        torch.testing.assert_close(mask, same_chunk[0])
    dropped = torch.cat([mask for _, mask in forward], dim=-2)
    want, want_grads = gradients(lambda q, k, v: explicit_attention(q, k, v, F.relu, 0.5, 0.1, dropped=dropped),
                                 [q, k, v])
    torch.testing.assert_close(out, want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_chunked_backward_holds_less_memory():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 512, 16, requires_grad=True) for _ in range(3))
    whole_bytes = 2 * 2 * 512 * 512 * 4  # 4 MiB of weights

    def peak(max_weights_bytes):
        with PeakMemory(q, k, v) as tracker:
            out = reference_pointwise_attention(q, k, v, F.relu, scale=0.25, length_factor=1 / 512,
                                                max_weights_bytes=max_weights_bytes)
            out.sum().backward()
        return tracker.peak

    unchunked, chunked = peak(whole_bytes), peak(whole_bytes // 16)
    assert unchunked > 2.5 * whole_bytes  # relu's output and the weights saved, and the weights' gradient
    assert chunked < unchunked / 4


# --- the plan ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s16():
    """S/16 at 224 px in bf16-mixed on a GPU, as the paper's runs."""
    return TrainingStep.of({"variant": "S/16", "attention": {"activation": "relu"}}, "bf16-mixed", "cuda")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def test_roomy_budget_keeps_the_per_device_batch(s16):
    chosen = plan(s16, 4096, budget_bytes=math.inf)
    assert (chosen.micro_batch_size, chosen.accumulate, chosen.grad_checkpointing) == (4096, 1, False)


@pytest.mark.parametrize("gb", [20, 40, 80])
def test_auto_picks_the_largest_divisor_that_fits(s16, gb):
    chosen = plan(s16, 4096, budget_bytes=gb * 1e9)
    micro = chosen.micro_batch_size
    assert not chosen.grad_checkpointing and micro >= MIN_USEFUL_MICRO_BATCH
    assert micro * chosen.accumulate == 4096
    assert chosen.estimate_bytes == s16.memory(micro).peak <= gb * 1e9
    larger = [d for d in divisors(4096) if d > micro]
    assert all(s16.memory(d).peak > gb * 1e9 for d in larger)


def test_auto_checkpoints_when_the_useful_micro_batch_does_not_fit(s16):
    budget = (s16.memory(MIN_USEFUL_MICRO_BATCH, True).peak + s16.memory(MIN_USEFUL_MICRO_BATCH).peak) / 2
    chosen = plan(s16, 4096, budget)
    assert chosen.grad_checkpointing and chosen.micro_batch_size >= MIN_USEFUL_MICRO_BATCH
    assert not plan(s16, 4096, budget, grad_checkpointing=False).grad_checkpointing
    assert plan(s16, 4096, budget, grad_checkpointing=False).micro_batch_size < MIN_USEFUL_MICRO_BATCH
    small = plan(s16, 16, budget)  # a per-device batch under the minimum is useful whole
    assert (small.micro_batch_size, small.grad_checkpointing) == (16, False)


def test_given_settings_are_kept(s16):
    assert plan(s16, 4096, 1e9, micro_batch_size=512).micro_batch_size == 512  # over budget: a warning only
    assert plan(s16, 4096, 1e9, micro_batch_size=512).grad_checkpointing  # auto: on, as 512 does not fit
    assert plan(s16, 4096, math.inf, micro_batch_size=None).micro_batch_size == 4096
    assert plan(s16, 4096, math.inf, grad_checkpointing=True).grad_checkpointing
    with pytest.raises(ConfigError, match="trainer.micro_batch_size: 48 does not divide the per-device batch 4096"):
        plan(s16, 4096, math.inf, micro_batch_size=48)


def test_what_cannot_fit_is_refused_naming_the_key():
    s8 = TrainingStep.of({"variant": "S/8", "img_size": 448, "attention": {"activation": "gelu"}}, "bf16-mixed")
    one_checkpointed = s8.memory(1, True).peak
    assert s8.memory(1).peak > one_checkpointed  # 3136 tokens: a block's activations outweigh the weights
    with pytest.raises(ConfigError, match=r"^trainer.micro_batch_size: auto: even a micro-batch of 1 needs"):
        plan(s8, 4096, one_checkpointed - 1)
    with pytest.raises(ConfigError, match=r"^trainer.grad_checkpointing: false, .* auto or true would checkpoint"):
        plan(s8, 4096, one_checkpointed, grad_checkpointing=False)
    assert plan(s8, 4096, one_checkpointed).micro_batch_size == 1


def test_the_unfused_path_is_chunked_at_paper_scale(monkeypatch):
    """gelu runs the reference path on CUDA (relu is fused): its 4096 x 6 x 196^2 weights (1.9 GB) are chunked, so
    no block saves them (unchunked: gelu's logits and the weights; chunked: float32 q and k instead)."""
    def gelu_s16():
        return TrainingStep.of({"variant": "S/16", "attention": {"activation": "gelu"}}, "bf16-mixed", "cuda")

    assert gelu_s16().vit.attention_path == "reference"
    chunked = gelu_s16().memory(4096).activations
    monkeypatch.setattr(reference, "MAX_WEIGHTS_BYTES", 1 << 40)
    whole = gelu_s16().memory(4096).activations
    assert whole - chunked > 12 * 4096 * 6 * 196**2 * 2


def test_every_rank_and_world_size_splits_the_global_batch_alike(tiny_cfg, monkeypatch):
    """The plan is computed, not communicated: the same config plans the same on every rank."""
    for world in (1, 2, 4):
        cfg = tiny_cfg(f"trainer.devices={world}")
        plans = []
        for rank in range(world):
            monkeypatch.setenv("LOCAL_RANK", str(rank))
            plans.append(micro_batch_size(cfg))
        assert len(set(plans)) == 1
        assert plans[0].micro_batch_size * plans[0].accumulate * world == cfg.recipe.batch_size
        budget = memory.device_budget("cpu", world)
        assert budget == memory.device_budget("cpu", 1) / world
        assert plans[0].budget_bytes == budget


def test_every_lightning_precision_and_activation_is_modelled():
    for name in precisions():
        if name != "auto":
            assert Precision.named(name).param in (2, 4, 8)
    assert set(SAVED_BY_H) == set(POINTWISE)


def test_a_run_trains_with_the_plan_it_records(tiny_cfg, monkeypatch):
    """On a small (injected) budget the run accumulates micro-batches, checkpoints if the plan says so, and its
    summary records the plan."""
    from reluvit.run.build import architecture
    from reluvit.run.train import run, setup

    cfg = tiny_cfg("trainer.max_steps=2")
    step = TrainingStep.of(architecture(cfg), "32-true", "cpu")
    budget = step.memory(16).peak  # 64 images per step: 16 fit without checkpointing, 32 do not
    monkeypatch.setattr(memory, "device_budget", lambda device, processes_per_host=1: budget)
    expected = plan(step, 64, budget)
    assert expected.micro_batch_size < 64
    module, *_, facts = setup(cfg, Path(cfg.run_dir))
    assert module.model.grad_checkpointing == expected.grad_checkpointing
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["examples_seen"] == 2 * 64
    for key, value in expected.facts().items():
        assert summary[key] == facts[key] == value

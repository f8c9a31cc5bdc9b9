"""Compiled training (``trainer.compile``): torch.compile of the ViT computes what the eager model computes, the
fused kernel's custom ops pass torch's op checks and trace without a graph break, and a compiled run trains,
records its warm-up and resumes across compiled and eager starts (the checkpoints are the same).

On CPU the fused kernel runs in Triton's interpreter (``interpreted``, as in tests/test_kernel.py), also inside
inductor's graphs. Compiling on 2 cores takes ~20 s per model and mode; those tests are marked slow, and the fast
ones trace with the ``aot_eager`` backend (Dynamo and AOT autograd, no code generation)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from reluvit.kernels import fused_pointwise_attention
from reluvit.models import create_model
from reluvit.run.build import resolve_compile
from reluvit.run.rundir import last_checkpoint, read_summary
from reluvit.run.train import run
from test_kernel import interpreted, relative_error  # noqa: F401  (interpreted: a fixture)

# (activation, attention impl): SDPA, the reference path, the fused kernel (in the interpreter on CPU)
MODELS = [("softmax", "auto"), ("relu", "reference"), ("relu2", "fused")]
TOLERANCE = 1e-4  # float32, relative to the largest value: inductor fuses and reorders the same operations


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: Dynamo's caches (at most 8 graphs per function, then eager) and counters
    are per process, and the tests compile the same model code."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def micro_model(activation: str, impl: str) -> torch.nn.Module:
    """A micro/4 ViT on 28 x 28 images (L = 49 patches) whose gradients all differ from zero (the head kernel
    starts at zero, which would leave only the head's own gradients)."""
    torch.manual_seed(0)
    model = create_model("micro/4", img_size=28, in_chans=1, num_classes=10,
                         attention=dict(activation=activation, impl=impl))
    torch.nn.init.normal_(model.head.weight, std=0.1)
    return model


def outputs_and_gradients(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(images)
    out.square().sum().backward()
    return {"out": out.detach(), **{name: p.grad.clone() for name, p in model.named_parameters()}}


def assert_compiled_equals_eager(activation: str, impl: str, **compile_options) -> None:
    model = micro_model(activation, impl)
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    eager = outputs_and_gradients(model, images)
    model.compile(fullgraph=True, dynamic=False, **compile_options)  # fullgraph: no graph break anywhere
    compiled = outputs_and_gradients(model, images)
    assert counters["stats"]["unique_graphs"] == 1  # it did compile (past Dynamo's limit it would run eagerly)
    for name, want in eager.items():
        assert relative_error(compiled[name], want) < TOLERANCE, name


@pytest.mark.slow
@pytest.mark.parametrize(("activation", "impl"), MODELS, ids=[m[0] for m in MODELS])
def test_compiled_model_equals_eager(monkeypatch, one_thread, activation, impl):
    """Inductor's code against the eager model, output and every parameter's gradient."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # for the fused kernel
    assert_compiled_equals_eager(activation, impl)


@pytest.mark.usefixtures("interpreted")
def test_model_with_the_fused_kernel_traces_whole():
    """The whole ViT with the fused kernel in one graph (fullgraph), through AOT autograd's forward and backward."""
    assert_compiled_equals_eager("relu2", "fused", backend="aot_eager")


def test_compiling_keeps_the_state_dict_keys():
    """In-place compilation: the checkpoints of compiled and eager runs are interchangeable."""
    model = micro_model("relu", "auto")
    keys = list(model.state_dict())
    model.compile()
    assert list(model.state_dict()) == keys and not any("_orig_mod" in key for key in keys)


def attention_loss(q, k, v, alpha):
    return fused_pointwise_attention(q, k, v, activation="relu", length_factor=alpha, scale=0.3).square().sum()


@pytest.mark.usefixtures("interpreted")
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_fused_attention_compiles_without_a_graph_break(backend):
    """fullgraph=True fails at any graph break; the result and the gradients of q, k, v and a learned length factor
    (a tensor, multiplied outside the kernel) match the eager call."""
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, 2, 33, 16, generator=generator).requires_grad_() for _ in range(3)]
    inputs.append(torch.tensor(0.2, requires_grad=True))
    results = []
    for fn in (attention_loss, torch.compile(attention_loss, fullgraph=True, backend=backend)):
        loss = fn(*inputs)
        results.append([loss.detach(), *torch.autograd.grad(loss, inputs)])
    for name, got, want in zip(("loss", "dq", "dk", "dv", "dalpha"), *results, strict=True):
        assert relative_error(got, want) < 1e-6, name


@pytest.mark.usefixtures("interpreted")
@pytest.mark.parametrize(("op", "activation"), [("fused_pointwise_attention", "relu"),
                                                ("fused_pointwise_attention_backward", "relu2")])
def test_custom_ops_pass_torch_checks(op, activation):
    """torch.library.opcheck: schema, fake (meta) function against the kernel, autograd registration, and AOT
    dispatch with dynamic shapes; lengths that end mid-tile on both sides."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 37, 16, generator=generator, requires_grad=op.endswith("attention")) for _ in "qkv")
    tensors = (q, k, v) if op.endswith("attention") else (torch.randn(2, 2, 37, 16, generator=generator), q, k, v)
    torch.library.opcheck(getattr(torch.ops.reluvit, op), (*tensors, activation, 0.25, 0.1))


@pytest.mark.parametrize(("overrides", "cuda", "expected"), [
    (["trainer.accelerator=cpu"], True, False),  # auto: compiled only where the run trains on CUDA
    (["trainer.accelerator=auto"], False, False),
    (["trainer.accelerator=auto"], True, True),
    (["trainer.accelerator=cpu", "trainer.compile=true"], False, True),
    (["trainer.accelerator=auto", "trainer.compile=false"], True, False),
])
def test_compile_auto_means_cuda(tiny_cfg, monkeypatch, overrides, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_compile(tiny_cfg(*overrides)) is expected


@pytest.mark.slow
def test_compiled_run_trains_records_its_warmup_and_resumes(tiny_cfg, monkeypatch):
    """An eager start that crashes in its second epoch, resumed compiled from its checkpoint to the end; the
    compiled start's checkpoint loads into an eager model as it is."""
    from reluvit.run.module import ViTClassifier

    def crash(self):
        if self.current_epoch == 1:
            raise RuntimeError("node lost")

    overrides = ["model=micro2", "eval=none", "recipe.epochs=2", "recipe.batch_size=128"]  # 11 steps per epoch
    monkeypatch.setattr(ViTClassifier, "on_train_epoch_start", crash, raising=False)
    with pytest.raises(RuntimeError, match="node lost"):
        run(tiny_cfg(*overrides, "trainer.compile=false"))
    cfg = tiny_cfg(*overrides, "trainer.compile=true")
    eager = read_summary(cfg.run_dir)
    assert (eager["compile"], eager["global_step"]) == (False, 11) and eager["warmup_seconds"] > 0

    monkeypatch.undo()
    compiled = run(cfg)
    assert (compiled["status"], compiled["compile"], compiled["global_step"]) == ("completed", True, 22)
    assert compiled["examples_seen"] == 22 * 128
    assert compiled["warmup_seconds"] > eager["warmup_seconds"]  # the accounting continued: one more warm-up
    assert counters["stats"]["unique_graphs"] >= 1
    ViTClassifier.load_from_checkpoint(last_checkpoint(cfg.run_dir))  # an eager module: strict, the same keys

"""Training throughput: softmax vs relu attention per model, eager and compiled; and the harness (``ViTClassifier``
in a Lightning ``Trainer``, as ``reluvit.run.train`` runs it) vs a bare PyTorch loop vs timm's training step, on
the same model and data.

    python bench/train_step.py [--batch 128] [--models S/32,S/16] [--compile-models S/16] [--loops-mode compiled]
                               [--steps 30] [--harness-steps 60] [--rounds 3] [--out DIR]

A step is the harness's: forward (bf16 autocast on GPU, fp32 on CPU), sigmoid cross-entropy, backward, gradient
clipping at norm 1, AdamW with decoupled weight decay, warm-up/cosine schedule. Images/s are timed as the harness's
Chrono times them: step end to step end, the first 2 intervals (compilation, warm-up) left out.

- ``attention`` rows: the bare loop's images/s per model and attention: softmax (SDPA), relu (auto: fused on GPU,
  the reference path on CPU) and, on GPU, relu unfused (reference); eager, and compiled
  (``module.model.compile()``) for the ``--compile-models``. GPU: the grid's models at 224 px; CPU: the 28x28
  CPU-scale models, a few steps.
- ``loops`` rows: one model (``--loops-model``, softmax) in three loops, alternating for ``--rounds`` rounds (a busy
  machine slows all alike), eager or compiled (``--loops-mode``): the harness, the bare loop, and timm's training
  step. timm's ``train.py`` / ``benchmark.py`` are not in its pip package: with ``TIMM_SCRIPTS=<a
  pytorch-image-models checkout>`` its ``benchmark.py --bench train`` runs (``--torchcompile`` when compiled, timm's
  own model of that variant); otherwise a loop of timm's own training components stands in (labelled
  ``timm-style loop``): ``create_optimizer_v2``, ``BinaryCrossEntropy``, ``dispatch_clip_grad``,
  ``CosineLRScheduler.step_update`` and ``torch.compile(model)`` as ``train.py --torchcompile`` does.

Goals: relu (fused) >= softmax (SDPA) in images/s for S/16 and S/8; harness >= 0.97 x the bare loop; harness
>= timm's step. Writes ``results/bench/train_step-<device>.csv`` (``<out>/train_step.csv`` with ``--out``),
rewritten after every row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from benchlib import device_name, goal, show, synchronize, write_csv
from torch.utils.data import DataLoader, TensorDataset

from reluvit.run.compute import Chrono
from reluvit.run.module import ViTClassifier

GPU_MODELS = {"S/32": 224, "S/16": 224, "S/8": 224, "B/16": 224, "L/16": 224}  # variant -> image size
CPU_MODELS = {"micro/4": 28, "micro/2": 28, "mini/4": 28, "mini/2": 28}
TIMM_NAMES = {"S/32": "vit_small_patch32_224", "S/16": "vit_small_patch16_224", "S/8": "vit_small_patch8_224",
              "B/32": "vit_base_patch32_224", "B/16": "vit_base_patch16_224", "L/16": "vit_large_patch16_224"}
SKIP_FIRST = 2  # step intervals left out, as Chrono's default
SOFTMAX, RELU = "softmax (sdpa)", "relu (auto)"
HARNESS_GOAL = 0.97  # harness / bare loop
TIMM_GOAL = 1.0  # harness / timm's step
RELU_GOAL_MODELS = ("S/16", "S/8")  # relu (fused) >= softmax (SDPA) in images/s


def attentions(cuda: bool) -> dict[str, dict]:
    """label -> attention options of the model; relu with the paper's L^-1."""
    choices = {SOFTMAX: {"activation": "softmax"}, RELU: {"activation": "relu", "alpha": 1.0, "impl": "auto"}}
    if cuda:
        choices["relu (unfused)"] = {"activation": "relu", "alpha": 1.0, "impl": "reference"}
    return choices


def make_module(variant: str, img: int, in_chans: int, num_classes: int, attention: dict) -> ViTClassifier:
    torch.manual_seed(0)  # the same weights for every loop that trains this model
    return ViTClassifier(dict(variant=variant, attention=attention, img_size=img, in_chans=in_chans,
                              num_classes=num_classes), warmup_steps=5)


def make_loader(img: int, in_chans: int, num_classes: int, batch: int, steps: int) -> DataLoader:
    """One epoch of ``steps`` batches of random images (the same for every loop)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps * batch, in_chans, img, img, generator=generator)
    labels = torch.randint(num_classes, (steps * batch,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=True, drop_last=True,
                      generator=generator, pin_memory=torch.cuda.is_available())


def images_per_second(step_ends: list[float], batch: int) -> float:
    """Chrono's count: the intervals ending at step SKIP_FIRST and later."""
    return batch * (len(step_ends) - SKIP_FIRST) / (step_ends[-1] - step_ends[SKIP_FIRST - 1])


def compile_in_place(model: torch.nn.Module, backend: str | None) -> None:
    """``model.compile()`` (state-dict keys unchanged), from a clean Dynamo cache; None: stay eager."""
    if backend:
        torch._dynamo.reset()
        model.compile(backend=backend)


def harness_optimizer(module: ViTClassifier, steps: int) -> tuple:
    """The module's own optimizer and schedule (``configure_optimizers``) for ``steps`` optimizer steps."""
    module.trainer = SimpleNamespace(estimated_stepping_batches=steps)  # all configure_optimizers reads
    optimization = module.configure_optimizers()
    module.trainer = None
    return optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]


def harness_step(module: ViTClassifier, images: torch.Tensor, labels: torch.Tensor, optimizer) -> None:
    """The harness's training step by hand: autocast forward, its loss, backward, clipping, optimizer step."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=images.device.type == "cuda"):
        logits = module(images)
    loss = module.loss_fn(logits.float(), F.one_hot(labels, module.num_classes).to(images.dtype))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_loop(module: ViTClassifier, loader: DataLoader, device: torch.device, backend: str | None = None) -> float:
    """Images/s of a plain loop doing the harness's step (compiled with ``backend``, if given)."""
    optimizer, schedule = harness_optimizer(module, len(loader))
    module.to(device).train()
    compile_in_place(module.model, backend)
    step_ends = []
    for images, labels in loader:
        harness_step(module, images.to(device, non_blocking=True), labels.to(device, non_blocking=True), optimizer)
        schedule.step()
        synchronize(device)
        step_ends.append(time.perf_counter())
    return images_per_second(step_ends, loader.batch_size)


def harness_loop(module: ViTClassifier, loader: DataLoader, device: torch.device, backend: str | None = None) -> float:
    """Images/s of the Trainer configured as ``reluvit.run.train`` configures it (CSV logger, Chrono, clipping)."""
    chrono = Chrono(skip_first=SKIP_FIRST)
    compile_in_place(module.model, backend)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator=device.type, devices=1, precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_epochs=1, gradient_clip_val=1.0, gradient_clip_algorithm="norm", log_every_n_steps=10,
            logger=pl.loggers.CSVLogger(logs), callbacks=[chrono], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        )
        trainer.fit(module, train_dataloaders=loader)
    return loader.batch_size * (len(loader) - SKIP_FIRST) / chrono.train_seconds


def timm_style_loop(module: ViTClassifier, loader: DataLoader, device: torch.device,
                    backend: str | None = None) -> float:
    """Images/s of the step of timm's ``train.py`` (``train_one_epoch`` without its logging), built from timm's
    own components, on the module's model: ``torch.compile(model)`` as ``--torchcompile`` does."""
    from timm.loss import BinaryCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import dispatch_clip_grad

    model = module.model.to(device).train()
    hparams = module.hparams
    optimizer = create_optimizer_v2(model, opt="adamw", lr=hparams.lr, weight_decay=hparams.weight_decay,
                                    betas=tuple(hparams.betas), eps=hparams.eps)
    schedule = CosineLRScheduler(optimizer, t_initial=len(loader), warmup_t=hparams.warmup_steps, t_in_epochs=False)
    loss_fn = BinaryCrossEntropy(smoothing=0.0)
    if backend:
        torch._dynamo.reset()
        model = torch.compile(model, backend=backend)
    step_ends = []
    for step, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(images), labels)
        loss.backward()
        dispatch_clip_grad(model.parameters(), value=1.0, mode="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step_update(num_updates=step + 1)
        synchronize(device)
        step_ends.append(time.perf_counter())
    return images_per_second(step_ends, loader.batch_size)


def timm_benchmark(variant: str, img: int, batch: int, steps: int, compiled: bool) -> float | None:
    """Training images/s from timm's own ``benchmark.py --bench train`` (timm's model of ``variant``, bf16 AMP,
    AdamW), where ``TIMM_SCRIPTS`` names a pytorch-image-models checkout; None otherwise or if it fails."""
    script = Path(os.environ.get("TIMM_SCRIPTS", "")) / "benchmark.py"
    if not os.environ.get("TIMM_SCRIPTS") or not script.is_file() or variant not in TIMM_NAMES:
        return None
    command = [sys.executable, str(script), "--bench", "train", "--model", TIMM_NAMES[variant], "-b", str(batch),
               "--img-size", str(img), "--amp", "--amp-dtype", "bfloat16", "--opt", "adamw",
               "--num-warm-iter", str(SKIP_FIRST + 3), "--num-bench-iter", str(steps),
               *(["--torchcompile"] if compiled else [])]
    done = subprocess.run(command, capture_output=True, text=True)
    result = done.stdout.rpartition("--result")[2]
    try:
        return float(next(v for k, v in json.loads(result).items() if k.endswith("samples_per_sec")))
    except (ValueError, StopIteration):
        logging.warning("timm benchmark.py failed (exit %d), the timm-style loop stands in: %s", done.returncode,
                        (done.stderr or done.stdout).strip().splitlines()[-1:])
        return None


class Table:
    """Rows as they come, rewritten to the CSV after each, so that a run cut short keeps what it measured."""

    def __init__(self, device: str, out: Path | None) -> None:
        self.device, self.out, self.rows = device, out, []
        self.path: Path | None = None

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(row, flush=True)
        self.path = write_csv(pd.DataFrame(self.rows), "train_step", self.device, self.out)

    def frame(self, bench: str) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        return frame[frame["bench"] == bench] if len(frame) else frame


def attention_rows(table: Table, models: dict[str, int], args, device: torch.device, shape: tuple) -> None:
    """The bare loop per model, attention and mode (eager; compiled for the compile models)."""
    in_chans, num_classes = shape
    for variant, img in models.items():
        loader = make_loader(img, in_chans, num_classes, args.batch, args.steps)
        modes = {"eager": None, **({"compiled": args.compile_backend} if variant in args.compile_models else {})}
        for mode, backend in modes.items():
            for label, options in attentions(device.type == "cuda").items():
                module = make_module(variant, img, in_chans, num_classes, options)
                table.add({"bench": "attention", "model": variant, "img": img, "batch": args.batch,
                           "attention": label, "mode": mode, "backend": backend or "",
                           "img_per_s": bare_loop(module, loader, device, backend),
                           "attention_impl": module.model.blocks[0].attn.last_impl})


def loop_rows(table: Table, variant: str, img: int, args, device: torch.device, shape: tuple) -> None:
    """The harness, the bare loop and timm's step, alternating for ``args.rounds`` rounds."""
    in_chans, num_classes = shape
    loader = make_loader(img, in_chans, num_classes, args.batch, args.harness_steps)
    backend = args.compile_backend if args.loops_mode == "compiled" else None
    options = attentions(device.type == "cuda")[SOFTMAX]
    for round_ in range(args.rounds):
        speeds = {"bare": bare_loop(make_module(variant, img, in_chans, num_classes, options), loader, device, backend),
                  "harness": harness_loop(make_module(variant, img, in_chans, num_classes, options), loader, device,
                                          backend)}
        timm = timm_benchmark(variant, img, args.batch, args.harness_steps, backend is not None)
        timm_source = "timm benchmark.py" if timm is not None else "timm-style loop"
        if timm is None:
            timm = timm_style_loop(make_module(variant, img, in_chans, num_classes, options), loader, device, backend)
        table.add({"bench": "loops", "model": variant, "img": img, "batch": args.batch, "attention": SOFTMAX,
                   "mode": args.loops_mode, "backend": backend or "", "round": round_,
                   "bare_img_per_s": speeds["bare"], "harness_img_per_s": speeds["harness"], "timm_img_per_s": timm,
                   "timm_source": timm_source, "harness_vs_bare": speeds["harness"] / speeds["bare"],
                   "harness_vs_timm": speeds["harness"] / timm})


def relu_vs_softmax(attention: pd.DataFrame) -> pd.DataFrame:
    """Per (model, mode): relu's images/s over softmax's, and which kernel relu ran."""
    key = ["model", "mode"]
    softmax = attention[attention["attention"] == SOFTMAX].set_index(key)["img_per_s"]
    relu = attention[attention["attention"] == RELU].set_index(key)
    return pd.DataFrame({"ratio": relu["img_per_s"] / softmax.reindex(relu.index),
                         "impl": relu["attention_impl"]}).reset_index()


def goals(attention: pd.DataFrame, loops: pd.DataFrame) -> list[dict]:
    """relu (fused) vs softmax for the goal models in each mode measured; the harness vs the bare loop and timm."""
    rows = []
    ratios = relu_vs_softmax(attention) if len(attention) else pd.DataFrame(columns=["model", "mode", "ratio", "impl"])
    for model in RELU_GOAL_MODELS:
        fused = ratios[(ratios["model"] == model) & (ratios["impl"] == "fused")]
        name = f"relu (fused) >= softmax (SDPA) images/s, {model}"
        rows += [goal(f"{name} {r.mode}", r.ratio, 1.0) for r in fused.itertuples()] or [
            goal(name, None, 1.0, missing=f"no {model} row with relu fused (it needs a GPU)")]
    mode = f", {loops['mode'].iloc[0]}" if len(loops) else ""
    median = (lambda column: statistics.median(loops[column]) if len(loops) else None)  # noqa: E731
    timm = f"vs {loops['timm_source'].iloc[0]}" if len(loops) else ""
    rows.append(goal(f"harness >= {HARNESS_GOAL} x bare loop images/s{mode}", median("harness_vs_bare"),
                     HARNESS_GOAL, where="(median over rounds)"))
    rows.append(goal(f"harness >= timm's training step images/s{mode}", median("harness_vs_timm"), TIMM_GOAL,
                     where=f"({timm}, median over rounds)"))
    return rows


def parse_models(text: str, table: dict[str, int]) -> dict[str, int]:
    """``S/32,S/16`` -> {variant: image size} from ``table`` (224 for a variant not in it)."""
    return {variant: table.get(variant, 224) for variant in text.split(",") if variant}


def main() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"(pytorch_lightning|lightning_fabric)\.")  # advice for real runs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    models = GPU_MODELS if cuda else CPU_MODELS
    parser.add_argument("--batch", type=int, default=128 if cuda else 64)
    parser.add_argument("--models", default=",".join(models), help="comma-separated variants")
    parser.add_argument("--compile-models", default="S/16" if cuda else "", help="variants also timed compiled")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--steps", type=int, default=30 if cuda else 12, help="steps per attention row")
    parser.add_argument("--loops-model", default="S/16" if cuda else "mini/4", help="the model of the loops rows")
    parser.add_argument("--loops-mode", choices=("eager", "compiled"), default="compiled" if cuda else "eager")
    parser.add_argument("--harness-steps", type=int, default=60 if cuda else 40, help="steps per loop run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating harness / bare / timm rounds")
    parser.add_argument("--out", type=Path, help="write train_step.csv into this folder instead of results/bench/")
    args = parser.parse_args()
    args.compile_models = set(filter(None, args.compile_models.split(",")))
    device = torch.device("cuda" if cuda else "cpu")
    name = device_name(device)
    shape = (3, 1000) if cuda else (1, 10)  # input channels, classes

    table = Table(name, args.out)
    attention_rows(table, parse_models(args.models, models), args, device, shape)
    attention = table.frame("attention")
    if len(attention):
        show(relu_vs_softmax(attention), f"relu / softmax images/s (bare loop, batch {args.batch}) on {name}")
    loop_rows(table, args.loops_model, models.get(args.loops_model, 224), args, device, shape)
    loops = table.frame("loops")
    title = f"harness vs bare loop vs timm ({args.loops_model}, batch {args.batch}) on {name}"
    show(loops.drop(columns="bench"), title)
    show(pd.DataFrame(goals(attention, loops))[["goal", "measured", "verdict"]], "goals")
    print(f"\nwrote {table.path}")


if __name__ == "__main__":
    main()

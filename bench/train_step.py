"""Training throughput: softmax vs relu attention per model, and the harness (``ViTClassifier`` in a Lightning
``Trainer``, as ``reluvit.run.train`` runs it) vs a bare PyTorch loop doing the same step on the same model and data.

    python bench/train_step.py [--batch 64] [--steps 12] [--harness-steps 40] [--rounds 3]

A step is the harness's: forward (bf16 autocast on GPU, fp32 on CPU), sigmoid cross-entropy, backward, gradient
clipping at norm 1, AdamW with decoupled weight decay, warm-up/cosine schedule. Images/s are timed as the harness's
Chrono times them: step end to step end, the first 2 intervals left out. GPU: the grid's models at 224 px with
relu fused (auto), relu unfused (reference) and softmax (SDPA). CPU: the 28x28 CPU-scale models, few steps (relu
runs the reference path there). The harness and the bare loop alternate for ``--rounds`` rounds (a busy machine
slows both alike) and the median ratio is compared with the goal, >= 0.97. Writes
``results/bench/train_step-<device>.csv``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from types import SimpleNamespace

import pandas as pd
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from benchlib import device_name, show, synchronize, write_csv
from torch.utils.data import DataLoader, TensorDataset

from reluvit.run.compute import Chrono
from reluvit.run.module import ViTClassifier

GPU_MODELS = {"S/32": 224, "S/16": 224, "S/8": 224, "B/16": 224, "L/16": 224}  # variant -> image size
CPU_MODELS = {"micro/4": 28, "micro/2": 28, "mini/4": 28, "mini/2": 28}
SKIP_FIRST = 2  # step intervals left out, as Chrono's default
HARNESS_GOAL = 0.97


def attentions(cuda: bool) -> dict[str, dict]:
    """label -> attention options of the model; relu with the paper's L^-1."""
    choices = {"softmax (sdpa)": {"activation": "softmax"},
               "relu (auto)": {"activation": "relu", "alpha": 1.0, "impl": "auto"}}
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


def bare_loop(module: ViTClassifier, loader: DataLoader, device: torch.device) -> float:
    """Images/s of a plain loop doing the harness's step."""
    module.trainer = SimpleNamespace(estimated_stepping_batches=len(loader))  # all configure_optimizers reads
    optimization = module.configure_optimizers()
    module.trainer = None
    optimizer, schedule = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
    module.to(device).train()
    step_ends = []
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = module(images)
        loss = module.loss_fn(logits.float(), F.one_hot(labels, module.num_classes).to(images.dtype))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        synchronize(device)
        step_ends.append(time.perf_counter())
    return images_per_second(step_ends, loader.batch_size)


def harness_loop(module: ViTClassifier, loader: DataLoader, device: torch.device) -> float:
    """Images/s of the Trainer configured as ``reluvit.run.train`` configures it (CSV logger, Chrono, clipping)."""
    chrono = Chrono(skip_first=SKIP_FIRST)
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(
            accelerator=device.type, devices=1, precision="bf16-mixed" if device.type == "cuda" else "32-true",
            max_epochs=1, gradient_clip_val=1.0, gradient_clip_algorithm="norm", log_every_n_steps=10,
            logger=pl.loggers.CSVLogger(logs), callbacks=[chrono], enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        )
        trainer.fit(module, train_dataloaders=loader)
    return loader.batch_size * (len(loader) - SKIP_FIRST) / chrono.train_seconds


def main() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"(pytorch_lightning|lightning_fabric)\.")  # advice for real runs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--batch", type=int, default=128 if cuda else 64)
    parser.add_argument("--steps", type=int, default=30 if cuda else 12, help="steps per attention benchmark")
    parser.add_argument("--harness-steps", type=int, default=60 if cuda else 40)
    parser.add_argument("--rounds", type=int, default=3, help="alternating harness / bare-loop rounds")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    name = device_name(device)
    models, in_chans, num_classes = (GPU_MODELS, 3, 1000) if cuda else (CPU_MODELS, 1, 10)

    rows = []
    for variant, img in models.items():
        loader = make_loader(img, in_chans, num_classes, args.batch, args.steps)
        for label, options in attentions(cuda).items():
            module = make_module(variant, img, in_chans, num_classes, options)
            rows.append({"bench": "attention", "model": variant, "img": img, "attention": label,
                         "img_per_s": bare_loop(module, loader, device),
                         "attention_impl": module.model.blocks[0].attn.last_impl})
            print(rows[-1], flush=True)
    attention = pd.DataFrame(rows)
    softmax = attention[attention["attention"] == "softmax (sdpa)"].set_index("model")["img_per_s"]
    attention["vs_softmax"] = attention["img_per_s"] / attention["model"].map(softmax)
    show(attention.drop(columns="bench"), f"training images/s (bare loop, batch {args.batch}) on {name}")

    variant = "S/16" if cuda else "mini/4"  # on CPU the demo's model: short steps, the harness's worst case
    img = models[variant]
    loader = make_loader(img, in_chans, num_classes, args.batch, args.harness_steps)
    options = attentions(cuda)["relu (auto)"]
    harness = []
    for round_ in range(args.rounds):
        bare = bare_loop(make_module(variant, img, in_chans, num_classes, options), loader, device)
        lightning = harness_loop(make_module(variant, img, in_chans, num_classes, options), loader, device)
        harness.append({"bench": "harness", "model": variant, "img": img, "attention": "relu (auto)",
                        "round": round_, "bare_img_per_s": bare, "harness_img_per_s": lightning,
                        "harness_vs_bare": lightning / bare})
        print(harness[-1], flush=True)
    harness = pd.DataFrame(harness)
    show(harness.drop(columns="bench"), f"harness vs bare loop ({variant}, batch {args.batch}) on {name}")
    ratio = statistics.median(harness["harness_vs_bare"])
    verdict = "met" if ratio >= HARNESS_GOAL else "NOT met"
    print(f"median harness / bare: {ratio:.3f} (goal >= {HARNESS_GOAL}: {verdict})")
    print(f"\nwrote {write_csv(pd.concat([attention, harness]), 'train_step', name)}")


if __name__ == "__main__":
    main()

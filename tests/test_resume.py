"""Exact resume under any interruption: a run is interrupted at a chosen point (tests/interrupt.py in a subprocess:
SIGKILL, or the requeue signal USR2 that submitit forwards), started again, and must end at the recipe's step
count with weights bit-identical to an uninterrupted run (CPU, deterministic mode). The points cover every phase
of a run; the interruption is triggered by the run's own progress, never by a timer, so what is checked does not
depend on load."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from interrupt import SIGNALS
from reluvit.data.shards import write_shards
from reluvit.run.compose import compose
from reluvit.run.rundir import last_checkpoint, read_summary

log = logging.getLogger(__name__)
HARNESS = Path(__file__).with_name("interrupt.py")

# 1500 training images at batch 64: 23 steps per epoch, 69 in all; mixup draws from the RNG every step
BASE = [*TINY, "eval=none", "trainer.deterministic=true", "recipe.epochs=3", "recipe.augment.default.mixup=0.4"]
CONFIGS = {
    "epochs": BASE,
    "max_steps": [*BASE, "trainer.max_steps=50"],  # stops in the middle of epoch 2
    "max_steps_beyond": [*BASE, "trainer.max_steps=100"],  # more than the recipe's 69: the epochs stop it
    "accumulate": [*BASE, "trainer.micro_batch_size=32"],  # two forward passes per optimizer step
    "fewshot": [*BASE, "eval=embedded", "eval.fewshot.datasets=[digits]", "eval.fewshot.shots=[1,5]",
                "eval.fewshot.seeds=[0]", "eval.fewshot.every_n_steps=30"],
    # loader workers: Lightning makes the iterator before it restores the checkpoint; with workers the sampler is
    # asked for indices then (reluvit.data.datamodules.DeferredLoader)
    "workers": [*BASE, "data.num_workers=2"],
    "shards": [*(o for o in BASE if o != "data=digits"), "data=shards", "data.path={shards}", "data.num_classes=10",
               "data.img_size=8", "data.in_chans=1", "data.num_workers=2", "data.loader=reference"],
}
POINTS = [  # (where, at): see tests/interrupt.py
    ("step", 3),  # before the first checkpoint
    ("step", 17),  # mid-epoch 0
    ("step", 22),  # usr2: recorded before epoch 0's last step, checkpointed after the next epoch's first
    ("step", 23),  # the last step of epoch 0, before its validation and checkpoint (usr2: checkpointed at step 24)
    ("step", 45),  # usr2: recorded before epoch 1's last step
    ("validation", 23),  # during epoch 0's validation
    ("validation", 69),  # during the final validation (usr2: handed over when the fit ends)
    ("epoch_end", 1),  # after epoch 1's last step, before its checkpoint
    ("checkpoint", 1),  # halfway through writing the first checkpoint
    ("checkpoint", 2),
    *(("step", s) for s in sorted(random.Random(0).sample(range(24, 68), 2))),  # anywhere in epochs 1 and 2
]
Interruption = tuple[str, str, int]  # (kind, where, at)
CASES: list[tuple[str, tuple[Interruption, ...]]] = [
    *(("epochs", ((kind, where, at),)) for kind in ("kill", "usr2") for where, at in POINTS),
    ("max_steps", (("term", "step", 30),)),  # SIGTERM outside SLURM: a checkpoint at the next step, as usr2
    *(("max_steps", (i,)) for i in (("kill", "validation", 46), ("kill", "checkpoint", 2), ("usr2", "step", 30),
                                    ("kill", "step", 50))),  # after the final step, before the run is recorded
    # an epoch-end checkpoint resumed with Lightning's max_steps ran one epoch short
    *(("max_steps_beyond", (i,)) for i in (("kill", "validation", 46), ("usr2", "step", 30))),
    *(("fewshot", ((kind, "fewshot", 1),)) for kind in ("kill", "usr2")),
    *(("accumulate", ((kind, "step", 30),)) for kind in ("kill", "usr2")),  # usr2: saved after the second pass
    *(("workers", ((kind, "step", 17),)) for kind in ("kill", "usr2")),
    *(("shards", ((kind, "step", at),)) for kind, at in (("usr2", 17), ("kill", 30))),  # kill: epoch 0's checkpoint
    # interrupted again after resuming: each start must continue where the previous one stopped (a requeued job
    # is interrupted at every time limit). Checkpointing at an epoch's last step replayed the next epoch here.
    ("epochs", (("usr2", "step", 22), ("usr2", "step", 40))),
    ("epochs", (("usr2", "step", 45), ("usr2", "step", 60))),
    ("epochs", (("usr2", "step", 17), ("kill", "validation", 23), ("usr2", "step", 30))),
    ("workers", (("usr2", "step", 22), ("usr2", "step", 40))),
]
TABLE: list[dict] = []


def train(overrides: list[str], trace: Path, kind: str = "none", where: str = "-",
          at: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HARNESS), json.dumps(overrides), kind, where, str(at)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RELUVIT_TRACE_BATCHES": str(trace)})


def trained_labels(trace: Path) -> dict[tuple[int, int], list[int]]:
    """The labels of each (epoch, batch) trained, as last trained (a batch trained again after a restart from an
    earlier checkpoint replaces the first); a restart that replays or skips batches shows as other labels."""
    return {(epoch, batch): labels for epoch, batch, labels in map(json.loads, trace.read_text().splitlines())}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, list[str]]:
    """CONFIGS with the path of the digits written as shards (once per module)."""
    shards = tmp_path_factory.mktemp("digit_shards")
    write_shards("embedded:digits", shards, shard_mb=0.015, val_count=297, progress=False)
    return {name: [o.format(shards=shards) for o in overrides] for name, overrides in CONFIGS.items()}


@pytest.fixture(scope="module")
def references(tmp_path_factory, configs) -> dict[str, dict]:
    """The uninterrupted run of each config (trained once, on first use): its summary and final weights."""
    done = {}

    def reference(config: str) -> dict:
        if config not in done:
            runs_dir = tmp_path_factory.mktemp("reference")
            overrides = [*configs[config], f"runs_dir={runs_dir}"]
            result = train(overrides, runs_dir / "trace.jsonl")
            assert result.returncode == 0, result.stderr[-2000:]
            run_dir = compose(overrides).run_dir
            done[config] = {"summary": read_summary(run_dir), "weights": weights(run_dir),
                            "labels": trained_labels(runs_dir / "trace.jsonl")}
        return done[config]

    return reference


def weights(run_dir: str) -> dict[str, torch.Tensor]:
    return torch.load(last_checkpoint(run_dir), weights_only=True)["state_dict"]


def checkpoint_step(run_dir: str) -> int | None:
    path = last_checkpoint(run_dir)
    return torch.load(path, weights_only=True)["global_step"] if path.exists() else None


def case_id(config: str, interruptions: tuple[Interruption, ...]) -> str:
    return f"{config}-" + "+".join("-".join(map(str, i)) for i in interruptions)


@pytest.mark.slow
@pytest.mark.parametrize(("config", "interruptions"), CASES, ids=[case_id(*c) for c in CASES])
def test_interrupted_run_resumes_exactly(configs, references, tmp_path, config, interruptions):
    overrides = [*configs[config], f"runs_dir={tmp_path}"]
    run_dir = compose(overrides).run_dir
    resumed_at = []
    for kind, where, at in interruptions:
        interrupted = train(overrides, tmp_path / "trace.jsonl", kind, where, at)
        expected_exit = -signal.SIGKILL if kind == "kill" else 128 + SIGNALS[kind]
        assert interrupted.returncode == expected_exit, \
            f"the interruption {kind} {where} {at} did not happen: {interrupted.stderr[-2000:]}"
        resumed_at.append(checkpoint_step(run_dir))
    resumed = train(overrides, tmp_path / "trace.jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    reference, summary = references(config), read_summary(run_dir)
    final = weights(run_dir)
    equal = final.keys() == reference["weights"].keys() and all(
        torch.equal(final[k], reference["weights"][k]) for k in final)
    TABLE.append({"config": config, "interruptions": ", ".join(" ".join(map(str, i)) for i in interruptions),
                  "resumed steps": resumed_at,
                  "final step": summary["global_step"], "reference step": reference["summary"]["global_step"],
                  "weights equal": equal})
    assert summary["status"] == "completed"
    assert summary["global_step"] == reference["summary"]["global_step"]
    assert summary["examples_seen"] == reference["summary"]["examples_seen"]
    assert trained_labels(tmp_path / "trace.jsonl") == reference["labels"]  # the same samples in the same order
    assert equal
    assert summary["metrics"]["val/acc"] == reference["summary"]["metrics"]["val/acc"]


def teardown_module() -> None:
    """The stress table, for the log and the closing note (``pytest --log-cli-level=INFO`` shows it)."""
    if TABLE:
        header = list(TABLE[0])
        lines = [" | ".join(header), *(" | ".join(str(row[k]) for k in header) for row in TABLE)]
        log.info("resume stress table:\n%s", "\n".join(lines))

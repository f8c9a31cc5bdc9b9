"""Short real training runs on the embedded data: loss decreases for every attention variant, summaries are
written, resume continues the step count and the compute accounting, completed runs are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reluvit.attention import ACTIVATIONS
from reluvit.run.train import read_summary, run


def train_losses(run_dir: Path) -> pd.Series:
    frames = [pd.read_csv(p) for p in sorted(Path(run_dir).glob("csv/version_*/metrics.csv"))]
    df = pd.concat(frames)
    return df.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


VARIANTS = [[f"attention={a}"] for a in ACTIVATIONS] + [
    ["attention=relu", "attention.gate=true", "attention.gate_activation=silu"],
    ["attention=relu2", "attention.qk_norm=false", "attention.alpha=1"],
    ["attention=gelu", "attention.gelu_approximate=tanh", "attention.alpha=2"],
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(o))
def test_short_run_loss_decreases(tiny_cfg, overrides):
    cfg = tiny_cfg(*overrides, "trainer.max_steps=40", "recipe.lr=2e-3")
    summary = run(cfg)
    assert summary["status"] == "completed"
    assert summary["global_step"] == 40
    losses = train_losses(cfg.run_dir)
    first, last = losses.iloc[:5].mean(), losses.iloc[-5:].mean()
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"
    on_disk = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert on_disk["config"]["attention"]["activation"] == cfg.attention.activation
    assert 0.0 <= on_disk["metrics"]["val/acc"] <= 1.0
    assert on_disk["core_hours"] > 0 and on_disk["examples_seen"] == 40 * 64
    assert on_disk["train_flops"] == pytest.approx(6 * on_disk["forward_macs"] * 40 * 64)


def test_resume_continues_steps_and_core_hours(tiny_cfg):
    first = run(tiny_cfg("trainer.max_steps=12"))
    assert (first["global_step"], first["examples_seen"]) == (12, 12 * 64)
    cfg = tiny_cfg("trainer.max_steps=30")  # same grid point, same run directory, a longer budget
    assert cfg.run_dir == first["run_dir"]
    second = run(cfg)
    assert second["global_step"] == 30
    assert second["examples_seen"] == 30 * 64  # continued from the checkpoint, not restarted at 0
    assert second["core_hours"] > first["core_hours"]
    assert second["started"] == first["started"]
    steps = train_losses(cfg.run_dir).index
    assert len(list(Path(cfg.run_dir).glob("csv/version_*"))) == 2  # both segments' metrics kept
    assert steps.max() >= 29 and steps.min() == 0


def test_completed_run_is_skipped(tiny_cfg):
    cfg = tiny_cfg("trainer.max_steps=5")
    first = run(cfg)
    mtime = (Path(cfg.run_dir) / "summary.json").stat().st_mtime_ns
    assert run(cfg) == first
    assert (Path(cfg.run_dir) / "summary.json").stat().st_mtime_ns == mtime
    recorded = read_summary(cfg.run_dir)
    del recorded["config"]["attention"]["qk_norm"]  # as if trained before the knob existed
    (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(recorded))
    assert run(cfg)["finished"] == first["finished"]  # still skipped
    assert run(tiny_cfg("trainer.max_steps=5", "trainer.enable_progress_bar=true"))["finished"] == first["finished"]
    assert run(tiny_cfg("trainer.max_steps=6"))["global_step"] == 6  # a changed value retrains


def test_divergence_is_recorded(tiny_cfg):
    summary = run(tiny_cfg("trainer.max_steps=20", "recipe.lr=1e30", "recipe.warmup_steps=0",
                           "recipe.grad_clip_norm=1e30"))
    assert summary["status"] == "diverged"
    assert summary["global_step"] < 20
    assert read_summary(summary["run_dir"])["status"] == "diverged"


def test_deterministic_with_seed(tiny_cfg, tmp_path):
    a = run(tiny_cfg("trainer.max_steps=6", "trainer.deterministic=true"))
    b = run(tiny_cfg("trainer.max_steps=6", "trainer.deterministic=true", f"runs_dir={tmp_path / 'again'}"))
    assert a["metrics"]["train/loss"] == b["metrics"]["train/loss"]
    assert a["metrics"]["val/acc"] == b["metrics"]["val/acc"]


def test_wandb_offline_run_id_follows_the_run_directory(tiny_cfg, monkeypatch):
    import hashlib

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg("logger=wandb", "logger.wandb_mode=offline", "trainer.max_steps=3")
    run(cfg)
    run_id = hashlib.sha1(str(Path(cfg.run_dir).resolve()).encode()).hexdigest()[:16]
    assert list((Path(cfg.run_dir) / "wandb").glob(f"offline-run-*-{run_id}"))


def test_hydra_multirun_writes_one_directory_per_point(tiny_overrides, tmp_path):
    """The real CLI with -m: each grid point lands in its stable run directory with a summary."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "reluvit.run.train", "-m", *tiny_overrides, "trainer.max_steps=3",
         "attention=softmax,relu", "attention.alpha=0.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = sorted(p.parent.name for p in tmp_path.rglob("summary.json"))
    assert summaries == ["relu-a0.5-s0", "softmax-s0"]
    assert all(read_summary(p.parent)["status"] == "completed" for p in tmp_path.rglob("summary.json"))


def test_crash_is_recorded_and_the_rerun_resumes_from_the_last_epoch(tiny_cfg, monkeypatch):
    """A run killed in its third epoch is `failed`; running it again continues from the end of epoch 2."""
    from reluvit.run.module import ViTClassifier

    def crash(self):
        if self.current_epoch == 2:
            raise RuntimeError("node lost")

    cfg = tiny_cfg("recipe.epochs=3", "recipe.batch_size=128")  # 1500 training images: 11 steps per epoch
    monkeypatch.setattr(ViTClassifier, "on_train_epoch_start", crash, raising=False)
    with pytest.raises(RuntimeError, match="node lost"):
        run(cfg)
    failed = read_summary(cfg.run_dir)
    assert failed["status"] == "failed" and "node lost" in failed["error"]
    assert failed["global_step"] == 22

    monkeypatch.undo()
    resumed = run(cfg)
    assert (resumed["status"], resumed["global_step"], resumed["epoch"]) == ("completed", 33, 3)
    assert resumed["examples_seen"] == 33 * 128  # the compute accounting continued from the checkpoint
    second = pd.read_csv(Path(cfg.run_dir) / "csv" / "version_1" / "metrics.csv")
    assert second["step"].min() >= 21  # the second start trained only the third epoch

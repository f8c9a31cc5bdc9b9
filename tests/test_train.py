"""Short real training runs on the embedded data: loss decreases for every attention variant, summaries are
written, resume continues the step count and the compute accounting, completed runs are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pandas as pd
import pytest
import pytorch_lightning as pl
import timm
import torch

from reluvit.attention import ACTIVATIONS
from reluvit.run.rundir import read_summary
from reluvit.run.train import run


def train_losses(run_dir: Path) -> pd.Series:
    frames = [pd.read_csv(p) for p in sorted(Path(run_dir).glob("csv/version_*/metrics.csv"))]
    df = pd.concat(frames)
    return df.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


VARIANTS = [[f"attention={a}"] for a in ACTIVATIONS] + [
    ["attention=relu", "attention.gate=true", "attention.gate_activation=silu"],
    ["attention=relu2", "attention.qk_norm=false", "attention.alpha=1"],
    ["attention=gelu", "attention.gelu_approximate=tanh", "attention.alpha=2"],
]
CORE = {"attention=softmax", "attention=relu", "attention=relu2"}  # the fast suite's; the rest run in make test-all
VARIANTS = [pytest.param(v, marks=() if ",".join(v) in CORE else pytest.mark.slow) for v in VARIANTS]


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
    # what the numbers depend on: the packages' versions, the processes and each one's CPU threads
    versions = on_disk["versions"]
    assert versions["torch"] == torch.__version__.split("+")[0] and versions["timm"] == timm.__version__
    assert versions["pytorch-lightning"] == pl.__version__ and versions["hydra-core"] == hydra.__version__
    assert on_disk["threads"] == torch.get_num_threads() and on_disk["devices"] == on_disk["world_size"] == 1


def test_a_run_directory_holding_other_training_values_is_refused(tiny_overrides, tmp_path, capsys):
    """The same run name with another learning rate (a config file edited, or a name given by hand): resuming is
    refused with the keys named and exit status 2; resume=false trains it again there."""
    from reluvit import cli

    first = run(tiny_cfg_named(tiny_overrides, "trainer.max_steps=3"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *tiny_overrides, "run_name=mine", "trainer.max_steps=3", "recipe.lr=0.002"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "recipe.lr" in err and "0.001" in err and "resume=false" in err
    assert read_summary(first["run_dir"])["finished"] == first["finished"]  # untouched
    again = run(tiny_cfg_named(tiny_overrides, "trainer.max_steps=3", "recipe.lr=0.002", "resume=false"))
    assert again["config"]["recipe"]["lr"] == 0.002 and again["global_step"] == 3


def tiny_cfg_named(overrides: list[str], *extra: str):
    from reluvit.run.compose import compose

    return compose([*overrides, "run_name=mine", *extra])


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
    other = run(tiny_cfg("trainer.max_steps=6"))  # a changed training value: another run, in another directory
    assert other["global_step"] == 6 and other["run_dir"] != first["run_dir"]


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


def test_wandb_offline_run_has_flat_grid_keys_and_tags_only_for_set_keys(tiny_cfg, monkeypatch):
    import hashlib

    from omegaconf import OmegaConf

    from reluvit.run.grid import wandb_config, wandb_tags

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_cfg("logger=wandb", "logger.wandb_mode=offline", "trainer.max_steps=3", "logger.figures=[fig2,fig3]")
    config = wandb_config(OmegaConf.to_container(cfg))
    assert (config["activation"], config["alpha"], config["model"], config["seed"]) == ("relu", 1.0, "mini2", 0)
    assert config["attention.alpha"] == 1.0 and config["recipe.lr"] == cfg.recipe.lr  # the whole config, dotted
    assert config["figures"] == ["fig2", "fig3"] and config["soft_sr"] is None
    tags = wandb_tags(OmegaConf.to_container(cfg))
    assert "activation=relu" in tags and {"fig2", "fig3"} <= set(tags)
    assert not [t for t in tags if t.startswith(("soft_sr=", "sigmoid_bias=", "gate_activation="))]

    run(cfg)
    run_id = hashlib.sha1(str(Path(cfg.run_dir).resolve()).encode()).hexdigest()[:16]
    (offline,) = (Path(cfg.run_dir) / "wandb").glob(f"offline-run-*-{run_id}")  # same directory -> same W&B run
    record = next(offline.glob("*.wandb")).read_bytes()  # the run record: its config and tags
    for text in (b"activation=relu", b"alpha=1.0", b"fig3", b"attention.alpha", b"recipe.lr", b'"mini2"'):
        assert text in record
    for unset in (b"soft_sr=", b"sigmoid_bias=", b"gate_activation="):  # keys a relu run does not have
        assert unset not in record
    assert b'"variant": "mini/2"' not in record  # the module's hyperparameters do not overwrite the config


def test_reluvit_train_expands_sweep_syntax_into_one_directory_per_point(tiny_overrides, tmp_path):
    """The real CLI: each point of `attention=softmax,relu` lands in its own run directory with a summary."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "reluvit", "train", *tiny_overrides, "trainer.max_steps=3",
         "attention=softmax,relu", "attention.alpha=0.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = sorted(p.parent.name.split("+")[0] for p in tmp_path.rglob("summary.json"))
    assert summaries == ["relu-a0.5-s0", "softmax-s0"]
    assert all(read_summary(p.parent)["status"] == "completed" for p in tmp_path.rglob("summary.json"))
    assert "run 2/2" in result.stderr and (next(tmp_path.rglob("train.log"))).read_text().count("completed") == 1


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

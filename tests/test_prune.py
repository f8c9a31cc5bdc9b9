"""Dropping the optimizer state of finished runs (reluvit.run.checkpoint.drop_optimizer_state): the checkpoint
shrinks to its weights, which evaluate and load as before; unfinished runs are refused, a second call does nothing,
and a pruned checkpoint is never resumed. And the dry run's checkpoint estimate against a real checkpoint."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from reluvit.run.checkpoint import (
    OPTIMIZER_DROPPED,
    CheckpointError,
    PruneRefused,
    drop_optimizer_state,
    finished_runs,
    load_checkpoint,
)
from reluvit.run.compose import compose
from reluvit.run.evaluate import evaluate_run
from reluvit.run.lock import LOCK, RunBusy
from reluvit.run.module import ViTClassifier
from reluvit.run.rundir import SUMMARY, last_checkpoint, read_summary
from reluvit.run.train import run
from reluvit.sweep.cost import checkpoint_bytes

# the CPU sweeps' model size on the smallest data, two steps: a real checkpoint in a few seconds
OVERRIDES = [*TINY, "model=micro2", "eval=none", "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The runs directory of one completed run, trained once for the module."""
    runs_dir = tmp_path_factory.mktemp("trained") / "runs"
    assert run(compose([*OVERRIDES, f"runs_dir={runs_dir}"]))["status"] == "completed"
    return runs_dir


@pytest.fixture
def cfg(trained, tmp_path):
    """The config of a copy of the completed run, this test's own to change."""
    shutil.copytree(trained, tmp_path / "runs")
    return compose([*OVERRIDES, f"runs_dir={tmp_path / 'runs'}"])


def set_status(run_dir: str, status: str) -> None:
    summary = read_summary(run_dir)
    summary["status"] = status
    (Path(run_dir) / SUMMARY).write_text(json.dumps(summary))


def lock_as_a_live_trainer(run_dir: str) -> None:
    """The lock a live training process holds (this process stands in for it)."""
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "job": None, "time": time.time()}
    (Path(run_dir) / LOCK).write_text(json.dumps(holder))


def test_the_estimate_is_within_10_percent_of_the_checkpoint(cfg):
    estimate, ckpt = checkpoint_bytes(cfg), last_checkpoint(cfg.run_dir)
    assert estimate.whole == pytest.approx(ckpt.stat().st_size, rel=0.1)
    drop_optimizer_state(cfg.run_dir)
    assert estimate.pruned == pytest.approx(ckpt.stat().st_size, rel=0.1)


def test_a_finished_run_keeps_its_weights_evaluation_and_export(cfg):
    ckpt = last_checkpoint(cfg.run_dir)
    whole, size = load_checkpoint(ckpt), ckpt.stat().st_size
    dropped = drop_optimizer_state(cfg.run_dir)
    assert dropped.before == size and dropped.after == ckpt.stat().st_size
    assert dropped.after < 0.4 * dropped.before  # AdamW's two moments: two thirds of it
    pruned = load_checkpoint(ckpt)
    assert pruned[OPTIMIZER_DROPPED] is True and "optimizer_states" not in pruned and "lr_schedulers" not in pruned
    assert pruned.keys() >= {"state_dict", "hyper_parameters", "global_step", "loops", "callbacks"}
    assert pruned["hyper_parameters"] == whole["hyper_parameters"] and pruned["global_step"] == whole["global_step"]
    assert pruned["state_dict"].keys() == whole["state_dict"].keys()
    assert all(torch.equal(pruned["state_dict"][k], v) for k, v in whole["state_dict"].items())
    evaluate_run(cfg.run_dir, {})  # the run's own evaluations (none): it builds the module from the checkpoint
    assert read_summary(cfg.run_dir)["evaluation"]["global_step"] == whole["global_step"] == 2
    exported = ViTClassifier.load_from_checkpoint(ckpt, weights_only=True).state_dict()
    assert all(torch.equal(exported[k], v) for k, v in whole["state_dict"].items())
    assert list(ckpt.parent.iterdir()) == [ckpt]  # no partial file left


def test_dropping_twice_does_nothing_and_says_so(cfg, caplog):
    first = drop_optimizer_state(cfg.run_dir)
    mtime = last_checkpoint(cfg.run_dir).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="reluvit.run.checkpoint"):
        again = drop_optimizer_state(cfg.run_dir)
    assert again == (first.after, first.after) and again.freed == 0
    assert "already dropped" in caplog.text
    assert last_checkpoint(cfg.run_dir).stat().st_mtime_ns == mtime


@pytest.mark.parametrize("status,live,shown", [
    ("running", True, "running"), ("running", False, "interrupted"), ("failed", False, "failed")])
def test_unfinished_runs_are_refused(cfg, status, live, shown):
    set_status(cfg.run_dir, status)
    if live:
        lock_as_a_live_trainer(cfg.run_dir)
    mtime = last_checkpoint(cfg.run_dir).stat().st_mtime_ns
    with pytest.raises(PruneRefused) as refused:
        drop_optimizer_state(cfg.run_dir)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{cfg.run_dir}: the run is {shown}:")
    assert last_checkpoint(cfg.run_dir).stat().st_mtime_ns == mtime
    assert finished_runs(Path(cfg.runs_dir)) == []


def test_a_finished_run_that_a_live_process_trains_again_is_refused(cfg):
    """resume=false on a completed run: its process holds the lock before it records the run as running."""
    lock_as_a_live_trainer(cfg.run_dir)
    with pytest.raises(RunBusy, match="is being trained by"):
        drop_optimizer_state(cfg.run_dir)
    assert OPTIMIZER_DROPPED not in load_checkpoint(last_checkpoint(cfg.run_dir))


def test_a_pruned_checkpoint_is_not_resumed(cfg):
    drop_optimizer_state(cfg.run_dir)
    size = last_checkpoint(cfg.run_dir).stat().st_size
    set_status(cfg.run_dir, "running")  # as if its summary had been lost: a rerun would resume
    with pytest.raises(CheckpointError, match="cannot resume: its optimizer state was dropped") as refused:
        run(cfg)
    assert len(str(refused.value).splitlines()) == 1
    assert read_summary(cfg.run_dir)["status"] == "failed"
    assert last_checkpoint(cfg.run_dir).stat().st_size == size


def test_finished_runs_under_a_runs_directory(cfg):
    assert finished_runs(Path(cfg.runs_dir)) == [Path(cfg.run_dir)]
    diverged = Path(cfg.run_dir).with_name("diverged")
    shutil.copytree(cfg.run_dir, diverged)
    set_status(str(diverged), "diverged")
    assert finished_runs(Path(cfg.runs_dir)) == sorted([Path(cfg.run_dir), diverged])


def test_reluvit_prune_drops_every_finished_run_under_the_runs_directory(cfg, caplog):
    from reluvit import cli

    size = last_checkpoint(cfg.run_dir).stat().st_size
    with caplog.at_level(logging.INFO):
        cli.main(["prune", "--runs-dir", cfg.runs_dir])
    assert last_checkpoint(cfg.run_dir).stat().st_size < 0.4 * size and "freed " in caplog.text
    set_status(cfg.run_dir, "failed")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["prune", cfg.run_dir])
    assert exit_.value.code == 1

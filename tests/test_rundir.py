"""A run directory under faults: one writer at a time, a killed run shown as interrupted, unreadable summaries and
checkpoints reported by name (never a traceback, never code run from a pickle), a diverged run not retried."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from reluvit.report.rollup import collect
from reluvit.report.status import entries, run_states
from reluvit.run import lock
from reluvit.run.checkpoint import CheckpointError, load_checkpoint
from reluvit.run.rundir import SUMMARY, last_checkpoint, read_summary
from reluvit.run.schema import ConfigError
from reluvit.run.train import run

HARNESS = Path(__file__).with_name("interrupt.py")
QUICK = ["recipe.epochs=1", "eval=none"]


def write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / lock.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "job": None,
                                                 "time": time.time(), **holder}))


def test_a_live_holder_keeps_the_directory(tmp_path):
    write_lock(tmp_path, host="elsewhere", pid=1)
    with pytest.raises(lock.RunBusy, match="being trained by elsewhere pid 1"), lock.hold(tmp_path):
        pass
    assert json.loads((tmp_path / lock.LOCK).read_text())["host"] == "elsewhere"  # untouched


@pytest.mark.parametrize("holder", [
    {"host": "elsewhere", "pid": 1, "time": time.time() - lock.STALE_S - 60},  # no heartbeat for too long
    {"pid": 2**22 + 12345},  # a process of this host that is gone (pids stay below 2**22 on Linux)
    {"host": "elsewhere", "pid": 1, "job": "4242_3"},  # the same SLURM job, requeued
])
def test_a_stale_or_requeued_holder_is_taken_over(tmp_path, monkeypatch, holder):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    write_lock(tmp_path, **holder)
    with lock.hold(tmp_path):
        assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / lock.LOCK).exists()  # released
    assert [p.name for p in tmp_path.iterdir()] == []  # no stray temporary files


def test_the_heartbeat_is_renewed(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    with lock.hold(tmp_path):
        first = json.loads((tmp_path / lock.LOCK).read_text())["time"]
        deadline = time.time() + 30
        while json.loads((tmp_path / lock.LOCK).read_text())["time"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads((tmp_path / lock.LOCK).read_text())["time"] > first


def test_a_second_trainer_of_the_same_run_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUICK)
    write_lock(Path(cfg.run_dir), host="gpu-node-7", pid=99, job="123")
    with pytest.raises(lock.RunBusy, match="gpu-node-7 pid 99, SLURM job 123"):
        run(cfg)
    assert not (Path(cfg.run_dir) / SUMMARY).exists()  # the live run's files are left alone


@pytest.mark.slow
def test_a_killed_run_shows_interrupted_and_resumes(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, *QUICK, "recipe.epochs=2", "trainer.deterministic=true"]
    killed = subprocess.run([sys.executable, str(HARNESS), json.dumps(overrides), "kill", "step", "30"],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    table = collect(tmp_path / "runs")
    assert read_summary(table["run_dir"][0])["status"] == "running"  # what the killed process last wrote
    assert list(table["status"]) == ["interrupted"]  # no live process holds it
    from reluvit.run.compose import compose

    resumed = run(compose(overrides))
    assert resumed["status"] == "completed" and resumed["global_step"] == 46
    assert list(collect(tmp_path / "runs")["status"]) == ["completed"]


def test_a_running_run_with_a_fresh_heartbeat_is_running(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    write_lock(run_dir, host="gpu-node-7", pid=99)
    assert lock.live_status("running", run_dir) == "running"
    assert lock.live_status("running", tmp_path / "nolock") == "interrupted"
    assert lock.live_status("completed", tmp_path / "nolock") == "completed"


@pytest.mark.parametrize("content", ["{\"run_name\": \"x\", \"sta", "[]", None])  # None: a directory
def test_an_unreadable_summary_is_named_and_skipped(tiny_cfg, tmp_path, caplog, content):
    cfg = tiny_cfg(*QUICK)
    path = Path(cfg.run_dir) / SUMMARY
    path.parent.mkdir(parents=True)
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    with pytest.raises(ConfigError, match=f"run_dir: {re.escape(str(path))} is unreadable .*move it away"):
        run(cfg)
    assert len(collect(tmp_path / "runs")) == 0
    assert f"skipping {path} is unreadable" in caplog.text
    runs = entries([OmegaConf.to_container(cfg)], tmp_path / "runs")
    assert [s.status for s in run_states(runs, tmp_path / "runs", collect(tmp_path / "runs"))] == ["unreadable"]


class RunsCode:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"reluvit-pickle-ran-{os.getpid()}"


def test_a_checkpoint_that_would_run_code_is_refused(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*QUICK)
    good = run(cfg)
    ckpt = last_checkpoint(cfg.run_dir)
    torch.save({"state_dict": {}, "payload": RunsCode()}, ckpt)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(ckpt))}: refused: .*GLOBAL posix.system"):
        load_checkpoint(ckpt)
    from reluvit.run.evaluate import evaluate_run

    with pytest.raises(CheckpointError, match="refused"):
        evaluate_run(cfg.run_dir, {"fewshot": {"datasets": []}, "i1k": {"path": None}})
    summary = read_summary(cfg.run_dir)
    summary["status"] = "running"  # as if interrupted: a rerun resumes from the checkpoint
    (Path(cfg.run_dir) / SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(CheckpointError, match="refused"):
        run(cfg)
    assert not MARKER.exists()
    after = read_summary(cfg.run_dir)
    assert after["status"] == "failed" and after["global_step"] == good["global_step"]


def test_a_truncated_checkpoint_is_named_and_the_summary_keeps_its_figures(tiny_cfg):
    cfg = tiny_cfg(*QUICK)
    good = run(cfg)
    ckpt = last_checkpoint(cfg.run_dir)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    summary = read_summary(cfg.run_dir)
    summary["status"] = "running"
    (Path(cfg.run_dir) / SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(ckpt))}: unreadable.*move it away"):
        run(cfg)
    after = read_summary(cfg.run_dir)
    assert after["status"] == "failed" and "move it away" in after["error"]
    assert (after["global_step"], after["core_hours"], after["metrics"]) == (
        good["global_step"], good["core_hours"], good["metrics"])


def test_a_diverged_run_is_not_retried_unless_asked(tiny_cfg):
    cfg = tiny_cfg(*QUICK, "recipe.lr=1e30")  # the loss is no longer finite within the first steps
    diverged = run(cfg)
    assert diverged["status"] == "diverged"
    mtime = last_checkpoint(cfg.run_dir).stat().st_mtime_ns
    assert run(cfg)["status"] == "diverged"  # skipped: its checkpoint is not resumed
    assert last_checkpoint(cfg.run_dir).stat().st_mtime_ns == mtime
    cfg.resume = False  # asked: trained again from the start
    assert run(cfg)["global_step"] <= diverged["global_step"]
    assert last_checkpoint(cfg.run_dir).stat().st_mtime_ns != mtime

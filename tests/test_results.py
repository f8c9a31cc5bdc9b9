"""The roll-up: one row per run of any status, idempotent, rows follow their summaries, nothing dropped, an unreadable
summary skipped with a warning."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pandas as pd

from reluvit.report.rollup import collect, rollup
from reluvit.run.compose import compose
from reluvit.run.lock import LOCK


def fake_run(runs_dir: Path, status: str, *overrides: str, val_acc: float | None = 0.5, **results) -> str:
    """A run's summary (``results``: more of its top-level keys); a ``running`` one held by this live process (an
    ``interrupted`` one: recorded as running, held by no one)."""
    cfg = compose([f"runs_dir={runs_dir}", *overrides])
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    if status == "running":
        (run_dir / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
    status = "running" if status == "interrupted" else status
    metrics = {} if val_acc is None else {"val/acc": val_acc, "val/loss": 1.0}
    (run_dir / "summary.json").write_text(json.dumps({
        "run_name": cfg.run_name, "run_dir": str(run_dir), "status": status, "metrics": metrics,
        "config": OmegaConf.to_container(cfg, resolve=True), "core_hours": 0.01, **results,
    }))
    return cfg.run_name


def test_every_status_is_kept_with_grid_columns(tmp_path):
    names = {
        fake_run(tmp_path, "completed", "attention=relu", "attention.alpha=0.5"): "completed",
        fake_run(tmp_path, "diverged", "attention=relu2", "attention.alpha=0", val_acc=None): "diverged",
        fake_run(tmp_path, "failed", "attention=gelu", val_acc=None): "failed",
        fake_run(tmp_path, "running", "attention=softmax", val_acc=None): "running",
        fake_run(tmp_path, "interrupted", "attention=identity", val_acc=None): "interrupted",
    }
    table = collect(tmp_path)
    assert dict(zip(table["run_name"], table["status"], strict=True)) == names
    relu = table.set_index("run_name").loc["smoke-animal_mnist/mini4/relu-a0.5-s0"]
    assert (relu["activation"], relu["alpha"], relu["model"], relu["val_acc"]) == ("relu", 0.5, "mini4", 0.5)
    softmax = table.set_index("activation").loc["softmax"]
    assert pd.isna(softmax["alpha"]) and pd.isna(softmax["soft_sr"])  # keys that do not apply to the run: empty
    assert pd.isna(table.set_index("activation").loc["relu2", "val_acc"])


def test_rollup_is_idempotent_and_rows_follow_their_summaries(tmp_path):
    runs, stem = tmp_path / "runs", tmp_path / "results" / "runs"
    done = fake_run(runs, "completed", "attention=relu")
    live = fake_run(runs, "running", "attention=relu2", val_acc=None)
    first = rollup(runs, stem)
    assert rollup(runs, stem).equals(first)
    assert pd.read_parquet(stem.with_suffix(".parquet")).equals(first)

    # the finished run's summary changes on disk (re-evaluated): its row follows
    summary_path = Path(first.set_index("run_name").loc[done, "run_dir"]) / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["metrics"]["val/acc"] = 0.99
    summary_path.write_text(json.dumps(summary))
    # the running run finishes: its row is updated
    live_path = Path(first.set_index("run_name").loc[live, "run_dir"]) / "summary.json"
    summary = json.loads(live_path.read_text())
    summary.update(status="completed", metrics={"val/acc": 0.7, "val/loss": 0.9})
    live_path.write_text(json.dumps(summary))
    new = fake_run(runs, "failed", "attention=gelu", val_acc=None)

    table = rollup(runs, stem).set_index("run_name")
    assert table.loc[done, "val_acc"] == 0.99
    assert (table.loc[live, "status"], table.loc[live, "val_acc"]) == ("completed", 0.7)
    assert table.loc[new, "status"] == "failed"


def test_rollup_keeps_rows_of_runs_whose_directory_is_gone(tmp_path):
    import shutil

    runs, stem = tmp_path / "runs", tmp_path / "runs_table"
    name = fake_run(runs, "diverged", "attention=relu2", val_acc=None)
    rollup(runs, stem)
    shutil.rmtree(runs)
    runs.mkdir()
    assert list(rollup(runs, stem)["run_name"]) == [name]


def test_an_unreadable_summary_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    name = fake_run(tmp_path, "completed", "attention=relu")
    broken = tmp_path / "smoke-animal_mnist" / "mini4" / "broken" / "summary.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"run_name": "trunc')
    assert list(collect(tmp_path)["run_name"]) == [name]
    assert str(broken) in caplog.text


def test_rolling_up_again_reads_only_the_summaries_that_changed(tmp_path, monkeypatch):
    from reluvit.report import rollup as module

    runs, stem = tmp_path / "runs", tmp_path / "results" / "runs"
    done = fake_run(runs, "completed", "attention=relu")
    live = fake_run(runs, "running", "attention=relu2", val_acc=None)
    first = rollup(runs, stem).set_index("run_name")
    read = []
    summary_row = module.summary_row
    monkeypatch.setattr(module, "summary_row",
                        lambda summary, run_dir: read.append(summary["run_name"]) or summary_row(summary, run_dir))
    path = Path(first.loc[done, "run_dir"]) / "summary.json"
    summary = json.loads(path.read_text())
    summary["metrics"]["val/acc"] = 0.25
    path.write_text(json.dumps(summary))
    (Path(first.loc[live, "run_dir"]) / LOCK).unlink()  # the live run's process is gone: its summary is unchanged

    again = rollup(runs, stem).set_index("run_name")
    assert read == [done]
    assert again.loc[done, "val_acc"] == 0.25
    assert (first.loc[live, "status"], again.loc[live, "status"]) == ("running", "interrupted")


def test_reference_rollup_takes_completed_runs_from_clean_commits_once(tmp_path, caplog):
    """make reference-runs: completed runs from a clean commit join the committed roll-up; a failed run, one from a
    modified checkout and one the table records already (its recorded row kept) do not."""
    from reluvit.report.reference import extend

    clean, dirty = "0123abc", "0123abc-dirty"
    runs = tmp_path / "runs"
    recorded = fake_run(tmp_path / "gone", "completed", "attention=softmax", val_acc=0.9, git_revision=clean)
    table = tmp_path / "runs.csv"
    collect(tmp_path / "gone").to_csv(table, index=False)
    fake_run(runs, "completed", "attention=softmax", val_acc=0.1, git_revision=clean)  # the same run, again
    added = fake_run(runs, "completed", "attention=relu", git_revision=clean)
    fake_run(runs, "failed", "attention=gelu", git_revision=clean)
    modified = fake_run(runs, "completed", "attention=relu2", git_revision=dirty)
    assert list(extend(table, runs)["run_name"]) == [added]
    assert modified in caplog.text
    merged = pd.read_csv(table)
    assert list(merged["run_name"]) == [recorded, added]
    assert merged["val_acc"].tolist() == [0.9, 0.5]
    assert extend(table, runs).empty and len(pd.read_csv(table)) == 2  # again: nothing new

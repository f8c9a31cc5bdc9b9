"""Run state that survives a cluster: identities free of the environment (and earlier digests still matched), runs
found by what they hold wherever their directory is now, one runs directory for every command, the sweep manifest,
per-run status, and two processes sharing a runs directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import reluvit.report.status as status_module
from reluvit.report.rollup import best_rows, collect, config_identities, match, rollup
from reluvit.report.status import cached_collect, counts, describe, entries, run_states
from reluvit.run import lock
from reluvit.run.compose import compose, compose_containers, compose_points
from reluvit.run.grid import identities, identity
from reluvit.run.rundir import write_json_atomic
from reluvit.sweep import manifest, spec

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference" / "smoke"


def fake_run(runs_dir: Path, overrides: list[str], status: str = "completed", **extra) -> dict:
    """A run directory with the summary a run of ``overrides`` writes (nothing trained)."""
    config = OmegaConf.to_container(compose([f"runs_dir={runs_dir}", *overrides]))
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True)
    summary = {"run_name": config["run_name"], "run_dir": str(run_dir), "status": status,
               "identity": identity(config), "config": config, "metrics": {"val/acc": 0.5}, **extra}
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def test_the_committed_reference_rollup_is_matched_through_the_migration():
    """Every run of the committed smoke roll-ups (their digests from before data.path and data.num_workers left
    the identity) is found for the sweep points composed now: none would be trained again."""
    tables = [pd.read_csv(REFERENCE / name) for name in ("runs.csv", "train_length_runs.csv")]
    table = pd.concat(tables, ignore_index=True)
    found = set()
    for name in spec.names():
        if spec.has_scale(name, "smoke") and name != "demo":
            rows = match(config_identities(compose_points(spec.load(name, "smoke").points(True))), table)
            found |= {row["identity"] for row in rows if row is not None}
    assert found == set(table["identity"])
    assert not found & {ids[0] for ids in config_identities(compose_points([["model=micro4"]]))}  # digests moved


def test_the_identity_leaves_out_where_the_data_is_and_who_decodes_it():
    base = OmegaConf.to_container(compose(["data=imagefolder", "data.path=/d/x", "data.num_classes=3"]))
    for path in ("/d/x/", "/d/../d/x", "/scratch/copy"):
        moved = {**base, "data": {**base["data"], "path": path, "num_workers": 3}}
        assert identity(moved) == identity(base)
    other = {**base, "data": {**base["data"], "train_split": "train[:50%]"}}
    assert identity(other) != identity(base)


def test_a_summary_without_a_later_key_is_the_run_at_its_default():
    config = OmegaConf.to_container(compose(["model=micro4"]))
    older = json.loads(json.dumps(config))
    del older["recipe"]["crop_antialias"]  # a knob added after the run: it trained as at the default
    assert identity(older) == identity(config)
    changed = json.loads(json.dumps(config))
    changed["recipe"]["crop_antialias"] = True
    assert identity(changed) != identity(older)


def test_relative_and_moved_runs_dirs_are_rolled_up_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_run(Path("rel"), ["attention=softmax"])  # written under the relative path, as runs_dir=rel does
    points = [["runs_dir=elsewhere", "attention=softmax"], ["runs_dir=elsewhere"]]
    configs = compose_points(points)
    for runs_dir in ("rel", str(tmp_path / "rel")):
        assert [row is not None for row in match(config_identities(configs), collect(runs_dir))] == [True, False]
    shutil.move("rel", "moved")
    table = rollup("moved", tmp_path / "results" / "runs")
    assert list(table["status"]) == ["completed"] and table["run_dir"][0].startswith("moved")
    states = run_states(entries(compose_containers(points), "moved"), "moved", cached_collect("moved"))
    assert [s.status for s in states] == ["completed", "missing"]


def test_a_copied_run_is_one_row():
    rows = pd.DataFrame([
        {"identity": "a", "status": "interrupted", "run_dir": "x", "finished": None, "started": "2026-01-02"},
        {"identity": "a", "status": "completed", "run_dir": "y", "finished": "2026-01-01", "started": "2026-01-01"},
        {"identity": "b", "status": "failed", "run_dir": "z", "finished": None, "started": "2026-01-03"}])
    assert list(best_rows(rows)["run_dir"]) == ["y", "z"]


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reluvit", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_one_runs_directory_for_every_command(tmp_path):
    for overrides in (["attention=softmax"], ["attention=relu", "attention.alpha=0.0"], ["attention=relu"]):
        fake_run(tmp_path / "x", ["recipe.epochs=8", "eval=none", *overrides])
    # the demo's three runs, completed in X: `reluvit sweep demo runs_dir=X` trains nothing and rolls X up
    result = cli("sweep", "demo", "runs_dir=x", "--results-dir", "res", "recipe.epochs=8", "eval=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "roll-up: 3 runs" in result.stderr and len(pd.read_csv(tmp_path / "res" / "runs.csv")) == 3
    status = cli("status", "demo", cwd=tmp_path, env={"RELUVIT_RUNS_DIR": "x"})  # the manifest: no overrides
    assert status.returncode == 0 and status.stdout.splitlines()[1].split()[:4] == ["demo", "smoke", "3", "3"]
    clash = cli("status", "demo", "--runs-dir", "x", "runs_dir=y", cwd=tmp_path)
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "give one" in clash.stderr


def test_status_names_queued_jobs_failures_and_progress(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    done = fake_run(runs_dir, ["seed=0"])
    failed = fake_run(runs_dir, ["seed=1"], status="failed", error="RuntimeError: CUDA out of memory\nmore")
    running = fake_run(runs_dir, ["seed=2"], status="running")
    lock_file = Path(running["run_dir"]) / lock.LOCK
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": time.time() - 12, "step": 7,
                                     "total": 560}))
    runs = entries(compose_containers([[f"runs_dir={runs_dir}", f"seed={s}"] for s in range(5)]), runs_dir)
    manifest.write_manifest(runs_dir, "demo-smoke", [], runs, {
        runs[3]["run_dir"]: {"job_id": "41_3", "stderr": "/logs/41_3_0_log.err"},
        runs[4]["run_dir"]: {"job_id": "41_4", "stderr": "/logs/41_4_0_log.err"}})
    recorded = manifest.read_manifest(runs_dir, "demo-smoke")["runs"]
    assert [r["run_dir"] for r in recorded][:1] == [str(Path(done["run_dir"]).relative_to(runs_dir))]
    monkeypatch.setattr(status_module, "queue_states", lambda jobs: {"41_3": "PENDING"} if "41_3" in jobs else {})
    states = run_states(recorded, runs_dir, collect(runs_dir))
    assert [s.status for s in states] == ["completed", "failed", "running", "queued", "failed"]
    assert counts("demo", "smoke", states)["queued"] == 1
    lines = describe(states, failed=True)
    assert any("step 7/560, heartbeat 1" in line for line in lines), lines
    assert f"  {failed['run_name']} [failed]: RuntimeError: CUDA out of memory" in lines
    assert any("job 41_4 ended without writing a summary" in line for line in lines)


def test_a_run_another_process_trains_is_waited_for_not_failed(tmp_path):
    """Two sweeps sharing a runs directory: the second leaves a run the first is training to it, and counts it by
    how it ends there."""
    from reluvit.sweep.execute import Point, run_here

    cfg = compose([f"runs_dir={tmp_path}", "trainer.max_steps=1"])
    run_dir = Path(cfg.run_dir)
    held, release = threading.Event(), threading.Event()

    def other_process():
        with lock.hold(run_dir):
            held.set()
            release.wait(10)
            summary = {"run_name": cfg.run_name, "run_dir": str(run_dir), "status": "completed",
                       "config": OmegaConf.to_container(cfg)}
            write_json_atomic(run_dir / "summary.json", summary)

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()
    assert run_here([Point([], cfg)], poll_s=0.1) == []
    thread.join()


def test_identities_lists_the_current_digest_first():
    config = OmegaConf.to_container(compose(["model=micro4"]))
    assert identities(config)[0] == identity(config) and len(set(identities(config))) == 2


def test_queue_states_without_slurm_are_empty(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert manifest.queue_states(["1_0"]) == {}


def test_a_resume_on_a_copy_of_the_data_is_accepted_and_on_other_data_refused(tmp_path):
    from PIL import Image

    from reluvit.data.fingerprint import fingerprint
    from reluvit.run.rundir import check_same_data
    from reluvit.run.schema import ConfigError

    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for name in classes:
            (tmp_path / "d" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "d" / split / name / "a.png")
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    recorded = {"run_dir": "runs/r", "data_fingerprint": fingerprint({"dataset": "imagefolder",
                                                                      "path": str(tmp_path / "d")})}
    check_same_data(recorded, fingerprint({"dataset": "imagefolder", "path": str(tmp_path / "copy/")}), "copy")
    Image.new("RGB", (8, 9)).save(tmp_path / "copy" / "train" / "dog" / "b.png")
    with pytest.raises(ConfigError, match="runs/r was trained on other data") as error:
        check_same_data(recorded, fingerprint({"dataset": "imagefolder", "path": str(tmp_path / "copy")}), "copy")
    assert "\n" not in str(error.value)


def test_a_shard_run_resumed_on_another_layout_records_it():
    from reluvit.run.train import _note_stream_layout

    previous = {"world_size": 8, "micro_batch_size": 512, "global_step": 900}
    summary = {"world_size": 4, "micro_batch_size": 512}
    _note_stream_layout(summary, previous, "shards")
    assert summary["stream_layout_changes"] == [{"step": 900, "from": {"world_size": 8, "micro_batch_size": 512},
                                                 "to": {"world_size": 4, "micro_batch_size": 512}}]
    for dataset, layout in (("animal_mnist", {"world_size": 4}), ("shards", {"world_size": 8})):
        summary = {"micro_batch_size": 512, **layout}
        _note_stream_layout(summary, previous, dataset)  # map-style data, or the same layout: nothing changed
        assert "stream_layout_changes" not in summary

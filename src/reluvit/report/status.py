"""Where each run of a sweep stands: completed, running (with its step and heartbeat), queued (a SLURM job waiting),
interrupted (recorded as running, but no live process holds it: rerunning resumes it), failed (with its error line
and logs), diverged, unreadable (its summary.json, with what is wrong with it), missing (not started) or, for a run
of a model only a GPU trains (the smoke L = 784 column), needs_gpu. Runs are found by what they are (identity),
wherever their directory is now; the sweep's runs come from its manifest (:mod:`reluvit.sweep.manifest`) or,
without one, from its composition."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reluvit.report.rollup import collect, match, read_table, summary_problem, write_table
from reluvit.run.lock import read_lock
from reluvit.run.rundir import SUMMARY, Status
from reluvit.sweep.manifest import STATE_DIR, last_job, queue_states, read_manifest, run_dir_of

STATUSES = (Status.COMPLETED, Status.RUNNING, Status.QUEUED, Status.INTERRUPTED, Status.FAILED, Status.DIVERGED,
            Status.UNREADABLE, Status.MISSING, Status.NEEDS_GPU)  # the order status lists them in
ACTIVE = (Status.QUEUED, Status.RUNNING)  # someone is on it: a sweep launched again leaves these runs alone
_QUEUED, _RUNNING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"), ("RUNNING", "CONFIGURING", "COMPLETING")
log = logging.getLogger(__name__)


@dataclass
class RunState:
    run_name: str
    run_dir: Path
    status: str
    job: str | None = None
    step: int | None = None
    total: int | None = None
    heartbeat_age_s: float | None = None
    error: str | None = None
    logs: list[str] = field(default_factory=list)

    def progress(self) -> str:
        """``step 120/560, heartbeat 12 s ago, job 45_3`` (what is known of it)."""
        parts = [f"step {self.step}/{self.total or '?'}" if self.step is not None else None,
                 f"heartbeat {self.heartbeat_age_s:.0f} s ago" if self.heartbeat_age_s is not None else None,
                 f"job {self.job}" if self.job else None]
        return ", ".join(p for p in parts if p)


def entries(configs: list[dict], runs_dir: str | Path, gpu_models: set[str] = frozenset()) -> list[dict]:
    """Manifest entries (:func:`reluvit.sweep.manifest.write_manifest`) of resolved run configs (plain, as
    :func:`reluvit.run.compose.compose_containers` gives them)."""
    from reluvit.run.grid import identities

    return [{"run_name": config["run_name"], "run_dir": config["run_dir"], "identities": identities(config),
             "needs_gpu": config["model"]["name"] in gpu_models} for config in configs]


def cached_collect(runs_dir: str | Path) -> pd.DataFrame:
    """:func:`reluvit.report.rollup.collect` of the runs directory, reusing the rows of the summaries that did not
    change since the last call (kept in ``<runs_dir>/.reluvit/rollup.parquet``), so a status of 10 000 runs reads
    only what changed."""
    cache = Path(runs_dir) / STATE_DIR / "rollup"
    try:
        known = read_table(cache.with_suffix(".parquet"))
    except Exception:  # noqa: BLE001 - no cache yet, or a broken one: read every summary
        known = None
    table = collect(runs_dir, known)
    try:
        write_table(table, cache, csv=False)
    except (OSError, ValueError, TypeError) as e:  # a read-only runs directory (or a row pyarrow refuses): the
        log.debug("no row cache %s: %s", cache, e)  # status is still right, only slower next time
    return table


def run_states(runs: list[dict], runs_dir: str | Path, table: pd.DataFrame) -> list[RunState]:
    """The state of each manifest entry, from the roll-up ``table`` of ``runs_dir``, the runs' locks and one
    ``squeue`` call for the jobs the entries name."""
    jobs = [job["job_id"] for run in runs if (job := last_job(run))]
    queue = queue_states(jobs)
    states = []
    for run, row in zip(runs, match([run["identities"] for run in runs], table), strict=True):
        job = last_job(run)
        job_id = job["job_id"] if job else None
        in_queue = queue.get(job_id)
        where = Path(row["run_dir"]) if row is not None else run_dir_of(run, runs_dir)
        logs = [str(where / "train.log"), *([job["stderr"]] if job else [])]
        state = RunState(run["run_name"], where, _status(row, in_queue, job, where, run), job_id, logs=logs)
        if row is not None and state.status in (Status.FAILED, Status.INTERRUPTED, Status.DIVERGED):
            state.error = _first_line(row.get("error"))
        elif state.status == Status.FAILED:
            state.error = f"job {job_id} ended without writing a summary"
        elif state.status == Status.UNREADABLE:
            state.error = summary_problem(where) or "it records another run (its identity differs)"
        if state.status == Status.RUNNING:
            lock = read_lock(where)
            lock = lock if isinstance(lock, dict) else {}
            state.step, state.total = lock.get("step"), lock.get("total")
            try:
                state.heartbeat_age_s = max(0.0, time.time() - float(lock["time"]))
            except (KeyError, TypeError, ValueError):  # no heartbeat yet, or an unreadable one
                pass
        states.append(state)
    return states


def _status(row: dict | None, in_queue: str | None, job: dict | None, run_dir: Path, run: dict) -> str:
    if in_queue in _QUEUED and (row is None or row["status"] in (Status.INTERRUPTED, Status.FAILED)):
        return Status.QUEUED  # not started yet, or requeued after a preemption or time-out
    if in_queue in _RUNNING and (row is None or row["status"] == Status.INTERRUPTED):
        return Status.RUNNING  # started, not yet holding its directory
    if row is not None:
        return row["status"]
    if (run_dir / SUMMARY).exists():
        return Status.UNREADABLE
    if job is not None:
        return Status.FAILED  # its job ended before the run wrote a summary
    return Status.NEEDS_GPU if run.get("needs_gpu") else Status.MISSING


def _first_line(text) -> str | None:
    return str(text).strip().splitlines()[0][:300] if isinstance(text, str) and text.strip() else None


def counts(sweep: str, scale: str, states: list[RunState]) -> dict:
    """A status table row: the sweep, its runs and how many are in each status."""
    tally = pd.Series([s.status for s in states], dtype=str).value_counts()
    return {"sweep": sweep, "scale": scale, "runs": len(states), **{s: int(tally.get(s, 0)) for s in STATUSES}}


def describe(states: list[RunState], failed: bool, limit: int = 20) -> list[str]:
    """Lines for the runs that need a look: each run whose summary is unreadable (and what is wrong with it),
    running ones (step, heartbeat, job) and, with ``failed``, each failed, interrupted or diverged run's error line
    and log files."""
    lines = []
    if unreadable := [s for s in states if s.status == Status.UNREADABLE]:
        lines.append("unreadable:")
        lines += [f"  {s.run_name}: {s.run_dir / SUMMARY}: {s.error or 'unreadable'}" for s in unreadable]
    for title, wanted, detail in (("running", (Status.RUNNING,), RunState.progress),
                                  ("failed", (Status.FAILED, Status.INTERRUPTED, Status.DIVERGED) if failed else (),
                                   None)):
        chosen = [s for s in states if s.status in wanted]
        if not chosen:
            continue
        lines.append(f"{title}:")
        for state in chosen[:limit] if detail else chosen:
            if detail:
                lines.append(f"  {state.run_name}: {detail(state) or 'no heartbeat yet'}")
            else:
                lines.append(f"  {state.run_name} [{state.status}]: {state.error or 'no error recorded'}")
                lines.append(f"    logs: {' '.join(p for p in state.logs if os.path.exists(p)) or 'none yet'}")
        if detail and len(chosen) > limit:
            lines.append(f"  ... and {len(chosen) - limit} more")
    return lines


def sweep_runs(sweep, runs_dir: Path, overrides: list[str] = (), seeds: list[int] | None = None) -> list[dict]:
    """The runs of a sweep as its manifest records them (launched into this runs directory, with the overrides it
    was launched with), or, without one (or when overrides or seeds are given), as composed now."""
    manifest = None if overrides or seeds else read_manifest(runs_dir, f"{sweep.name}-{sweep.scale}")
    return manifest["runs"] if manifest is not None else composed_runs(sweep, runs_dir, overrides)


def composed_runs(sweep, runs_dir: Path, overrides: list[str] = ()) -> list[dict]:
    """The entries (:func:`entries`) of every point of the sweep, a GPU's blocks too, composed now with
    ``overrides``, into ``runs_dir``."""
    from reluvit.run.compose import compose_containers

    extra = [f"runs_dir={runs_dir.resolve()}", *overrides]
    return entries(compose_containers(sweep.points(True, extra)), runs_dir, set(sweep.gpu_only_models()))

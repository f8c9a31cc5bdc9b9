"""``reluvit status``: per sweep, how many of its runs are in each status: completed, running, interrupted (recorded
as running, but no live process holds it: rerunning resumes it), failed, diverged, unreadable (its summary.json) or
missing (no summary yet)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reluvit.run.compose import compose_points
from reluvit.run.rundir import SUMMARY
from reluvit.sweep.spec import Sweep

STATUSES = ("completed", "running", "interrupted", "failed", "diverged", "unreadable", "missing")


def run_dirs(sweep: Sweep, gpu: bool, extra: list[str] = ()) -> list[str]:
    """The run directories of a sweep's runnable points, in order, without repeats."""
    return list(dict.fromkeys(cfg.run_dir for cfg in compose_points(sweep.points(gpu, extra))))


def status_table(sweeps: list[Sweep], runs: pd.DataFrame, gpu: bool, extra: list[str] = ()) -> pd.DataFrame:
    """One row per sweep: its runnable runs and how many are in each status (``missing``: no summary yet)."""
    by_dir = runs.set_index("run_dir")["status"] if len(runs) else pd.Series(dtype=str)
    rows = []
    for sweep in sweeps:
        dirs = run_dirs(sweep, gpu, extra)
        counts = pd.Series([by_dir.get(d) or _unrecorded(d) for d in dirs], dtype=str).value_counts()
        rows.append({"sweep": sweep.name, "scale": sweep.scale, "runs": len(dirs),
                     **{s: int(counts.get(s, 0)) for s in STATUSES}})
    return pd.DataFrame(rows)


def _unrecorded(run_dir: str) -> str:
    """A run with no row in the roll-up: its summary could not be read, or it has none yet."""
    return "unreadable" if (Path(run_dir) / SUMMARY).exists() else "missing"

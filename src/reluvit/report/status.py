"""``reluvit status``: per sweep, how many of its runs are in each status: completed, running, interrupted (recorded
as running, but no live process holds it: rerunning resumes it), failed, diverged, unreadable (its summary.json),
missing (no summary yet) or, for a run of a model only a GPU trains (the smoke L = 784 column), needs_gpu."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reluvit.report.rollup import completed_in, recorded_run_dirs
from reluvit.run.compose import compose_points
from reluvit.run.rundir import SUMMARY
from reluvit.sweep.spec import Sweep

STATUSES = ("completed", "running", "interrupted", "failed", "diverged", "unreadable", "missing", "needs_gpu")


def run_dirs(sweep: Sweep, gpu: bool, extra: list[str] = (), elsewhere: pd.DataFrame | None = None) -> list[str]:
    """The run directories of a sweep's runnable points, in order, without repeats; a run completed in
    ``elsewhere`` (a roll-up table) is the directory that table records (:func:`completed_in`)."""
    return _dirs(compose_points(sweep.points(gpu, extra)), elsewhere)


def _dirs(configs: list, elsewhere: pd.DataFrame | None = None) -> list[str]:
    """:func:`run_dirs` of configs already composed."""
    done = completed_in(configs, elsewhere) if elsewhere is not None else {}
    return list(dict.fromkeys(recorded_run_dirs(configs, done)))


def status_table(sweeps: list[Sweep], runs: pd.DataFrame, gpu: bool, extra: list[str] = ()) -> pd.DataFrame:
    """One row per sweep: its runnable runs and how many are in each status (``missing``: no summary yet;
    ``needs_gpu``: the same, for a run of a model only a GPU trains, as the figures count it)."""
    by_dir = runs.set_index("run_dir")["status"] if len(runs) else pd.Series(dtype=str)
    rows = []
    for sweep in sweeps:
        configs = compose_points(sweep.points(gpu, extra))  # composed once: the slow part of `reluvit status`
        dirs, gpu_models = _dirs(configs), set(sweep.gpu_only_models())
        gpu_only = {c.run_dir for c in configs if c.model.name in gpu_models}
        counts = pd.Series([by_dir.get(d) or _unrecorded(d, d in gpu_only) for d in dirs], dtype=str).value_counts()
        rows.append({"sweep": sweep.name, "scale": sweep.scale, "runs": len(dirs),
                     **{s: int(counts.get(s, 0)) for s in STATUSES}})
    return pd.DataFrame(rows)


def _unrecorded(run_dir: str, gpu_only: bool) -> str:
    """A run with no row in the roll-up: its summary could not be read, or it has none yet (on a GPU, if only one
    trains it)."""
    if (Path(run_dir) / SUMMARY).exists():
        return "unreadable"
    return "needs_gpu" if gpu_only else "missing"

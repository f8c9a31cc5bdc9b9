"""Roll-up: every run's ``summary.json`` under a runs directory into one pandas table, one row per run, the grid
keys as columns (``results/runs.parquet`` and ``.csv``). The summaries are the truth: rolling up again rewrites the
row of every run found (an evaluation added metrics, a run finished) and keeps the rows of runs whose directory
has gone. Imports nothing heavier than pandas."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from reluvit.run.grid import grid_point, identity
from reluvit.run.lock import live_status
from reluvit.run.rundir import SUMMARY, read_summary
from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)
RESULT_KEYS = ("status", "core_hours", "train_seconds", "examples_seen", "train_flops", "global_step", "epoch",
               "params", "world_size", "device", "attention_impl", "label_set", "data_loader", "started", "finished",
               "git_revision")


def summary_row(summary: dict) -> dict:
    """The table row of a run: its name, grid keys, identity, outcome and metrics (``val/acc`` -> ``val_acc``)."""
    row = {"run_name": summary["run_name"], **grid_point(summary["config"]), "identity": identity(summary["config"])}
    row.update({key: summary.get(key) for key in RESULT_KEYS})
    row["status"] = live_status(summary["status"], summary["run_dir"])
    row.update({k.replace("/", "_"): v for k, v in summary.get("metrics", {}).items()})
    row["run_dir"] = summary["run_dir"]
    return row


def run_dirs_with_summaries(runs_dir: str | Path):
    """Every directory under ``runs_dir`` that holds a ``summary.json`` (a directory of that name too, so that it is
    reported)."""
    for root, dirs, files in os.walk(runs_dir):
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "csv", "wandb", ".submitit")]  # no summaries there
        if SUMMARY in files or SUMMARY in dirs:
            yield root


def collect(runs_dir: str | Path, known: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run found under ``runs_dir`` (any status), sorted by run name. A row of ``known`` (an earlier
    roll-up) is reused while its summary's modification time and size are unchanged, so rolling up again only
    stats the runs that did not change; the status of a run recorded as running is looked at afresh (its
    heartbeat). An unreadable summary is skipped with a warning naming it."""
    cached = {}
    if known is not None and "summary_stamp" in known:
        cached = {os.path.abspath(row["run_dir"]): row for row in known.to_dict("records")}
    rows = []
    for run_dir in run_dirs_with_summaries(runs_dir):
        stat = os.stat(os.path.join(run_dir, SUMMARY))
        stamp = f"{stat.st_mtime_ns}-{stat.st_size}"
        row = cached.get(os.path.abspath(run_dir))
        if row is not None and row["summary_stamp"] == stamp:
            if row["status"] in ("running", "interrupted"):
                row["status"] = live_status("running", row["run_dir"])
        else:
            try:
                row = {**summary_row(read_summary(run_dir)), "summary_stamp": stamp}
            except ConfigError as e:
                log.warning("skipping %s", e.message)
                continue
        rows.append(row)
    return pd.DataFrame(rows).sort_values("run_name", ignore_index=True) if rows else pd.DataFrame()


def read_table(path: str | Path) -> pd.DataFrame:
    """A roll-up table from its ``.parquet`` or ``.csv`` file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("table", f"no roll-up table {path}")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def completed_in(configs: list, table: pd.DataFrame) -> dict[int, str]:
    """Index of each resolved run config whose run is completed in ``table`` (a roll-up: same identity, status
    completed) -> the run directory the table records, wherever it was: a runs directory that is gone (a purged
    scratch, another machine, the committed reference) need not be trained again, and its row stands for the run."""
    completed = table[table["status"] == "completed"] if len(table) else table
    where = dict(zip(completed.get("identity", []), completed.get("run_dir", []), strict=True))
    identities = [identity(OmegaConf.to_container(cfg, resolve=True)) for cfg in configs]
    return {i: where[key] for i, key in enumerate(identities) if key in where}


def recorded_run_dirs(configs: list, done: dict[int, str]) -> list[str]:
    """Each config's run directory, or the one a table records for it where :func:`completed_in` found it done."""
    return [done.get(i, cfg.run_dir) for i, cfg in enumerate(configs)]


def write_table(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """``<stem>.parquet`` and ``<stem>.csv``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".parquet"), stem.with_suffix(".csv")]
    df.to_parquet(paths[0], index=False)
    df.to_csv(paths[1], index=False)
    return paths


def rollup(runs_dir: str | Path, stem: str | Path, also: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge the runs found under ``runs_dir`` into the table at ``<stem>.parquet`` (created if missing): found runs
    replace their rows, rows of runs not found are kept, and so are the rows of ``also`` (another roll-up) that the
    table lacks. Writes it back with its CSV twin and returns it."""
    stem = Path(stem)
    previous = stem.with_suffix(".parquet")
    old = pd.read_parquet(previous) if previous.exists() else None
    if also is not None and len(also):
        known = old["run_dir"] if old is not None and "run_dir" in old else []
        extra = also[~also["run_dir"].isin(known)]
        old = pd.concat([old, extra], ignore_index=True) if old is not None else extra
    table = collect(runs_dir, old)
    if old is not None:
        gone = old[~old["run_dir"].isin(table.get("run_dir", []))] if "run_dir" in old else old
        table = pd.concat([gone, table], ignore_index=True) if len(table) else gone
    if len(table):
        table = table.sort_values("run_name", ignore_index=True)
    write_table(table, stem)
    return table

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
from reluvit.run.grid import identities as grid_identities
from reluvit.run.lock import live_status
from reluvit.run.rundir import SUMMARY, read_summary
from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)
RESULT_KEYS = ("status", "core_hours", "train_seconds", "examples_seen", "train_flops", "global_step", "epoch",
               "params", "world_size", "device", "attention_impl", "label_set", "data_loader", "started", "finished",
               "git_revision", "error")


def summary_row(summary: dict, run_dir: str | Path) -> dict:
    """The table row of the run found in ``run_dir``: its name, grid keys, identity, outcome and metrics
    (``val/acc`` -> ``val_acc``). ``run_dir`` is where it is now, whatever path the summary was written under."""
    row = {"run_name": summary["run_name"], **grid_point(summary["config"]), "identity": identity(summary["config"])}
    row.update({key: summary.get(key) for key in RESULT_KEYS})
    row["status"] = live_status(summary["status"], run_dir)
    row.update({k.replace("/", "_"): v for k, v in summary.get("metrics", {}).items()})
    row["run_dir"] = str(run_dir)
    return row


def run_dirs_with_summaries(runs_dir: str | Path):
    """Every directory under ``runs_dir`` that holds a ``summary.json`` (a directory of that name too, so that it is
    reported)."""
    for root, dirs, files in os.walk(runs_dir):
        # no summaries there (.reluvit, .submitit: reluvit's and submitit's own files)
        dirs[:] = [d for d in dirs if d not in ("checkpoints", "csv", "wandb") and not d.startswith(".")]
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
                row = {**summary_row(read_summary(run_dir), run_dir), "summary_stamp": stamp}
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


# Which row stands for a run when a table holds several of the same identity (a copied run directory, a rerun beside
# a committed row): the one furthest along, then the latest
_PREFERENCE = {"completed": 0, "diverged": 1, "running": 2, "interrupted": 3, "failed": 4}


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per identity: the completed one before others, then the one that finished (or started) last."""
    if not len(table):
        return table
    rank = table["status"].map(_PREFERENCE).fillna(len(_PREFERENCE))
    when = table.get("finished", pd.Series(index=table.index, dtype=object)).fillna(table.get("started", ""))
    order = pd.DataFrame({"rank": rank, "when": when.astype(str)}).sort_values(["rank", "when"],
                                                                              ascending=[True, False])
    return table.loc[order.index].drop_duplicates("identity").sort_index()


def match(identities: list[list[str]], table: pd.DataFrame) -> list[dict | None]:
    """The row of each run (given by its identities: :func:`reluvit.run.grid.identities`) in a roll-up table, or
    None: runs are found by what they are, not by the directory they were written under."""
    if not len(table) or "identity" not in table:
        return [None] * len(identities)
    rows = {row["identity"]: row for row in best_rows(table).to_dict("records")}
    return [next((rows[key] for key in keys if key in rows), None) for keys in identities]


def config_identities(configs: list) -> list[list[str]]:
    """:func:`reluvit.run.grid.identities` of composed configs (DictConfig or plain)."""
    return [grid_identities(cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True))
            for cfg in configs]


def completed_in(configs: list, table: pd.DataFrame) -> dict[int, str]:
    """Index of each run config whose run is completed in ``table`` (a roll-up) -> the run directory the table
    records, wherever it was: a runs directory that is gone (a purged scratch, another machine, the committed
    reference) need not be trained again, and its row stands for the run."""
    found = match(config_identities(configs), table)
    return {i: row["run_dir"] for i, row in enumerate(found) if row is not None and row["status"] == "completed"}


def select(identities: list[list[str]], table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` that stand for the runs given by their identities (a sweep's), one per run that has
    one."""
    rows = [row for row in match(identities, table) if row is not None]
    return pd.DataFrame(rows, columns=table.columns).drop_duplicates("identity") if len(table) else table


def write_table(df: pd.DataFrame, stem: str | Path, csv: bool = True) -> list[Path]:
    """``<stem>.parquet`` (and ``.csv``), each written whole or not at all: a reader never sees half a table."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".parquet"), *([stem.with_suffix(".csv")] if csv else [])]
    for path in paths:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return paths


def rollup(runs_dir: str | Path, stem: str | Path, also: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge the runs found under ``runs_dir`` into the table at ``<stem>.parquet`` (created if missing): found runs
    replace the rows of the same run (identity) or directory, rows of runs not found are kept, and so are the rows
    of ``also`` (another roll-up) of runs the table lacks; one row per identity (:func:`best_rows`). Writes it back
    with its CSV twin and returns it."""
    stem = Path(stem)
    previous = stem.with_suffix(".parquet")
    old = pd.read_parquet(previous) if previous.exists() else None
    found = collect(runs_dir, old)
    here = {os.path.abspath(d) for d in found.get("run_dir", [])}
    parts = [found]
    for other in (old, also):
        if other is not None and len(other):
            elsewhere = ~other["identity"].isin(found.get("identity", [])) & \
                ~other["run_dir"].map(lambda d: os.path.abspath(str(d)) in here)
            parts.append(other[elsewhere])
    parts = [p for p in parts if len(p)]
    table = best_rows(pd.concat(parts, ignore_index=True)) if parts else pd.DataFrame()
    if len(table):
        table = table.sort_values("run_name", ignore_index=True)
    write_table(table, stem)
    return table

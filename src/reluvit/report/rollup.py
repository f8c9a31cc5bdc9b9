"""Roll-up: every run's ``summary.json`` under a runs directory into one pandas table, one row per run, the grid
keys as columns (``results/runs.parquet`` and ``.csv``). The summaries are the truth: rolling up again rewrites the
row of every run found (an evaluation added metrics, a run finished) and keeps the rows of runs whose directory
has gone. A summary the roll-up cannot use (unparseable, or lacking what a row needs) is skipped with one log line
naming it and what is wrong; a table that cannot be read is named in one line too. Imports nothing heavier than
pandas."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from reluvit.run.grid import grid_point, identity
from reluvit.run.grid import identities as grid_identities
from reluvit.run.lock import live_status
from reluvit.run.rundir import RECORDED, SUMMARY, Status
from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)
RESULT_KEYS = ("status", "core_hours", "train_seconds", "examples_seen", "train_flops", "global_step", "epoch",
               "params", "world_size", "device", "attention_impl", "label_set", "data_loader", "started", "finished",
               "git_revision", "error")
# The type each result key has in a summary (None aside): a row of another type would break the table's column
_NUMBERS = ("core_hours", "train_seconds", "examples_seen", "train_flops", "global_step", "epoch", "params",
            "world_size")
_TEXTS = ("device", "attention_impl", "label_set", "data_loader", "started", "finished", "git_revision", "error")
# The statuses a summary records (interrupted: only as the roll-up reads a stale running one)

TABLE_KEYS = ("run_name", "identity", "status", "run_dir")  # the columns every roll-up table has (unless empty)


class Unusable(ValueError):
    """A summary (or table) the roll-up cannot use; ``str()`` says what is missing or wrong, in a few words."""


def _kind(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _is_number(value) -> bool:
    return value is None or isinstance(value, int | float)


def read_summary_json(run_dir: str | Path) -> dict:
    """The JSON object in ``run_dir``'s ``summary.json``; :class:`Unusable` when it cannot be read or parsed."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError) as e:  # a directory, gone, no permission, truncated, not UTF-8
        raise Unusable(f"{type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(summary, dict):
        raise Unusable(f"{_kind(summary)}, not a run summary")
    return summary


def summary_row(summary: dict, run_dir: str | Path) -> dict:
    """The table row of the run found in ``run_dir``: its name, grid keys, identity, outcome and metrics
    (``val/acc`` -> ``val_acc``). ``run_dir`` is where it is now, whatever path the summary was written under.
    :class:`Unusable` saying what is missing or wrong when the summary lacks what a row needs."""
    check_summary(summary)
    config = summary["config"]
    try:  # an older schema's keys are migrated by the identity; a config without the keys it needs is refused
        point, digest = grid_point(config), identity(config)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise Unusable(f"config has no {e.args[0]!r} (renamed or removed?)" if isinstance(e, KeyError) and e.args
                       else f"config unusable ({type(e).__name__}: {str(e)[:80]})") from None
    if odd := next((key for key, value in point.items() if isinstance(value, dict | list)), None):
        raise Unusable(f"config's {odd} is {_kind(point[odd])}, not a value")
    row = {"run_name": summary["run_name"], **point, "identity": digest}
    row.update({key: summary.get(key) for key in RESULT_KEYS})
    row["status"] = live_status(summary["status"], run_dir)
    row.update({k.replace("/", "_"): v for k, v in (summary.get("metrics") or {}).items()})
    row["run_dir"] = str(run_dir)
    return row


def check_summary(summary: dict) -> None:
    """:class:`Unusable` naming the first key a roll-up row needs that ``summary`` lacks or holds in another type:
    ``run_name``, ``status``, ``config``; ``metrics`` (a mapping of numbers) and the result keys when present."""
    for key, wanted in (("run_name", str), ("status", str), ("config", dict)):
        if key not in summary:
            raise Unusable(f"no {key}")
        if not isinstance(summary[key], wanted):
            raise Unusable(f"{key} is {_kind(summary[key])}, not {_kind(wanted())}")
        if not summary[key]:
            raise Unusable(f"{key} is empty")
    if summary["status"] not in RECORDED:
        raise Unusable(f"status {summary['status'][:40]!r} is none of {', '.join(RECORDED)}")
    metrics = summary.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise Unusable(f"metrics is {_kind(metrics)}, not a mapping")
    if odd := next((key for key, value in (metrics or {}).items() if not _is_number(value)), None):
        raise Unusable(f"metric {odd[:60]!r} is {_kind(metrics[odd])}, not a number")
    for keys, fits, kind in ((_NUMBERS, _is_number, "a number"),
                             (_TEXTS, lambda v: v is None or isinstance(v, str), "a string")):
        if odd := next((key for key in keys if not fits(summary.get(key))), None):
            raise Unusable(f"{odd} is {_kind(summary[odd])}, not {kind}")


def summary_problem(run_dir: str | Path) -> str | None:
    """What keeps the roll-up from using ``run_dir``'s ``summary.json`` (:class:`Unusable`'s words), None when
    nothing does."""
    try:
        summary_row(read_summary_json(run_dir), run_dir)
    except Unusable as e:
        return str(e)
    return None


def run_dirs_with_summaries(runs_dir: str | Path):
    """Every directory under ``runs_dir`` that holds a ``summary.json`` (a directory of that name too, so that it is
    reported), in name order. Symbolic links to directories are followed (run directories kept on another disk),
    after the directories that are not links: a directory reached again (a link to a parent: a loop; a second name
    for a run directory) is skipped with one log line, so no run is found twice and no walk goes round."""
    seen: dict[tuple[int, int], str] = {}  # (device, inode) of each directory walked -> the name it was walked as
    tops = [str(runs_dir)]
    while tops:
        for root, dirs, files in os.walk(tops.pop(0), onerror=_unwalkable):
            try:
                stat = os.stat(root)
            except OSError:  # gone since it was listed
                dirs[:] = []
                continue
            if (stat.st_dev, stat.st_ino) in seen:
                log.info("skipping %s: the same directory as %s (a symbolic link)", root,
                         seen[stat.st_dev, stat.st_ino])
                dirs[:] = []
                continue
            seen[stat.st_dev, stat.st_ino] = root
            # no summaries there (.reluvit, .submitit: reluvit's and submitit's own files)
            dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "csv", "wandb") and not d.startswith("."))
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            tops += [os.path.join(root, d) for d in links]  # walked once the real directories are
            if SUMMARY in files or SUMMARY in dirs:
                yield root
            dirs[:] = [d for d in dirs if d not in links]


def _unwalkable(error: OSError) -> None:
    if not isinstance(error, FileNotFoundError):  # gone meanwhile, or no runs directory yet: nothing to say
        log.warning("skipping %s: %s", error.filename, error.strerror or error)


def collect(runs_dir: str | Path, known: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run found under ``runs_dir`` (any status), sorted by run name. A row of ``known`` (an earlier
    roll-up) is reused while its summary's modification time and size are unchanged, so rolling up again only
    stats the runs that did not change; the status of a run recorded as running is looked at afresh (its
    heartbeat). A summary that cannot be used is skipped with one warning naming it and what is wrong."""
    cached = {}
    if known is not None and "summary_stamp" in known and "run_dir" in known:
        cached = {os.path.abspath(str(row["run_dir"])): row for row in known.to_dict("records")}
    rows = []
    for run_dir in run_dirs_with_summaries(runs_dir):
        path = os.path.join(run_dir, SUMMARY)
        try:
            stat = os.stat(path)
            stamp = f"{stat.st_mtime_ns}-{stat.st_size}"
            row = cached.get(os.path.abspath(run_dir))
            if row is not None and row["summary_stamp"] == stamp:
                if row["status"] in (Status.RUNNING, Status.INTERRUPTED):
                    row["status"] = live_status(Status.RUNNING, row["run_dir"])
            else:
                row = {**summary_row(read_summary_json(run_dir), run_dir), "summary_stamp": stamp}
        except OSError as e:  # a dangling link, or gone since the walk
            log.warning("skipping %s is unreadable: %s: %s", path, type(e).__name__, e.strerror or e)
            continue
        except Unusable as e:
            log.warning("skipping %s is unreadable: %s", path, e)
            continue
        rows.append(row)
    return pd.DataFrame(rows).sort_values("run_name", ignore_index=True) if rows else pd.DataFrame()


def read_table(path: str | Path) -> pd.DataFrame:
    """A roll-up table from its ``.parquet`` or ``.csv`` file; :class:`ConfigError` in one line naming it when it
    is missing, unreadable (truncated, corrupt) or not a roll-up table."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("table", f"no roll-up table {path}")
    try:
        return _load_table(path)
    except Unusable as e:
        twin = path.with_suffix(".csv" if path.suffix == ".parquet" else ".parquet")
        raise ConfigError("table", f"{path} is unreadable ({e}); give its twin {twin.name} if it has one, or roll "
                                   "the runs up again (reluvit results)") from None


def _load_table(path: Path) -> pd.DataFrame:
    try:
        if path.stat().st_size == 0:  # a truncated file: an empty table is written with its header line
            raise Unusable("an empty file")
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except pd.errors.EmptyDataError:  # the CSV twin of an empty roll-up
        return pd.DataFrame()
    except Exception as e:  # noqa: BLE001 - pyarrow's and pandas' errors of a truncated or corrupt file are many
        raise Unusable(f"{type(e).__name__}: {str(e)[:120]}") from None
    if len(table.columns) and (missing := [key for key in TABLE_KEYS if key not in table]):  # empty: none at all
        raise Unusable(f"not a roll-up table: no {missing[0]} column")
    return table


def _previous(stem: Path) -> pd.DataFrame | None:
    """The table at ``<stem>.parquet``, None when there is none. An unreadable one (truncated, corrupt) is said in
    one line: its CSV twin stands in, else it is moved aside (``.unreadable``) and the runs found are the table."""
    path = stem.with_suffix(".parquet")
    if not path.exists():
        return None
    try:
        return _load_table(path)
    except Unusable as e:
        problem = f"{path} is unreadable ({e})"
    twin = stem.with_suffix(".csv")
    try:
        table = _load_table(twin) if twin.exists() else None
    except Unusable:
        table = None
    if table is not None:
        log.warning("%s: rolled up again from its twin %s and the run directories", problem, twin)
        return table
    aside = path.with_name(f"{path.name}.unreadable")
    try:
        os.replace(path, aside)
        kept = f"moved to {aside}"
    except OSError:
        kept = "left in place"
    log.warning("%s: %s, rolled up again from the run directories alone (rows of runs whose directory has gone "
                "are not in the new table)", problem, kept)
    return None


# Which row stands for a run when a table holds several of the same identity (a copied run directory, a rerun beside
# a committed row): the one furthest along, then the latest
_PREFERENCE = {status: rank for rank, status in enumerate(RECORDED)}  # which row of one identity stands


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
    return {i: row["run_dir"] for i, row in enumerate(found) if row is not None and row["status"] == Status.COMPLETED}


def select(identities: list[list[str]], table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` that stand for the runs given by their identities (a sweep's), one per run that has
    one."""
    rows = [row for row in match(identities, table) if row is not None]
    return pd.DataFrame(rows, columns=table.columns).drop_duplicates("identity") if len(table) else table


def write_table(df: pd.DataFrame, stem: str | Path, csv: bool = True) -> list[Path]:
    """``<stem>.parquet`` (and ``.csv``), each written whole or not at all: a reader never sees half a table (a
    temporary file beside it, renamed over it; removed if writing fails)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".parquet"), *([stem.with_suffix(".csv")] if csv else [])]
    for path in paths:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            if path.suffix == ".parquet":
                df.to_parquet(tmp, index=False)
            else:
                df.to_csv(tmp, index=False)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return paths


def rollup(runs_dir: str | Path, stem: str | Path, also: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merge the runs found under ``runs_dir`` into the table at ``<stem>.parquet`` (created if missing): found runs
    replace the rows of the same run (identity) or directory, rows of runs not found are kept, and so are the rows
    of ``also`` (another roll-up) of runs the table lacks; one row per identity (:func:`best_rows`). Writes it back
    with its CSV twin and returns it. An unreadable table at ``<stem>.parquet`` is said in one line and rebuilt
    (:func:`_previous`)."""
    stem = Path(stem)
    old = _previous(stem)
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

"""Roll-up: every run's ``summary.json`` under a runs directory into one pandas table, one row per run, the grid
keys as columns (``results/runs.parquet`` and ``.csv``). Runs of every status are kept; a finished run's row
(completed or diverged) is never rewritten once it is in the table, and rows of runs whose directory has gone are
kept, so rolling up again changes only what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# column -> path in the summary's resolved config
GRID_KEYS = {
    "recipe": "recipe.name", "data": "data.name", "model": "model.name", "variant": "model.variant",
    "pool": "model.pool", "activation": "attention.activation", "alpha": "attention.alpha",
    "qk_norm": "attention.qk_norm", "gate": "attention.gate", "gate_activation": "attention.gate_activation",
    "seq_len": "attention.seq_len", "learn_alpha": "attention.learn_alpha", "sigmoid_bias": "attention.sigmoid_bias",
    "soft_sr": "attention.soft_sr", "soft_sym_norm": "attention.soft_sym_norm", "seed": "seed",
}
FINISHED = ("completed", "diverged")
RESULT_KEYS = ("status", "core_hours", "train_seconds", "examples_seen", "train_flops", "global_step", "epoch",
               "params", "world_size", "device", "attention_impl", "label_set", "started", "finished", "git_revision")


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def grid_point(config: dict) -> dict:
    """The grid keys of a resolved run config, flat (the roll-up's columns, W&B's filterable config and tags)."""
    return {col: lookup(config, path) for col, path in GRID_KEYS.items()}


def summary_row(summary: dict) -> dict:
    row = {"run_name": summary["run_name"]}
    row.update(grid_point(summary["config"]))
    row.update({key: summary.get(key) for key in RESULT_KEYS})
    row.update({k.replace("/", "_"): v for k, v in summary.get("metrics", {}).items()})
    row["run_dir"] = summary["run_dir"]
    return row


def collect(runs_dir: str | Path) -> pd.DataFrame:
    """One row per ``summary.json`` found under ``runs_dir`` (any status), sorted by run name."""
    rows = [summary_row(json.loads(p.read_text())) for p in sorted(Path(runs_dir).rglob("summary.json"))]
    return pd.DataFrame(rows).sort_values("run_name", ignore_index=True) if rows else pd.DataFrame()


def write_table(df: pd.DataFrame, stem: str | Path) -> list[Path]:
    """``<stem>.parquet`` and ``<stem>.csv``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".parquet"), stem.with_suffix(".csv")]
    df.to_parquet(paths[0], index=False)
    df.to_csv(paths[1], index=False)
    return paths


def rollup(runs_dir: str | Path, stem: str | Path) -> pd.DataFrame:
    """Merge the runs found under ``runs_dir`` into the table at ``<stem>.parquet`` (created if missing) and write
    it back with its CSV twin; return the table."""
    stem = Path(stem)
    found = collect(runs_dir)
    table_path = stem.with_suffix(".parquet")
    if table_path.exists():
        old = pd.read_parquet(table_path)
        keep = old[old["status"].isin(FINISHED) | ~old["run_name"].isin(found.get("run_name", []))]
        found = found[~found["run_name"].isin(keep["run_name"])] if len(found) else found
        found = pd.concat([keep, found], ignore_index=True) if len(found) else keep
    table = found.sort_values("run_name", ignore_index=True) if len(found) else found
    write_table(table, stem)
    return table

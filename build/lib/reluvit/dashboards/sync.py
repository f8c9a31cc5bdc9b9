"""Upload offline W&B runs: every ``offline-run-*`` directory under the runs directory (training runs and figure
runs alike), skipping those ``wandb sync`` has already uploaded (it leaves ``<run>.wandb.synced`` beside the data)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "offline-run-"


def offline_runs(runs_dir: str | Path) -> list[Path]:
    """Every offline W&B run directory under ``runs_dir``, sorted."""
    found = []
    for root, dirs, _files in os.walk(runs_dir):
        found += [Path(root, d) for d in dirs if d.startswith(PREFIX)]
        dirs[:] = [d for d in dirs if not d.startswith(PREFIX) and d not in ("checkpoints", "csv")]
    return sorted(found)


def is_synced(run: Path) -> bool:
    return any(run.glob("*.wandb.synced"))


def sync(runs_dir: str | Path, dry_run: bool = False) -> list[Path]:
    """Upload the offline runs under ``runs_dir`` not uploaded yet with ``wandb sync``; returns the ones it (would)
    upload. ``dry_run``: ``wandb sync --dry-run`` on them, which checks each directory and uploads nothing."""
    runs = offline_runs(runs_dir)
    pending = [run for run in runs if not is_synced(run)]
    log.info("%d offline W&B runs under %s: %d already synced, %d to upload", len(runs), runs_dir,
             len(runs) - len(pending), len(pending))
    if pending:
        wandb = Path(sys.executable).with_name("wandb")  # this environment's CLI
        command = [str(wandb) if wandb.exists() else "wandb", "sync", *(["--dry-run"] if dry_run else []),
                   *map(str, pending)]
        subprocess.run(command, check=True)
    if not dry_run:
        failed = [run for run in pending if not is_synced(run)]
        for run in failed:
            log.error("not synced: %s", run)
        log.info("uploaded %d runs", len(pending) - len(failed))
    return pending

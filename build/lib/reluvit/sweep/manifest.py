"""A sweep's manifest: ``<runs_dir>/.reluvit/sweeps/<sweep>-<scale>.json``, written when the sweep is launched,
maps each of its runs (name, directory, identities) to the SLURM jobs that trained it (job id, array index, logs).
``reluvit status`` reads it instead of composing the sweep again (no launch overrides needed), and the cancel and
resubmit verbs act on its jobs. Imports nothing heavy: ``reluvit status`` reads it."""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)
STATE_DIR = ".reluvit"  # reluvit's own files in a runs directory: the sweeps' manifests, the status's row cache


def manifest_path(runs_dir: str | Path, label: str) -> Path:
    return Path(runs_dir) / STATE_DIR / "sweeps" / f"{label}.json"


def read_manifest(runs_dir: str | Path, label: str) -> dict | None:
    """The manifest of sweep ``label`` (``fig2-paper``) under ``runs_dir``; None when it has none or it is unreadable
    (the sweep is then composed again)."""
    path = manifest_path(runs_dir, label)
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the manifest %s: %s", path, e)
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("runs"), list) else None


def write_manifest(runs_dir: str | Path, label: str, overrides: list[str], runs: list[dict],
                   jobs: dict[str, dict] | None = None) -> Path:
    """Record the sweep's runs (each ``{run_name, run_dir, identities, overrides, needs_gpu}``; ``run_dir`` relative
    to ``runs_dir`` where it lies inside it) and the jobs just submitted for some of them (run directory -> job
    record). The jobs of earlier submissions of a run are kept (newest last), so a requeued or resubmitted run keeps
    its history; the run list is the latest launch's."""
    path = manifest_path(runs_dir, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = {run["run_dir"]: run.get("jobs", []) for run in (read_manifest(runs_dir, label) or {}).get("runs", [])}
    entries = []
    for run in runs:
        where = _relative(run["run_dir"], runs_dir)
        job = (jobs or {}).get(run["run_dir"])
        entries.append({**run, "run_dir": where, "jobs": [*earlier.get(where, []), *([job] if job else [])]})
    manifest = {"sweep": label, "overrides": list(overrides), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "runs": entries}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return path


def _relative(run_dir: str, runs_dir: str | Path) -> str:
    """A run directory relative to the runs directory, so that a moved or copied runs directory still reads."""
    try:
        return str(Path(os.path.abspath(run_dir)).relative_to(os.path.abspath(runs_dir)))
    except ValueError:
        return str(run_dir)


def run_dir_of(entry: dict, runs_dir: str | Path) -> Path:
    """Where a manifest entry's run lives now (under the runs directory the manifest was read from)."""
    return Path(runs_dir) / entry["run_dir"]


def last_job(entry: dict) -> dict | None:
    return entry["jobs"][-1] if entry.get("jobs") else None


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> SLURM state (PENDING, RUNNING, ...) of the jobs among ``job_ids`` that the queue still holds, from
    one ``squeue`` call; empty without SLURM (or when it cannot be asked)."""
    if not job_ids or not shutil.which("squeue"):
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("squeue failed (%s): queued jobs show as missing", e)
        return {}
    if out.returncode:
        log.warning("squeue failed: %s", out.stderr.strip().splitlines()[:1])
        return {}
    wanted = set(job_ids)
    states = (line.split("|", 1) for line in out.stdout.split() if "|" in line)
    return {job: state for job, state in states if job in wanted}


def cancel(job_ids: list[str]) -> None:
    """``scancel`` the jobs (one call)."""
    if not job_ids:
        return
    if not shutil.which("scancel"):
        raise RuntimeError("scancel is not on the PATH: no SLURM here")
    subprocess.run(["scancel", *job_ids], check=True, capture_output=True, text=True)

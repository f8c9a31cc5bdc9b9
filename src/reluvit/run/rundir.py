"""A run directory: where its summary and checkpoint live, reading and writing the summary, and whether the run
found there is the one a config describes (its identity)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from enum import StrEnum
from pathlib import Path

from reluvit.run.grid import differences
from reluvit.run.schema import ConfigError

SUMMARY = "summary.json"


class Status(StrEnum):
    """A run's status: the first five are what its summary.json records (:mod:`reluvit.run.train` writes them, the
    roll-up reads them); the others are what ``reluvit status`` adds for runs without a summary to trust."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"  # its summary says running, but nobody holds its lock: killed without a word
    FAILED = "failed"
    QUEUED = "queued"  # a SLURM job waits to start it
    UNREADABLE = "unreadable"  # a summary that is not JSON, or not a summary
    MISSING = "missing"  # no directory, no job
    NEEDS_GPU = "needs_gpu"  # missing, and only a GPU trains it


RECORDED = (Status.COMPLETED, Status.DIVERGED, Status.RUNNING, Status.INTERRUPTED, Status.FAILED)
FINISHED = (Status.COMPLETED, Status.DIVERGED)  # not trained again by a rerun (resume=false trains them from the start)


def last_checkpoint(run_dir: str | Path) -> Path:
    """Where a run keeps the checkpoint it resumes from (rewritten every epoch and on a requeue signal)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def read_summary(run_dir: str | Path) -> dict | None:
    """The run's ``summary.json``; None when it has none; :class:`ConfigError` naming it when it cannot be read."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
            raise ValueError("not a run summary")
        return summary
    except (OSError, ValueError) as e:
        raise ConfigError("run_dir", f"{path} is unreadable ({type(e).__name__}: {str(e)[:120]}); move it away to "
                                     "train this run again, or choose another run_name= or runs_dir=") from None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write through ``<name>.tmp``, renamed over ``path``: a reader sees the old file or the new one. A write
    that fails (a full disk) leaves no ``.tmp`` and names the file."""
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path} could not be written: {e.strerror or e}") from None


def check_same_run(recorded: dict | None, config: dict) -> None:
    """Refuse to continue or skip a run recorded with other training values than ``config``'s: the directory holds
    a different experiment (a config file changed since, or the run was named by hand)."""
    if recorded is None:
        return
    changed = differences(recorded["config"], config)
    if changed:
        shown = "; ".join(f"{key} {old!r} (now {new!r})" for key, (old, new) in list(changed.items())[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(next(iter(changed)), f"{recorded['run_dir']} holds a run trained with {shown}{more}; "
                                               "resume=false trains it again there, or choose another "
                                               "run_name= or runs_dir=")


def check_same_data(recorded: dict | None, fingerprint: dict, path: str | None) -> None:
    """Refuse to continue or skip a run recorded on other data than ``path`` holds now (its fingerprint:
    :func:`reluvit.data.fingerprint.fingerprint`); the same data anywhere else (a copy on scratch) is the same run."""
    before = (recorded or {}).get("data_fingerprint")
    if before and before.get("digest") != fingerprint["digest"]:
        raise ConfigError("data.path", f"{recorded['run_dir']} was trained on other data ({_data(before)}) than "
                                       f"{path or 'the data'} holds ({_data(fingerprint)}); resume=false trains it "
                                       "again there, or choose another runs_dir=")


def _data(fingerprint: dict) -> str:
    splits = ", ".join(f"{name} {count}" for name, count in (fingerprint.get("splits") or {}).items())
    return f"{fingerprint.get('kind')} {fingerprint.get('digest')}: {fingerprint.get('classes')} classes; {splits}"


DIRTY = "-dirty"


# The distributions a run's numbers depend on, recorded with their versions in its summary (DALI: whichever CUDA
# build of it is installed)
RECORDED_PACKAGES = ("reluvit", "torch", "torchvision", "pytorch-lightning", "timm", "hydra-core", "omegaconf")
DALI_PREFIX = "nvidia-dali"


def package_versions() -> dict[str, str]:
    """Python's and each installed :data:`RECORDED_PACKAGES`' and DALI's version (``importlib.metadata``)."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    for dist in importlib.metadata.distributions():
        if (dist.metadata["Name"] or "").startswith(DALI_PREFIX):
            versions[dist.metadata["Name"]] = dist.version
    return versions


def git_revision() -> str | None:
    """The checkout's commit, suffixed :data:`DIRTY` when tracked files have uncommitted changes."""
    try:
        root = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + (DIRTY if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None

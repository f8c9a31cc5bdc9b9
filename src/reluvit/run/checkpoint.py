"""Checkpoint files, for training (as Lightning's ``CheckpointIO``) and for ``reluvit evaluate``.

Written atomically: the file goes to ``<name>.partial`` first and replaces the old one only when complete, so a run
killed during the write resumes from the previous checkpoint. Read with ``torch.load(weights_only=True)``: a
checkpoint is tensors and plain containers (the RNG states too, see reluvit.run.requeue), so a file whose pickle
would build other Python objects (and could run code) is refused, as is a truncated one, by an error that names the
file and says how to go on.

Every checkpoint records its run (:data:`RUN_KEY`: name and identity, :class:`RunRecord`); a resume or an
evaluation refuses a checkpoint of another run, or of another architecture (:func:`check_checkpoint`), in one line.

A finished run can drop its optimizer state (:func:`drop_optimizer_state`, ``reluvit prune``): AdamW's two moments
are two thirds of a checkpoint, and only resuming needs them. The rewritten file says so
(:data:`OPTIMIZER_DROPPED`), and the Trainer refuses to resume from it (:class:`AtomicCheckpointIO` is what it loads
a resumed checkpoint with).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from reluvit.run.lock import hold, live_status
from reluvit.run.rundir import FINISHED, SUMMARY, last_checkpoint, read_summary
from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)
OPTIMIZER_DROPPED = "reluvit_optimizer_dropped"  # a checkpoint key: True once drop_optimizer_state rewrote it
RUN_KEY = "reluvit_run"  # a checkpoint's record of its run (RunRecord)
# what only resuming needs; Lightning's small loop and callback state stays (global_step, core hours, RNG states)
TRAINING_STATE = ("optimizer_states", "lr_schedulers")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; ``str()`` is one line naming the file."""


def load_checkpoint(path: str | Path, map_location=None, mmap: bool = False) -> dict:
    """A checkpoint's contents, tensors and plain Python values only; ``mmap``: tensors read from the file when
    used (a look at its records costs no read of its weights)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        refused = re.search(r".*\bGLOBAL\b.*", str(e))  # torch's reason: the global it would have loaded
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and containers "
                              f"({refused[0].strip()[:200] if refused else type(e).__name__}); only load files you "
                              "trust with torch.load yourself") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable, truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}); move it away to train the run again from its start, "
                              "or resume=false") from None


def save_atomically(checkpoint: dict, path: str | Path, durable: bool = False) -> None:
    """Write through ``<name>.partial``, so that ``path`` is always a whole file, the old one until the new one is
    complete. ``durable``: on disk before returning (file and rename synced), for a file that is the only copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(checkpoint, partial)
        if durable:
            with open(partial, "rb") as written:
                os.fsync(written.fileno())
        os.replace(partial, path)
    except (OSError, RuntimeError) as e:  # a full disk, a quota: torch's message names no file
        partial.unlink(missing_ok=True)  # its space back, for the run's summary to record the failure
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: could not be written ({reason}); the previous checkpoint is kept. Free "
                              "space there (reluvit prune drops finished runs' optimizer state), then run again "
                              "to resume") from None
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with an atomic local write and the safe read of :func:`load_checkpoint`. The
    Trainer loads through it only to resume (reluvit.run.train passes ``ckpt_path`` to ``fit``), so a checkpoint
    without its optimizer state is refused here, with :class:`CheckpointError` (the run is recorded failed, nothing
    trained)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_atomically(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        checkpoint = load_checkpoint(path, map_location)
        if checkpoint.get(OPTIMIZER_DROPPED):
            raise CheckpointError(f"{path}: cannot resume: its optimizer state was dropped (reluvit prune) after the "
                                  "run finished; resume=false trains the run again from its start")
        return checkpoint


class RunRecord(pl.Callback):
    """Records in every checkpoint the run it belongs to (:data:`RUN_KEY`): its name and identity."""

    def __init__(self, run_name: str, identity: str) -> None:
        self.record = {"run_name": run_name, "identity": identity}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_KEY] = dict(self.record)


def check_checkpoint(checkpoint: dict, path: str | Path, run_name: str, identities: list[str], model: dict) -> None:
    """Refuse (:class:`ConfigError`, one line naming both runs) a checkpoint recorded for another run than the one
    of ``identities`` (:func:`reluvit.run.grid.identities`), or whose model has other arguments than ``model``
    (``create_model``'s; a checkpoint written before runs were recorded is checked by that alone)."""
    recorded = checkpoint.get(RUN_KEY)
    if recorded and recorded.get("identity") not in identities:
        raise ConfigError("resume", f"{path} is run {recorded.get('run_name')}'s checkpoint (identity "
                                    f"{str(recorded.get('identity'))[:12]}), not {run_name}'s ({identities[0][:12]}): "
                                    "move it away, or resume=false trains this run from its start")
    theirs = (checkpoint.get("hyper_parameters") or {}).get("model")
    if isinstance(theirs, dict) and (changed := _differences(theirs, model)):
        shown = "; ".join(f"{key} {old!r} (this run: {new!r})" for key, (old, new) in changed[:3])
        raise ConfigError("resume", f"{path} holds a model of another architecture: {shown}; move it away, or "
                                    "resume=false trains this run from its start")


def check_resumed(cfg) -> None:
    """The ``last.ckpt`` a run of ``cfg`` (a resolved config) would resume from is its own (:func:`check_checkpoint`);
    its weights are not read (mmap). A corrupt one is a :class:`CheckpointError`."""
    from omegaconf import OmegaConf

    from reluvit.run.build import architecture
    from reluvit.run.grid import identities

    last = last_checkpoint(cfg.run_dir)
    check_checkpoint(load_checkpoint(last, "cpu", mmap=True), last, cfg.run_name,
                     identities(OmegaConf.to_container(cfg, resolve=True)), architecture(cfg))


def _differences(theirs: dict, ours: dict, prefix: str = "") -> list[tuple[str, tuple]]:
    """The keys both dicts have whose values differ (nested dicts key by key), as ``(dotted key, (theirs, ours))``."""
    found = []
    for key in sorted(theirs.keys() & ours.keys()):
        a, b = theirs[key], ours[key]
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", (a, b)))
    return found


class PruneRefused(RuntimeError):
    """A run whose checkpoint must keep its optimizer state; ``str()`` is one line naming the run."""


class Dropped(NamedTuple):
    """A checkpoint's size before and after :func:`drop_optimizer_state` (equal when it had nothing to drop)."""

    before: int
    after: int

    @property
    def freed(self) -> int:
        return self.before - self.after


def drop_optimizer_state(run_dir: str | Path) -> Dropped:
    """Rewrite the ``last.ckpt`` of a finished (completed or diverged) run without its optimizer and scheduler
    state, keeping what evaluating and exporting its weights read (``state_dict``, ``hyper_parameters``,
    ``global_step``); a checkpoint already rewritten is left as it is. Holds the run's lock while it works.

    Raises:
        PruneRefused: the run is not finished (running, interrupted or failed runs resume from their checkpoint),
            or has no checkpoint.
        reluvit.run.lock.RunBusy: a live process trains in the directory.
        CheckpointError: the checkpoint is unreadable.
        reluvit.run.schema.ConfigError: its ``summary.json`` is unreadable.
    """
    run_dir = Path(run_dir)
    _check_finished(run_dir)
    with hold(run_dir):
        _check_finished(run_dir)  # again, now that no one else can start training here
        path = last_checkpoint(run_dir)
        before = path.stat().st_size
        checkpoint = load_checkpoint(path, map_location="cpu")
        if checkpoint.get(OPTIMIZER_DROPPED):
            log.info("%s: optimizer state already dropped (%s); nothing to do", run_dir, _megabytes(before))
            return Dropped(before, before)
        for key in TRAINING_STATE:
            checkpoint.pop(key, None)
        save_atomically({**checkpoint, OPTIMIZER_DROPPED: True}, path, durable=True)
    dropped = Dropped(before, path.stat().st_size)
    log.info("%s: optimizer state dropped, %s -> %s", run_dir, _megabytes(dropped.before), _megabytes(dropped.after))
    return dropped


def _check_finished(run_dir: Path) -> None:
    summary = read_summary(run_dir)
    if summary is None:
        raise PruneRefused(f"{run_dir}: no {SUMMARY}: not a run directory, or its run never started")
    if summary["status"] not in FINISHED:
        raise PruneRefused(f"{run_dir}: the run is {live_status(summary['status'], run_dir)}: it resumes from its "
                           "optimizer state, which is kept until the run completes (or diverges)")
    if not last_checkpoint(run_dir).is_file():
        raise PruneRefused(f"{run_dir}: the run is {summary['status']} but has no {last_checkpoint(run_dir)}")


def finished_runs(runs_dir: str | Path) -> list[Path]:
    """The run directories under ``runs_dir`` (at any depth) whose run finished and kept its checkpoint; one whose
    summary is unreadable is left out with a warning."""
    found = []
    for run_dir in sorted(summary.parent for summary in Path(runs_dir).rglob(SUMMARY)):
        try:
            status = read_summary(run_dir)["status"]
        except ConfigError as e:
            log.warning("left out: %s", e.message)
            continue
        if status in FINISHED and last_checkpoint(run_dir).is_file():
            found.append(run_dir)
    return found


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"

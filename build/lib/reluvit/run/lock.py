"""One writer per run directory, and whether a run recorded as running is alive.

A training process holds ``<run_dir>/lock.json`` (its host, pid and SLURM job, and a heartbeat time) while it
trains, and a thread renews the heartbeat every ``HEARTBEAT_S`` seconds. Another process that wants the directory
is refused while the holder is alive. A lock is stale, and taken over with a warning, when its heartbeat is older
than ``STALE_S``, when its holder was a process of this host that is gone, or when it belongs to the same SLURM job
(a requeued job runs again under its id). A run whose summary says ``running`` but whose lock is stale or missing
was interrupted (SIGKILL, node loss, Ctrl-C, a requeue still pending): ``reluvit status`` and the roll-up say
``interrupted``, and running the point again resumes it. Imports nothing heavy (``reluvit status`` reads it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK = "lock.json"
HEARTBEAT_S = 30
STALE_S = 300


class RunBusy(RuntimeError):
    """The run directory is being trained by another live process; ``str()`` is one line."""


def slurm_job() -> str | None:
    """This process's SLURM job (``<array job>_<task>`` for an array task), None outside SLURM."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID")


def slurm_job_record() -> dict | None:
    """This SLURM job's ids and, when submitit started it, its log files (a run's summary records them); None
    outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    record = {"job": slurm_job(), "job_id": env["SLURM_JOB_ID"], "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
              "array_task_id": env.get("SLURM_ARRAY_TASK_ID")}
    if "SUBMITIT_FOLDER" in env:
        import submitit

        paths = submitit.JobEnvironment().paths
        record.update(stdout=str(paths.stdout), stderr=str(paths.stderr))
    return record


def read_lock(run_dir: str | Path) -> dict | None:
    """The holder recorded in a run directory's lock; None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, ValueError):
        return None


def stale(lock: dict | None, now: float | None = None) -> str | None:
    """Why a lock no longer holds its directory (its holder is gone), or None while its holder is alive."""
    if lock is None:
        return "no lock"
    try:
        age = (now or time.time()) - float(lock["time"])
        host, pid = lock["host"], int(lock["pid"])
    except (KeyError, TypeError, ValueError):
        return "an unreadable lock"
    if age > STALE_S:
        return f"no heartbeat for {age / 60:.0f} min"
    if host == socket.gethostname() and not _process_exists(pid):
        return f"its process {pid} is gone"
    return None


def live_status(status: str, run_dir: str | Path) -> str:
    """A recorded status as it stands now: ``running`` becomes ``interrupted`` when no live process holds the run."""
    return "interrupted" if status == "running" and stale(read_lock(run_dir)) else status


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(lock: dict) -> str:
    job = f", SLURM job {lock['job']}" if lock.get("job") else ""
    return f"{lock.get('host')} pid {lock.get('pid')}{job}"


@contextlib.contextmanager
def hold(run_dir: str | Path):
    """Hold ``run_dir``'s lock while the body runs, renewing its heartbeat; :class:`RunBusy` when a live process
    holds it. Yields a dict whose entries each heartbeat records too (``step``, ``total``: ``reluvit status``
    shows them)."""
    path = Path(run_dir) / LOCK
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "job": slurm_job()}
    while not _create(path, {**mine, "time": time.time()}):
        lock = read_lock(run_dir)
        reason = "the same SLURM job, requeued" if lock and mine["job"] and lock.get("job") == mine["job"] \
            else stale(lock)
        if reason is None:
            raise RunBusy(f"{run_dir} is being trained by {_describe(lock)} (heartbeat "
                          f"{time.time() - lock['time']:.0f} s ago); wait for it, or remove {path} if that process "
                          f"is gone (a lock counts as stale after {STALE_S // 60} min without a heartbeat)")
        log.warning("taking over %s from %s: %s", path, _describe(lock or {}), reason)
        with contextlib.suppress(FileNotFoundError):  # another process may have taken it over first
            os.replace(path, path.with_name(f"{LOCK}.stale-{os.getpid()}"))
            os.unlink(path.with_name(f"{LOCK}.stale-{os.getpid()}"))
    stop, progress = threading.Event(), {}
    beat = threading.Thread(target=_beat, args=(path, mine, progress, stop), name="reluvit-heartbeat", daemon=True)
    beat.start()
    try:
        yield progress
    finally:
        stop.set()
        beat.join()
        if _ours(path, mine):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _create(path: Path, holder: dict) -> bool:
    """Create the lock with its content in one step (a link to a complete file: atomic, also on NFS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{LOCK}.{holder['pid']}.tmp")
    tmp.write_text(json.dumps(holder))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def _ours(path: Path, holder: dict) -> bool:
    lock = read_lock(path.parent)
    return bool(lock) and (lock.get("host"), lock.get("pid")) == (holder["host"], holder["pid"])


def _beat(path: Path, holder: dict, progress: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        if not _ours(path, holder):  # taken over after a stall longer than STALE_S: that process writes now
            return
        tmp = path.with_name(f"{LOCK}.{holder['pid']}.tmp")
        try:
            tmp.write_text(json.dumps({**progress, **holder, "time": time.time()}))
            os.replace(tmp, path)
        except OSError as e:  # a full or vanished disk: the run itself will report it
            log.warning("heartbeat of %s failed: %s", path, e)

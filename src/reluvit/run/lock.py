"""One writer per run directory, and whether a run recorded as running is alive.

A training process holds ``<run_dir>/lock.json`` (its host, pid and SLURM job, and a heartbeat time) while it
trains, and a thread renews the heartbeat every ``HEARTBEAT_S`` seconds. Another process that wants the directory
is refused while the holder is alive. A lock is stale, and taken over with a warning, when its holder was a process
of this host that is gone, when its holder ran on another host (or before this host restarted) and its heartbeat is
older than ``STALE_S``, or when it belongs to the same SLURM job (a requeued job runs again under its id). A live
process of this host keeps its lock however old its heartbeat (a long checkpoint write, a stopped process); a pid
that another process has taken since (its start time differs) counts as gone. A run whose summary says ``running``
but whose lock is stale or missing was interrupted (SIGKILL, node loss, Ctrl-C, a requeue still pending): ``reluvit
status`` and the roll-up say ``interrupted``, and running the point again resumes it. Imports nothing heavy
(``reluvit status`` reads it).

The lock has one holder under any interleaving, from operations that are atomic on NFS too (no ``flock``): the lock
is created by hard-linking a complete file to ``lock.json`` (which fails when one exists), and every other change to
it (a takeover, a heartbeat, the release) is made under a claim on its current holding: a file
``lock.json.claim-<the holding's token>``, created the same way, so that one process at a time holds it. A process
that would take a stale lock over claims it, reads the lock again and replaces it only if it is still the stale
holding it judged; a process that finds the claim held by a live process is refused too. A claim left by a process
that is gone is removed (with a warning) under a claim on that claim. A process of another host is judged by its
age (the lock's heartbeat, the claim's creation), so one stalled there for longer than ``STALE_S`` can still be
taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

from reluvit.run.rundir import Status

log = logging.getLogger(__name__)
LOCK = "lock.json"
HEARTBEAT_S = 30
STALE_S = 300
_TOKEN = re.compile(r"[0-9a-f]{32}")


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
    """Why a lock no longer holds its directory (its holder is gone), or None while its holder is alive (a process
    of this host: however old its heartbeat)."""
    if lock is None:
        return "no lock"
    try:
        age = (now or time.time()) - float(lock["time"])
        host, pid = lock["host"], int(lock["pid"])
    except (KeyError, TypeError, ValueError):
        return "an unreadable lock"
    if pid <= 0:
        return "an unreadable lock"
    boot = _boot_id()
    if host == socket.gethostname() and not (lock.get("boot") and boot and lock["boot"] != boot):
        if not _process_exists(pid):
            return f"its process {pid} is gone"
        start = _start_time(pid)
        if lock.get("start") is not None and start is not None and str(lock["start"]) != start:
            return f"its process {pid} is gone (another process has that pid now)"
        return None  # alive, however old its heartbeat
    if age > STALE_S:
        return f"no heartbeat for {age / 60:.0f} min"
    return None


def live_status(status: str, run_dir: str | Path) -> str:
    """A recorded status as it stands now: ``running`` becomes ``interrupted`` when no live process holds the run."""
    return Status.INTERRUPTED if status == Status.RUNNING and stale(read_lock(run_dir)) else status


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _start_time(pid: int) -> str | None:
    """When a process of this host started (clock ticks after boot), None where /proc cannot say (not Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str | None:
    """This boot of this host (Linux), None where /proc cannot say."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _describe(lock: dict | None) -> str:
    if not isinstance(lock, dict):
        return "an unreadable lock"
    job = f", SLURM job {lock['job']}" if lock.get("job") else ""
    return f"{lock.get('host')} pid {lock.get('pid')}{job}"


def _step(point: str) -> None:
    """Does nothing: a seam where a test stalls a process at a step of a takeover (``judged``, ``claimed``,
    ``verified``, ``replaced``) or of removing a claim whose process is gone (``breaking``)."""


@contextlib.contextmanager
def hold(run_dir: str | Path):
    """Hold ``run_dir``'s lock while the body runs, renewing its heartbeat; :class:`RunBusy` when a live process
    holds it. Yields a dict whose entries each heartbeat records too (``step``, ``total``: ``reluvit status``
    shows them)."""
    path = Path(run_dir) / LOCK
    mine = {**_me(), "job": slurm_job()}
    _acquire(path, mine)
    stop, progress = threading.Event(), {}
    beat = threading.Thread(target=_beat, args=(path, mine, progress, stop), name="reluvit-heartbeat", daemon=True)
    beat.start()
    try:
        yield progress
    finally:
        stop.set()
        beat.join()
        _release(path, mine)


def _me() -> dict:
    """This process, and a new token that names what it is about to hold."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "boot": _boot_id(), "start": _start_time(pid),
            "token": uuid.uuid4().hex}


def _acquire(path: Path, mine: dict) -> None:
    """Make ``mine`` the lock's holder: create the lock, or take a stale one over under a claim on it."""
    while True:
        if _link(path, {**mine, "time": time.time()}):
            return
        lock, holding = _load(path)
        if holding is None:  # released meanwhile
            continue
        if _reason(lock, mine) is None:
            raise _busy(path, lock)
        _step("judged")
        claim, claimer = _claim(path, holding)
        if claim is None:
            raise _busy(path, lock, claimer, path.with_name(f"{LOCK}.claim-{holding}"))
        try:
            _step("claimed")
            lock, now_holding = _load(path)
            if now_holding != holding:  # taken over or released meanwhile: judge again
                continue
            reason = _reason(lock, mine)  # it may have renewed its heartbeat meanwhile
            if reason is None:
                raise _busy(path, lock)
            _step("verified")
            log.warning("taking over %s from %s: %s", path, _describe(lock), reason)
            _write(path, {**mine, "time": time.time()})
            _step("replaced")
            return
        finally:
            claim.unlink(missing_ok=True)


def _reason(lock: dict | None, mine: dict) -> str | None:
    """Why ``mine`` may take over ``lock`` (a file that exists), None while its holder keeps it."""
    if lock is None:
        return "an unreadable lock"
    if isinstance(lock, dict) and mine["job"] and lock.get("job") == mine["job"]:
        return "the same SLURM job, requeued"
    return stale(lock)


def _busy(path: Path, lock: dict | None, claimer: dict | None = None, claim: Path | None = None) -> RunBusy:
    """The refusal, one line naming the holder (or the process that is taking the lock over)."""
    if claimer is not None and not _same_process(claimer, lock):
        return RunBusy(f"{path.parent} is being taken over by {_describe(claimer)} from {_describe(lock)}; try again, "
                       f"or remove {claim} if that process is gone")
    try:
        beat = f" (heartbeat {time.time() - float(lock['time']):.0f} s ago)"
    except (KeyError, TypeError, ValueError):
        beat = ""
    return RunBusy(f"{path.parent} is being trained by {_describe(lock)}{beat}; wait for it, or remove {path} if that "
                   f"process is gone (a lock of another host counts as stale after {STALE_S // 60} min without a "
                   "heartbeat)")


def _same_process(a: dict | None, b: dict | None) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    return (a.get("host"), a.get("pid")) == (b.get("host"), b.get("pid"))


def _claim(path: Path, holding: str) -> tuple[Path | None, dict | None]:
    """Claim the holding ``holding`` of the lock (or claim) file ``path``: ``(the claim file, None)`` when this
    process alone holds the claim (it unlinks the file when done), ``(None, the claimer)`` when a live process holds
    it. A claim whose process is gone is removed, under a claim on that claim."""
    claim = path.with_name(f"{LOCK}.claim-{holding}")
    while True:
        if _link(claim, {**_me(), "time": time.time()}):
            return claim, None
        claimer, claimed = _load(claim)
        if claimed is None:  # released meanwhile
            continue
        reason = stale(claimer) if claimer is not None else "an unreadable claim"
        if reason is None:
            return None, claimer
        breaker, other = _claim(claim, claimed)
        if breaker is None:
            return None, other
        try:
            _step("breaking")
            if _load(claim)[1] == claimed:  # nobody else removes it while this process holds the claim on it
                log.warning("removing %s, left by %s: %s", claim, _describe(claimer), reason)
                claim.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)


def _load(path: Path) -> tuple[dict | None, str | None]:
    """A lock's or claim's record (None when it is not JSON) and its holding: the token of the process that wrote
    it, else a digest of its content (a lock of an older version); None when there is no such file. Any other error
    reading it is raised: what cannot be read is never judged stale."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    try:
        record = json.loads(raw)
    except ValueError:
        return None, hashlib.sha1(raw).hexdigest()
    token = record.get("token") if isinstance(record, dict) else None
    if isinstance(token, str) and _TOKEN.fullmatch(token):
        return record, token
    return record, hashlib.sha1(raw).hexdigest()


def _link(path: Path, record: dict) -> bool:
    """Create ``path`` with its content in one step (a link to a complete file: atomic, also on NFS); False when it
    exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{LOCK}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return os.stat(tmp).st_nlink == 2  # NFS: a retransmitted link reports EEXIST after it succeeded
    finally:
        tmp.unlink()


def _write(path: Path, record: dict) -> None:
    """Replace ``path`` with a complete file in one step."""
    tmp = path.with_name(f"{LOCK}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _ours(path: Path, holder: dict) -> bool:
    return _load(path)[1] == holder["token"]


def _beat(path: Path, holder: dict, progress: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            claim, _ = _claim(path, holder["token"])
            if claim is None:  # a process is judging it, or taking it over: the next beat sees whether it did
                continue
            try:
                if not _ours(path, holder):  # taken over after a stall longer than STALE_S: that process writes now
                    return
                _write(path, {**progress, **holder, "time": time.time()})
            finally:
                claim.unlink(missing_ok=True)
        except OSError as e:  # a full or vanished disk: the run itself will report it
            log.warning("heartbeat of %s failed: %s", path, e)


def _release(path: Path, holder: dict) -> None:
    try:
        claim, _ = _claim(path, holder["token"])
        if claim is None:  # a process is taking it over: the lock is its to replace
            return
        try:
            if _ours(path, holder):
                path.unlink(missing_ok=True)
        finally:
            claim.unlink(missing_ok=True)
    except OSError as e:
        log.warning("releasing %s failed: %s", path, e)

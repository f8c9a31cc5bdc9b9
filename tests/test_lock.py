"""The run directory's lock (reluvit.run.lock): one holder under any interleaving of processes taking a stale lock
over, a stalled but live holder of this host kept, and the takeovers that stay: a dead holder's lock, the same SLURM
job's lock, a silent holder of another host."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reluvit.run import lock

HOST = socket.gethostname()
GONE_PID = 2**22 + 12345  # pids stay below 2**22 on Linux: a process of this host that is gone
RACERS, ROUNDS = 8, 20
WAIT_S = 30  # a barrier that long means a racer is stuck: fail, not hang
CTX = multiprocessing.get_context("spawn")  # the racers import this module and the lock, nothing of the suite


@pytest.fixture(autouse=True)
def outside_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)


def write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / lock.LOCK).write_text(json.dumps({"host": HOST, "pid": os.getpid(), "job": None, "time": time.time(),
                                                 **holder}))


def a_stale_lock(run_dir: Path, r: int) -> None:
    """Round r's stale lock: a dead process of this host, or a holder of another host silent for too long."""
    if r % 2:
        write_lock(run_dir, pid=GONE_PID)
    else:
        write_lock(run_dir, host="elsewhere", pid=1, time=time.time() - lock.STALE_S - 60)


@contextlib.contextmanager
def a_live_process():
    """The pid of a live process of this host that is not this one."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def _racer(k: int, run_dirs: list[str], judged, done, results) -> None:
    """Racer k: in each round, judge the round's stale lock, wait until every racer has (the interleaving of the
    fault: every staleness test before any replace), then take it over, stalled a little at each step (staggered in
    even rounds, at random in odd ones). The holder keeps the lock until every racer has tried."""
    judge, first, rng = lock.stale, [True], random.Random()

    def stall(*_) -> None:
        time.sleep(rng.random() * 0.004)

    def judged_together(record, now=None):
        reason = judge(record, now)
        if first[0]:
            first[0] = False
            judged.wait(WAIT_S)
            time.sleep(0.003 * k)
        else:
            stall()
        return reason

    lock.stale = judged_together
    for r, run_dir in enumerate(run_dirs):
        first[0] = True
        rng.seed(1000 * r + k)
        lock._step = stall if r % 2 else (lambda point: None)  # the old lock had no _step: setting it does nothing
        try:
            with lock.hold(run_dir):
                results.put((r, k, "held"))
                done.wait(WAIT_S)
        except lock.RunBusy as e:
            results.put((r, k, f"busy: {e}"))
            done.wait(WAIT_S)
        except Exception as e:  # reported, and the others are not left waiting at the barrier
            results.put((r, k, f"error: {e!r}"))
            done.abort()
            return


def _die_at(point: str, run_dir: str) -> None:
    """Try to take the lock over and die (SIGKILL-like: nothing cleaned up) at ``point`` of the takeover."""
    def die(at: str) -> None:
        if at == point:
            os._exit(0)

    lock._step = die
    with lock.hold(run_dir):
        pass
    os._exit(1)  # took it over without passing point


def _take_over_when_told(run_dir: str, claimed, go, results) -> None:
    """Take the lock over, stalling with its claim held until told to go on."""
    def wait_there(point: str) -> None:
        if point == "claimed":
            claimed.set()
            go.wait(WAIT_S)

    lock._step = wait_there
    with lock.hold(run_dir):
        results.put(json.loads((Path(run_dir) / lock.LOCK).read_text())["pid"])


def race(run_dirs: list[Path]) -> dict[int, list[str]]:
    """What each racer got in each round: ``held`` or ``busy: <message>``."""
    judged, done, results = CTX.Barrier(RACERS), CTX.Barrier(RACERS), CTX.Queue()
    racers = [CTX.Process(target=_racer, args=(k, [str(d) for d in run_dirs], judged, done, results))
              for k in range(RACERS)]
    for p in racers:
        p.start()
    got = {r: [] for r in range(len(run_dirs))}
    try:
        for _ in range(RACERS * len(run_dirs)):
            r, _k, outcome = results.get(timeout=WAIT_S)
            got[r].append(outcome)
    finally:
        for p in racers:
            p.join(WAIT_S)
            if p.is_alive():
                p.kill()
    return got


def assert_one_holder(got: dict[int, list[str]], run_dirs: list[Path]) -> None:
    for r, outcomes in got.items():
        held = outcomes.count("held")
        assert held == 1, f"round {r}: {held} holders: {outcomes}"
        busy = [o for o in outcomes if o.startswith("busy: ")]
        assert len(busy) == RACERS - 1, f"round {r}: {outcomes}"
        assert all(len(o.splitlines()) == 1 for o in busy)
        assert sorted(p.name for p in run_dirs[r].iterdir()) == [], f"round {r}: left behind"  # released, no claims


def test_racers_taking_over_a_stale_lock_leave_it_one_holder(tmp_path):
    run_dirs = [tmp_path / f"round{r}" for r in range(ROUNDS)]
    for r, run_dir in enumerate(run_dirs):
        a_stale_lock(run_dir, r)
    assert_one_holder(race(run_dirs), run_dirs)


def test_claims_left_by_dead_takers_are_removed_and_the_race_still_has_one_winner(tmp_path, caplog):
    """A taker killed with its claim held, and one killed while removing that claim, block nobody for good."""
    run_dirs = [tmp_path / "dead_claim", tmp_path / "dead_claim_and_breaker"]
    for r, run_dir in enumerate(run_dirs):
        a_stale_lock(run_dir, r)
    for point, run_dir in [("claimed", run_dirs[0]), ("claimed", run_dirs[1]), ("breaking", run_dirs[1])]:
        dying = CTX.Process(target=_die_at, args=(point, str(run_dir)))
        dying.start()
        dying.join(WAIT_S)
        assert dying.exitcode == 0, f"no {point} step in the takeover of {run_dir}"
    assert [len(list(d.glob(f"{lock.LOCK}.claim-*"))) for d in run_dirs] == [1, 2]
    assert_one_holder(race(run_dirs), run_dirs)


def test_a_claim_held_by_a_live_taker_refuses_others(tmp_path):
    a_stale_lock(tmp_path, 1)
    claimed, go, results = CTX.Event(), CTX.Event(), CTX.Queue()
    taker = CTX.Process(target=_take_over_when_told, args=(str(tmp_path), claimed, go, results))
    taker.start()
    try:
        assert claimed.wait(WAIT_S)
        with pytest.raises(lock.RunBusy, match=rf"is being taken over by {HOST} pid {taker.pid} from {HOST} pid "
                                               rf"{GONE_PID}; try again, or remove .*claim-"), lock.hold(tmp_path):
            pass
        assert json.loads((tmp_path / lock.LOCK).read_text())["pid"] == GONE_PID  # not replaced meanwhile
    finally:
        go.set()
        taker.join(WAIT_S)
    assert results.get(timeout=WAIT_S) == taker.pid and taker.exitcode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stalled_live_holder_of_this_host_is_not_evicted(tmp_path, caplog):
    """A heartbeat 10 min old (a long checkpoint write, a stopped process) of a live process of this host."""
    with a_live_process() as pid:
        write_lock(tmp_path, pid=pid, time=time.time() - 600)
        before = (tmp_path / lock.LOCK).read_text()
        with pytest.raises(lock.RunBusy, match=rf"being trained by {HOST} pid {pid} \(heartbeat 6\d\d s ago\)") as e:
            with lock.hold(tmp_path):
                pass
        assert len(str(e.value).splitlines()) == 1
        assert (tmp_path / lock.LOCK).read_text() == before
        assert lock.stale(lock.read_lock(tmp_path)) is None
        assert lock.live_status("running", tmp_path) == "running"
    assert lock.stale(lock.read_lock(tmp_path)) == f"its process {pid} is gone"  # now it is gone: taken over
    assert lock.live_status("running", tmp_path) == "interrupted"
    with caplog.at_level(logging.WARNING, logger="reluvit.run.lock"), lock.hold(tmp_path):
        assert lock.read_lock(tmp_path)["pid"] == os.getpid()
    assert f"from {HOST} pid {pid}: its process {pid} is gone" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc to tell when a process started")
def test_a_pid_another_process_has_taken_since_counts_as_gone(tmp_path):
    with a_live_process() as pid:
        write_lock(tmp_path, pid=pid, start=lock._start_time(pid))
        assert lock.stale(lock.read_lock(tmp_path)) is None
        write_lock(tmp_path, pid=pid, start="1")  # the holder started at another time: not this process
        assert lock.stale(lock.read_lock(tmp_path)) == f"its process {pid} is gone (another process has that pid now)"


@pytest.mark.skipif(not Path("/proc/sys/kernel/random/boot_id").exists(), reason="no boot id in /proc")
def test_a_lock_of_an_earlier_boot_is_judged_by_its_heartbeat(tmp_path):
    with a_live_process() as pid:  # its pid, taken again after a restart
        write_lock(tmp_path, pid=pid, boot="an earlier boot")
        assert lock.stale(lock.read_lock(tmp_path)) is None
        write_lock(tmp_path, pid=pid, boot="an earlier boot", time=time.time() - lock.STALE_S - 60)
        assert lock.stale(lock.read_lock(tmp_path)) == "no heartbeat for 6 min"


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    write_lock(tmp_path, pid=GONE_PID)
    with caplog.at_level(logging.WARNING, logger="reluvit.run.lock"), lock.hold(tmp_path) as progress:
        held = lock.read_lock(tmp_path)
        assert (held["host"], held["pid"]) == (HOST, os.getpid()) and progress == {}
    assert f"taking over {tmp_path / lock.LOCK} from {HOST} pid {GONE_PID}: its process {GONE_PID} is gone" \
        in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_same_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    write_lock(tmp_path, host="gpu-node-7", pid=99, job="777")  # fresh: the job's process before its requeue
    with caplog.at_level(logging.WARNING, logger="reluvit.run.lock"), lock.hold(tmp_path):
        assert lock.read_lock(tmp_path)["job"] == "777" and lock.read_lock(tmp_path)["pid"] == os.getpid()
    assert "from gpu-node-7 pid 99, SLURM job 777: the same SLURM job, requeued" in caplog.text
    write_lock(tmp_path, host="gpu-node-7", pid=99, job="778")
    with pytest.raises(lock.RunBusy, match="being trained by gpu-node-7 pid 99, SLURM job 778"), lock.hold(tmp_path):
        pass


def test_a_holder_of_another_host_is_judged_by_its_heartbeat(tmp_path, caplog):
    write_lock(tmp_path, host="elsewhere", pid=os.getpid(), time=time.time() - lock.STALE_S + 60)
    with pytest.raises(lock.RunBusy) as e, lock.hold(tmp_path):
        pass
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{tmp_path} is being trained by elsewhere pid ")
    write_lock(tmp_path, host="elsewhere", pid=os.getpid(), time=time.time() - lock.STALE_S - 60)
    with caplog.at_level(logging.WARNING, logger="reluvit.run.lock"), lock.hold(tmp_path):
        assert lock.read_lock(tmp_path)["host"] == HOST
    assert f"from elsewhere pid {os.getpid()}: no heartbeat for 6 min" in caplog.text


@pytest.mark.parametrize("content", ["{\"host\": \"elsew", "[]", "{}"])
def test_an_unreadable_lock_is_taken_over(tmp_path, content):
    (tmp_path / lock.LOCK).write_text(content)
    with lock.hold(tmp_path):
        assert lock.read_lock(tmp_path)["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_taken_over_meanwhile_is_left_to_its_new_holder(tmp_path, monkeypatch):
    """After a stall past STALE_S a holder of another host may have lost its lock: its heartbeat and its release
    leave the new holder's lock alone."""
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.01)
    with lock.hold(tmp_path) as progress:
        progress["step"] = 3
        deadline = time.time() + WAIT_S
        while lock.read_lock(tmp_path).get("step") != 3 and time.time() < deadline:
            time.sleep(0.01)
        assert lock.read_lock(tmp_path)["step"] == 3  # the heartbeat records the progress
        write_lock(tmp_path, host="elsewhere", pid=1)
        newer = (tmp_path / lock.LOCK).read_text()
        time.sleep(0.1)  # heartbeats that would overwrite it
        assert (tmp_path / lock.LOCK).read_text() == newer
    assert (tmp_path / lock.LOCK).read_text() == newer

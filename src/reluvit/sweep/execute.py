"""One executor for every way of running: ``reluvit train`` (its overrides, sweep syntax expanded) and the sweeps
(the figures, the demo), here in this process or as SLURM jobs through submitit. Every point is composed and
validated once, on this side, before anything runs or is submitted; jobs receive the resolved config."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reluvit.run.compose import compose_points
from reluvit.run.rundir import FINISHED, check_same_run, last_checkpoint, read_summary
from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm")


@dataclass
class Point:
    overrides: list[str]
    cfg: DictConfig

    @property
    def name(self) -> str:
        return self.cfg.run_name


def prepare(points: list[list[str]], dry_run: bool = False) -> list[Point]:
    """Compose and validate every point, and check that each run directory holds that run or none: a bad value
    anywhere fails here, naming the key and the run. Points that name the same run directory are one run. A missing
    dataset fails first, within seconds (:func:`check_data`); a dry run only warns about it. A dry run of points
    that passed before checks only their directories again (:class:`reluvit.run.validate.Outcomes`)."""
    from reluvit.run.compose import Progress
    from reluvit.run.validate import Outcomes

    check_data(points, warn=dry_run)
    configs = compose_points(points)
    outcomes = Outcomes(points, configs, data_path=not dry_run)
    prepared: dict[str, Point] = {}
    with Progress("validating", len(points)) as progress:
        progress.stage("validated", len(points))
        for overrides, cfg in zip(points, configs, strict=True):
            try:
                outcomes.validate(cfg)
                if cfg.resume and (recorded := read_summary(cfg.run_dir)) is not None:
                    check_same_run(recorded, OmegaConf.to_container(cfg))
                if cfg.resume and not dry_run and last_checkpoint(cfg.run_dir).exists():
                    _check_resumed_checkpoint(cfg)
            except ConfigError as e:
                raise ConfigError(e.key, f"{e.message} (in run {cfg.run_name})") from None
            prepared.setdefault(cfg.run_dir, Point(overrides, cfg))
            progress.advance()
    outcomes.record()
    return list(prepared.values())


def _check_resumed_checkpoint(cfg: DictConfig) -> None:
    """The checkpoint a run would resume from is its own (:func:`reluvit.run.checkpoint.check_resumed`), and
    readable: named before anything runs."""
    from reluvit.run.checkpoint import CheckpointError, check_resumed

    try:
        check_resumed(cfg)
    except CheckpointError as e:  # corrupt, truncated, or a pickle of other objects
        raise ConfigError("resume", str(e)) from None


def _data_selection(point: list[str]) -> tuple[str, ...]:
    """The overrides of a point that choose its data: the ``data`` group and ``data.*`` keys."""
    keys = [override.split("=", 1)[0].lstrip("+~") for override in point]
    return tuple(o for o, key in zip(point, keys, strict=True) if key == "data" or key.startswith("data."))


def check_data(points: list[list[str]], warn: bool = False) -> None:
    """``data.path`` of each data selection among the points, from its first point, composed alone: a sweep of
    hundreds of points takes tens of seconds to compose, so a missing dataset is found before, naming its
    environment variable. ``warn``: log it instead (a dry run needs no data)."""
    from reluvit.run.validate import check_data_path

    runs = Counter(_data_selection(point) for point in points)
    firsts: dict[tuple[str, ...], list[str]] = {}
    for point in points:
        firsts.setdefault(_data_selection(point), point)
    for selection, cfg in zip(firsts, compose_points(list(firsts.values())), strict=True):
        try:
            check_data_path(cfg)
        except ConfigError as e:
            if not warn:
                raise ConfigError(e.key, f"{e.message} (in run {cfg.run_name})") from None
            log.warning("%s: the %d runs of data=%s cannot start without it", e, runs[selection], cfg.data.name)


def membership(scale: str, gpu: bool, extra: list[str] = ()) -> dict[str, list[str]]:
    """Run directory -> every sweep at ``scale`` (with ``extra``) that holds the run: a run shared by two figures
    belongs to both (W&B tags and config ``figures``, so each figure's filter finds all its runs)."""
    from reluvit.sweep import spec

    found: dict[str, list[str]] = {}
    for name in spec.names():
        if spec.has_scale(name, scale):
            for cfg in compose_points(spec.load(name, scale).points(gpu, extra)):
                found.setdefault(cfg.run_dir, []).append(name)
    return found


def tag_figures(points: list[Point], membership: dict[str, list[str]]) -> None:
    """Record in each run's ``logger.figures`` every sweep it belongs to (run directory -> sweep names)."""
    for point in points:
        point.cfg.logger.figures = membership.get(point.cfg.run_dir, [])


def submission(points: list[Point], label: str) -> tuple[Path, str]:
    """submitit's folder and the job name of a SLURM launch: a fresh folder per launch, since after a cluster reset
    job ids restart and an old folder would hand back stale results."""
    runs_dir = Path(points[0].cfg.runs_dir).resolve() if points else Path("runs").resolve()
    return runs_dir / ".submitit" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}", f"reluvit-{label}"


def execute(points: list[Point], launcher: str = "local", cluster: str = "local", label: str = "runs",
            block: bool = True, on_submit: Callable[[dict[str, dict]], None] | None = None) -> list[str]:
    """Train every point, ``local``: one after another in this process; ``slurm``: as jobs of the cluster profile
    ``cluster`` (:func:`reluvit.sweep.slurm.load_profile`), handing ``on_submit`` run directory -> job record as soon
    as they are submitted, and waiting for them unless not ``block``. A failed run does not stop the others;
    completed runs are skipped by the runs themselves, so executing again resumes. Returns what failed, one line
    each."""
    if launcher not in LAUNCHERS:
        raise ConfigError("launcher", f"{launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    if launcher == "slurm":
        from reluvit.sweep.slurm import run_on_slurm

        configs = [OmegaConf.to_container(p.cfg) for p in points]
        outcomes = run_on_slurm(configs, cluster, *submission(points, label), block, on_submit)
        if not block:
            return []
        failed = [f"job {job}: {out}" for job, out in outcomes.items() if out not in FINISHED]
        log.info("%d of %d jobs finished", len(outcomes) - len(failed), len(outcomes))
        return failed
    return run_here(points)


def preview(points: list[Point], cluster: str, label: str = "runs") -> str:
    """What ``execute(points, "slurm", cluster, label)`` would submit, and its cost, as text; submits nothing."""
    from reluvit.sweep.slurm import load_profile
    from reluvit.sweep.slurm import preview as slurm_preview

    return slurm_preview([p.cfg for p in points], load_profile(cluster), *submission(points, label))


def run_here(points: list[Point], poll_s: float = 10.0) -> list[str]:
    """Train the points one after another in this process. A run that another live process is training (a second
    sweep sharing the runs directory) is left to it and waited for at the end: it counts by how it ends there."""
    from reluvit.run.lock import RunBusy
    from reluvit.run.train import run

    failed, busy = [], []
    for i, point in enumerate(points, 1):
        log.info("=== run %d/%d: %s", i, len(points), point.name)
        try:
            status = run(point.cfg)["status"]
        except SystemExit:  # a stop signal: the run checkpointed; say what this command leaves undone
            if rest := points[i:]:
                names = ", ".join(p.name for p in rest[:3]) + (f" and {len(rest) - 3} more" if len(rest) > 3 else "")
                log.error("interrupted in %s; %d runs not reached: %s (run the command again to go on)",
                          point.name, len(rest), names)
            raise
        except RunBusy as e:
            log.info("%s: left to the process training it (%s)", point.name, str(e).split(" (")[0])
            busy.append(point)
            continue
        except Exception as e:  # recorded in its summary as failed; the other runs go on
            log.error("%s failed: %s: %s", point.name, type(e).__name__, e)
            failed.append(f"{point.name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
            continue
        if status not in FINISHED:
            failed.append(f"{point.name}: {status}")
    return failed + wait_for_others(busy, poll_s)


def wait_for_others(points: list[Point], poll_s: float) -> list[str]:
    """Wait until no live process holds the points' run directories; returns those that did not finish there."""
    from reluvit.run.lock import read_lock, stale

    waiting = list(points)
    if waiting:
        log.info("waiting for %d runs that other processes are training", len(waiting))
    while waiting:
        waiting = [p for p in waiting if stale(read_lock(p.cfg.run_dir)) is None]
        if waiting:
            time.sleep(poll_s)
    statuses = {p.name: _recorded_status(p) for p in points}
    return [f"{name}: {status or 'no summary'} (trained by another process)" for name, status in statuses.items()
            if status not in FINISHED]


def _recorded_status(point: Point) -> str | None:
    try:
        return (read_summary(point.cfg.run_dir) or {}).get("status")
    except ConfigError:
        return None

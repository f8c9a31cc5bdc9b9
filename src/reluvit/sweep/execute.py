"""One executor for every way of running: ``reluvit train`` (its overrides, sweep syntax expanded) and the sweeps
(the figures, the demo), here in this process or as SLURM jobs through submitit. Every point is composed and
validated once, on this side, before anything runs or is submitted; jobs receive the resolved config."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reluvit.run.compose import compose_points
from reluvit.run.rundir import FINISHED, check_same_run, read_summary
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


def prepare(points: list[list[str]]) -> list[Point]:
    """Compose and validate every point, and check that each run directory holds that run or none: a bad value
    anywhere fails here, naming the key and the run. Points that name the same run directory are one run."""
    from reluvit.run.validate import validate

    prepared: dict[str, Point] = {}
    for overrides, cfg in zip(points, compose_points(points), strict=True):
        try:
            validate(cfg)
            if cfg.resume:
                check_same_run(read_summary(cfg.run_dir), OmegaConf.to_container(cfg))
        except ConfigError as e:
            raise ConfigError(e.key, f"{e.message} (in run {cfg.run_name})") from None
        prepared.setdefault(cfg.run_dir, Point(overrides, cfg))
    return list(prepared.values())


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


def execute(points: list[Point], launcher: str = "local", cluster: str = "local", label: str = "runs") -> list[str]:
    """Train every point, ``local``: one after another in this process; ``slurm``: as jobs of the cluster profile
    ``cluster`` (``slurm/profiles/<name>.yaml``), waiting for them. A failed run does not stop the others;
    completed runs are skipped by the runs themselves, so executing again resumes. Returns what failed, one line
    each."""
    if launcher not in LAUNCHERS:
        raise ConfigError("launcher", f"{launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    if launcher == "slurm":
        from reluvit.sweep.slurm import run_on_slurm

        runs_dir = Path(points[0].cfg.runs_dir).resolve() if points else Path("runs").resolve()
        # a fresh submitit folder per launch: after a cluster reset job ids restart, and an old folder would hand
        # back stale results
        folder = runs_dir / ".submitit" / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        configs = [OmegaConf.to_container(p.cfg) for p in points]
        outcomes = run_on_slurm(configs, cluster, folder, name=f"reluvit-{label}")
        failed = [f"job {job}: {out}" for job, out in outcomes.items() if out not in FINISHED]
        log.info("%d of %d jobs finished", len(outcomes) - len(failed), len(outcomes))
        return failed
    return run_here(points)


def run_here(points: list[Point]) -> list[str]:
    """Train the points one after another in this process."""
    from reluvit.run.train import run

    failed = []
    for i, point in enumerate(points, 1):
        log.info("=== run %d/%d: %s", i, len(points), point.name)
        try:
            status = run(point.cfg)["status"]
        except Exception as e:  # recorded in its summary as failed; the other runs go on
            log.error("%s failed: %s: %s", point.name, type(e).__name__, e)
            failed.append(f"{point.name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
            continue
        if status not in FINISHED:
            failed.append(f"{point.name}: {status}")
    return failed

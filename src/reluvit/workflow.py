"""From overrides or a sweep file to trained runs and a figure: the launch checked first
(:class:`reluvit.sweep.launch.Launch`), every point composed and validated (:func:`reluvit.sweep.execute.prepare`), the
points nobody needs to train left alone (completed elsewhere, or completed, diverged, queued or running as the sweep's
manifest and the runs say), the rest executed here or on SLURM, then the roll-up and the figure
(:mod:`reluvit.report.figures`). A dry run previews the SLURM submission. What ``reluvit train`` and ``reluvit sweep``
do, without their arguments' parsing."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from reluvit.sweep.launch import Launch

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a launch did: the preview of a dry run, the runs that failed, the sweep's runs as rolled up."""

    preview: str | None = None
    failed: list[str] = field(default_factory=list)
    runs: pd.DataFrame | None = None


def gpu_here() -> bool:
    import torch

    return torch.cuda.is_available()


def train(overrides: list[str], launch: Launch) -> Outcome:
    """The points of ``overrides`` (Hydra's sweep syntax expanded), trained or previewed."""
    from reluvit.run.compose import expand
    from reluvit.sweep.execute import prepare

    launch.profile()
    points = prepare(expand(overrides), dry_run=launch.dry_run)
    if launch.dry_run:
        return Outcome(preview=launch.preview(points, "train"))
    return Outcome(failed=launch.run(points, "train", follow="squeue --me; reluvit results"))


def run_sweep(sweep, overrides: list[str], launch: Launch, runs_dir: Path, results_dir: Path,
              completed: pd.DataFrame | None = None, completed_name: str | None = None,
              resubmit_failed: bool = False) -> Outcome:
    """Train the sweep's points that nobody needs to train (``completed``: a roll-up whose completed runs count as
    the sweep's), then roll up and draw its figure; or preview them (a dry run)."""
    from reluvit.report.figures import draw, plot_function, rollup_into
    from reluvit.report.rollup import completed_in, config_identities, select
    from reluvit.sweep.execute import membership, prepare, tag_figures

    profile = launch.profile(sweep.scale)
    if not launch.dry_run:
        plot_function(sweep)  # a figure that cannot be drawn: refused before anything trains
    extra = [f"runs_dir={runs_dir.resolve()}", *overrides]  # absolute: jobs may start elsewhere
    gpu = bool(profile.gpus_per_node) if profile else gpu_here()  # where the runs will train
    for block in (b for b in sweep.blocks if b not in sweep.runnable(gpu)):
        log.warning("skipping a block of %d runs that requires a %s", len(block.points()), block.requires)
    points = prepare(sweep.points(gpu, extra), dry_run=launch.dry_run)
    if any(p.cfg.logger.wandb for p in points) and not launch.dry_run:
        tag_figures(points, membership(sweep.scale, gpu, extra))
    configs = [p.cfg for p in points]  # the figure's runs, trained here or not
    done = completed_in(configs, completed) if completed is not None else {}
    log.info("%s-%s: %d runs%s", sweep.name, sweep.scale, len(points),
             f", {len(done)} completed in {completed_name}" if completed is not None else "")
    wandb_logger = next((p.cfg.logger for p in points if p.cfg.logger.wandb), None)  # even if none trains here
    points = [p for i, p in enumerate(points) if i not in done]
    label = f"{sweep.name}-{sweep.scale}"
    if launch.dry_run:
        return Outcome(preview=launch.preview(points, label))
    points, on_submit = leave_to_others(sweep, overrides, points, runs_dir, resubmit_failed)
    follow = " ".join(["reluvit status", sweep.name, "--scale", sweep.scale, "--runs-dir", str(runs_dir)])
    failed = launch.run(points, label, follow, on_submit)
    if launch.no_wait:
        return Outcome(failed=failed)
    runs = select(config_identities(configs), rollup_into(runs_dir, results_dir, completed))
    drawn = draw(sweep, runs, results_dir)
    if wandb_logger is not None and drawn is not None:
        from reluvit.dashboards.figure_run import log_drawn

        log_drawn(sweep, runs, drawn, runs_dir, wandb_logger.project, wandb_logger.entity, wandb_logger.wandb_mode)
    return Outcome(failed=failed, runs=runs)


def leave_to_others(sweep, overrides: list[str], points: list, runs_dir: Path, resubmit_failed: bool = False):
    """Record the sweep's manifest, and keep the points nobody needs to train now: completed, diverged, queued or
    running runs are left alone (with ``resubmit_failed``, all but the failed ones). Returns those points and the
    callback that records their jobs in the manifest once submitted."""
    from reluvit.report.status import ACTIVE, cached_collect, composed_runs, run_states
    from reluvit.run.rundir import FINISHED, Status
    from reluvit.sweep.manifest import write_manifest

    label = f"{sweep.name}-{sweep.scale}"
    runs = composed_runs(sweep, runs_dir, overrides)
    manifest = write_manifest(runs_dir, label, overrides, runs)
    log.info("manifest: %s", manifest)
    recorded = json.loads(manifest.read_text())["runs"]
    states = {os.path.abspath(runs_dir / run["run_dir"]): state
              for run, state in zip(recorded, run_states(recorded, runs_dir, cached_collect(runs_dir)), strict=True)}
    state = {p.name: states.get(os.path.abspath(p.cfg.run_dir)) for p in points}
    keep = [p for p in points if state[p.name] is None or (
        state[p.name].status == Status.FAILED if resubmit_failed
        else state[p.name].status not in (*ACTIVE, *FINISHED))]
    if left := Counter(state[p.name].status for p in points if p not in keep):
        log.info("not submitted: %s", ", ".join(f"{n} {s}" for s, n in sorted(left.items())))

    def on_submit(jobs: dict[str, dict]) -> None:
        write_manifest(runs_dir, label, overrides, runs, jobs)

    return keep, on_submit


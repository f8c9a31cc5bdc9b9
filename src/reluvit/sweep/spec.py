"""Figure sweeps: ``sweeps/<figure>.yaml`` holds, per scale, the grid as blocks (each the cartesian product of its
keys, run as one Hydra ``-m`` call) and the layout of its plot. This module expands a sweep, launches it, reports
its status against the roll-up and draws its figure."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from reluvit import ROOT

SWEEPS_DIR = Path(os.environ.get("RELUVIT_SWEEPS_DIR", ROOT / "sweeps"))
FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5")
SCALES = ("smoke", "paper")
LAUNCHERS = ("local", "slurm")


def _values(value) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _hydra_value(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Block:
    """One cartesian block: ``keys`` maps a Hydra key (group or dotted key) to its values."""

    keys: dict[str, list]
    requires: str | None = None

    @property
    def size(self) -> int:
        return len(list(itertools.product(*self.keys.values())))

    def multirun_overrides(self) -> list[str]:
        """Hydra ``-m`` syntax: ``key=a,b,c``."""
        return [f"{k}={','.join(_hydra_value(v) for v in vals)}" for k, vals in self.keys.items()]

    def points(self) -> list[list[str]]:
        """Every point of the block as a plain override list."""
        names = list(self.keys)
        return [[f"{k}={_hydra_value(v)}" for k, v in zip(names, combo, strict=True)]
                for combo in itertools.product(*self.keys.values())]


@dataclass
class Sweep:
    figure: str
    scale: str
    blocks: list[Block]
    plot: dict

    def runnable(self, gpu: bool) -> list[Block]:
        return [b for b in self.blocks if b.requires is None or (b.requires == "gpu" and gpu)]

    def size(self, gpu: bool = True) -> int:
        return sum(b.size for b in self.runnable(gpu))


def load(figure: str, scale: str, seeds: list[int] | None = None, sweeps_dir: Path = SWEEPS_DIR) -> Sweep:
    """Read ``sweeps/<figure>.yaml`` at ``scale``; ``seeds`` replaces the seed list of every block."""
    path = sweeps_dir / f"{figure}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in sweeps_dir.glob("fig*.yaml")))
        raise SystemExit(f"reluvit: no sweep file {path}; known figures: {known}")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if scale not in spec["scales"]:
        raise SystemExit(f"reluvit: {path.name} has no scale {scale!r}; it has: {', '.join(spec['scales'])}")
    blocks = []
    for raw in spec["scales"][scale]["blocks"]:
        raw = dict(raw)
        requires = raw.pop("requires", None)
        keys = {k: _values(v) for k, v in raw.items()}
        if seeds is not None:
            keys["seed"] = list(seeds)
        blocks.append(Block(keys, requires))
    return Sweep(figure, scale, blocks, spec["scales"][scale]["plot"])


def expected_runs(sweep: Sweep, gpu: bool) -> list[str]:
    """Run names of every runnable point, by composing each point's config (the same names the runs get)."""
    from reluvit.run.config import compose_grid

    points = [point for block in sweep.runnable(gpu) for point in block.points()]
    return list(dict.fromkeys(cfg.run_name for cfg in compose_grid(points)))  # a point shared by two blocks is one run


def preflight(sweep: Sweep, gpu: bool, extra: list[str] = ()) -> list[list[str]]:
    """Every runnable point with ``extra``, composed and validated: a bad value anywhere in the grid (a typo, a
    missing dataset) fails here with the key and the run named, before the first run starts or a job is submitted.
    Returns the points' override lists."""
    from reluvit.run.config import ConfigError, compose_grid, validate

    points = [[*p, *extra] for block in sweep.runnable(gpu) for p in block.points()]
    for cfg in compose_grid([[o for o in p if not o.startswith("hydra.")] for p in points]):
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(e.key, f"{e.message} (in run {cfg.run_name})") from None
    return points


def launch(sweep: Sweep, launcher: str, gpu: bool, extra: list[str] = (), cluster: str = "local",
           runs_dir: Path = Path("runs")) -> list[str]:
    """Check every point (:func:`preflight`), then ``local``: run every runnable block as one ``python -m
    reluvit.run.train -m`` call, here; ``slurm``: submit every point through submitit to the cluster of profile
    ``cluster`` and wait. A failed run does not stop the others. Completed points are skipped by the runs
    themselves, so re-launching a sweep resumes it. Returns what failed, one line each (empty: all finished)."""
    if launcher not in LAUNCHERS:
        raise SystemExit(f"reluvit: launcher {launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    extra = [f"logger.group={sweep.figure}-{sweep.scale}", *extra]
    points = preflight(sweep, gpu, extra)
    if launcher == "slurm":
        from reluvit.sweep.slurm import submit_sweep

        outcomes = submit_sweep(sweep, points, cluster, runs_dir)
        failed = [f"job {job}: {out}" for job, out in outcomes.items() if out not in ("completed", "diverged")]
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} jobs finished", flush=True)
        return failed
    blocks = sweep.runnable(gpu)
    for block in sweep.blocks:
        if block not in blocks:
            print(f"reluvit: skipping a block of {block.size} runs that requires a {block.requires}", file=sys.stderr)
    failed = []
    for i, block in enumerate(blocks, 1):
        print(f"=== {sweep.figure}-{sweep.scale}: block {i}/{len(blocks)}, {block.size} runs", flush=True)
        cmd = [sys.executable, "-m", "reluvit.run.train", "-m", *block.multirun_overrides(), *extra]
        if code := subprocess.run(cmd).returncode:  # Hydra runs every point of the block before it fails
            failed.append(f"block {i} ({' '.join(block.multirun_overrides())}): exit status {code}")
    return failed


def status_table(sweeps: list[Sweep], runs: pd.DataFrame, gpu: bool) -> pd.DataFrame:
    """Per figure: how many of its points are completed, running, failed, diverged or missing."""
    rows = []
    by_name = runs.set_index("run_name")["status"] if len(runs) else pd.Series(dtype=str)
    for sweep in sweeps:
        names = expected_runs(sweep, gpu)
        statuses = by_name.reindex(names).fillna("missing")
        counts = statuses.value_counts()
        rows.append({"figure": sweep.figure, "scale": sweep.scale, "points": len(names),
                     **{s: int(counts.get(s, 0)) for s in ("completed", "running", "failed", "diverged", "missing")}})
    return pd.DataFrame(rows)


def plot(sweep: Sweep, runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Draw the sweep's figure from the roll-up with the layout of its sweep file."""
    from reluvit.report import plots

    return getattr(plots, sweep.figure)(runs, stem=out_dir / sweep.scale / sweep.figure, **sweep.plot)

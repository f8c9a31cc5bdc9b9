"""``make bench-cli``: wall time of ``reluvit --help``, ``reluvit results`` and ``reluvit status`` on a runs directory
of generated run summaries (10 000 by default), each command in a fresh process as a user runs it, median of a few
repeats. ``--help`` and ``results`` must stay under 2 s: they read JSON and import no torch or Lightning, and a
roll-up reuses the rows of summaries that did not change (the first one reads them all).

The paper's Figure 2 sweep (384 runs): ``reluvit status fig2 --scale paper`` and its SLURM dry run, each cold (an
empty composition cache, ``RELUVIT_CACHE_DIR``) and warm (run before, nothing changed), against a 2 s goal. Status
also runs on an empty runs directory: the difference is the roll-up of the 10 000 summaries."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from reluvit.run.compose import compose_containers, compose_points
from reluvit.run.grid import identity
from reluvit.sweep import spec

ACTIVATIONS = ["softmax", "relu", "relu2", "gelu", "softplus", "identity", "relu6", "sigmoid"]
GOAL_S = 2.0  # of `reluvit status fig2 --scale paper` and its dry run, warm


def generate(runs_dir: Path, count: int) -> None:
    """``count`` completed runs: a grid of models, attentions, alphas and seeds, each summary with its full config
    and the sub-folders a real run has."""
    bases = compose_points([[f"model={m}", f"attention={a}"] for m in ("micro4", "micro2", "mini4", "mini2")
                            for a in ACTIVATIONS])
    for i in range(count):
        config = OmegaConf.to_container(bases[i % len(bases)])
        config["seed"] = i // len(bases)
        config["attention"]["alpha"] = float(i % 9) / 4
        run_dir = runs_dir / f"{config['run_name']}-{i}"
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "csv" / "version_0").mkdir(parents=True)
        summary = {"run_name": f"{config['run_name']}-{i}", "run_dir": str(run_dir), "status": "completed",
                   "identity": identity(config), "config": config, "core_hours": 0.01, "global_step": 560,
                   "metrics": {"val/acc": 0.5 + (i % 100) / 1000, "val/loss": 1.0}}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def wall_seconds(args: list[str], repeats: int, cache: Path | None = None) -> float:
    """Median wall time of ``reluvit <args>``; ``cache``: its RELUVIT_CACHE_DIR."""
    env = {**os.environ, **({"RELUVIT_CACHE_DIR": str(cache)} if cache else {})}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reluvit", *args], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cold_and_warm(args: list[str], repeats: int, tmp: Path, label: str) -> tuple[float, float]:
    """Wall time with an empty composition cache (once), then with the cache it left (median of ``repeats``)."""
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{label}-", dir=tmp))
    return wall_seconds(args, 1, cache), wall_seconds(args, repeats, cache)


def composing_seconds(runs_dir: Path) -> list[float]:
    """In this process, the composition part of those commands: Figure 2's runs composed cold, then read back from
    the cache as DictConfigs (compose_points) and as plain containers (compose_containers)."""
    points = spec.load("fig2", "paper").points(True, [f"runs_dir={runs_dir.resolve()}"])
    timings = []
    for compose in (compose_points, compose_points, compose_containers):
        start = time.perf_counter()
        compose(points)
        timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="generated run summaries (default: 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per command (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["RELUVIT_CACHE_DIR"] = str(tmp / "cache")  # this process's compositions: not the user's cache
        runs, empty, results = tmp / "runs", tmp / "no-runs", tmp / "results"
        empty.mkdir()
        start = time.perf_counter()
        generate(runs, args.runs)
        print(f"generated {args.runs} run summaries in {time.perf_counter() - start:.1f} s")
        roll_up = ["results", "--runs-dir", str(runs), "--results-dir", str(results)]
        print(f"\n{'reluvit results, first (no table yet)':<36} {wall_seconds(roll_up, 1):>24.2f}")
        commands = {"reluvit --help": ["--help"],
                    "reluvit results, again": roll_up,  # rows of unchanged summaries are reused
                    "reluvit status (fig1-fig5, smoke)": ["status", "fig1", "fig2", "fig3", "fig4", "fig5",
                                                          "--runs-dir", str(runs)]}
        print(f"\n{'command':<36} {'wall s (median of ' + str(args.repeats) + ')':>24}")
        for name, argv in commands.items():
            print(f"{name:<36} {wall_seconds(argv, args.repeats):>24.2f}")

        status = ["status", "fig2", "--scale", "paper"]
        dry_run = ["sweep", "fig2", "--scale", "paper", "--launcher", "slurm", "--cluster", "example_gpu", "--dry-run",
                   "--results-dir", str(results)]
        figure2 = {f"status fig2 --scale paper, {args.runs} runs": [*status, "--runs-dir", str(runs)],
                   "status fig2 --scale paper, no runs": [*status, "--runs-dir", str(empty)],
                   "sweep fig2 --scale paper --dry-run": [*dry_run, "--runs-dir", str(runs)]}
        goal = f"warm / {GOAL_S:g} s"
        print(f"\n{'Figure 2, paper scale (384 runs)':<44} {'cold s':>8} {'warm s':>8} {goal:>12}")
        for i, (name, argv) in enumerate(figure2.items()):
            cold, warm = cold_and_warm(argv, args.repeats, tmp, str(i))
            print(f"{name:<44} {cold:>8.2f} {warm:>8.2f} {warm / GOAL_S:>11.1f}x")
        print("(cold: an empty composition cache; the roll-up of the runs is the difference between the two status "
              "rows)")
        cold, configs, containers = composing_seconds(runs)
        print(f"of which composing its 384 runs (in this process): cold {cold:.2f} s; warm {configs:.2f} s as "
              f"DictConfigs, {containers:.2f} s as plain containers")


if __name__ == "__main__":
    main()

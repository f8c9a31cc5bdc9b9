"""``make bench-cli``: wall time of ``reluvit --help``, ``reluvit results`` and ``reluvit status`` on a runs directory
of generated run summaries (10 000 by default), each command in a fresh process as a user runs it, median of a few
repeats. ``--help`` and ``results`` must stay under 2 s: they read JSON and import no torch or Lightning, and a
roll-up reuses the rows of summaries that did not change (the first one reads them all)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from reluvit.run.compose import compose_points
from reluvit.run.grid import identity

ACTIVATIONS = ["softmax", "relu", "relu2", "gelu", "softplus", "identity", "relu6", "sigmoid"]


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


def wall_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reluvit", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="generated run summaries (default: 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per command (default: 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs, results = Path(tmp) / "runs", Path(tmp) / "results"
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


if __name__ == "__main__":
    main()

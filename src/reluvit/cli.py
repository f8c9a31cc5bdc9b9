"""``reluvit <command>``: train (Hydra), demo, results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    commands = {"train": "train one run or a Hydra sweep (-m); Hydra overrides follow",
                "demo": "the demo reproduction on the embedded dataset",
                "results": "roll every summary.json under a runs directory into results/runs.{parquet,csv}"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: reluvit {" + ",".join(commands) + "} ...\n" +
              "\n".join(f"  {name:8s} {text}" for name, text in commands.items()), file=sys.stderr)
        raise SystemExit(2)
    command, sys.argv = sys.argv[1], [f"reluvit {sys.argv[1]}", *sys.argv[2:]]
    if command == "train":
        from reluvit.train import main as train
        train()
    elif command == "demo":
        from reluvit.demo import main as demo
        demo()
    else:
        parser = argparse.ArgumentParser(prog="reluvit results", description=commands["results"])
        parser.add_argument("--runs-dir", default="runs", type=Path)
        parser.add_argument("--out", default="results/runs", type=Path, help="output stem")
        args = parser.parse_args()
        from reluvit.results import collect, write_table
        df = collect(args.runs_dir)
        for path in write_table(df, args.out):
            print(f"{len(df)} runs -> {path}")

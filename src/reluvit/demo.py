"""``make demo``: train the runs of ``sweeps/demo.yaml`` on the embedded dataset, one after another in this process,
then write the results table and an accuracy figure under ``results/``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from reluvit import ROOT
from reluvit.run.config import compose
from reluvit.report.plots import accuracy_bars
from reluvit.report.rollup import collect, write_table
from reluvit.run.train import run



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", default=ROOT / "sweeps" / "demo.yaml", type=Path, help="demo sweep file")
    parser.add_argument("--runs-dir", default=ROOT / "runs" / "demo", type=Path, help="where the runs live")
    parser.add_argument("--results-dir", default=ROOT / "results", type=Path, help="where table and figure go")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides applied to every run")
    args = parser.parse_args(argv)

    sweep = yaml.safe_load(args.sweep.read_text())
    start = time.perf_counter()
    names = []
    for i, point in enumerate(sweep["runs"], 1):
        overrides = [*sweep["common"], *point, f"runs_dir={args.runs_dir}", *args.overrides]
        print(f"\n=== demo run {i}/{len(sweep['runs'])}: {' '.join(point)}", flush=True)
        names.append(run(compose(overrides))["run_name"])
    minutes = (time.perf_counter() - start) / 60

    df = collect(args.runs_dir)
    df = df.set_index("run_name").loc[names].reset_index()  # the sweep file's order
    table = write_table(df, args.results_dir / "demo")
    figure = accuracy_bars(df, args.results_dir / "figures" / "demo",
                           title=f"{df['model'].iloc[0]} on {df['data'].iloc[0]}, {df['epoch'].max()} epochs")
    columns = [c for c in ("run_name", "status", "val_acc", "fewshot_10shot_mean", "val_loss", "core_hours", "epoch")
               if c in df]
    print(f"\n{df[columns].to_string(index=False)}\n\ndemo finished in {minutes:.1f} min")
    print(f"table:  {table[1]}  ({table[0].name})\nfigure: {figure[0]}  ({figure[1].name})")


if __name__ == "__main__":
    main()

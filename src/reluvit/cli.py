"""``reluvit <command>``: train, demo, sweep, status, results, plots, shards, evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS = Path("results")


def _sweep_args(parser: argparse.ArgumentParser, many: bool) -> None:
    from reluvit.sweep.spec import FIGURES, SCALES

    if many:  # (argparse rejects an empty list against choices, so sweep.load checks the names)
        parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"any of {', '.join(FIGURES)} (default: all)")
    else:
        parser.add_argument("figure", choices=FIGURES, metavar="FIGURE", help=f"one of {', '.join(FIGURES)}")
    parser.add_argument("--scale", default="smoke", choices=SCALES, help="grid scale (default: smoke)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="comma-separated seeds replacing the sweep file's (e.g. 0,1,2)")
    parser.add_argument("--runs-dir", default=Path("runs"), type=Path, help="where runs live (default: runs)")
    parser.add_argument("--results-dir", default=RESULTS, type=Path, help="tables and figures (default: results)")


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _rollup(args):
    from reluvit.report.rollup import rollup

    table = rollup(args.runs_dir, args.results_dir / "runs")
    print(f"roll-up: {len(table)} runs -> {args.results_dir / 'runs'}.parquet / .csv")
    return table


def _sweeps(args):
    from reluvit.sweep.spec import FIGURES, load

    return [load(f, args.scale, args.seeds) for f in (args.figures or FIGURES)]


def _shards(args, parser: argparse.ArgumentParser) -> None:
    from reluvit.data.shards import write_shards

    try:
        info = write_shards(args.source, args.out, shard_mb=args.shard_mb, val_count=args.val_count,
                            label_set=args.label_set, resize=args.resize, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"reluvit shards: {e}\n")
    for split, part in info["splits"].items():
        print(f"{split}: {part['num_samples']} images in {len(part['shards'])} shards")
    print(f"{info['num_classes']} classes (label set {info['label_set']}) -> {args.out / '_info.json'}")


def _evaluate(args, overrides: list[str], parser: argparse.ArgumentParser) -> None:
    from reluvit.run.config import ConfigError
    from reluvit.evaluate.run import evaluate_run
    from reluvit.run.train import exit_config_error

    try:
        metrics = evaluate_run(args.target, overrides, args.device)
    except ConfigError as e:
        exit_config_error(e)
    except FileNotFoundError as e:
        parser.exit(2, f"reluvit evaluate: {e}\n")
    for key, value in metrics.items():
        if "/seed" not in key:  # per-seed values are in summary.json
            print(f"{key}: {value:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="reluvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="one run or a Hydra sweep (-m); Hydra overrides follow", add_help=False)
    sub.add_parser("demo", help="the demo reproduction on the embedded dataset", add_help=False)
    run = sub.add_parser("sweep", help="run a figure's sweep, wait, roll up and plot it")
    _sweep_args(run, many=False)
    run.add_argument("--launcher", default="local", help="local | slurm (default: local)")
    run.add_argument("--cluster", default="local", help="SLURM profile: slurm/profiles/<name>.yaml (default: local)")
    run.epilog = "Any further key=value arguments are Hydra overrides for every run (e.g. trainer.max_steps=5)."
    for name, text in (("status", "points done / running / failed / diverged / missing per figure"),
                       ("plots", "roll up and plot what exists"),
                       ("results", "roll every summary.json up into results/runs.{parquet,csv}")):
        _sweep_args(sub.add_parser(name, help=text), many=True)

    shards = sub.add_parser("shards", help="write webdataset shards (+ _info.json) that data=shards streams")
    shards.add_argument("source", help="a folder of <class>/<image> (or train/ and val/ of them), a folder of "
                                       "<wnid>.tar class archives, or embedded:<name>")
    shards.add_argument("out", type=Path, help="the shard directory (re-running skips finished shards)")
    shards.add_argument("--shard-mb", type=float, default=512, help="target shard size in MiB (default: 512)")
    shards.add_argument("--val-count", type=int, default=0,
                        help="hold out this many images as val when the source has no val/ (default: 0)")
    shards.add_argument("--label-set", default="folder", help="folder (the source's sorted class names; winter21) "
                        "| imagenet1k | imagenet21k_goog | imagenet21k_fall11 (default: folder)")
    shards.add_argument("--resize", type=int, default=None, help="re-encode with this shorter side (default: keep "
                        "the original bytes)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the sample order and the held-out split")

    sub.add_parser("soft-table", help="SOFT's models: params and FLOPs at 224 px against the paper's table")

    evaluate = sub.add_parser("evaluate", help="few-shot probe and i1k accuracy of a run; updates its summary.json")
    evaluate.add_argument("target", type=Path, help="a run directory or a checkpoint in its checkpoints/")
    evaluate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    evaluate.epilog = ("Further arguments are Hydra overrides of the eval group, e.g. eval=embedded "
                       "eval.fewshot.shots=[10] (default: conf/eval/default.yaml).")

    if len(sys.argv) > 1 and sys.argv[1] in ("train", "demo"):  # these parse their own arguments
        command, sys.argv = sys.argv[1], [f"reluvit {sys.argv[1]}", *sys.argv[2:]]
        if command == "train":
            from reluvit.run.train import main as train
            train()
        else:
            from reluvit.demo import main as demo
            demo()
        return

    args, overrides = parser.parse_known_args()
    if args.command == "soft-table":
        from reluvit.soft import table

        print(table())
        return
    from reluvit.run.config import ConfigError
    from reluvit.run.train import exit_config_error

    if args.command == "shards":
        _shards(args, parser)
        return
    if args.command == "evaluate":
        _evaluate(args, overrides, parser)
        return
    if overrides and (args.command != "sweep" or any(o.startswith("-") or "=" not in o for o in overrides)):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    from reluvit.sweep import spec as sweeps

    if args.command == "sweep":
        one = sweeps.load(args.figure, args.scale, args.seeds)
        extra = [f"runs_dir={args.runs_dir.resolve()}", *overrides]  # absolute: jobs may start elsewhere
        try:
            failed = sweeps.launch(one, args.launcher, _gpu(), extra, args.cluster, args.runs_dir)
        except ConfigError as e:
            exit_config_error(e)
        for path in sweeps.plot(one, _rollup(args), args.results_dir):
            print(f"figure: {path}")
        for line in failed:
            print(f"reluvit: failed: {line}", file=sys.stderr)
        if failed:  # the figure shows what finished; failed runs are in the roll-up with status failed
            raise SystemExit(1)
    elif args.command == "status":
        from reluvit.report.rollup import collect

        print(sweeps.status_table(_sweeps(args), collect(args.runs_dir), _gpu()).to_string(index=False))
    elif args.command == "plots":
        table = _rollup(args)
        for one in _sweeps(args):
            for path in sweeps.plot(one, table, args.results_dir):
                print(f"figure: {path}")
    else:
        _rollup(args)


if __name__ == "__main__":
    main()

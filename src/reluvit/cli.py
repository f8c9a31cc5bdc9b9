"""``reluvit <command>``: train, sweep, status, cancel, prune, export, results, plots, claims, wandb, wandb-sync,
evaluate, shards, soft-table.

Imports stay inside the commands: ``reluvit --help``, ``results`` and ``status`` never load torch or Lightning.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("reluvit")
RUNS_ENV = "RELUVIT_RUNS_DIR"  # where runs live unless --runs-dir (or runs_dir=) says otherwise; conf/train.yaml too


def exit_config_error(error: Exception) -> None:
    print(f"reluvit: config error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _results_dir(path: Path) -> Path:
    """Where tables and figures go; the committed reference results are never written by ordinary commands."""
    from reluvit.report.figures import reference_dir

    reference = reference_dir().resolve()
    if path.resolve().is_relative_to(reference) and not os.environ.get("RELUVIT_WRITE_REFERENCE"):
        raise SystemExit(f"reluvit: {path} holds the committed reference results; write elsewhere (set "
                         "RELUVIT_WRITE_REFERENCE=1 to regenerate them from a clean commit)")
    return path


def _launch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", default="local", help="local (here, one run after another) | slurm")
    parser.add_argument("--cluster", default=None,
                        help="SLURM profile: a name in slurm/profiles/ (and $RELUVIT_PROFILES_DIR) or the path of a "
                             "profile file (default: local, the test cluster; none at paper scale)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the SLURM submission to --cluster (job arrays, sbatch script, GPU-hours and wall "
                             "time) and submit nothing; needs no cluster and no data")
    parser.add_argument("--no-wait", action="store_true",
                        help="with --launcher slurm: submit, print the job ids and return")


def _sweep_args(parser: argparse.ArgumentParser, many: bool) -> None:
    from reluvit.sweep.spec import SCALES, names

    known = ", ".join(names())
    if many:
        parser.add_argument("sweeps", nargs="*", metavar="SWEEP", help=f"any of {known} (default: all)")
    else:
        parser.add_argument("sweep", metavar="SWEEP", help=f"one of {known}")
    parser.add_argument("--scale", default="smoke", choices=SCALES, help="grid scale (default: smoke)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                        help="comma-separated seeds replacing the sweep file's (e.g. 0,1,2)")
    _dirs(parser)


def _runs_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=None, type=Path,
                        help=f"where runs live (default: ${RUNS_ENV}, else runs; runs_dir=... says the same)")


def _dirs(parser: argparse.ArgumentParser) -> None:
    _runs_dir_arg(parser)
    from reluvit.report.figures import RESULTS

    parser.add_argument("--results-dir", default=RESULTS, type=Path,
                        help="roll-up table and figures (default: results)")


def _runs_dir(args, overrides: list[str]) -> list[str]:
    """Settle ``args.runs_dir`` from its one source: ``--runs-dir``, or a ``runs_dir=`` override (taken out of
    ``overrides``, which are returned), or $RELUVIT_RUNS_DIR, or ``runs``; both flag and override, disagreeing, are
    refused."""
    from reluvit.run.schema import ConfigError

    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "runs_dir"]
    overrides = [o for o in overrides if o.split("=", 1)[0] != "runs_dir"]
    if len({os.path.abspath(g) for g in given}) > 1 or (
            given and args.runs_dir and os.path.abspath(given[0]) != os.path.abspath(args.runs_dir)):
        shown = ", ".join([*([f"--runs-dir {args.runs_dir}"] if args.runs_dir else []),
                           *(f"runs_dir={g}" for g in given)])
        raise ConfigError("runs_dir", f"{shown} name different runs directories; give one")
    args.runs_dir = Path(args.runs_dir or (given[0] if given else None) or os.environ.get(RUNS_ENV) or "runs")
    return overrides


def _completed_in_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--completed-in", type=Path, action="append", default=None, metavar="TABLE",
                        help=f"a roll-up table (.parquet or .csv; repeat the flag for several) whose completed runs "
                             f"count as the sweep's: {what}")


def _completed_table(args):
    """The roll-up tables named by ``--completed-in``, as one table, or None."""
    import pandas as pd

    from reluvit.report.rollup import read_table

    if not args.completed_in:
        return None
    return pd.concat([read_table(path) for path in args.completed_in], ignore_index=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reluvit", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug lines too")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train runs from Hydra overrides (sweep syntax a=1,2 trains every point)")
    _launch_args(train)
    train.epilog = "Further arguments are Hydra overrides, e.g. model=s16 attention=relu attention.alpha=0.5,1."
    sweep = sub.add_parser("sweep", help="train a sweep (a figure, the demo), roll it up, plot it")
    _sweep_args(sweep, many=False)
    _launch_args(sweep)
    _completed_in_arg(sweep, "not trained again, their rows join the roll-up (for runs whose directory is gone)")
    sweep.add_argument("--resubmit-failed", action="store_true",
                       help="train only the sweep's failed runs again (they resume from their checkpoints)")
    sweep.epilog = "Further key=value arguments are Hydra overrides for every run (e.g. trainer.max_steps=5)."
    cancel = sub.add_parser("cancel", help="cancel the queued and running SLURM jobs of a sweep (its manifest's)")
    _sweep_args(cancel, many=False)
    prune = sub.add_parser("prune", help="drop the optimizer state from finished runs' checkpoints (a third of the "
                                         "disk is left; they can be evaluated and exported, not trained further)")
    prune.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR",
                       help="run directories (default: every completed or diverged run under the runs directory)")
    _runs_dir_arg(prune)
    export = sub.add_parser("export", help="a finished run's weights as safetensors that timm loads, and how to build "
                                           "the model (a JSON beside them)")
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--out", type=Path, default=None,
                        help="the .safetensors file (default: RUN_DIR/export/<run name>.safetensors)")
    commands = {}
    for name, text in (("status", "runs completed / running / failed / diverged / missing per sweep"),
                       ("plots", "roll up and plot what exists, and test the claims (claims.csv / .md)"),
                       ("claims", "test each figure's claims from the paper on the roll-up: effect, 95 % interval, "
                                  "seeds, verdict"),
                       ("wandb", "W&B dashboards per figure: a saved workspace view and a report")):
        commands[name] = sub.add_parser(name, help=text)
        _sweep_args(commands[name], many=True)
        commands[name].epilog = "Further key=value arguments: the Hydra overrides the sweep was launched with."
    commands["status"].add_argument("--failed", action="store_true",
                                    help="also list each failed, interrupted or diverged run: its error and logs")
    commands["plots"].add_argument("--bars", choices=("ci95", "minmax"), default="ci95",
                                   help="error bars over seeds: the 95 %% t interval of the mean (default) or min-max")
    commands["plots"].add_argument("--wandb", action="store_true",
                                   help="also log each figure as a W&B figure run (offline unless logged in)")
    commands["wandb"].add_argument("--publish", action="store_true",
                                   help="save the specifications written earlier (offline) to W&B; needs a login")
    for command in (commands["plots"], commands["wandb"], commands["claims"]):
        _completed_in_arg(command, "their rows join the roll-up and the figure (e.g. the committed "
                                   "results/reference/smoke/runs.csv)")
    for command in (commands["plots"], commands["wandb"]):
        command.add_argument("--project", default="reluvit", help="W&B project (default: reluvit)")
        command.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")
    sync = sub.add_parser("wandb-sync", help="upload every offline W&B run under the runs directory not synced yet")
    _runs_dir_arg(sync)
    sync.add_argument("--dry-run", action="store_true", help="list them and let `wandb sync --dry-run` check them")
    _dirs(sub.add_parser("results", help="roll every summary.json up into <results-dir>/runs.{parquet,csv}"))

    evaluate = sub.add_parser("evaluate", help="few-shot probe and i1k accuracy of a run; updates its summary.json")
    evaluate.add_argument("target", type=Path, help="a run directory or a checkpoint in its checkpoints/")
    evaluate.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    evaluate.epilog = ("Further arguments are Hydra overrides of the eval group, e.g. eval=embedded "
                       "eval.fewshot.shots=[10] (default: conf/eval/default.yaml).")

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
    return parser


def _launch(args):
    from reluvit.sweep.launch import Launch

    return Launch(args.launcher, args.cluster, args.dry_run, args.no_wait)


def _finish(outcome) -> None:
    """Print a dry run's preview, or the runs' table; exit 1 when a run failed."""
    from reluvit.report.figures import runs_text

    if outcome.preview is not None:
        print(outcome.preview)
    if outcome.runs is not None:
        print(runs_text(outcome.runs))
    for line in outcome.failed:
        log.error("failed: %s", line)
    if outcome.failed:  # a figure shows what finished; failed runs are in the roll-up with status failed
        raise SystemExit(1)


def _train(args, overrides: list[str]) -> None:
    from reluvit.workflow import train

    _finish(train(overrides, _launch(args)))


def _sweep(args, overrides: list[str]) -> None:
    from reluvit.sweep import spec
    from reluvit.workflow import run_sweep

    results_dir = _results_dir(args.results_dir)
    completed = _completed_table(args)
    sweep = spec.load(args.sweep, args.scale, args.seeds)
    named = ", ".join(map(str, args.completed_in)) if args.completed_in else None
    _finish(run_sweep(sweep, overrides, _launch(args), args.runs_dir, results_dir, completed, named,
                      args.resubmit_failed))


def _results(args) -> None:
    from reluvit.report.figures import rollup_into

    rollup_into(args.runs_dir, _results_dir(args.results_dir))


def _sweeps(args) -> list:
    from reluvit.sweep.spec import load_many

    return load_many(args.sweeps, args.scale, args.seeds)


def _status(args, overrides: list[str]) -> None:
    import pandas as pd

    from reluvit.report.status import cached_collect, counts, describe, run_states, sweep_runs

    table = cached_collect(args.runs_dir)
    rows, details = [], []
    for sweep in _sweeps(args):
        states = run_states(sweep_runs(sweep, args.runs_dir, overrides, args.seeds), args.runs_dir, table)
        rows.append(counts(sweep.name, sweep.scale, states))
        if lines := describe(states, failed=args.failed):
            details += [f"{sweep.name}-{sweep.scale}", *(f"  {line}" for line in lines)]
    print(pd.DataFrame(rows).to_string(index=False))
    if details:
        print("\n".join(details))


def _cancel(args, overrides: list[str]) -> None:
    from reluvit.report.status import ACTIVE, cached_collect, run_states
    from reluvit.run.schema import ConfigError
    from reluvit.sweep import spec
    from reluvit.sweep.manifest import cancel, manifest_path, read_manifest

    sweep = spec.load(args.sweep, args.scale, args.seeds)
    manifest = read_manifest(args.runs_dir, f"{sweep.name}-{sweep.scale}")
    if manifest is None:
        raise ConfigError("sweep", f"no manifest {manifest_path(args.runs_dir, f'{sweep.name}-{sweep.scale}')}: "
                                   "the sweep was not launched into this runs directory (--runs-dir?)")
    states = run_states(manifest["runs"], args.runs_dir, cached_collect(args.runs_dir))
    jobs = sorted({s.job for s in states if s.job and s.status in ACTIVE})
    cancel(jobs)
    print(f"cancelled {len(jobs)} jobs of {sweep.name}-{sweep.scale}" + (f": {' '.join(jobs)}" if jobs else ""))


def _prune(args) -> None:
    from reluvit.run.checkpoint import CheckpointError, PruneRefused, drop_optimizer_state, finished_runs
    from reluvit.run.lock import RunBusy
    from reluvit.sweep.cost import byte_size

    freed, refused = 0, 0
    for run_dir in args.run_dirs or finished_runs(args.runs_dir):
        try:
            freed += drop_optimizer_state(run_dir).freed
        except (PruneRefused, RunBusy, CheckpointError) as e:
            log.error("%s", e)
            refused += 1
    log.info("freed %s", byte_size(freed))
    if refused:
        raise SystemExit(1)


def _export(args) -> None:
    from reluvit.run.checkpoint import CheckpointError
    from reluvit.run.export import ExportRefused, export

    try:
        path, recipe = export(args.run_dir, args.out)
    except (ExportRefused, CheckpointError) as e:
        raise SystemExit(f"reluvit: {e}") from None
    log.info("weights: %s; how to build them: %s", path, path.with_suffix(".json"))
    if recipe["stock_timm"]:
        print(f"timm.create_model({recipe['timm_model']!r}, pretrained=True, pretrained_cfg_overlay=dict("
              f"file={str(path)!r}, num_classes={recipe['timm_kwargs']['num_classes']}), "
              f"**json.load(open({str(path.with_suffix('.json'))!r}))['timm_kwargs'])")
    else:
        print(f"reluvit.run.export.load_with_reluvit({str(path)!r})  # its attention is reluvit's: "
              f"{recipe['reluvit_create_model']['attention']}")


def _figures(args, overrides: list[str]):
    from reluvit.report.figures import figures

    return figures(_sweeps(args), args.runs_dir, _results_dir(args.results_dir), _completed_table(args), overrides,
                   args.seeds, getattr(args, "bars", "ci95"))


def _plots(args, overrides: list[str]) -> None:
    from reluvit.dashboards.figure_run import log_drawn
    from reluvit.report.figures import verdicts

    tested = []
    for sweep, runs, drawn in _figures(args, overrides):
        tested.append((sweep, runs))
        if args.wandb and drawn is not None:
            log_drawn(sweep, runs, drawn, args.runs_dir, args.project, args.entity, "auto")
    verdicts(tested, _results_dir(args.results_dir), args.scale)


def _claims(args, overrides: list[str]) -> None:
    from reluvit.report.claims import markdown
    from reluvit.report.figures import sweep_tables, verdicts

    tested = list(sweep_tables(_sweeps(args), args.runs_dir, _results_dir(args.results_dir), _completed_table(args),
                               overrides, args.seeds))
    print(markdown(verdicts(tested, _results_dir(args.results_dir), args.scale)))


def _wandb(args, overrides: list[str]) -> None:
    from reluvit.dashboards import spec
    from reluvit.dashboards.layout import LAYOUTS
    from reluvit.login import base_url, logged_in
    from reluvit.report import claims, plots
    from reluvit.run.schema import ConfigError
    from reluvit.sweep.spec import has_scale

    if unknown := [name for name in args.sweeps if name not in LAYOUTS]:
        raise ConfigError("wandb", f"no dashboard for {', '.join(unknown)}; figures: {', '.join(LAYOUTS)}")
    args.sweeps = args.sweeps or [name for name in LAYOUTS if has_scale(name, args.scale)]
    folder = _results_dir(args.results_dir) / args.scale / "wandb"
    if args.publish:
        for name in args.sweeps:
            paths = spec.spec_paths(folder, name)
            if missing := [str(p) for p in paths.values() if not p.exists()]:
                raise ConfigError("--publish", f"no specification {missing[0]}: run `reluvit wandb {name} --scale "
                                               f"{args.scale}` first")
            for url in spec.publish(paths):
                print(url)
        return
    online = logged_in()
    for sweep, runs, (figure, _paths) in _figures(args, overrides):
        tested = claims.markdown(claims.of_sweep(sweep, runs)) if sweep.claims else None
        specs = spec.dashboards(sweep, plots.footnote(plots.tally(figure.points)), args.entity, args.project, tested)
        paths = spec.spec_paths(folder, sweep.name)
        spec.write(specs, paths)
        log.info("%s: report and workspace specifications -> %s", sweep.name, ", ".join(map(str, paths.values())))
        if online:
            for url in spec.publish(paths):
                print(url)
    if not online:
        log.info("not logged in to %s: publish them later with `reluvit wandb %s --scale %s --publish` after "
                 "`wandb login`", base_url(), " ".join(args.sweeps), args.scale)


def _wandb_sync(args) -> None:
    from reluvit.dashboards.sync import sync

    sync(args.runs_dir, dry_run=args.dry_run)


def _evaluate(args, overrides: list[str], parser: argparse.ArgumentParser) -> None:
    from reluvit.run.checkpoint import CheckpointError
    from reluvit.run.compose import eval_config
    from reluvit.run.evaluate import evaluate_run

    try:
        metrics = evaluate_run(args.target, eval_config(overrides), args.device)
    except (FileNotFoundError, CheckpointError) as e:
        parser.exit(2, f"reluvit evaluate: {e}\n")
    for key, value in metrics.items():
        if "/seed" not in key:  # per-seed values are in summary.json
            print(f"{key}: {value:.4f}")


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


def main(argv: list[str] | None = None) -> None:
    from reluvit.errors import ArgumentError
    from reluvit.run.schema import ConfigError

    try:
        parser = _parser()  # lists the sweeps: a user's sweep directory that is not there is refused here
    except ArgumentError as e:
        exit_config_error(e)
    args, overrides = parser.parse_known_args(argv)
    if args.command in ("status", "plots", "wandb", "claims"):  # the SWEEP list takes the key=value overrides too
        overrides += [name for name in args.sweeps if "=" in name]
        args.sweeps = [name for name in args.sweeps if "=" not in name]
    takes_overrides = ("train", "sweep", "evaluate", "status", "plots", "wandb", "claims", "cancel")
    if overrides and (args.command not in takes_overrides or any(o.startswith("-") for o in overrides)):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    from reluvit.logs import configure

    configure(args.verbose - args.quiet)
    try:
        if hasattr(args, "runs_dir"):
            overrides = _runs_dir(args, overrides)
        if args.command == "train":
            _train(args, overrides)
        elif args.command == "sweep":
            _sweep(args, overrides)
        elif args.command == "status":
            _status(args, overrides)
        elif args.command == "cancel":
            _cancel(args, overrides)
        elif args.command == "prune":
            _prune(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "plots":
            _plots(args, overrides)
        elif args.command == "claims":
            _claims(args, overrides)
        elif args.command == "wandb":
            _wandb(args, overrides)
        elif args.command == "wandb-sync":
            _wandb_sync(args)
        elif args.command == "results":
            _results(args)
        elif args.command == "evaluate":
            _evaluate(args, overrides, parser)
        elif args.command == "shards":
            _shards(args, parser)
        else:
            from reluvit.soft import table

            print(table())
    except (ConfigError, ArgumentError) as e:
        exit_config_error(e)


if __name__ == "__main__":
    main()

"""``reluvit <command>``: train, sweep, status, cancel, prune, export, results, plots, wandb, wandb-sync, evaluate,
shards, soft-table.

Imports stay inside the commands: ``reluvit --help``, ``results`` and ``status`` never load torch or Lightning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

log = logging.getLogger("reluvit")
RESULTS = Path("results")
RUNS_ENV = "RELUVIT_RUNS_DIR"  # where runs live unless --runs-dir (or runs_dir=) says otherwise; conf/train.yaml too


def _reference_dir() -> Path:
    """The committed reference results: the checkout's that reluvit runs from (an editable install), else under the
    working directory."""
    checkout = Path(__file__).resolve().parents[2] / RESULTS / "reference"
    return checkout if checkout.is_dir() else RESULTS.absolute() / "reference"


def exit_config_error(error: Exception) -> None:
    print(f"reluvit: config error: {error}", file=sys.stderr)
    raise SystemExit(2)


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _results_dir(path: Path) -> Path:
    """Where tables and figures go; the committed reference results are never written by ordinary commands."""
    reference = _reference_dir().resolve()
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
    parser.add_argument("--completed-in", type=Path, default=None, metavar="TABLE",
                        help=f"a roll-up table (.parquet or .csv) whose completed runs count as the sweep's: {what}")


def _completed_table(args):
    """The roll-up table named by ``--completed-in``, or None."""
    from reluvit.report.rollup import read_table

    return read_table(args.completed_in) if args.completed_in else None


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
                       ("plots", "roll up and plot what exists"),
                       ("wandb", "W&B dashboards per figure: a saved workspace view and a report")):
        commands[name] = sub.add_parser(name, help=text)
        _sweep_args(commands[name], many=True)
        commands[name].epilog = "Further key=value arguments: the Hydra overrides the sweep was launched with."
    commands["status"].add_argument("--failed", action="store_true",
                                    help="also list each failed, interrupted or diverged run: its error and logs")
    commands["plots"].add_argument("--wandb", action="store_true",
                                   help="also log each figure as a W&B figure run (offline unless logged in)")
    commands["wandb"].add_argument("--publish", action="store_true",
                                   help="save the specifications written earlier (offline) to W&B; needs a login")
    for command in (commands["plots"], commands["wandb"]):
        _completed_in_arg(command, "their rows join the roll-up and the figure (e.g. the committed "
                                   "results/reference/smoke/runs.csv)")
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


def _check_launcher(args):
    """The launcher, its options and the cluster profile (returned; None for a local launch), before anything is
    composed or submitted. A dry run previews a SLURM submission, whichever the launcher."""
    from reluvit.run.schema import ConfigError
    from reluvit.sweep.execute import LAUNCHERS

    if args.launcher not in LAUNCHERS:
        raise ConfigError("launcher", f"{args.launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    if args.no_wait and (args.dry_run or args.launcher != "slurm"):
        raise ConfigError("--no-wait", "returns after submitting: it takes --launcher slurm and no --dry-run")
    if args.launcher == "slurm" or args.dry_run:
        from reluvit.sweep.slurm import load_profile

        paper = getattr(args, "scale", None) == "paper"
        if args.cluster is None:
            if paper:
                raise ConfigError("--cluster", "a paper-scale sweep has no default profile: name your GPU cluster's "
                                  "(--cluster example_gpu for the template, or the path of a profile file)")
            args.cluster = "local"
        profile = load_profile(args.cluster)
        if paper and not profile.gpus_per_node:
            raise ConfigError("--cluster", f"profile {args.cluster!r} has no GPUs (gpus_per_node: 0): a paper-scale "
                              "sweep needs a GPU cluster's profile")
        return profile
    return None


def _launch_preview(args, points: list, label: str) -> str:
    from reluvit.sweep.execute import preview

    return preview(points, args.cluster, label)


def _launch(args, points: list, label: str, follow: str, on_submit=None) -> list[str]:
    """Execute the points; returns what failed. ``follow``: the command that shows the progress of runs submitted
    without waiting."""
    from reluvit.sweep.execute import execute

    failed = execute(points, args.launcher, args.cluster, label, block=not args.no_wait, on_submit=on_submit)
    if args.no_wait:
        log.info("follow with `%s`", follow)
    return failed


def _train(args, overrides: list[str]) -> None:
    from reluvit.run.compose import expand
    from reluvit.sweep.execute import prepare

    _check_launcher(args)
    points = prepare(expand(overrides), dry_run=args.dry_run)
    if args.dry_run:
        print(_launch_preview(args, points, "train"))
        return
    if failed := _launch(args, points, "train", follow="squeue --me; reluvit results"):
        for line in failed:
            log.error("failed: %s", line)
        raise SystemExit(1)


def _sweep(args, overrides: list[str]) -> None:
    from reluvit.report.rollup import completed_in, config_identities, select
    from reluvit.sweep import spec
    from reluvit.sweep.execute import membership, prepare, tag_figures

    results_dir = _results_dir(args.results_dir)
    elsewhere = _completed_table(args)
    profile = _check_launcher(args)
    sweep = spec.load(args.sweep, args.scale, args.seeds)
    if not args.dry_run:
        _plot_function(sweep)  # a figure that cannot be drawn: refused before anything trains
    extra = [f"runs_dir={args.runs_dir.resolve()}", *overrides]  # absolute: jobs may start elsewhere
    gpu = bool(profile.gpus_per_node) if profile else _gpu()  # where the runs will train
    skipped = [b for b in sweep.blocks if b not in sweep.runnable(gpu)]
    for block in skipped:
        log.warning("skipping a block of %d runs that requires a %s", len(block.points()), block.requires)
    points = prepare(sweep.points(gpu, extra), dry_run=args.dry_run)
    if any(p.cfg.logger.wandb for p in points) and not args.dry_run:
        tag_figures(points, membership(args.scale, gpu, extra))
    configs = [p.cfg for p in points]  # the figure's runs, trained here or not
    done = completed_in(configs, elsewhere) if elsewhere is not None else {}
    log.info("%s-%s: %d runs%s", sweep.name, sweep.scale, len(points),
             f", {len(done)} completed in {args.completed_in}" if elsewhere is not None else "")
    wandb_logger = next((p.cfg.logger for p in points if p.cfg.logger.wandb), None)  # even if none trains here
    points = [p for i, p in enumerate(points) if i not in done]
    label = f"{sweep.name}-{sweep.scale}"
    if args.dry_run:
        print(_launch_preview(args, points, label))
        return
    points, on_submit = _to_train(args, sweep, overrides, extra, points)
    failed = _launch(args, points, label, " ".join(
        ["reluvit status", sweep.name, "--scale", sweep.scale, "--runs-dir", str(args.runs_dir)]), on_submit)
    if args.no_wait:
        return
    table = _rollup(args.runs_dir, results_dir, elsewhere)
    runs = select(config_identities(configs), table)
    drawn = _plot(sweep, runs, results_dir)
    if wandb_logger is not None and drawn is not None:
        _figure_run(sweep, runs, drawn, args.runs_dir, wandb_logger.project, wandb_logger.entity,
                    wandb_logger.wandb_mode)
    _show(runs)
    for line in failed:
        log.error("failed: %s", line)
    if failed:  # the figure shows what finished; failed runs are in the roll-up with status failed
        raise SystemExit(1)


def _to_train(args, sweep, overrides: list[str], extra: list[str], points: list):
    """Record the sweep's manifest, and keep the points nobody needs to train now: completed, diverged, queued or
    running runs are left alone (with ``--resubmit-failed``, all but the failed ones). Returns those points and the
    callback that records their jobs in the manifest once submitted."""
    from reluvit.report.status import ACTIVE, cached_collect, entries, run_states
    from reluvit.run.compose import compose_containers
    from reluvit.sweep.manifest import write_manifest

    label = f"{sweep.name}-{sweep.scale}"
    runs = entries(compose_containers(sweep.points(True, extra)), args.runs_dir, set(sweep.gpu_only_models()))
    manifest = write_manifest(args.runs_dir, label, overrides, runs)
    log.info("manifest: %s", manifest)
    recorded = json.loads(manifest.read_text())["runs"]
    states = {os.path.abspath(args.runs_dir / run["run_dir"]): state
              for run, state in zip(recorded, run_states(recorded, args.runs_dir, cached_collect(args.runs_dir)),
                                    strict=True)}
    state = {p.name: states.get(os.path.abspath(p.cfg.run_dir)) for p in points}
    keep = [p for p in points if state[p.name] is None or (
        state[p.name].status == "failed" if args.resubmit_failed
        else state[p.name].status not in (*ACTIVE, "completed", "diverged"))]
    if left := Counter(state[p.name].status for p in points if p not in keep):
        log.info("not submitted: %s", ", ".join(f"{n} {s}" for s, n in sorted(left.items())))

    def on_submit(jobs: dict[str, dict]) -> None:
        write_manifest(args.runs_dir, label, overrides, runs, jobs)

    return keep, on_submit


def _rollup(runs_dir: Path, results_dir: Path, also=None):
    from reluvit.report.rollup import rollup

    table = rollup(runs_dir, results_dir / "runs", also)
    log.info("roll-up: %d runs -> %s.parquet / .csv", len(table), results_dir / "runs")
    return table


def _plot(sweep, runs, results_dir: Path):
    """Draw and save the sweep's figure (``results/<scale>/<sweep>.png``, by the plot function its ``figure`` names);
    returns it (with ``.points``) and its PNG and PDF paths, or None for a sweep without a figure. Missing points of
    models that only a GPU trains are counted as needing one."""
    from reluvit.report import plots

    draw = _plot_function(sweep)
    if draw is None:
        log.info("%s: no figure (a sweep file's figure: names its plot, e.g. figure: fig2)", sweep.name)
        return None
    gpu_only = {"needs_gpu": models} if (models := sweep.gpu_only_models()) else {}
    figure = draw(runs, **sweep.plot, **gpu_only)
    paths = plots.save(figure, results_dir / sweep.scale / sweep.name)
    for path in paths:
        log.info("figure: %s", path)
    return figure, paths


def _plot_function(sweep):
    """The function of :mod:`reluvit.report.plots` that the sweep file's ``figure`` names; None without one."""
    from reluvit.report import plots
    from reluvit.run.schema import ConfigError

    if sweep.figure is None:
        return None
    if sweep.figure not in plots.FIGURES:
        raise ConfigError("figure", f"{sweep.figure!r} is not a figure; the figures are: {', '.join(plots.FIGURES)}")
    return getattr(plots, sweep.figure)


def _figure_run(sweep, runs, drawn, runs_dir: Path, project: str, entity: str | None, mode: str) -> None:
    from reluvit.dashboards.figure_run import log_figure_run

    figure, paths = drawn
    reference = _reference_dir() / sweep.scale / f"{sweep.name}.png"
    log_figure_run(sweep, runs, figure, paths, runs_dir, project=project, entity=entity, mode=mode,
                   reference=reference)


def _show(runs) -> None:
    """The sweep's runs, one line each (a count per status when there are many)."""
    if len(runs) > 40:
        print(runs["status"].value_counts().to_string())
        return
    columns = [c for c in ("run_name", "status", "val_acc", "fewshot_10shot_mean", "val_i1k_acc", "core_hours",
                           "global_step") if c in runs]
    print(runs[columns].to_string(index=False) if len(runs) else "no runs")


def _sweeps(args) -> list:
    from reluvit.sweep import spec

    return [spec.load(name, args.scale, args.seeds) for name in args.sweeps or spec.names()
            if args.sweeps or spec.has_scale(name, args.scale)]


def _sweep_runs(args, sweep, overrides: list[str]) -> list[dict]:
    """The runs of a sweep as its manifest records them (launched into this runs directory, with the overrides it
    was launched with), or, without one (or when overrides or seeds are given), as composed now."""
    from reluvit.report.status import entries
    from reluvit.run.compose import compose_containers
    from reluvit.sweep.manifest import read_manifest

    manifest = None if overrides or args.seeds else read_manifest(args.runs_dir, f"{sweep.name}-{sweep.scale}")
    if manifest is not None:
        return manifest["runs"]
    extra = [f"runs_dir={args.runs_dir.resolve()}", *overrides]
    return entries(compose_containers(sweep.points(True, extra)), args.runs_dir, set(sweep.gpu_only_models()))


def _status(args, overrides: list[str]) -> None:
    import pandas as pd

    from reluvit.report.status import cached_collect, counts, describe, run_states

    table = cached_collect(args.runs_dir)
    rows, details = [], []
    for sweep in _sweeps(args):
        states = run_states(_sweep_runs(args, sweep, overrides), args.runs_dir, table)
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
    """Roll up, then for each sweep asked for: the sweep, its runs and its figure drawn and saved (:func:`_plot`)."""
    from reluvit.report.rollup import select

    results_dir = _results_dir(args.results_dir)
    table = _rollup(args.runs_dir, results_dir, _completed_table(args))
    for sweep in _sweeps(args):
        runs = select([run["identities"] for run in _sweep_runs(args, sweep, overrides)], table)
        yield sweep, runs, _plot(sweep, runs, results_dir)


def _plots(args, overrides: list[str]) -> None:
    for sweep, runs, drawn in _figures(args, overrides):
        if args.wandb:
            _figure_run(sweep, runs, drawn, args.runs_dir, args.project, args.entity, "auto")


def _wandb(args, overrides: list[str]) -> None:
    from reluvit.dashboards import spec
    from reluvit.dashboards.layout import LAYOUTS
    from reluvit.dashboards.login import base_url, logged_in
    from reluvit.report import plots
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
    for sweep, _runs, (figure, _paths) in _figures(args, overrides):
        specs = spec.dashboards(sweep, plots.footnote(plots.tally(figure.points)), args.entity, args.project)
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
    from reluvit.evaluate.run import evaluate_run
    from reluvit.run.checkpoint import CheckpointError
    from reluvit.run.compose import eval_config

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
    if args.command in ("status", "plots", "wandb"):  # the positional SWEEP list takes the key=value overrides too
        overrides += [name for name in args.sweeps if "=" in name]
        args.sweeps = [name for name in args.sweeps if "=" not in name]
    takes_overrides = ("train", "sweep", "evaluate", "status", "plots", "wandb", "cancel")
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
        elif args.command == "wandb":
            _wandb(args, overrides)
        elif args.command == "wandb-sync":
            _wandb_sync(args)
        elif args.command == "results":
            _rollup(args.runs_dir, _results_dir(args.results_dir))
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

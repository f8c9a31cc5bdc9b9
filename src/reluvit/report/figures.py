"""A sweep's figure and verdicts from the roll-up: the roll-up written under the results directory, the runs that are
the sweep's, drawn by the plot its sweep file names (``figure:``), saved as PNG and PDF, and shown as a table (with
W&B, logged as a figure run: :func:`reluvit.dashboards.figure_run.log_drawn`); its claims tested
(:mod:`reluvit.report.claims`) into ``claims.csv`` and ``claims.md``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from reluvit.run.schema import ConfigError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
RESULTS = Path("results")  # the default results directory, of the working directory


def reference_dir() -> Path:
    """The committed reference results: the checkout's that reluvit runs from (an editable install), else under the
    working directory."""
    checkout = Path(__file__).resolve().parents[3] / RESULTS / "reference"
    return checkout if checkout.is_dir() else RESULTS.absolute() / "reference"


def rollup_into(runs_dir: Path, results_dir: Path, also: pd.DataFrame | None = None) -> pd.DataFrame:
    """Roll the runs under ``runs_dir`` up into ``<results_dir>/runs.parquet`` and ``.csv``
    (:func:`reluvit.report.rollup.rollup`); returns the table."""
    from reluvit.report.rollup import rollup

    table = rollup(runs_dir, results_dir / "runs", also)
    log.info("roll-up: %d runs -> %s.parquet / .csv", len(table), results_dir / "runs")
    return table


def plot_function(sweep):
    """The function of :mod:`reluvit.report.plots` that the sweep file's ``figure`` names; None without one."""
    from reluvit.report import plots

    if sweep.figure is None:
        return None
    if sweep.figure not in plots.FIGURES:
        raise ConfigError("figure", f"{sweep.figure!r} is not a figure; the figures are: {', '.join(plots.FIGURES)}")
    return getattr(plots, sweep.figure)


def drawn(sweep, runs: pd.DataFrame, bars: str = "ci95"):
    """The sweep's figure (:mod:`reluvit.report.plots`, its ``figure.points`` the data drawn), or None for a sweep
    without one: its plot's keyword arguments from the sweep file, drawn from the runs of the seeds its ``seeds:``
    lists (all without one; the claims may use more). Missing points of models that only a GPU trains are counted
    as needing one."""
    plot = plot_function(sweep)
    if plot is None:
        return None
    if sweep.plot_seeds is not None and "seed" in runs:
        runs = runs[runs["seed"].astype(float).isin([float(seed) for seed in sweep.plot_seeds])]
    gpu_only = {"needs_gpu": models} if (models := sweep.gpu_only_models()) else {}
    return plot(runs, **sweep.plot, **gpu_only, bars=bars)


def draw(sweep, runs: pd.DataFrame, results_dir: Path, bars: str = "ci95"):
    """Draw and save the sweep's figure (:func:`drawn`; ``<results_dir>/<scale>/<sweep>.png`` and ``.pdf``);
    returns it and its paths, or None for a sweep without a figure."""
    from reluvit.report import plots

    figure = drawn(sweep, runs, bars)
    if figure is None:
        log.info("%s: no figure (a sweep file's figure: names its plot, e.g. figure: fig2)", sweep.name)
        return None
    paths = plots.save(figure, results_dir / sweep.scale / sweep.name)
    for path in paths:
        log.info("figure: %s", path)
    return figure, paths


def runs_text(runs: pd.DataFrame) -> str:
    """The sweep's runs, one line each (a count per status when there are many)."""
    if len(runs) > 40:
        return runs["status"].value_counts().to_string()
    columns = [c for c in ("run_name", "status", "val_acc", "fewshot_10shot_mean", "val_i1k_acc", "core_hours",
                           "global_step") if c in runs]
    return runs[columns].to_string(index=False) if len(runs) else "no runs"


def sweep_rows(sweep, table: pd.DataFrame, runs_dir: Path = Path("runs"), overrides: list[str] = (),
               seeds: list[int] | None = None) -> pd.DataFrame:
    """The rows of a roll-up table that are the sweep's runs (:func:`reluvit.report.status.sweep_runs`: its manifest
    in ``runs_dir``, else its runs composed now), what its figure and its claims are drawn from."""
    from reluvit.report.rollup import select
    from reluvit.report.status import sweep_runs

    return select([run["identities"] for run in sweep_runs(sweep, runs_dir, overrides, seeds)], table)


def sweep_tables(sweeps: list, runs_dir: Path, results_dir: Path, also: pd.DataFrame | None = None,
                 overrides: list[str] = (), seeds: list[int] | None = None):
    """Roll up, then for each sweep: the sweep and its rows (:func:`sweep_rows`)."""
    table = rollup_into(runs_dir, results_dir, also)
    for sweep in sweeps:
        yield sweep, sweep_rows(sweep, table, runs_dir, overrides, seeds)


def figures(sweeps: list, runs_dir: Path, results_dir: Path, also: pd.DataFrame | None = None,
            overrides: list[str] = (), seeds: list[int] | None = None, bars: str = "ci95"):
    """For each sweep (:func:`sweep_tables`): the sweep, its runs and its figure drawn and saved (:func:`draw`)."""
    for sweep, runs in sweep_tables(sweeps, runs_dir, results_dir, also, overrides, seeds):
        yield sweep, runs, draw(sweep, runs, results_dir, bars)


def first_rollup(*paths: Path) -> tuple[Path, pd.DataFrame]:
    """The first of ``paths`` that holds a roll-up with runs, and its table (an empty roll-up, such as one written
    before any run finished, never hides a later one); the last path's table when none has runs."""
    from reluvit.report.rollup import read_table

    existing = [Path(path) for path in paths if Path(path).exists()]
    if not existing:
        raise ConfigError("table", f"no roll-up table: none of {', '.join(map(str, paths))}")
    for path in existing:
        if len(table := read_table(path)):
            return path, table
    return existing[-1], table


def verdicts(tested: list[tuple], results_dir: Path, scale: str) -> pd.DataFrame:
    """The claims of each (sweep, its runs) tested (:func:`reluvit.report.claims.evaluate`), written to
    ``<results_dir>/<scale>/claims.csv`` and ``.md``; returns the table."""
    import pandas as pd

    from reluvit.report import claims

    tables = [claims.of_sweep(sweep, runs) for sweep, runs in tested]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=claims.COLUMNS)
    stem = results_dir / scale / "claims"
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(claims.markdown(table))
    log.info("claims: %s", ", ".join(f"{n} {v}" for v, n in table["verdict"].value_counts().items()) or "none")
    log.info("claims: %s.csv / .md", stem)
    return table

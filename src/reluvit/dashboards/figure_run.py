"""The figure run: one W&B run per figure and scale (job type ``figure``, group and name ``<figure>-<scale>``) that
holds the figure's roll-up rows (table ``runs``), the points it drew (table ``points``), its PNG (``figure``), the
committed reference PNG where there is one (``reference``), the PDF among the run's files, and one native W&B line
chart per panel (``chart/panel<i>``, :func:`wandb.plot.line_series` of the drawn means). Its id is derived from
where it lives, so logging it again updates the same run."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from reluvit.dashboards.layout import Panel, panels
from reluvit.dashboards.spec import chart_key, figure_run_name
from reluvit.login import resolve_mode
from reluvit.report import plots
from reluvit.sweep.spec import Sweep

log = logging.getLogger(__name__)


def figure_run_dir(runs_dir: Path, sweep: Sweep) -> Path:
    """``<runs_dir>/figures/<scale>/<figure>``: under the runs directory, where ``reluvit wandb-sync`` looks."""
    return Path(runs_dir) / "figures" / sweep.scale / sweep.name


def _table(df: pd.DataFrame):
    """A wandb.Table of ``df``: values W&B cannot type (mixed columns, None beside numbers) as text, NaN as None."""
    import wandb

    clean = df.astype(object).where(df.notna(), None)
    for column in clean.columns:
        kinds = {type(v) for v in clean[column] if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float, np.int64, np.float64}:
            clean[column] = [None if v is None else str(v) for v in clean[column]]
    return wandb.Table(dataframe=clean)


def _in_panel(points: pd.DataFrame, panel: Panel) -> pd.Series:
    """The points the figure drew in ``panel``: its runs (``where``), its y, and its x or none (a level)."""
    mask = (points["y_key"] == panel.y) & (points["x_key"].isna() | (points["x_key"] == panel.x))
    for column, value in panel.where.items():
        mask &= points[column].isin(value if isinstance(value, list) else [value])
    return mask


def line_series(points: pd.DataFrame, panel: Panel) -> tuple[list[list[float]], list[list[float]], list[str]]:
    """(xs, ys, line labels) of the means the figure drew in ``panel``; a level (a line drawn without x) spans the
    panel's x values."""
    rows = points[_in_panel(points, panel) & (points["status"] == "ok")]
    span = sorted(rows["x"].dropna().unique())
    xs, ys, keys = [], [], []
    for line, group in rows.groupby("line", sort=False):
        if group["x"].isna().all():
            xs.append([float(x) for x in span])
            ys.append([float(group["mean"].iloc[0])] * len(span))
        else:
            group = group.dropna(subset=["x"]).sort_values("x")
            xs.append(group["x"].astype(float).tolist())
            ys.append(group["mean"].astype(float).tolist())
        keys.append(str(line))
    return xs, ys, keys


def log_figure_run(sweep: Sweep, runs: pd.DataFrame, figure, paths: list[Path], runs_dir: Path, *,
                   project: str, entity: str | None = None, mode: str = "auto", reference: Path | None = None) -> Path:
    """Log (or update) the figure run of ``sweep`` drawn as ``figure`` (from ``plots``, with ``figure.points``)
    and saved at ``paths`` (PNG, PDF); returns its W&B directory (``.../wandb``)."""
    import wandb

    directory = figure_run_dir(runs_dir, sweep)
    directory.mkdir(parents=True, exist_ok=True)
    counts = plots.tally(figure.points)
    config = {"figure_run": figure_run_name(sweep), "figure": sweep.name, "scale": sweep.scale, "plot": sweep.plot,
              "footnote": plots.footnote(counts)}
    run = wandb.init(project=project, entity=entity, dir=str(directory), mode=resolve_mode(mode),
                     id=hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16], resume="allow",
                     name=figure_run_name(sweep), group=figure_run_name(sweep), job_type="figure",
                     tags=[sweep.name, "figure"], config=config)
    try:
        png, pdf = paths
        logged = {"runs": _table(runs), "points": _table(figure.points), "figure": wandb.Image(str(png))}
        if reference is not None and reference.exists():
            logged["reference"] = wandb.Image(str(reference))
        for i, panel in enumerate(panels(sweep)):
            xs, ys, keys = line_series(figure.points, panel)
            if keys:
                logged[chart_key(i)] = wandb.plot.line_series(xs, ys, keys, title=panel.title,
                                                              xname=panel.x_name)
        run.log(logged)
        kept = directory / pdf.name  # W&B links a saved file: a copy keeps an offline run's PDF until it syncs
        shutil.copyfile(pdf, kept)
        run.save(str(kept), base_path=str(directory), policy="now")
        run.summary.update({f"points/{k}": v for k, v in counts.items()})
    finally:
        run.finish()
    log.info("W&B figure run %s (%s): %s", figure_run_name(sweep), run.settings.mode, directory / "wandb")
    return directory / "wandb"


def log_drawn(sweep: Sweep, runs: pd.DataFrame, drawn, runs_dir: Path, project: str, entity: str | None,
              mode: str) -> Path:
    """:func:`log_figure_run` of a figure as :func:`reluvit.report.figures.draw` returns it, beside the committed
    reference figure of the same sweep and scale."""
    from reluvit.report.figures import reference_dir

    figure, paths = drawn
    return log_figure_run(sweep, runs, figure, paths, runs_dir, project=project, entity=entity, mode=mode,
                          reference=reference_dir() / sweep.scale / f"{sweep.name}.png")

"""Figures from the roll-up table. Every figure function returns its matplotlib Figure, to restyle or display, with
the table of what it drew as ``figure.points`` (:func:`_finish`); :func:`save` writes one as PNG and PDF side by
side."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from numbers import Real
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from reluvit.run.grid import GRID
from reluvit.run.rundir import Status


def attention_label(row: pd.Series) -> str:
    """``softmax``, ``relu/L`` (alpha 1), ``relu`` (alpha 0) or ``relu L^-0.5``."""
    if row["activation"] == "softmax":
        return "softmax"
    alpha = float(row["alpha"])
    if alpha == 0:
        return row["activation"]
    return f"{row['activation']}/L" if alpha == 1 else f"{row['activation']} L^-{alpha:g}"


def new_figure(**kwargs) -> Figure:
    """A Figure (``Figure``'s keyword arguments) outside pyplot's registry: nothing is left open, nor shown twice in
    a notebook. Its canvas is Agg, which draws without a display."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (creating the folder), close the figure and return both paths. The
    PDF carries no creation date: the same figure redrawn is the same file (no noise in committed results)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path, metadata in zip(paths, ({}, {"CreationDate": None}), strict=True):
        fig.savefig(path, bbox_inches="tight", dpi=150, metadata=metadata)
    plt.close(fig)  # a figure made with pyplot would stay open otherwise
    return paths


def accuracy_bars(df: pd.DataFrame, title: str, *, metric: str = "val_acc", bars: str = "ci95") -> Figure:
    """``metric`` per attention variant (mean over seeds, with its bar, :data:`BARS`, when there are several)."""
    df = df.assign(label=df.apply(attention_label, axis=1))
    stats = df.groupby("label", sort=False)[metric].agg(["mean", "min", "max"])
    bounds = df.groupby("label", sort=False)[metric].apply(lambda values: pd.Series(_bars(values, bars),
                                                                                    index=["low", "high"])).unstack()
    stats = stats.join(bounds.fillna(stats[["mean"]].rename(columns={"mean": "low"}).assign(high=stats["mean"])))
    fig = new_figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    spread = [stats["mean"] - stats["low"], stats["high"] - stats["mean"]] if len(df) > len(stats) else None
    ax.bar(stats.index, stats["mean"], color=[f"C{i}" for i in range(len(stats))], yerr=spread, capsize=4)
    for x, y in enumerate(stats["mean"]):
        ax.annotate(f"{y:.3f}", (x, y), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
    low = max(0.0, stats["min"].min() - 0.1)
    ax.set_ylim(low, min(1.0, stats["max"].max() + 0.05))
    ax.set_ylabel(AXIS_LABELS.get(metric, metric))
    ax.set_title(title, fontsize=9)
    return fig


def demo(df: pd.DataFrame, *, metric: str = "val_acc", bars: str = "ci95") -> Figure:
    """The demo sweep's figure: :func:`accuracy_bars` titled from the table, e.g. "mini4 on animal_mnist, 8 epochs"
    (each part only where its column has a value)."""
    names = [", ".join(map(str, df[column].dropna().unique())) if column in df else "" for column in ("model", "data")]
    title = " on ".join(name for name in names if name)
    epochs = pd.to_numeric(df["epoch"], errors="coerce").max() if "epoch" in df else np.nan
    if np.isfinite(epochs):
        title += f"{', ' if title else ''}{epochs:g} epochs"
    return accuracy_bars(df, title, metric=metric, bars=bars)


# --- Figures 1-4 of the paper ------------------------------------------------------------------------------------
# A *point* is one cell of a sweep: a dict of grid keys (columns of the roll-up table) -> values. Its value is the
# mean of `metric` over its completed seeds, drawn with its seed count and, when there are several, bars: the 95 %
# t interval of the mean (BARS), or min-max. Points without such a value are left out of the curves and counted in a
# footnote; points whose seeds all diverged are an "x" on the bottom edge of the axes: their accuracy is undefined,
# not zero.

# A point's state: "ok", "diverged" or why it has no value (MISSING, the footnote's order); its runs' statuses are
# reluvit.run.rundir.Status
MISSING = ("running", "failed", "not run", "needs a GPU", "no metric")
MISSING_TEXT = {"no metric": "completed without the metric", "needs a GPU": "need a GPU"}
ACTIVATION_LABELS = {"relu2": "squared relu"}
COLORS = {"softmax": "k", "relu": "C0", "relu2": "C1", "gelu": "C2", "softplus": "C3", "identity": "C4",
          "relu6": "C5", "sigmoid": "C6"}
BARS = {"ci95": "95 % interval of the mean (t, over seeds)", "minmax": "min-max over seeds"}
AXIS_LABELS = {"val_acc": "validation accuracy", "val_i1k_acc": "ImageNet-1k accuracy",
               "fewshot_10shot_mean": "avg. 10-shot transfer accuracy", "core_hours": "core hours",
               "train_flops": "training FLOPs", "alpha": "Exponent for scaling inverse seqlen"}
PAPER = {"qk_norm": True, "gate": False}  # the paper's default attention: qk-layernorm, no gate
SPELLINGS = {True: ["true", "1", "1.0"], False: ["false", "0", "0.0"]}  # a CSV round trip may leave bools as text


def paper_default(activation: str) -> dict:
    """The keys of PAPER that apply to ``activation`` (SOFT has no gate: its column is empty, as the grid says)."""
    config = {"attention": {"activation": activation, **PAPER}}
    return {key: value for key, value in PAPER.items() if GRID[key].applies(config)}


class Curve(NamedTuple):
    label: str
    where: dict  # grid keys shared by the curve's points
    color: str
    linestyle: str = "-"
    marker: str = "o"


def matching(df: pd.DataFrame, point: dict) -> pd.DataFrame:
    """Rows matching every key of ``point`` (numbers compared as floats; a bool matches only its own spellings, so
    a run without the key is never taken for its ablation)."""
    mask = pd.Series(True, index=df.index)
    for key, value in point.items():
        if key not in df.columns:
            return df.iloc[:0]
        if isinstance(value, bool | np.bool_):
            mask &= df[key].astype(str).str.lower().isin(SPELLINGS[bool(value)])
        elif isinstance(value, Real):
            mask &= np.isclose(pd.to_numeric(df[key], errors="coerce"), value)
        else:
            mask &= df[key] == value
    return df[mask]


def _numeric(runs: pd.DataFrame, column: str) -> pd.Series:
    """The column as floats; all NaN where the table lacks it (that metric was never logged)."""
    if column not in runs.columns:
        return pd.Series(np.nan, index=runs.index)
    return pd.to_numeric(runs[column], errors="coerce")


def aggregate(df: pd.DataFrame, points: list[dict], metric: str = "val_acc", x: str | None = None,
              needs_gpu: Collection[str] = (), bars: str = "ci95") -> pd.DataFrame:
    """One row per point: its keys; ``status`` ("ok", "diverged" or a reason in MISSING); ``n`` completed seeds with
    a value; ``mean``, ``min``, ``max`` of ``metric`` over them, and ``low``, ``high``: the bars (:data:`BARS`:
    the 95 % t interval of the mean, or min-max); ``diverged_seeds``; with ``x``, the mean ``x`` of
    the seeds shown (the completed ones, or the diverged ones of a diverged point). ``needs_gpu``: models only a GPU
    trains (the sweep's ``requires: gpu`` blocks); a point of theirs without runs "needs a GPU"."""
    out = []
    for point in points:
        runs = matching(df, point)
        status = runs["status"] if "status" in runs else pd.Series(Status.FAILED, index=runs.index)
        y = _numeric(runs, metric)
        xs = _numeric(runs, x) if x else pd.Series(0.0, index=runs.index)
        done = (status == Status.COMPLETED) & y.notna() & xs.notna()
        if done.any():
            state = "ok"
        elif runs.empty:
            state = "needs a GPU" if point.get("model") in needs_gpu else "not run"
        elif (status == Status.RUNNING).any():  # not final yet, whatever the other seeds did
            state = "running"
        elif (status == Status.DIVERGED).all():
            state = "diverged"
        else:
            state = "no metric" if (status == Status.COMPLETED).any() else "failed"
        row = {**point, "status": state, "n": int(done.sum()), "mean": y[done].mean(), "min": y[done].min(),
               "max": y[done].max(), **dict(zip(("low", "high"), _bars(y[done], bars), strict=True)),
               "diverged_seeds": int((status == Status.DIVERGED).sum())}
        if x:
            row["x"] = xs[done].mean() if done.any() else xs.mean() if state == "diverged" else np.nan
        out.append(row)
    columns = ["status", "n", "mean", "min", "max", "low", "high", "diverged_seeds", *(["x"] if x else [])]
    return pd.DataFrame(out, columns=list(dict.fromkeys(k for p in points for k in p)) + columns)


def _bars(values: pd.Series, bars: str) -> tuple[float, float]:
    """The bar of a point's seed values: :data:`BARS`' kind; NaN for fewer than 2."""
    if bars not in BARS:
        raise ValueError(f"bars={bars!r} is not one of: {', '.join(BARS)}")
    if len(values) < 2:
        return np.nan, np.nan
    if bars == "minmax":
        return values.min(), values.max()
    from scipy import stats

    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def tally(agg: pd.DataFrame) -> dict[str, int]:
    """Counts for the footnote from aggregate()'s output: ``expected``, ``ok``, ``diverged``, each reason in MISSING,
    and ``partly_diverged`` (points shown as a mean that lost some seeds to divergence)."""
    counts = {"expected": len(agg), **{k: int((agg["status"] == k).sum()) for k in ("ok", "diverged", *MISSING)}}
    counts["partly_diverged"] = int(((agg["status"] == "ok") & (agg["diverged_seeds"] > 0)).sum())
    return counts


def point_status(df: pd.DataFrame, points: list[dict], metric: str = "val_acc", x: str | None = None) -> dict[str, int]:
    """tally() of the expected ``points``."""
    return tally(aggregate(df, points, metric, x))


def footnote(counts: dict[str, int]) -> str:
    """E.g. "12 of 150 points missing (3 running, 2 failed, 7 not run); 1 diverged (x)"."""
    missing = sum(counts[k] for k in MISSING)
    reasons = ", ".join(f"{counts[k]} {MISSING_TEXT.get(k, k)}" for k in MISSING if counts[k])
    text = f"{missing} of {counts['expected']} points missing ({reasons})" if missing else \
        f"all {counts['expected']} points present"
    if counts["diverged"]:
        text += f"; {counts['diverged']} diverged (x)"
    if counts["partly_diverged"]:
        text += f"; {counts['partly_diverged']} means exclude diverged seeds"
    return text


def draw_curve(ax: Axes, agg: pd.DataFrame, *, x: str, curve: Curve) -> Line2D:
    """The means of ``agg`` in its order (a diverged point breaks the line, a missing one is skipped), each with its
    seed count, bars (``low``-``high``) where several seeds completed, and an "x" on the bottom edge for each
    diverged point."""
    shown = agg[agg["status"].isin(["ok", "diverged"])]
    (line,) = ax.plot(shown[x].to_numpy(float), shown["mean"].to_numpy(float), color=curve.color,
                      linestyle=curve.linestyle, marker=curve.marker, ms=4, label=curve.label)
    spread = shown[shown["n"] > 1]
    if len(spread):
        ax.errorbar(spread[x], spread["mean"], yerr=[spread["mean"] - spread["low"], spread["high"] - spread["mean"]],
                    fmt="none", ecolor=curve.color, elinewidth=0.8, capsize=2)
    for point in shown[shown["status"] == "ok"].itertuples():
        ax.annotate(str(point.n), (getattr(point, x), point.mean), xytext=(2, -7), textcoords="offset points",
                    fontsize=5, color=curve.color)
    diverged = shown[shown["status"] == "diverged"]
    if len(diverged):  # y in axes units: on the bottom edge whatever the limits, and without stretching them
        ax.plot(diverged[x], np.zeros(len(diverged)), "x", color=curve.color, ms=7, mew=1.5,
                transform=ax.get_xaxis_transform(), clip_on=False)
    return line


def _reference(ax: Axes, agg: pd.DataFrame, curve: Curve) -> None:
    """A single point drawn across the panel: dashed at its mean, shaded over its bar, its seed count at the right."""
    row = agg.iloc[0]
    if row["status"] == "ok":
        ax.axhline(row["mean"], color=curve.color, linestyle="--", lw=1, label=curve.label)
        ax.annotate(f"n={row['n']}", (1, row["mean"]), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                    textcoords="offset points", ha="right", fontsize=5, color=curve.color)
        if row["n"] > 1:
            ax.axhspan(row["low"], row["high"], color=curve.color, alpha=0.1, lw=0)
    elif row["status"] == "diverged":
        ax.plot([0.5], [0], "x", color=curve.color, ms=7, mew=1.5, transform=ax.transAxes, clip_on=False)


def _drawn(agg: pd.DataFrame, panel: str, curve: Curve, x_key: str | None, y_key: str) -> pd.DataFrame:
    """aggregate()'s rows of one curve with the panel's title, the curve's label, the roll-up columns of its axes
    (``x_key`` None: a level across the panel) and ``x``, the x drawn."""
    x = agg["x"] if "x" in agg else agg[x_key] if x_key else np.nan
    return agg.assign(panel=panel, line=curve.label, x_key=x_key, y_key=y_key, x=x)


def _finish(fig: Figure, aggs: list[pd.DataFrame], bars: str = "ci95") -> Figure:
    """Mark empty panels ("no runs", or the axes' ``empty_text``), one legend for all panels, the footnote;
    ``fig.points``: every point drawn or missing (:func:`_drawn`'s rows: ``panel``, ``line``, ``x_key``, ``y_key``,
    ``x``, the grid keys, ``status``, ``n``, ``mean``, ``min``, ``max``), the data of the figure for other renderers
    (the W&B figure run's charts)."""
    fig.points = pd.concat(aggs, ignore_index=True) if aggs else pd.DataFrame(
        columns=["panel", "line", "x_key", "y_key", "x", "status", "n", "mean", "min", "max", "low", "high"])
    for ax in fig.axes:  # every curve adds a line, so look for a drawn value or "x" (guides are not data)
        if not any(np.isfinite(np.asarray(line.get_ydata(), float)).any() for line in ax.lines
                   if line.get_gid() != GUIDE):
            ax.text(0.5, 0.5, getattr(ax, "empty_text", "no runs"), transform=ax.transAxes, ha="center",
                    va="center", color="0.5")
    handles = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right center", fontsize=8, frameon=False)
    text = footnote(tally(fig.points)) if aggs else "no points requested"
    if (fig.points["status"] == "ok").any():
        spread = (fig.points["n"] > 1).any()
        text += f"; small numbers: seeds per point{f'; bars: {BARS[bars]}' if spread else ''}"
    fig.text(0.5, 0, text, ha="center", va="top", fontsize=7)
    return fig


def axis_label(column: str, runs: pd.DataFrame | None = None) -> str:
    """The axis label of a roll-up column; core hours name the devices they were measured on (the runs' ``device``
    column)."""
    label = AXIS_LABELS.get(column, column)
    if column == "core_hours" and runs is not None and "device" in runs and runs["device"].notna().any():
        label += f" (measured on {', '.join(sorted(runs['device'].dropna().astype(str).unique()))})"
    return label


def _compact(value: float, _position=None) -> str:
    """A tick label as short as it reads: "0.05", "250", "2e13", "5e-4" (powers of ten once they save 2 characters)."""
    value = float(f"{value:.6g}")  # drops float noise such as 0.07500000000000001
    plain = np.format_float_positional(value, trim="-")
    mantissa, exponent = f"{value:e}".split("e")
    scientific = f"{float(mantissa):g}e{int(exponent)}"
    return scientific if len(scientific) < len(plain) - 1 else plain


def _log_x(ax: Axes, xs: np.ndarray) -> None:
    """Log x axis spanning at least a factor 4 around the points, with compact labels ("0.05", "2e13") on major ticks
    only: round values evenly spaced under 0.75 decades, 1-2-5 x 10^k under 1.2, 1-3 x 10^k under 2, matplotlib's
    powers of ten beyond. Denser ticks, like matplotlib's default of labelling minor ticks on a narrow range,
    overlap on a small panel."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if not len(xs):
        return
    pad = max(1.15, np.sqrt(4 * xs.min() / xs.max()))
    low, high = xs.min() / pad, xs.max() * pad
    ax.set_xlim(low, high)
    decades = np.log10(high / low)
    if decades >= 2:
        return
    if decades < 0.75:  # near linear: equal steps shrink toward the top by at most the factor 5.6 spanned
        locator = MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10])
    else:
        locator = LogLocator(subs=(1, 2, 5) if decades < 1.2 else (1, 3))
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(FuncFormatter(_compact))


def fig1(df: pd.DataFrame, *, models: list[str], recipe: str, metrics: dict[str, str],
         x: str | tuple[str, ...] = ("core_hours", "train_flops"), bars: str = "ci95") -> Figure:
    """Paper Fig. 1: softmax vs relu/seqlen (alpha 1) scaling with model size, one panel per ``metrics`` entry
    (y label -> column), x = ``x`` on a log axis, one row of panels per column when ``x`` names several: by default
    the measured core hours, which also measure the attention kernels that ran (``attention_impl`` in the run's
    summary), and the analytic training FLOPs, which do not; points in the order of ``models``, labelled with the
    variant."""
    series = [Curve("softmax", {"activation": "softmax"}, COLORS["softmax"]),
              Curve("relu/L", {"activation": "relu", "alpha": 1.0}, COLORS["relu"], marker="s")]
    names = dict(zip(df["model"], df["variant"], strict=True)) if {"model", "variant"} <= set(df.columns) else {}
    xs = [x] if isinstance(x, str) else list(x)
    columns = max(len(metrics), 1)
    fig = new_figure(figsize=(4 * columns, 3.2 * len(xs)), layout="constrained")
    axes = fig.subplots(len(xs), columns, squeeze=False)
    aggs = []
    for x_column, row in zip(xs, axes, strict=True):
        for (ylabel, metric), ax in zip(metrics.items(), row, strict=False):
            panel = []
            for curve in series:
                points = [{"recipe": recipe, "model": m, **PAPER, **curve.where} for m in models]
                panel.append(_drawn(aggregate(df, points, metric, x=x_column, bars=bars), ylabel, curve, x_column,
                                    metric))
                draw_curve(ax, panel[-1], x="x", curve=curve)
                for point in panel[-1][panel[-1]["status"] == "ok"].itertuples():
                    ax.annotate(names.get(point.model, point.model), (point.x, point.mean), xytext=(3, 3),
                                textcoords="offset points", fontsize=7, color=curve.color)
            _log_x(ax, pd.concat([a["x"] for a in panel]).to_numpy(float))
            ax.set(xlabel=axis_label(x_column, df), ylabel=ylabel)
            if x_column == xs[0]:  # the footnote counts each point once, not once per row
                aggs += panel
    return _finish(fig, aggs, bars)


def metric_of(metric: str | dict[str, str], recipe: str) -> str:
    """The y column of a recipe's panels: ``metric``, or its entry for the recipe (default val_acc)."""
    return metric.get(recipe, "val_acc") if isinstance(metric, dict) else metric


def _alpha_figure(df: pd.DataFrame, rows: dict[str, str], columns: dict[str, str], curves: list[Curve],
                  alphas: list[float], metric: str | dict[str, str], reference: Curve | None = None,
                  needs_gpu: Collection[str] = (), bars: str = "ci95") -> Figure:
    """Figs. 2-4: a rows (label -> recipe; "" for a single unlabelled row) x columns (title -> model) grid of curves
    over ``alphas`` (and any other alpha a curve's runs have), each row on its own y axis (rows differ in range).
    ``metric`` may map recipe -> column (recipes it lacks: val_acc): the paper's "ImageNet-1k accuracy" is the
    i1k-restricted head for i21k runs, plain val_acc for i1k runs. ``needs_gpu``: as :func:`aggregate`'s; their
    empty panels say so."""
    fig = new_figure(figsize=(3.2 * max(len(columns), 1), 2.6 * max(len(rows), 1)), layout="constrained")
    axes = fig.subplots(max(len(rows), 1), max(len(columns), 1), squeeze=False, sharex=True, sharey="row")
    aggs = []
    for i, (row_label, recipe) in enumerate(rows.items()):
        row_metric = metric_of(metric, recipe)
        for j, (title, model) in enumerate(columns.items()):
            ax, panel = axes[i, j], f"{row_label}, {title}"
            if model in needs_gpu:
                ax.empty_text = "runs on a GPU"
            for curve in curves:
                where = {"recipe": recipe, "model": model, **curve.where}
                points = [{**where, "alpha": a} for a in sorted({*alphas, *_alphas_run(df, where)})]
                aggs.append(_drawn(aggregate(df, points, row_metric, needs_gpu=needs_gpu, bars=bars), panel, curve,
                                   "alpha", row_metric))
                draw_curve(ax, aggs[-1], x="alpha", curve=curve)
            if reference:  # one point: its runs at any alpha count (x: none, a level across the panel)
                point = [{"recipe": recipe, "model": model, **reference.where}]
                aggs.append(_drawn(aggregate(df, point, row_metric, needs_gpu=needs_gpu, bars=bars), panel,
                                   reference, None, row_metric))
                _reference(ax, aggs[-1], reference)
            ax.tick_params(labelleft=True)  # each panel its own y labels: a row shares its axis, not its labels' place
            if i == 0:
                ax.set_title(title)
            if j == 0:
                named = AXIS_LABELS.get(row_metric, row_metric) if isinstance(metric, dict) else ""
                ax.set_ylabel("\n".join(label for label in (row_label, named) if label))
    drawn = sorted({a for agg in aggs if "alpha" in agg for a in agg["alpha"].dropna()} | set(alphas))
    if alphas:  # the requested range even where a panel is empty
        pad = 0.05 * ((max(alphas) - min(alphas)) or 1)
        axes[0, 0].set_xlim(min(alphas) - pad, max(alphas) + pad)
        if len(drawn) <= 5:  # a short grid is its own ticks, the same in every figure; a longer one matplotlib's
            axes[0, 0].set_xticks(drawn, [_compact(a) for a in drawn])
    fig.supxlabel(AXIS_LABELS["alpha"], fontsize=10)
    if not isinstance(metric, dict):
        fig.supylabel(AXIS_LABELS.get(metric, metric), fontsize=10)
    return _finish(fig, aggs, bars)


def _alphas_run(df: pd.DataFrame, where: dict) -> set[float]:
    """The alphas of completed runs ``where`` selects: drawn beside the sweep file's grid (a finer grid where the
    claims need one) without counting as missing elsewhere."""
    runs = matching(df, where)
    done = runs[runs["status"] == Status.COMPLETED] if "status" in runs else runs.iloc[:0]
    return set(pd.to_numeric(done.get("alpha", pd.Series(dtype=float)), errors="coerce").dropna())


def fig2(df: pd.DataFrame, *, rows: dict[str, str], columns: dict[str, str], activations: list[str],
         alphas: list[float], metric: str | dict[str, str] = "val_acc", needs_gpu: Collection[str] = (),
         bars: str = "ci95") -> Figure:
    """Paper Fig. 2: one curve over alpha per activation (softmax is always the dashed reference, not a curve)."""
    curves = [Curve(ACTIVATION_LABELS.get(a, a), {"activation": a, **PAPER}, COLORS.get(a, f"C{i}"))
              for i, a in enumerate(activations) if a != "softmax"]
    reference = Curve("softmax", {"activation": "softmax", **PAPER}, COLORS["softmax"])
    return _alpha_figure(df, rows, columns, curves, alphas, metric, reference, needs_gpu, bars)


def _ablation(variant: str, key: str, value: bool) -> list[Curve]:
    """relu and squared relu with the paper's attention, then with ``key`` set to ``value`` (dashed)."""
    return [Curve(ACTIVATION_LABELS.get(a, a) + suffix, {"activation": a, **PAPER, **change}, COLORS[a], ls, m)
            for suffix, change, ls, m in [("", {}, "-", "o"), (f" {variant}", {key: value}, "--", "s")]
            for a in ("relu", "relu2")]


def fig3(df: pd.DataFrame, *, columns: dict[str, str], recipe: str, alphas: list[float],
         metric: str | dict[str, str] = "val_acc", needs_gpu: Collection[str] = (), bars: str = "ci95") -> Figure:
    """Paper Fig. 3 (qk-layernorm ablation): relu and squared relu with and without qk-layernorm, no gate."""
    curves = _ablation("without qk-layernorm", "qk_norm", False)
    return _alpha_figure(df, {"": recipe}, columns, curves, alphas, metric, needs_gpu=needs_gpu, bars=bars)


def fig4(df: pd.DataFrame, *, columns: dict[str, str], recipe: str, alphas: list[float],
         metric: str | dict[str, str] = "val_acc", needs_gpu: Collection[str] = (), bars: str = "ci95") -> Figure:
    """Paper Fig. 4 (gating ablation): relu and squared relu with and without the gate, with qk-layernorm."""
    curves = _ablation("with gating", "gate", True)
    return _alpha_figure(df, {"": recipe}, columns, curves, alphas, metric, needs_gpu=needs_gpu, bars=bars)


# --- Figure 5: softmax-free attentions at one model size ----------------------------------------------------------
FIG5_CURVES = [
    Curve("softmax", {"activation": "softmax"}, COLORS["softmax"]),
    Curve("relu/L", {"activation": "relu", "alpha": 1.0, "learn_alpha": "none"}, COLORS["relu"], marker="s"),
    Curve("sigmoid(s - log L)", {"activation": "sigmoid_attn"}, "C8", marker="D"),
    Curve("SOFT", {"activation": "soft"}, "C7", marker="v"),
]
LEARNED = {"activation": "relu", "learn_alpha": "layer"}  # relu with one learned alpha per layer
GUIDE = "guide"  # the gid of lines that guide the eye (not data: a panel of guides alone says "no runs")
LEARNED_MARKERS = ("^", "<", ">", "p", "h")


def fig5(df: pd.DataFrame, *, recipe: str, model: str, metric: str = "val_acc", x: str = "core_hours",
         bars: str = "ci95") -> Figure:
    """Softmax-free attentions at one model size. Left: accuracy against ``x`` (log axis), one point per attention,
    relu with a learned alpha once per initial value. Right: the learned alpha after training (mean over layers)
    against its initial value, beside 1 (relu/L) and the initial value itself (not learned). Runs rolled up before
    ``learn_alpha`` existed count as fixed alpha."""
    df = df.assign(learn_alpha=df["learn_alpha"].fillna("none") if "learn_alpha" in df else "none")
    learned_runs = matching(df, {"recipe": recipe, "model": model, **LEARNED})
    starts = sorted(pd.to_numeric(learned_runs.get("alpha", pd.Series(dtype=float))).dropna().unique()) or [1.0]
    learned = [Curve(f"relu, alpha learned from {start:g}", {**LEARNED, "alpha": start}, "C9", marker=marker)
               for start, marker in zip(starts, itertools.cycle(LEARNED_MARKERS))]
    fig = new_figure(figsize=(8, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    aggs = []
    for curve in [*FIG5_CURVES, *learned]:
        point = [{"recipe": recipe, "model": model, **paper_default(curve.where["activation"]), **curve.where}]
        aggs.append(_drawn(aggregate(df, point, metric, x=x, bars=bars), axis_label(x), curve, x, metric))
        draw_curve(left, aggs[-1], x="x", curve=curve)
    _log_x(left, pd.concat([a["x"] for a in aggs]).to_numpy(float))
    left.set(xlabel=axis_label(x, df), ylabel=AXIS_LABELS.get(metric, metric))
    points = [{"recipe": recipe, "model": model, **paper_default("relu"), **curve.where} for curve in learned]
    final = _drawn(aggregate(df, points, "attn_alpha_mean", bars=bars), "learned alpha", learned[0], "alpha",
                   "attn_alpha_mean")
    draw_curve(right, final, x="alpha", curve=Curve("learned alpha (mean over layers)", {}, "C9", marker="^"))
    span = [min(0.0, *starts), max(2.0, *starts)]
    right.plot(span, [1, 1], color=COLORS["relu"], linestyle="--", lw=1, label="alpha 1 (relu/L)", gid=GUIDE)
    right.plot(span, span, color="0.6", linestyle=":", lw=1, label="not learned (final = initial)", gid=GUIDE)
    right.set(xlabel="initial alpha", ylabel="final alpha (mean over layers)", xlim=span, ylim=span)
    return _finish(fig, aggs, bars)


# --- The training-length study (not a figure of the paper) -----------------------------------------------------
TRAIN_LENGTH_CURVES = [
    Curve("softmax", {"activation": "softmax"}, COLORS["softmax"]),
    Curve("relu/L", {"activation": "relu", "alpha": 1.0}, COLORS["relu"], marker="s"),
    Curve("relu (alpha 0)", {"activation": "relu", "alpha": 0.0}, COLORS["relu"], linestyle="--", marker="^"),
]


def train_length(df: pd.DataFrame, *, recipe: str, model: str, epochs: list[int], metric: str = "val_acc",
                 bars: str = "ci95") -> Figure:
    """Accuracy against training epochs (log axis) of softmax, relu/L and relu without the 1/L: how long the smoke
    recipe must train before the comparison Figure 2 makes settles."""
    fig = new_figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.subplots()
    aggs = []
    for curve in TRAIN_LENGTH_CURVES:
        points = [{"recipe": recipe, "model": model, "epochs": e, **PAPER, **curve.where} for e in epochs]
        aggs.append(_drawn(aggregate(df, points, metric, bars=bars), f"{model}, {recipe} recipe", curve, "epochs",
                           metric))
        draw_curve(ax, aggs[-1], x="epochs", curve=curve)
    ax.set_xscale("log", base=2)
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="training epochs", ylabel=AXIS_LABELS.get(metric, metric), title=aggs[0]["panel"].iloc[0])
    return _finish(fig, aggs, bars)


# The figures a sweep file may name (its figure: key), each drawn by the function of that name
FIGURES = ("demo", "fig1", "fig2", "fig3", "fig4", "fig5", "train_length")

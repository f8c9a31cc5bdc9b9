"""Figures 1-4: aggregation over seeds, footnote counts, diverged points, files on partial and empty tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reluvit.report import plots

ROWS = {"gap": "smoke", "tok": "smoke_tok"}  # no smoke_tok run at all: a whole row of panels is missing
COLUMNS = {"L=49": "mini4", "L=196": "mini2"}
ACTIVATIONS = ["relu", "relu2"]
ALPHAS = [0.0, 1.0, 2.0]


def run(seed=0, status="completed", val_acc=0.8, **grid) -> dict:
    row = {"recipe": "smoke", "data": "animal_mnist", "model": "mini4", "variant": "mini/4", "activation": "relu",
           "alpha": 1.0, "qk_norm": True, "gate": False, "seed": seed, "status": status,
           "core_hours": 0.01 * (seed + 1), "train_flops": 1e13, "val_acc": val_acc, **grid}
    row["run_name"] = "-".join(str(row[k]) for k in ("recipe", "model", "activation", "alpha", "qk_norm", "gate",
                                                     "seed"))
    return row


@pytest.fixture
def table() -> pd.DataFrame:
    rows = [
        # smoke/mini4: relu at every alpha; alpha 1 has 3 completed seeds and a 4th that diverged
        run(alpha=0.0, val_acc=0.70), run(alpha=0.0, seed=1, val_acc=0.72),
        run(val_acc=0.80), run(seed=1, val_acc=0.82), run(seed=2, val_acc=0.84),
        run(seed=3, status="diverged", val_acc=0.001),
        run(alpha=2.0, val_acc=0.75),
        # squared relu: alpha 0 diverged in both seeds, alpha 1 one seed, alpha 2 failed
        run(activation="relu2", alpha=0.0, status="diverged", val_acc=0.001),
        run(activation="relu2", alpha=0.0, seed=1, status="diverged", val_acc=np.nan),
        run(activation="relu2", val_acc=0.78),
        run(activation="relu2", alpha=2.0, status="failed", val_acc=0.3),
        # softmax: runs at any alpha are the same point
        run(activation="softmax", val_acc=0.85), run(activation="softmax", alpha=0.0, seed=1, val_acc=0.87),
        # smoke/mini2: a running relu (with a partial accuracy that must not count) and softmax
        run(model="mini2", variant="mini/2", alpha=0.0, status="running", val_acc=0.5),
        run(model="mini2", variant="mini/2", activation="softmax", val_acc=0.9),
        # ablations (smoke/mini4, relu at alpha 1): no qk-layernorm, gated
        run(qk_norm=False, val_acc=0.79), run(gate=True, val_acc=0.81), run(gate=True, seed=1, val_acc=0.83),
    ]
    return pd.DataFrame(rows)


def fig2_points(rows=ROWS, columns=COLUMNS):
    """The points fig2 expects, in its drawing order."""
    for recipe in rows.values():
        for model in columns.values():
            for activation in ACTIVATIONS:
                for alpha in ALPHAS:
                    yield {"recipe": recipe, "model": model, "activation": activation, "qk_norm": True,
                           "gate": False, "alpha": alpha}
            yield {"recipe": recipe, "model": model, "activation": "softmax", "qk_norm": True, "gate": False}


def test_aggregate_means_over_completed_seeds_only(table):
    points = [{"recipe": "smoke", "model": "mini4", "activation": a, "qk_norm": True, "gate": False, "alpha": alpha}
              for a in ACTIVATIONS for alpha in ALPHAS]
    agg = plots.aggregate(table, points, x="core_hours")
    assert agg["status"].tolist() == ["ok", "ok", "ok", "diverged", "ok", "failed"]
    assert agg["n"].tolist() == [2, 3, 1, 0, 1, 0]
    np.testing.assert_allclose(agg["mean"], [0.71, 0.82, 0.75, np.nan, 0.78, np.nan])
    np.testing.assert_allclose(agg["min"], [0.70, 0.80, 0.75, np.nan, 0.78, np.nan])
    np.testing.assert_allclose(agg["max"], [0.72, 0.84, 0.75, np.nan, 0.78, np.nan])
    assert agg["diverged_seeds"].tolist() == [0, 1, 0, 2, 0, 0]
    # x: mean over the seeds shown (relu alpha 1: seeds 0-2, not the diverged seed 3)
    np.testing.assert_allclose(agg["x"], [0.015, 0.02, 0.01, 0.015, 0.01, np.nan])

    softmax = plots.aggregate(table, [{"recipe": "smoke", "model": "mini4", "activation": "softmax"}])
    assert softmax["mean"].item() == pytest.approx(0.86) and softmax["n"].item() == 2


def test_point_status_counts(table):
    counts = plots.point_status(table, list(fig2_points()))
    # smoke/mini4: relu 3 ok, relu2 ok+diverged+failed, softmax ok; smoke/mini2: relu a0 running, 5 not run,
    # softmax ok; smoke_tok: 2 panels x 7 not run
    assert counts == {"expected": 28, "ok": 6, "diverged": 1, "running": 1, "failed": 1, "not run": 19,
                      "no metric": 0, "partly_diverged": 1}
    assert plots.footnote(counts) == ("21 of 28 points missing (1 running, 1 failed, 19 not run); 1 diverged (x); "
                                      "1 means exclude diverged seeds")

    # A metric the table lacks: every completed point is missing; diverged, running and failed keep their status
    counts = plots.point_status(table, list(fig2_points()), metric="val_i1k_acc")
    assert (counts["ok"], counts["no metric"], counts["diverged"], counts["running"]) == (0, 6, 1, 1)
    complete = {"expected": 28, "ok": 28, "diverged": 0, **dict.fromkeys(plots.MISSING, 0), "partly_diverged": 0}
    assert plots.footnote(complete) == "all 28 points present"


def test_csv_spelled_bools_and_missing_keys(table):
    point = {"recipe": "smoke", "model": "mini4", "activation": "relu", "alpha": 1.0, "qk_norm": False}
    as_text = table.assign(qk_norm=table["qk_norm"].map({True: "True", False: "False"}))
    assert plots.aggregate(as_text, [point])["mean"].item() == pytest.approx(0.79)
    # a run that never recorded qk_norm is not taken for the ablation
    assert plots.aggregate(table.assign(qk_norm=None), [point])["status"].item() == "not run"
    assert plots.aggregate(pd.DataFrame(), [point])["status"].item() == "not run"


def test_draw_curve_leaves_diverged_points_out_of_the_line(table):
    points = [{"recipe": "smoke", "model": "mini4", "activation": "relu2", "qk_norm": True, "gate": False,
               "alpha": a} for a in ALPHAS]
    fig, ax = plots.plt.subplots()
    line = plots.draw_curve(ax, plots.aggregate(table, points), x="alpha", curve=plots.Curve("sq", {}, "C1"))
    # alpha 0 diverged: in the line as a gap (NaN), never as 0 or its last logged accuracy; alpha 2 failed: absent
    np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0])
    assert math.isnan(line.get_ydata()[0]) and line.get_ydata()[1] == pytest.approx(0.78)
    (marker,) = [m for m in ax.lines if m.get_marker() == "x"]
    assert list(marker.get_xdata()) == [0.0] and list(marker.get_ydata()) == [0.0]  # bottom edge (axes units)
    assert ax.get_ylim()[0] > 0.5  # the marker did not stretch the axis down to zero
    plots.plt.close(fig)


def test_figures_written(table, tmp_path, monkeypatch):
    drawn, save = {}, plots.save

    def keep(fig, stem):  # the figure as drawn, for inspection after it is saved and closed
        drawn[str(stem)] = fig
        return save(fig, stem)

    monkeypatch.setattr(plots, "save", keep)
    paths = [
        *plots.fig1(table, models=["mini4", "mini2"], recipe="smoke", stem=tmp_path / "fig1",
                    metrics={"accuracy": "val_acc", "10-shot": "fewshot_10shot_mean"}),
        *plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS, stem=tmp_path / "fig2"),
        *plots.fig3(table, columns=COLUMNS, recipe="smoke", alphas=ALPHAS, stem=tmp_path / "fig3"),
        *plots.fig4(table, columns=COLUMNS, recipe="smoke", alphas=ALPHAS, stem=tmp_path / "fig4"),
    ]
    assert [p.suffix for p in paths] == [".png", ".pdf"] * 4
    assert all(p.stat().st_size > 1000 for p in paths)

    fig2 = drawn[str(tmp_path / "fig2")]
    assert "21 of 28 points missing (1 running, 1 failed, 19 not run); 1 diverged (x)" in fig2.texts[-1].get_text()
    # the squared relu line of the first panel: alpha 0 diverged -> NaN, alpha 1 -> 0.78, alpha 2 failed -> absent
    (sq,) = [line for line in fig2.axes[0].lines if line.get_label() == "squared relu"]
    np.testing.assert_allclose(sq.get_ydata(), [np.nan, 0.78])
    assert "no runs" in [t.get_text() for t in fig2.axes[2].texts]  # the smoke_tok row
    (softmax,) = [line for line in fig2.axes[0].lines if line.get_label() == "softmax"]
    assert softmax.get_ydata()[0] == pytest.approx(0.86)

    # fig3, 24 points: mini4 has relu x3, squared relu ok/diverged/failed, relu without qk-layernorm at alpha 1
    # only; mini2 only the running relu
    fig3 = drawn[str(tmp_path / "fig3")]
    assert fig3.texts[-1].get_text().startswith("18 of 24 points missing (1 running, 1 failed, 16 not run); 1 diverged")
    # a metric per recipe (the paper's i1k accuracy: val_i1k_acc for i21k runs, val_acc for i1k runs)
    plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS, stem=tmp_path / "fig2m",
               metric={"smoke": "val_i1k_acc", "smoke_tok": "val_acc"})
    assert drawn[str(tmp_path / "fig2m")].texts[-1].get_text() == (
        "27 of 28 points missing (1 running, 1 failed, 19 not run, 6 completed without the metric); 1 diverged (x)")
    fig4 = drawn[str(tmp_path / "fig4")]
    (gated,) = [line for line in fig4.axes[0].lines if line.get_label() == "relu with gating"]
    np.testing.assert_allclose(gated.get_ydata(), [0.82])


def test_empty_table_still_draws(tmp_path):
    empty = pd.DataFrame()
    paths = [
        *plots.fig1(empty, models=["mini4"], recipe="smoke", metrics={"accuracy": "val_acc"}, stem=tmp_path / "f1"),
        *plots.fig2(empty, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS, stem=tmp_path / "f2"),
        *plots.fig3(empty, columns=COLUMNS, recipe="smoke", alphas=ALPHAS, stem=tmp_path / "f3"),
        *plots.fig4(empty, columns={}, recipe="smoke", alphas=[], stem=tmp_path / "f4"),
        # the table's columns but no rows
        *plots.fig2(pd.DataFrame(columns=list(run())), rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS,
                    alphas=ALPHAS, stem=tmp_path / "f5"),
    ]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)

"""Figures: aggregation over seeds, footnote counts, diverged points, figures of partial and empty tables, saving,
the demo bars and fig1's log-axis labels."""

from __future__ import annotations

import math
from itertools import pairwise

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

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
                      "needs a GPU": 0, "no metric": 0, "partly_diverged": 1}
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
    ax = plots.new_figure().subplots()
    line = plots.draw_curve(ax, plots.aggregate(table, points), x="alpha", curve=plots.Curve("sq", {}, "C1"))
    # alpha 0 diverged: in the line as a gap (NaN), never as 0 or its last logged accuracy; alpha 2 failed: absent
    np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0])
    assert math.isnan(line.get_ydata()[0]) and line.get_ydata()[1] == pytest.approx(0.78)
    (marker,) = [m for m in ax.lines if m.get_marker() == "x"]
    assert list(marker.get_xdata()) == [0.0] and list(marker.get_ydata()) == [0.0]  # bottom edge (axes units)
    assert ax.get_ylim()[0] > 0.5  # the marker did not stretch the axis down to zero


def test_figures_drawn(table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_before = plt.get_fignums()
    fig1 = plots.fig1(table, models=["mini4", "mini2"], recipe="smoke",
                      metrics={"accuracy": "val_acc", "10-shot": "fewshot_10shot_mean"})
    fig2 = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS)
    fig3 = plots.fig3(table, columns=COLUMNS, recipe="smoke", alphas=ALPHAS)
    fig4 = plots.fig4(table, columns=COLUMNS, recipe="smoke", alphas=ALPHAS)
    assert all(isinstance(fig, Figure) for fig in (fig1, fig2, fig3, fig4))
    assert plt.get_fignums() == open_before, "figures are not left open in pyplot (a notebook would show them twice)"
    assert list(tmp_path.iterdir()) == [], "drawing saves nothing"

    # fig1: 2 x-axis rows (core hours, FLOPs) x 2 metrics; 8 points, counted once although drawn in both rows
    assert [ax.get_xlabel() for ax in fig1.axes] == ["core hours"] * 2 + ["training FLOPs"] * 2
    assert fig1.texts[-1].get_text() == ("5 of 8 points missing (2 not run, 3 completed without the metric); "
                                         "1 means exclude diverged seeds; small numbers: seeds per point; "
                                         "bars: 95 % interval of the mean (t, over seeds)")
    (relu,) = [line for line in fig1.axes[0].lines if line.get_label() == "relu/L"]
    np.testing.assert_allclose(relu.get_xdata(), [0.02])  # mini4's completed seeds 0-2, the diverged seed 3 left out
    np.testing.assert_allclose(relu.get_ydata(), [0.82])

    assert "21 of 28 points missing (1 running, 1 failed, 19 not run); 1 diverged (x)" in fig2.texts[-1].get_text()
    # the squared relu line of the first panel: alpha 0 diverged -> NaN, alpha 1 -> 0.78, alpha 2 failed -> absent
    (sq,) = [line for line in fig2.axes[0].lines if line.get_label() == "squared relu"]
    np.testing.assert_allclose(sq.get_ydata(), [np.nan, 0.78])
    assert "no runs" in [t.get_text() for t in fig2.axes[2].texts]  # the smoke_tok row
    (softmax,) = [line for line in fig2.axes[0].lines if line.get_label() == "softmax"]
    assert softmax.get_ydata()[0] == pytest.approx(0.86)

    # fig3, 24 points: mini4 has relu x3, squared relu ok/diverged/failed, relu without qk-layernorm at alpha 1
    # only; mini2 only the running relu
    assert fig3.texts[-1].get_text().startswith("18 of 24 points missing (1 running, 1 failed, 16 not run); 1 diverged")
    # one unlabelled row: the y axis is named by the metric, never by the recipe ("smoke")
    assert [ax.get_ylabel() for ax in fig3.axes] == ["", ""] and fig3._supylabel.get_text() == "validation accuracy"
    # each row of Figure 2 its own y axis, shared along the row
    shared = fig2.axes[0].get_shared_y_axes()
    assert shared.joined(fig2.axes[0], fig2.axes[1]) and not shared.joined(fig2.axes[0], fig2.axes[2])
    # a metric per recipe (the paper's i1k accuracy: val_i1k_acc for i21k runs, val_acc for i1k runs)
    per_recipe = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS,
                            metric={"smoke": "val_i1k_acc", "smoke_tok": "val_acc"})
    assert per_recipe.texts[-1].get_text() == (  # the one point with a value diverged: no seed counts to explain
        "27 of 28 points missing (1 running, 1 failed, 19 not run, 6 completed without the metric); 1 diverged (x)")
    # mini2 trained only on a GPU: its points without runs need one, its empty panel says so
    gpu_only = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS,
                          needs_gpu=["mini2"])
    assert gpu_only.texts[-1].get_text().startswith(
        "21 of 28 points missing (1 running, 1 failed, 7 not run, 12 need a GPU); 1 diverged (x)")
    assert [t.get_text() for ax in gpu_only.axes[2:4] for t in ax.texts] == ["no runs", "runs on a GPU"]
    (gated,) = [line for line in fig4.axes[0].lines if line.get_label() == "relu with gating"]
    np.testing.assert_allclose(gated.get_ydata(), [0.82])


def test_save_writes_png_and_pdf_and_closes(table, tmp_path):
    fig = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS)
    paths = plots.save(fig, tmp_path / "new" / "smoke" / "fig2.v2")  # the folder is created; a dot stays in the name
    assert paths == [tmp_path / "new" / "smoke" / "fig2.v2.png", tmp_path / "new" / "smoke" / "fig2.v2.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG") and paths[1].read_bytes().startswith(b"%PDF")
    assert paths[0].stat().st_size > 10_000
    again = plots.save(plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS),
                       tmp_path / "again" / "fig2")
    for first, second in zip(paths, again, strict=True):  # redrawn later: the same bytes
        assert first.read_bytes() == second.read_bytes()
    assert b"/CreationDate" not in paths[1].read_bytes()  # what made them differ (by the second)

    made_by_pyplot = plt.figure()
    plots.save(made_by_pyplot, tmp_path / "pyplot")
    assert not plt.fignum_exists(made_by_pyplot.number)


def test_empty_table_still_draws():
    empty = pd.DataFrame()
    figures = {
        "fig1": plots.fig1(empty, models=["mini4"], recipe="smoke", metrics={"accuracy": "val_acc"}),
        "fig2": plots.fig2(empty, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS),
        "fig3": plots.fig3(empty, columns=COLUMNS, recipe="smoke", alphas=ALPHAS),
        "fig4": plots.fig4(empty, columns={}, recipe="smoke", alphas=[]),
        "fig5": plots.fig5(empty, recipe="smoke", model="mini4"),
        # the table's columns but no rows
        "columns only": plots.fig2(pd.DataFrame(columns=list(run())), rows=ROWS, columns=COLUMNS,
                                   activations=ACTIVATIONS, alphas=ALPHAS),
    }
    for fig in figures.values():
        fig.canvas.draw()
        assert all("no runs" in [t.get_text() for t in ax.texts] for ax in fig.axes)
    footnotes = {name: fig.texts[-1].get_text() for name, fig in figures.items()}
    assert footnotes == {"fig1": "2 of 2 points missing (2 not run)", "fig2": "28 of 28 points missing (28 not run)",
                         "fig3": "24 of 24 points missing (24 not run)", "fig4": "no points requested",
                         "fig5": "5 of 5 points missing (5 not run)",
                         "columns only": "28 of 28 points missing (28 not run)"}


def test_demo_is_titled_accuracy_bars():
    runs = pd.DataFrame([run(activation="softmax", val_acc=0.9), run(alpha=1.0, val_acc=0.8),
                         run(alpha=0.0, val_acc=0.7), run(alpha=0.0, seed=1, val_acc=0.5)]).assign(epoch=[8, 8, 8, 7])
    ax = plots.demo(runs).axes[0]
    assert ax.get_title() == "mini4 on animal_mnist, 8 epochs"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["softmax", "relu/L", "relu"]
    np.testing.assert_allclose([bar.get_height() for bar in ax.patches], [0.9, 0.8, 0.6])
    assert ax.get_ylabel() == "validation accuracy"

    few_shot = plots.demo(runs.drop(columns=["data", "epoch"]).assign(fewshot_10shot_mean=0.4),
                          metric="fewshot_10shot_mean").axes[0]
    assert few_shot.get_title() == "mini4"
    assert few_shot.get_ylabel() == "avg. 10-shot transfer accuracy"
    np.testing.assert_allclose([bar.get_height() for bar in few_shot.patches], [0.4] * 3)


def visible_tick_labels(ax) -> list:
    """The x tick labels drawn: the locator also returns ticks beyond the limits, which are not drawn."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    labels = ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
    return [t for t in labels if t.get_visible() and t.get_text() and low <= t.get_position()[0] <= high]


@pytest.mark.parametrize(("low", "high", "core_hours", "flops"), [
    (0.05, 0.09, ["0.05", "0.1"], ["5e12", "1e13"]),  # matplotlib's default: every minor tick, "0.050.060.07..."
    (0.11, 0.9, ["0.1", "0.2", "0.5", "1"], ["1e13", "2e13", "5e13", "1e14"]),
    (1, 30, ["1", "3", "10", "30"], ["1e14", "3e14", "1e15", "3e15"]),
    (3e4, 2e6, ["3e4", "1e5", "3e5", "1e6"], ["3e18", "1e19", "3e19", "1e20"]),
    (1e-3, 1e4, [f"$\\mathdefault{{10^{{{k}}}}}$" for k in (-2, 0, 2, 4)],
     [f"$\\mathdefault{{10^{{{k}}}}}$" for k in (12, 14, 16, 18)]),
])
def test_fig1_log_axis_labels_do_not_overlap(low, high, core_hours, flops):
    runs = pd.DataFrame([run(model=f"m{i}", activation=activation, core_hours=x, train_flops=x * 1e14)
                         for i, x in enumerate(np.geomspace(low, high, 5)) for activation in ("softmax", "relu")])
    fig = plots.fig1(runs, models=[f"m{i}" for i in range(5)], recipe="smoke", metrics={"accuracy": "val_acc"})
    for ax, expected in zip(fig.axes, [core_hours, flops], strict=True):
        labels = visible_tick_labels(ax)
        assert [t.get_text() for t in labels] == expected
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.x0)
        assert all(left.x1 <= right.x0 for left, right in pairwise(boxes)), [t.get_text() for t in labels]


def test_train_length_draws_one_point_per_length_and_attention():
    rows = [run(activation=a, alpha=alpha, epochs=e, seed=s, val_acc=0.5 + 0.01 * e + 0.001 * s)
            for a, alpha in (("softmax", None), ("relu", 1.0), ("relu", 0.0)) for e in (4, 8) for s in (0, 1)]
    rows.append(run(epochs=16, status="failed"))
    fig = plots.train_length(pd.DataFrame(rows), recipe="smoke", model="mini4", epochs=[4, 8, 16])
    lines = {line.get_label(): line for line in fig.axes[0].lines if not line.get_label().startswith("_")}
    assert set(lines) == {"softmax", "relu/L", "relu (alpha 0)"}
    for line in lines.values():  # the failed 16-epoch point is left out; the means are over both seeds
        np.testing.assert_allclose(line.get_xdata(), [4, 8])
        np.testing.assert_allclose(line.get_ydata(), [0.5405, 0.5805])
    assert "3 of 9 points missing (1 failed, 2 not run)" in fig.texts[0].get_text()


def test_fig5_finds_every_attention_in_rows_the_roll_up_writes():
    """Each attention's row built from its composed config by the grid (as the roll-up does): SOFT's gate column is
    empty there (the key does not apply to it), and Figure 5 still finds all five attentions."""
    from omegaconf import OmegaConf

    from reluvit.run.compose import compose_points
    from reluvit.run.grid import grid_point

    attentions = ["softmax", "relu", "relu_learned", "sigmoid_attn", "soft"]
    configs = compose_points([[f"attention={a}", "model=micro2", "recipe=smoke"] for a in attentions])
    rows = [{**grid_point(OmegaConf.to_container(c, resolve=True)), "status": "completed", "val_acc": 0.8,
             "core_hours": 0.1, "attn_alpha_mean": 0.9} for c in configs]
    assert rows[-1]["gate"] is None
    fig = plots.fig5(pd.DataFrame(rows), recipe="smoke", model="micro2")
    assert fig.texts[-1].get_text().startswith("all 5 points present")


def test_a_short_alpha_grid_is_the_ticks_of_every_alpha_figure(table):
    for fig in (plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS),
                plots.fig4(table, columns=COLUMNS, recipe="smoke", alphas=ALPHAS)):
        assert all(list(ax.get_xticks()) == ALPHAS for ax in fig.axes)
        assert [t.get_text() for t in visible_tick_labels(fig.axes[-1])] == ["0", "1", "2"]
    paper_grid = [a / 4 for a in range(9)]
    fig = plots.fig3(table, columns=COLUMNS, recipe="smoke", alphas=paper_grid)
    assert len(fig.axes[0].get_xticks()) < len(paper_grid)  # matplotlib's, not all nine


def test_bars_are_the_95_percent_t_interval_of_the_mean_or_min_max(table):
    point = [{"recipe": "smoke", "model": "mini4", "activation": "relu", "qk_norm": True, "gate": False,
              "alpha": 1.0}]
    values = np.array([0.80, 0.82, 0.84])  # the completed seeds; the diverged one is left out
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
    ci = plots.aggregate(table, point).iloc[0]
    assert (ci["low"], ci["high"]) == pytest.approx((values.mean() - half, values.mean() + half))
    minmax = plots.aggregate(table, point, bars="minmax").iloc[0]
    assert (minmax["low"], minmax["high"]) == (0.80, 0.84)
    single = plots.aggregate(table, [{**point[0], "alpha": 2.0}]).iloc[0]
    assert single["n"] == 1 and np.isnan(single["low"])  # no bar from one seed
    with pytest.raises(ValueError, match="not one of: ci95, minmax"):
        plots.aggregate(table, point, bars="sd")


def test_each_point_shows_its_seed_count(table):
    fig = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS)
    counts = [t.get_text() for t in fig.axes[0].texts]
    assert counts.count("3") == 1 and counts.count("2") == 1 and "n=2" in counts  # relu alpha 1 and 0; softmax


def test_alphas_beyond_the_grid_are_drawn_not_counted_missing(table):
    finer = pd.concat([table, pd.DataFrame([run(alpha=0.5, val_acc=0.77)])], ignore_index=True)
    before = plots.fig2(table, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS)
    fig = plots.fig2(finer, rows=ROWS, columns=COLUMNS, activations=ACTIVATIONS, alphas=ALPHAS)
    (relu,) = [line for line in fig.axes[0].lines if line.get_label() == "relu"]
    np.testing.assert_allclose(relu.get_xdata(), [0.0, 0.5, 1.0, 2.0])
    assert before.texts[-1].get_text().startswith("21 of 28 points missing")
    assert fig.texts[-1].get_text().startswith("21 of 29 points missing")  # one more point, and it is present


def test_core_hours_name_the_devices_they_were_measured_on(table):
    fig = plots.fig1(table.assign(device="cpu (x86_64)"), models=["mini4"], recipe="smoke",
                     metrics={"accuracy": "val_acc"}, x="core_hours")
    assert fig.axes[0].get_xlabel() == "core hours (measured on cpu (x86_64))"


def test_fig5_shows_the_learned_alpha_from_each_start():
    rows = [run(model="micro2", activation=a, alpha=1.0, learn_alpha="none", seed=s, val_acc=0.8)
            for a in ("softmax", "relu", "sigmoid_attn", "soft") for s in (0, 1)]
    rows += [run(model="micro2", alpha=start, learn_alpha="layer", seed=s, val_acc=0.8, attn_alpha_mean=final + s / 100)
             for start, final in ((0.25, 0.5), (2.0, 1.5)) for s in (0, 1)]
    fig = plots.fig5(pd.DataFrame(rows), recipe="smoke", model="micro2")
    labels = [line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith("_")]
    assert labels[-2:] == ["relu, alpha learned from 0.25", "relu, alpha learned from 2"]
    (final,) = [line for line in fig.axes[1].lines if line.get_label() == "learned alpha (mean over layers)"]
    np.testing.assert_allclose(final.get_xdata(), [0.25, 2.0])
    np.testing.assert_allclose(final.get_ydata(), [0.505, 1.505])
    assert fig.texts[-1].get_text().startswith("all 6 points present")

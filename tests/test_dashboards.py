"""W&B dashboards without a network: each figure's panels against its plot arguments in sweeps/, the report and
workspace specifications built from the committed smoke roll-up (keys, grouping, filters, the footnote) and turned
into wandb-workspaces objects, the offline figure run on disk (its tables, images and charts against the roll-up
and the figure), the login check for any W&B host, and the offline runs `reluvit wandb-sync` finds, which
`wandb sync --dry-run` accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO as ROOT
from reluvit.cli import main
from reluvit.dashboards import spec
from reluvit.dashboards.figure_run import line_series
from reluvit.dashboards.layout import LAYOUTS, panels, recipes, wandb_key
from reluvit.dashboards.sync import is_synced, offline_runs, sync
from reluvit.login import logged_in, resolve_mode
from reluvit.report import claims, plots
from reluvit.report.rollup import summary_row
from reluvit.sweep import spec as sweeps

pytest.importorskip("wandb_workspaces")
from wandb_workspaces import expr  # noqa: E402

REFERENCE = ROOT / "results" / "reference" / "smoke" / "runs.csv"
SCALED = [(name, scale) for name in LAYOUTS for scale in sweeps.SCALES if sweeps.has_scale(name, scale)]


def _leaves(filters) -> set[tuple]:
    """(section, name, op, value) of every condition in a parsed W&B filter."""
    if filters.key is not None:
        value = tuple(filters.value) if isinstance(filters.value, list) else filters.value
        return {(filters.key.section, filters.key.name, filters.op, value)}
    return set().union(*(_leaves(f) for f in filters.filters))


@pytest.mark.parametrize(("name", "scale"), SCALED)
def test_panels_are_the_figures_panels_in_sweeps(name, scale):
    sweep = sweeps.load(name, scale)
    layout, plot = panels(sweep), sweep.plot
    if name == "fig1":
        xs = ("core_hours", "train_flops")
        assert [(p.x, p.y) for p in layout] == [(x, m) for x in xs for m in plot["metrics"].values()]
        assert all(p.log_x and p.where == {"recipe": plot["recipe"], "model": plot["models"]} for p in layout)
    elif name in ("fig2", "fig3", "fig4"):
        rows = plot.get("rows", {plot.get("recipe"): plot.get("recipe")})
        expected = [({"recipe": r, "model": m}, plots.metric_of(plot.get("metric", "val_acc"), r))
                    for r in rows.values() for m in plot["columns"].values()]
        assert [(p.where, p.y) for p in layout] == expected and {p.x for p in layout} == {"alpha"}
        assert layout[0].lines == {"fig2": ("activation",), "fig3": ("activation", "qk_norm"),
                                   "fig4": ("activation", "gate")}[name]
    elif name == "fig5":
        assert [p.x for p in layout] == [plot.get("x", "core_hours"), "alpha"]
        assert all(p.where == {"recipe": plot["recipe"], "model": plot["model"]} for p in layout)
    else:
        assert [(p.x, p.where["model"]) for p in layout] == [("epochs", plot["model"])]
    blocks = sweep.blocks  # every panel's runs are runs of the sweep
    for panel in layout:
        for column, value in panel.where.items():
            wanted = set(value) if isinstance(value, list) else {value}
            assert wanted <= {v for b in blocks for v in b.keys.get(column, [])}


def test_wandb_keys_invert_the_rollups_columns():
    summary = {"run_name": "r", "run_dir": "/nowhere", "status": "completed",
               "config": sweeps_config(), "metrics": {"val/acc": 0.5, "val/i1k_acc": 0.4, "fewshot/10shot_mean": 0.3}}
    row = summary_row(summary, "/nowhere")
    for key in summary["metrics"]:
        column = key.replace("/", "_")
        assert column in row and wandb_key(column) == f"summary.{key}"
    assert wandb_key("core_hours") == "summary.core_hours"  # logged by the clock under its own name
    assert wandb_key("train_flops") == "summary.train_flops"  # not a "train/" metric
    assert wandb_key("alpha") == "config.alpha" and wandb_key("epochs") == "config.epochs"


def sweeps_config() -> dict:
    from omegaconf import OmegaConf

    from reluvit.run.compose import compose

    return OmegaConf.to_container(compose(["attention=relu", "model=micro4", "data=animal_mnist", "recipe=smoke"]))


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE)


@pytest.mark.parametrize("name", ["fig1", "fig2", "fig3", "fig4", "fig5"])
def test_specifications_from_the_smoke_rollup(name, reference):
    sweep = sweeps.load(name, "smoke")
    figure = getattr(plots, name)(reference, **sweep.plot)
    footnote = plots.footnote(plots.tally(figure.points))
    tested = claims.markdown(claims.of_sweep(sweep, reference))
    specs = json.loads(json.dumps(spec.dashboards(sweep, footnote, "me", "reluvit", tested)))  # plain JSON
    layout = panels(sweep)
    report, workspace = specs["report"], specs["workspace"]

    markdown, figure_grid, verdicts, *grids = report["blocks"]
    assert verdicts["type"] == "markdown" and tested in verdicts["text"] and "**" in tested  # the claims, tested
    assert footnote in markdown["text"] and report["description"] == footnote
    assert figure_grid["runsets"][0]["filters"] == f"Config('figure_run') = '{name}-smoke'"
    assert [p["type"] for p in figure_grid["panels"]] == ["media"] + ["line_series"] * len(layout)
    assert len(grids) == len(layout)
    for grid, panel in zip(grids, layout, strict=True):
        (scatter,) = grid["panels"]
        assert (scatter["type"], scatter["x"], scatter["y"]) == ("scatter", wandb_key(panel.x), wandb_key(panel.y))
        (runset,) = grid["runsets"]
        assert runset["groupby"] == [f"config.{k}" for k in panel.lines]
        conditions = _leaves(expr.expr_to_filters(runset["filters"]))
        assert ("run", "tags", "IN", (name,)) in conditions
        assert ("config", "recipe", "IN", tuple(recipes(sweep))) in conditions
        for column, value in panel.where.items():
            condition = ("IN", tuple(value)) if isinstance(value, list) else ("=", value)
            assert ("config", column, *condition) in conditions

    conditions = _leaves(expr.expr_to_filters(workspace["filters"]))  # the runs and the figure run
    assert ("run", "tags", "IN", (name,)) in conditions and ("config", "figure_run", "=", f"{name}-smoke") in conditions
    assert workspace["groupby"][:len(layout[0].where)] == [f"config.{k}" for k in layout[0].where]
    assert [s["name"] for s in workspace["sections"]] == ["Figure", "Runs", "Training curves"]

    built = spec.build_report(report)  # the objects publishing saves, built offline
    assert built.title == report["title"] and len(built.blocks) == len(report["blocks"])
    for block in built.blocks:
        for panel in getattr(block, "panels", ()):  # markdown blocks have none
            panel._to_model()
    view = spec.build_workspace(workspace)._to_model()  # the full saved-view model needs no network
    assert len(view.spec.section.panel_bank_config.sections) == 3


def test_line_series_are_the_means_the_figure_drew():
    sweep = sweeps.load("fig2", "smoke")
    rng = np.random.default_rng(0)
    rows = [{"run_name": f"{a}-{alpha}-{seed}", "recipe": "smoke", "data": "animal_mnist", "model": "micro4",
             "activation": a, "alpha": alpha, "qk_norm": True, "gate": False, "seed": seed, "status": "completed",
             "val_acc": rng.uniform(0.5, 0.9)}
            for a, alphas in (("softmax", [None]), ("relu", [0.0, 1.0, 2.0]), ("gelu", [1.0, 2.0]))
            for alpha in alphas for seed in range(3)]
    table = pd.DataFrame(rows)
    figure = plots.fig2(table, **sweep.plot)
    xs, ys, keys = line_series(figure.points, panels(sweep)[0])  # gap head, L = 49
    means = table.groupby(["activation", "alpha"], dropna=False)["val_acc"].mean()
    assert keys == ["relu", "gelu", "softmax"]  # the figure's order; gelu lacks alpha 0
    np.testing.assert_allclose(xs[0], [0, 1, 2])
    np.testing.assert_allclose(ys[0], means["relu"].to_numpy())
    np.testing.assert_allclose(xs[1], [1, 2])
    np.testing.assert_allclose(ys[1], means["gelu"].to_numpy())
    np.testing.assert_allclose(xs[2], [0, 1, 2])  # softmax: a level across the panel's x values
    np.testing.assert_allclose(ys[2], [means["softmax"].iloc[0]] * 3)
    assert line_series(figure.points, panels(sweep)[1]) == ([], [], [])  # L = 196: no runs


def _seeded_results(tmp_path: Path, reference: pd.DataFrame) -> tuple[Path, Path]:
    """A runs and a results folder whose roll-up holds the reference runs (their directories gone)."""
    runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    runs_dir.mkdir()
    results_dir.mkdir()
    table = reference.assign(run_dir=[str(runs_dir.resolve() / name) for name in reference["run_name"]])
    table.to_parquet(results_dir / "runs.parquet")
    return runs_dir, results_dir


def _table(run: Path, key: str) -> pd.DataFrame:
    (path,) = (run / "files" / "media" / "table").glob(f"{key}_*.table.json")
    data = json.loads(path.read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


def test_offline_figure_run_holds_the_rollup_the_figure_and_its_charts(tmp_path, reference):
    runs_dir, results_dir = _seeded_results(tmp_path, reference)
    args = ["plots", "fig1", "--wandb", "--runs-dir", str(runs_dir), "--results-dir", str(results_dir)]
    main(args)
    (run,) = offline_runs(runs_dir)
    files = run / "files"
    table = pd.read_parquet(results_dir / "runs.parquet")
    sweep = sweeps.load("fig1", "smoke")
    from reluvit.report.rollup import config_identities, select
    from reluvit.run.compose import compose_points

    expected = select(config_identities(compose_points(sweep.points(True))), table)
    logged = _table(run, "runs")
    assert len(logged) == len(expected) > 0  # rows = the roll-up's rows of the figure
    assert sorted(logged["run_name"]) == sorted(expected["run_name"])
    figure = plots.fig1(expected, **sweep.plot)
    assert len(_table(run, "points")) == len(figure.points)
    assert {p.name.split("_")[0] for p in (files / "media" / "images").glob("*.png")} == {"figure", "reference"}
    assert (files / "fig1.pdf").exists()
    for i, panel in enumerate(panels(sweep)):  # one native chart per panel with points (none against train_flops)
        xs, ys, keys = line_series(figure.points, panel)
        charts = list((files / "media" / "table" / "chart").glob(f"panel{i + 1}_table_*.table.json"))
        assert len(charts) == (1 if keys else 0)
        if keys:
            chart = _table(run, f"chart/panel{i + 1}_table")
            assert sorted(chart["lineKey"].unique()) == sorted(keys)
            np.testing.assert_allclose(sorted(chart["lineVal"]), sorted(v for y in ys for v in y))
    assert b"fig1-smoke" in next(run.glob("*.wandb")).read_bytes()  # name, group and config.figure_run

    main(args)  # again: the same W&B run (stable id), a second offline directory of it
    first, second = offline_runs(runs_dir)
    assert first.name.rsplit("-", 1)[1] == second.name.rsplit("-", 1)[1]


def test_wandb_sync_lists_every_offline_run_and_wandb_accepts_them(tmp_path, reference, tiny_cfg, caplog):
    from reluvit.run.train import run as train

    runs_dir, results_dir = _seeded_results(tmp_path, reference)
    main(["plots", "fig3", "--wandb", "--runs-dir", str(runs_dir), "--results-dir", str(results_dir)])
    train(tiny_cfg("logger=wandb", "trainer.max_steps=2", f"runs_dir={runs_dir / 'sweep'}"))
    found = offline_runs(runs_dir)
    assert len(found) == 2 and {"figures", "sweep"} == {r.relative_to(runs_dir).parts[0] for r in found}
    (found[0] / f"run-{found[0].name.rsplit('-', 1)[1]}.wandb.synced").touch()  # as `wandb sync` leaves it
    assert [is_synced(r) for r in found] == [True, False]

    assert sync(runs_dir, dry_run=True) == [found[1]]  # `wandb sync --dry-run` exits 0 on what would upload
    result = subprocess.run([Path(sys.executable).with_name("wandb"), "sync", "--dry-run", *map(str, found)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr  # W&B agrees: it would upload the pending run only
    assert "Would sync 1 run" in output and str(found[1]) in output and str(found[0]) not in output


def test_logged_in_recognises_the_configured_host(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert not logged_in() and resolve_mode("auto") == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert logged_in() and resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: its host counts
    assert not logged_in()
    netrc.write_text("machine wandb.example.org\n  login user\n  password k\n")
    assert logged_in()
    monkeypatch.delenv("WANDB_BASE_URL")  # `wandb login --host` saves the host in W&B's settings
    assert not logged_in()
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings").write_text("[default]\nbase_url = https://wandb.example.org\n")
    assert logged_in()
    netrc.write_text("")
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert logged_in() and resolve_mode("offline") == "offline"


@pytest.mark.parametrize(("argv", "message"), [
    (["wandb", "demo"], "no dashboard for demo"),
    (["wandb", "fig2", "--publish"], "run `reluvit wandb fig2 --scale smoke` first"),
])
def test_wandb_command_errors_are_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--results-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1

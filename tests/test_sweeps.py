"""Sweep files: every sweep composes at its scales, expands to the paper's grid sizes, the fast composition equals
Hydra's, and a small smoke sweep runs end to end through the real CLI into a table and a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import TWO_POINTS, sweep_file
from reluvit import cli
from reluvit.report.status import counts, entries, run_states
from reluvit.run.compose import compose, compose_all, compose_containers, compose_points
from reluvit.run.grid import identity
from reluvit.run.schema import ConfigError
from reluvit.run.validate import validate
from reluvit.sweep import spec as sweeps

FIGURES = [name for name in sweeps.names() if name.startswith("fig")]


def run_names(sweep, gpu: bool = True, extra=()) -> list[str]:
    return list(dict.fromkeys(cfg.run_name for cfg in compose_points(sweep.points(gpu, extra))))


PAPER_SIZES = {"fig1": 5 * 2, "fig2": 3 * 2 * (7 * 9 + 1), "fig3": 3 * 2 * 2 * 9, "fig4": 3 * 2 * 2 * 9, "fig5": 5}


@pytest.mark.parametrize("figure", [pytest.param(f, marks=pytest.mark.slow) if f in ("fig2", "fig3", "fig4") else f
                                    for f in PAPER_SIZES])
def test_paper_grid_sizes(figure):
    sweep = sweeps.load(figure, "paper")
    assert len(sweep.points(gpu=True)) == PAPER_SIZES[figure]
    assert len(run_names(sweep)) == PAPER_SIZES[figure]


def test_fig2_paper_grid_is_the_papers():
    sweep = sweeps.load("fig2", "paper")
    points = {tuple(sorted(p)) for b in sweep.blocks for p in b.points()}
    assert ("attention.alpha=0.25", "attention=gelu", "data=imagenet1k", "model=s8", "recipe=i1k_300ep") in points
    alphas = {o.split("=")[1] for p in points for o in p if o.startswith("attention.alpha=")}
    assert alphas == {str(a / 4) for a in range(9)}


@pytest.mark.parametrize("name", sweeps.names())
@pytest.mark.parametrize("scale", sweeps.SCALES)
def test_every_sweep_point_composes_and_validates(name, scale, tmp_path):
    if not sweeps.has_scale(name, scale):
        pytest.skip(f"{name} has no {scale} scale")
    sweep = sweeps.load(name, scale)
    (tmp_path / "_info.json").write_text("{}")  # stands for the ImageNet shard directories
    data = [f"data.path={tmp_path}"] if scale == "paper" else []
    for cfg in compose_points([[*block.points()[0], *data] for block in sweep.blocks]):
        validate(cfg)


@pytest.mark.parametrize("figure", [pytest.param(f, marks=pytest.mark.slow) if f != "fig1" else f for f in FIGURES])
def test_fast_composition_equals_hydras(figure):
    """Composing each group choice once and setting the keys gives the configs Hydra composes for each point."""
    points = sweeps.load(figure, "smoke").points(gpu=True)
    for fast, full in zip(compose_points(points), compose_all(points), strict=True):
        full = OmegaConf.to_container(full, resolve=True)
        fast = OmegaConf.to_container(fast)
        assert {**fast, "run_name": None, "run_dir": None} == {**full, "run_name": None, "run_dir": None}


@pytest.mark.slow
def test_fig2_smoke_grid_has_three_seeds_at_the_short_length():
    sweep = sweeps.load("fig2", "smoke")
    per_seed = 2 * (7 * 3 + 1 + 2 * 2)  # two heads x (7 h x 3 alphas + softmax + relu, relu2 at alpha 0.5, 1.5)
    gap_pairs = 2 * 37  # softmax and relu/L in the gap row, seeds 3-39
    long = 3 * 2 * (1 + 2 * 3) + 2 * 5 * 3  # L = 196: softmax, relu, relu2 with 3 seeds; the other h with one
    names = run_names(sweep, gpu=False)
    assert len(sweep.points(gpu=False)) == len(names) == 3 * per_seed + gap_pairs + long
    assert sum("/micro4/" in n for n in names) == 3 * per_seed + gap_pairs
    assert {n[-3:] for n in names if "/micro2/" in n} == {"-s0", "-s1", "-s2"}


def test_gpu_only_blocks_are_left_out_without_a_gpu():
    sweep = sweeps.load("fig2", "smoke")
    assert len(sweep.points(gpu=True)) - len(sweep.points(gpu=False)) == 2 * (7 * 3 + 1)
    assert all("model=micro1" not in p for p in sweep.points(gpu=False))
    # the figures count micro1's missing points as needing a GPU, not as not run
    assert sweep.gpu_only_models() == ["micro1"]
    assert sweeps.load("fig2", "paper").gpu_only_models() == []


def test_seeds_replace_the_sweep_files():
    def unseeded(point):
        return tuple(o for o in point if not o.startswith("seed="))

    cells = {unseeded(p) for p in sweeps.load("fig3", "smoke").points(gpu=False)}  # 3 seeds at L = 49, 1 at 196
    replaced = sweeps.load("fig3", "smoke", seeds=[5, 6]).points(gpu=False)
    assert {unseeded(p) for p in replaced} == cells and len(replaced) == 2 * len(cells)
    assert {o for p in replaced for o in p if o.startswith("seed=")} == {"seed=5", "seed=6"}


def test_sweep_syntax_in_extra_overrides_multiplies_the_points():
    sweep = sweeps.load("fig5", "smoke")
    assert len(sweep.points(False, ["trainer.max_steps=3", "recipe.lr=1e-3,3e-4"])) == 2 * len(sweep.points(False))


def test_unknown_sweep_or_scale_is_a_clear_error():
    with pytest.raises(ConfigError, match="known sweeps: demo, fig1, fig2, fig2_fashion, fig3"):
        sweeps.load("fig9", "smoke")
    with pytest.raises(ConfigError, match="no scale"):
        sweeps.load("fig1", "huge")


def _run_sweep(tmp_path, env, *overrides) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reluvit", "sweep", "fig3", "--scale", "smoke", "--runs-dir", str(tmp_path / "runs"),
         "--results-dir", str(tmp_path / "results"), *overrides], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_two_point_smoke_sweep_end_to_end(tmp_path):
    """`reluvit sweep` with a 2-point sweep file: both runs, the roll-up table with those 2 rows, the figure; with
    logger=wandb, the runs' offline W&B runs and the figure run."""
    from reluvit.dashboards.sync import offline_runs

    env = sweep_file(tmp_path, TWO_POINTS)
    result = _run_sweep(tmp_path, env, "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                        "trainer.accelerator=cpu", "logger=wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "results" / "runs.parquet")
    assert sorted(table["run_name"]) == ["smoke-digits/micro2/relu-a1-noqkln-s0+trainer.max_steps=3",
                                         "smoke-digits/micro2/relu-a1-s0+trainer.max_steps=3"]
    assert set(table["status"]) == {"completed"}
    assert (tmp_path / "results" / "runs.csv").exists()
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "results" / "smoke" / f"fig3{suffix}").stat().st_size > 0
    found = [run.relative_to(tmp_path / "runs").parts[:3] for run in offline_runs(tmp_path / "runs")]
    assert len(found) == 3 and ("figures", "smoke", "fig3") in found

    # the runs directory gone: with the roll-up, nothing trains again, the figure still has both runs and its
    # figure run is logged
    again = subprocess.run(
        [sys.executable, "-m", "reluvit", "sweep", "fig3", "--scale", "smoke", "--runs-dir", str(tmp_path / "new"),
         "--results-dir", str(tmp_path / "again"), "--completed-in", str(tmp_path / "results" / "runs.csv"),
         "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "logger=wandb"],
        capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 runs, 2 completed in" in again.stderr
    assert [run.relative_to(tmp_path / "new").parts[:3] for run in offline_runs(tmp_path / "new")] == [
        ("figures", "smoke", "fig3")]
    assert len(pd.read_parquet(tmp_path / "again" / "runs.parquet")) == 2
    for name in table["run_name"]:  # the figure's runs, as the sweep prints them
        assert name in again.stdout


@pytest.mark.slow
def test_a_bad_point_anywhere_fails_the_sweep_before_anything_runs(tmp_path):
    env = sweep_file(tmp_path, "      - {recipe: smoke, data: digits, model: micro2, attention: relu}\n"
                                "      - {recipe: smoke, data: digits, model: micro2, attention: relu,"
                                " attention.alpha: [1.0, -1.0]}\n")
    result = _run_sweep(tmp_path, env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "attention.alpha" in result.stderr and "relu-a-1-s0" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_failed_block_does_not_stop_the_sweep(tmp_path):
    """Block 1 fails at run time (no TPU here): block 2 still runs, the figure is drawn, the exit status says it."""
    env = sweep_file(tmp_path, "      - {recipe: smoke, data: digits, model: micro2, attention: relu2,"
                                " trainer.accelerator: tpu}\n"
                                "      - {recipe: smoke, data: digits, model: micro2, attention: relu}\n")
    result = _run_sweep(tmp_path, env, "trainer.max_steps=2", "trainer.enable_progress_bar=false")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "failed: smoke-digits/micro2/relu2-a1-s0+trainer.max_steps=2" in result.stderr
    status = pd.read_parquet(tmp_path / "results" / "runs.parquet").set_index("run_name")["status"]
    assert status.to_dict() == {"smoke-digits/micro2/relu-a1-s0+trainer.max_steps=2": "completed",
                                "smoke-digits/micro2/relu2-a1-s0+trainer.max_steps=2": "failed"}  # recorded
    assert (tmp_path / "results" / "smoke" / "fig3.png").stat().st_size > 0


def _counts(sweep, table, gpu: bool, extra: list[str], runs_dir) -> dict:
    configs = compose_containers(sweep.points(gpu, extra))
    states = run_states(entries(configs, runs_dir, set(sweep.gpu_only_models())), runs_dir, table)
    return counts(sweep.name, sweep.scale, states)


def test_status_counts_runs(tmp_path):
    sweep, extra = sweeps.load("fig3", "smoke"), [f"runs_dir={tmp_path}"]  # not the checkout's runs/
    configs = compose_points(sweep.points(False, extra))
    first = [identity(OmegaConf.to_container(c, resolve=True)) for c in configs[:3]]
    runs = pd.DataFrame({"identity": [*first, "another"], "run_dir": [c.run_dir for c in configs[:3]] + ["x/other"],
                         "status": ["completed", "diverged", "running", "completed"]})
    row = _counts(sweep, runs, False, extra, tmp_path)
    assert (row["runs"], row["completed"], row["diverged"], row["running"], row["failed"]) == (len(configs), 1, 1, 1, 0)
    assert row["missing"] == len(configs) - 3
    # with the GPU-only block (L = 784): its runs are counted apart from the missing ones
    with_gpu = _counts(sweep, runs, True, extra, tmp_path)
    assert (with_gpu["runs"], with_gpu["missing"], with_gpu["needs_gpu"]) == (len(configs) + 12, len(configs) - 3, 12)


def test_sweep_points_name_distinct_runs():
    cfgs = [compose(p) for p in sweeps.load("fig4", "smoke").blocks[0].points()[:4]]
    assert len({c.run_name for c in cfgs}) == 4


def test_status_takes_the_overrides_the_sweep_was_launched_with(tmp_path, capsys):
    """`reluvit status demo trainer.max_steps=4` counts the runs `reluvit sweep demo trainer.max_steps=4` trained
    (their names carry the override); without it they are other runs, missing."""
    runs = tmp_path / "runs"
    override = "trainer.max_steps=4"
    cfg = compose_points(sweeps.load("demo", "smoke").points(False, [f"runs_dir={runs.resolve()}", override]))[0]
    Path(cfg.run_dir).mkdir(parents=True)
    summary = {"run_name": cfg.run_name, "run_dir": cfg.run_dir, "status": "completed",
               "config": OmegaConf.to_container(cfg, resolve=True)}
    (Path(cfg.run_dir) / "summary.json").write_text(json.dumps(summary))
    for extra, completed in (([override], 1), ([], 0)):
        cli.main(["status", "demo", "--runs-dir", str(runs), *extra])
        row = capsys.readouterr().out.splitlines()[1].split()
        assert row[:2] == ["demo", "smoke"] and int(row[3]) == completed, row


def test_runs_completed_in_a_rollup_are_not_trained_again(tmp_path):
    """`reluvit sweep --completed-in TABLE`: a point whose identity the table records as completed is done (its
    recorded directory stands for it); a failed row or another identity is not."""
    from reluvit.report.rollup import completed_in, rollup
    from reluvit.run.grid import identity
    from reluvit.sweep.execute import prepare

    points = prepare(sweeps.load("fig5", "smoke").points(False, [f"runs_dir={tmp_path / 'runs'}"]))
    identities = [identity(OmegaConf.to_container(p.cfg, resolve=True)) for p in points]
    table = pd.DataFrame({"run_name": ["a", "b", "c"], "identity": [identities[0], identities[1], "0123456789abcdef"],
                          "status": ["completed", "failed", "completed"],
                          "run_dir": ["/purged/scratch/a", "/purged/scratch/b", "/purged/scratch/c"]})
    assert completed_in([p.cfg for p in points], table) == {0: "/purged/scratch/a"}
    merged = rollup(tmp_path / "runs", tmp_path / "results" / "runs", also=table)  # their rows join the roll-up
    assert sorted(merged["run_dir"]) == sorted(table["run_dir"])
    assert len(rollup(tmp_path / "runs", tmp_path / "results" / "runs", also=table)) == 3  # once, not again


def test_plots_draw_a_figure_from_a_committed_rollup(tmp_path, monkeypatch):
    """`reluvit plots fig1 --completed-in results/reference/smoke/runs.csv`: with no runs here, the figure is drawn
    from the committed roll-up's rows of Figure 1 (identified by their grid values, not by where they were trained)."""
    from conftest import REPO as ROOT
    from reluvit.report import plots

    reference = pd.read_csv(ROOT / "results" / "reference" / "smoke" / "runs.csv")
    # qk_norm and gate are empty for attentions without them (SOFT): compared, not negated
    relu_l = (reference["activation"] == "relu") & (reference["alpha"] == 1.0) & reference["qk_norm"].eq(True) \
        & reference["gate"].eq(False) & reference["learn_alpha"].eq("none")
    expected = reference[reference["model"].isin(["micro4", "mini4", "midi4"]) & reference["recipe"].eq("smoke")
                         & reference["data"].eq("animal_mnist") & ((reference["activation"] == "softmax") | relu_l)]
    assert len(expected) == 3 * 2 * 3  # three sizes, softmax and relu/L, three seeds
    drawn = []
    monkeypatch.setattr(plots, "fig1", lambda df, **plot: drawn.append(df) or plots.new_figure())
    args = ["plots", "fig1", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    for extra, names in (([], []), (["--completed-in", str(ROOT / "results/reference/smoke/runs.csv")],
                                    sorted(expected["run_name"]))):
        cli.main(args + extra)
        assert sorted(drawn.pop().get("run_name", [])) == names
    assert (tmp_path / "results" / "smoke" / "fig1.png").exists()
    rolled = pd.read_parquet(tmp_path / "results" / "runs.parquet")  # the table's rows joined the roll-up
    assert sorted(rolled["run_name"]) == sorted(reference["run_name"])

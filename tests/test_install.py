"""reluvit outside its checkout: the configs, sweeps and SLURM profiles ship inside the package, a user's own
directories are searched before them (one more file needs no copy of the rest), and a wheel installed in a fresh
virtual environment trains the demo's first steps from a directory that is not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TINY
from reluvit import cli
from reluvit.run.compose import compose, compose_points
from reluvit.search import packaged, search_path
from reluvit.sweep import spec


def user_model(directory: Path) -> Path:
    """A model config of the user's own, ``model=mine``: a mini ViT of patch 4."""
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "mine.yaml").write_text("name: mine\nvariant: mini/4\n")
    return directory


def test_a_user_config_directory_is_searched_before_the_packaged_one(tmp_path, monkeypatch):
    """A new option of a group, and an option that hides the packaged one of its name; the rest stays packaged."""
    mine = user_model(tmp_path / "conf")
    (mine / "recipe").mkdir()
    smoke = (packaged("conf") / "recipe" / "smoke.yaml").read_text()
    (mine / "recipe" / "smoke.yaml").write_text(smoke.replace("lr: ", "lr: 0.5 # was ", 1))
    packaged_lr = compose(TINY).recipe.lr
    monkeypatch.setenv("RELUVIT_CONF_DIR", str(mine))
    assert search_path("conf") == [mine, packaged("conf")]
    cfg = compose_points([[*TINY, "model=mine"]])[0]
    assert cfg.model.variant == "mini/4" and cfg.recipe.lr == 0.5 != packaged_lr
    assert compose([*TINY, "data=animal_mnist"]).data.dataset == "animal_mnist"  # packaged groups still found


def test_a_user_sweep_beside_the_packaged_ones(tmp_path, monkeypatch, capsys):
    """``my_sweeps/fig2_bigger.yaml`` with $RELUVIT_SWEEPS_DIR: listed and loaded with fig1 ... fig5, demo."""
    (tmp_path / "my_sweeps").mkdir()
    bigger = spec.path("fig2").read_text().replace("{model: micro2,", "{seed: [0, 1], model: micro2,")
    (tmp_path / "my_sweeps" / "fig2_bigger.yaml").write_text(bigger)
    monkeypatch.setenv("RELUVIT_SWEEPS_DIR", str(tmp_path / "my_sweeps"))
    assert {"demo", "fig2", "fig2_bigger"} <= set(spec.names())
    assert spec.path("fig2_bigger").parent == tmp_path / "my_sweeps" and spec.path("fig2").parent == packaged("sweeps")
    bigger, packaged_fig2 = spec.load("fig2_bigger", "smoke"), spec.load("fig2", "smoke")
    assert len(bigger.points(gpu=False)) > len(packaged_fig2.points(gpu=False)) and bigger.figure == "fig2"


def test_every_packaged_sweep_names_a_figure_and_a_wrong_one_is_refused_before_training(tmp_path, monkeypatch,
                                                                                         capsys):
    from reluvit.report import plots

    assert {spec.load(name, "smoke").figure for name in spec.names()} == set(plots.FIGURES)
    assert all(callable(getattr(plots, figure)) for figure in plots.FIGURES)
    (tmp_path / "my_sweeps").mkdir()
    (tmp_path / "my_sweeps" / "typo.yaml").write_text(spec.path("demo").read_text().replace("figure: demo",
                                                                                            "figure: demo2"))
    monkeypatch.setenv("RELUVIT_SWEEPS_DIR", str(tmp_path / "my_sweeps"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "typo", "--runs-dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2 and not (tmp_path / "runs").exists()
    assert "config error: figure: 'demo2' is not a figure; the figures are: demo, fig1," in capsys.readouterr().err


@pytest.mark.parametrize("variable", ["RELUVIT_CONF_DIR", "RELUVIT_SWEEPS_DIR", "RELUVIT_PROFILES_DIR"])
def test_a_user_directory_that_is_not_there_is_one_line(variable, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(variable, str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "demo", "--dry-run", "--launcher", "slurm", f"runs_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"reluvit: config error: {variable}: no directory {tmp_path / 'nowhere'}\n"


def test_the_checkout_links_to_the_packaged_directories():
    """conf/, sweeps/ and slurm/profiles/ at the top of the checkout are the packaged ones (links), not copies."""
    for link, kind in (("conf", "conf"), ("sweeps", "sweeps"), ("slurm/profiles", "profiles")):
        assert (REPO / link).resolve() == packaged(kind).resolve()


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_demo_from_elsewhere(tmp_path):
    """``pip wheel`` of the checkout, installed (no dependencies: this environment's installed packages are reused,
    not downloaded) into a new virtual environment, run from an empty directory: the demo sweep's first steps train
    and roll up, with a user's sweep file beside the packaged ones; the package data is in the wheel."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # setuptools writes build/ beside the sources
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels,
                    source], check=True, timeout=600)
    (wheel,) = wheels.glob("reluvit-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages after the new one's own (a path line of a .pth file: its .pth files, the editable
    # reluvit among them, are not read)
    Path(site, "reused.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "my_sweeps").mkdir(parents=True)
    (elsewhere / "my_sweeps" / "tiny_demo.yaml").write_text(textwrap.dedent("""\
        scales:
          smoke:
            blocks:
              - {model: mini2, recipe: smoke, data: digits, eval: none, attention: [softmax, relu]}
            plot: {}
        """))
    env = {**os.environ, "RELUVIT_SWEEPS_DIR": "my_sweeps", "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import reluvit.search as s; print(s.packaged('conf'))"], cwd=elsewhere,
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv) and (Path(where) / "train.yaml").is_file()
    common = ["--runs-dir", "runs", "--results-dir", "results", "trainer.max_steps=3", "trainer.accelerator=cpu",
              "trainer.enable_progress_bar=false"]
    listed = subprocess.run([venv / "bin" / "reluvit", "sweep", "--help"], cwd=elsewhere, capture_output=True,
                            text=True, env=env, timeout=120)
    assert "demo" in listed.stdout and "fig2" in listed.stdout and "tiny_demo" in listed.stdout
    for sweep in ("tiny_demo", "demo"):
        extra = [] if sweep == "tiny_demo" else ["--dry-run", "--launcher", "slurm"]
        result = subprocess.run([venv / "bin" / "reluvit", "sweep", sweep, *common, *extra], cwd=elsewhere,
                                capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "3 runs in 1 job array" in result.stdout  # the packaged demo, previewed
    assert len(list((elsewhere / "runs").rglob("summary.json"))) == 2
    assert (elsewhere / "results" / "runs.parquet").is_file()


def test_logging_to_wandb_without_the_extra_is_one_line(tmp_path, monkeypatch):
    """W&B is an extra (reluvit[wandb]): logger=wandb without it is refused before anything runs."""
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    cfg = compose([*TINY, "logger=wandb", f"runs_dir={tmp_path}"])
    validate(cfg)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not importable
    with pytest.raises(ConfigError, match=r"^logger.wandb: W&B is not installed: pip install 'reluvit\[wandb\]'$"):
        validate(cfg)

"""Shared fixtures: configs composed from the real ``conf/`` with small, CPU-only overrides; and the guard that keeps
the default suite off the machine: unless ``RELUVIT_SLURM_TESTS=1`` (set by ``make test-all`` after
``slurm/up.sh``), the package manager and SLURM's commands are shadowed on the PATH by stubs that refuse and record
the call, and the session fails if anything called them."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision  # noqa: F401 - before TensorFlow (below)

# TensorFlow's plain CPU kernels are the parity tests' reference: oneDNN's convolution sums in another order on some
# CPUs (AVX-512 AMD EPYC: Sharpness then differs by 2 grey levels from TF's own kernel), so it is off before import.
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
# TensorFlow, the parity tests' reference, crashes the interpreter when torchvision or triton load after it
# (tensorflow-cpu 2.21, torchvision 0.29, triton 3.8): both load first, whichever test module imports TensorFlow.
with contextlib.suppress(ImportError):
    import triton  # noqa: F401

from reluvit.run.compose import compose
from reluvit.run.rundir import last_checkpoint

SLURM_TESTS = os.environ.get("RELUVIT_SLURM_TESTS") == "1"
GUARDED = ("apt-get", "apt", "dpkg", "sbatch", "srun", "salloc", "squeue", "scontrol", "sacct", "sacctmgr", "sinfo",
           "scancel", "slurmctld", "slurmd", "slurmdbd", "munged", "systemctl")
GUARD_LOG = "RELUVIT_GUARD_LOG"


def pytest_configure(config) -> None:
    _offline_wandb(Path(tempfile.mkdtemp(prefix="reluvit-wandb-")))
    # reluvit's composition and validation cache: in the temporary directory, never the user's ~/.cache
    os.environ["RELUVIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="reluvit-cache-")
    if SLURM_TESTS:
        return
    stubs = Path(tempfile.mkdtemp(prefix="reluvit-guard-"))
    log = stubs / "calls.log"
    log.touch()
    for name in GUARDED:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n'
                        f'echo "{name}: refused in the default test suite (make test-all runs the SLURM tests)" >&2\n'
                        "exit 127\n")
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    os.environ["PATH"] = f"{stubs}{os.pathsep}{os.environ['PATH']}"
    os.environ[GUARD_LOG] = str(log)


def _offline_wandb(home: Path) -> None:
    """W&B's caches, staging and settings in ``home`` (a temporary folder), and no login: W&B runs of the tests are
    offline and write nothing outside the repository and the temporary directory."""
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE"):
        os.environ.pop(name, None)
    for name, folder in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_ARTIFACT_DIR", "artifacts")):
        os.environ[name] = str(home / folder)
    (home / "netrc").touch()
    os.environ["NETRC"] = str(home / "netrc")
    os.environ["WANDB_SILENT"] = "true"


def pytest_collection_modifyitems(items) -> None:
    for item in items:  # a test on the local cluster is a SLURM test (run by make test-all only)
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


def pytest_sessionfinish(session, exitstatus) -> None:
    if wandb_home := os.environ.get("WANDB_CACHE_DIR"):
        shutil.rmtree(Path(wandb_home).parent, ignore_errors=True)
    if cache := os.environ.get("RELUVIT_CACHE_DIR"):
        shutil.rmtree(cache, ignore_errors=True)
    log = os.environ.get(GUARD_LOG)
    calls = Path(log).read_text().strip() if log and Path(log).exists() else ""
    if log:
        shutil.rmtree(Path(log).parent, ignore_errors=True)
    if calls:
        session.config.get_terminal_writer().line(
            f"the default suite called commands that change the machine or reach a cluster:\n{calls}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


REPO = Path(__file__).resolve().parents[1]  # the checkout: its committed results/

# A seconds-scale run: the digits dataset (8x8, patch 2 -> L = 16), the mini ViT, a handful of steps.
TINY = [
    "model=mini2", "data=digits", "recipe=smoke", "recipe.batch_size=64", "recipe.warmup_steps=5",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """TINY with runs under this test's temporary directory (``tmp_path / "runs"``)."""
    return [*TINY, f"runs_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    """compose(tiny_overrides + extra overrides)."""
    return lambda *overrides: compose([*tiny_overrides, *overrides])


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread: for modules of tiny tensors (intra-op threads only add synchronisation and stall on a busy
    machine), and as in data workers (F.interpolate's rounding depends on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkpoint_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in a run's ``checkpoints/last.ckpt``."""
    return torch.load(last_checkpoint(Path(run_dir)), weights_only=True)["state_dict"]


# A sweep block of two points (relu/L with and without qk-LayerNorm) on the digits dataset.
TWO_POINTS = ("      - {recipe: smoke, data: digits, model: micro2, attention: relu, attention.qk_norm: [true, false],"
              " attention.alpha: 1.0}\n")


def sweep_file(tmp_path: Path, blocks: str) -> dict:
    """A fig3 sweep file of ``blocks`` (YAML list items) in tmp_path/sweeps; returns the environment that makes
    reluvit read it."""
    sweep_dir = tmp_path / "sweeps"
    sweep_dir.mkdir()
    (sweep_dir / "fig3.yaml").write_text(
        f"figure: fig3\nscales:\n  smoke:\n    blocks:\n{blocks}"
        "    plot: {recipe: smoke, columns: {'L=16': micro2}, alphas: [1.0], metric: val_acc}\n")
    return {**os.environ, "RELUVIT_SWEEPS_DIR": str(sweep_dir)}

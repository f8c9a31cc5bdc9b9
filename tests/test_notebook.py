"""notebooks/results.ipynb runs end to end, on a small roll-up table and on a fresh clone (the committed reference),
and displays the five figures and their claims; an empty roll-up never hides a later one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "results.ipynb"


def small_table() -> pd.DataFrame:
    """A real roll-up (the notebook finds each sweep's runs by identity, as ``reluvit plots`` does): every third run
    of the committed reference, one of them marked diverged and one running."""
    df = pd.read_csv(REPO / "results" / "reference" / "smoke" / "runs.csv").iloc[::3].reset_index(drop=True)
    df.loc[0, ["status", "val_acc"]] = ["diverged", float("nan")]
    df.loc[1, ["status", "val_acc"]] = ["running", float("nan")]
    return df


def venv_kernel(tmp_path: Path) -> KernelManager:
    """A kernel on this interpreter, whatever kernelspecs the machine has (CI: only the virtualenv exists)."""
    spec = tmp_path / "kernels" / "reluvit-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "reluvit", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return KernelManager(kernel_name="reluvit-test", kernel_spec_manager=specs)


@pytest.fixture(autouse=True)
def no_reluvit_environment(monkeypatch):
    """The notebook's parameters come from RELUVIT_* variables; the kernel inherits this environment."""
    for name in [name for name in os.environ if name.startswith("RELUVIT_")]:
        monkeypatch.delenv(name)


def execute(notebook: Path, tmp_path: Path) -> list:
    """Run ``notebook`` from its folder; the code cells with their outputs."""
    nb = nbformat.read(notebook, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert not any(cell.outputs for cell in code), "commit the notebook with its outputs cleared"
    NotebookClient(nb, km=venv_kernel(tmp_path), timeout=120, resources={"metadata": {"path": str(notebook.parent)}},
                   allow_errors=False).execute()
    return code


def printed(cells: list) -> str:
    return "".join(out.get("text", "") for cell in cells for out in cell.outputs)


def printed_markdown(cells: list) -> str:
    return "".join(out.get("data", {}).get("text/markdown", "") for cell in cells for out in cell.outputs)


def images_per_figure(cells: list) -> dict[str, int]:
    """How many PNG images each ``show("figN")`` cell displayed."""
    return {cell.source: sum("image/png" in out.get("data", {}) for out in cell.outputs)
            for cell in cells if cell.source.startswith("show(")}


def test_notebook_runs(tmp_path, monkeypatch):
    results = tmp_path / "runs.csv"
    small_table().to_csv(results, index=False)
    monkeypatch.setenv("RELUVIT_RESULTS", str(results))
    monkeypatch.setenv("RELUVIT_FIGURES", str(tmp_path / "figures"))

    cells = execute(NOTEBOOK, tmp_path)
    assert f"{len(small_table())} runs from {results.resolve()}\n" in printed(cells)
    assert images_per_figure(cells) == {f'show("fig{i}")': 1 for i in range(1, 6)}
    assert sorted(p.name for p in (tmp_path / "figures" / "smoke").iterdir()) == sorted(
        f"{name}.{ext}" for name in ("fig1", "fig2", "fig2_fashion", "fig3", "fig4", "fig5") for ext in ("pdf", "png"))
    assert "agrees" in printed_markdown(cells) or "inconclusive" in printed_markdown(cells)  # the claims, tested


def test_an_empty_rollup_never_hides_the_reference(tmp_path):
    from reluvit.report.figures import first_rollup

    empty, reference = tmp_path / "runs.csv", REPO / "results" / "reference" / "smoke" / "runs.csv"
    pd.read_csv(reference).iloc[:0].to_csv(empty, index=False)
    assert first_rollup(tmp_path / "missing.parquet", empty, reference)[0] == reference
    assert first_rollup(empty)[0] == empty  # none has runs: the last one's empty table


@pytest.mark.slow
def test_notebook_runs_on_a_fresh_clone(tmp_path):
    """With no RELUVIT_* variables and no roll-up of one's own, the notebook shows the committed reference."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.split("\0")
    clone = tmp_path / "clone"
    for name in filter(None, tracked):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is not in a clone of it either
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    reference = clone / "results" / "reference" / "smoke" / "runs.csv"
    results_before = {p: p.read_bytes() for p in (clone / "results").rglob("*") if p.is_file()}

    cells = execute(clone / "notebooks" / "results.ipynb", tmp_path)
    assert f"{len(pd.read_csv(reference))} runs from {reference.resolve()}\n" in printed(cells)
    assert images_per_figure(cells) == {f'show("fig{i}")': 1 for i in range(1, 6)}
    assert {p: p.read_bytes() for p in (clone / "results").rglob("*") if p.is_file()} == results_before, \
        "the notebook writes nothing under results/ unless RELUVIT_FIGURES names a folder"

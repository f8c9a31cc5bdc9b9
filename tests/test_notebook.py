"""notebooks/results.ipynb runs end to end on a small synthetic roll-up table and draws the four figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pandas as pd
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "results.ipynb"


def synthetic_table() -> pd.DataFrame:
    """Two models, two recipes, relu at three alphas (two seeds), softmax, one diverged, one running run."""
    rows = []
    for recipe in ("smoke", "smoke_tok"):
        for model in ("micro4", "micro2"):
            grid = [("softmax", 1.0)] + [("relu", a) for a in (0.0, 1.0, 2.0)] + [("relu2", 1.0)]
            for activation, alpha in grid:
                for seed in (0, 1):
                    rows.append({"recipe": recipe, "model": model, "variant": f"micro/{model[-1]}",
                                 "activation": activation, "alpha": alpha, "qk_norm": True, "gate": False,
                                 "seed": seed, "status": "completed", "core_hours": 0.05 if model == "micro4" else 0.2,
                                 "val_acc": 0.8 - 0.05 * abs(alpha - 1) + 0.01 * seed})
    rows[-1].update(status="diverged", val_acc=float("nan"))
    rows[-2].update(status="running", val_acc=float("nan"))
    df = pd.DataFrame(rows)
    return df.assign(run_name=[f"run{i}" for i in range(len(df))], data="animal_mnist", train_flops=1e12)


def venv_kernel(tmp_path: Path) -> KernelManager:
    """A kernel on this interpreter, whatever kernelspecs the machine has (CI: only the virtualenv exists)."""
    spec = tmp_path / "kernels" / "reluvit-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "reluvit", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return KernelManager(kernel_name="reluvit-test", kernel_spec_manager=specs)


def test_notebook_runs(tmp_path, monkeypatch):
    results = tmp_path / "runs.parquet"
    synthetic_table().to_parquet(results, index=False)
    # read by the notebook's parameter cell; the kernel inherits this environment
    monkeypatch.setenv("RELUVIT_RESULTS", str(results))
    monkeypatch.setenv("RELUVIT_FIGURES", str(tmp_path / "figures"))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert not any(cell.outputs for cell in code), "commit the notebook with its outputs cleared"
    NotebookClient(nb, km=venv_kernel(tmp_path), timeout=120, resources={"metadata": {"path": str(NOTEBOOK.parent)}},
                   allow_errors=False).execute()

    outputs = [out for cell in code for out in cell.outputs]
    assert sum("image/png" in out.get("data", {}) for out in outputs) == 4
    assert f"{len(synthetic_table())} runs from {results}" in "".join(out.get("text", "") for out in outputs)
    assert sorted(p.name for p in (tmp_path / "figures" / "smoke").iterdir()) == [
        f"fig{i}.{ext}" for i in range(1, 5) for ext in ("pdf", "png")]

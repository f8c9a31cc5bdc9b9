"""What the benchmarks share: the device's name and bf16 peak, timing, goal rows, and one CSV per device under
``results/bench/`` (or in a folder of its own with ``--out``)."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) per GPU, from the vendors' data sheets: the first pattern that
# the device's name matches (CUDA names, e.g. "NVIDIA H100 80GB HBM3" is the SXM part). Add yours here.
BF16_PEAK_TFLOPS = [
    (r"H100.*PCIe", 756.0), (r"H[12]00 NVL", 835.0), (r"H200|GH200|H100", 989.0), (r"B200", 2250.0),
    (r"A100", 312.0), (r"L40S", 362.0), (r"A10\b", 125.0), (r"L4\b", 121.0),
]


def device_name(device: torch.device) -> str:
    """E.g. ``NVIDIA H100 80GB HBM3`` or ``AMD EPYC (2 threads)``: numbers from different machines never mix."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and (match := re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)):
        model = match.group(1).strip()
    return f"{model} ({torch.get_num_threads()} threads)"


def slug(device: str) -> str:
    """A device name as a file or folder name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def bf16_peak_tflops(device: str) -> float | None:
    """The dense bf16 peak of a GPU by name (:data:`BF16_PEAK_TFLOPS`); None for a device not in the table."""
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, device)), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls (first calls compile, tune and
    allocate), the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_csv(table: pd.DataFrame, name: str, device: str, out: Path | None = None) -> Path:
    """``<out>/<name>.csv``, or ``results/bench/<name>-<device>.csv`` without ``out``; the device in every row too."""
    path = out / f"{name}.csv" if out else RESULTS / f"{name}-{slug(device)}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.assign(device=device).to_csv(path, index=False)
    return path


def goal(name: str, value: float | None, target: float, *, at_most: bool = False, unit: str = "x",
         where: str = "", missing: str = "") -> dict:
    """One row of a goal table: the goal, the measured value (None: not measured, ``missing`` says why) against
    its target (``value >= target``, or ``<=`` with ``at_most``), and the verdict."""
    measured = None if value is None or value != value else float(value)  # NaN: a comparison that did not run
    if measured is None:
        return {"goal": name, "value": None, "target": target, "measured": f"not measured ({missing or 'no data'})",
                "verdict": "not measured"}
    met = measured <= target if at_most else measured >= target
    text = f"{measured:.0%}" if unit == "%" else f"{measured:.3g}{unit}"
    return {"goal": name, "value": measured, "target": target, "measured": f"{text} {where}".strip(),
            "verdict": "met" if met else "NOT met"}


def show(table: pd.DataFrame, title: str) -> None:
    print(f"\n{title}\n{table.to_string(index=False, float_format=lambda x: f'{x:.3g}')}")


def pass_fail(name: str, ok: bool | None, measured: str) -> dict:
    """A goal row for a pass/fail outcome (``ok`` None: not measured, ``measured`` says why)."""
    verdict = "not measured" if ok is None else "met" if ok else "NOT met"
    return {"goal": name, "value": None if ok is None else float(ok), "target": 1.0,
            "measured": f"not measured ({measured})" if ok is None else measured, "verdict": verdict}

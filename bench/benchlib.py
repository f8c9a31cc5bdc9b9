"""What the benchmarks share: the device's name, timing, and one CSV per device under ``results/bench/``."""

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


def device_name(device: torch.device) -> str:
    """E.g. ``NVIDIA H100 80GB HBM3`` or ``AMD EPYC (2 threads)``: numbers from different machines never mix."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and (match := re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)):
        model = match.group(1).strip()
    return f"{model} ({torch.get_num_threads()} threads)"


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


def write_csv(table: pd.DataFrame, name: str, device: str) -> Path:
    """``results/bench/<name>-<device>.csv``, the device in every row too."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    path = RESULTS / f"{name}-{slug}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.assign(device=device).to_csv(path, index=False)
    return path


def show(table: pd.DataFrame, title: str) -> None:
    print(f"\n{title}\n{table.to_string(index=False, float_format=lambda x: f'{x:.3g}')}")

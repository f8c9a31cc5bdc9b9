"""The training speed a dry run's estimate assumes for each run, and where it comes from. Measured first: the
images/s per device that ``make device-check`` recorded on the cluster's GPU (``results/bench/<gpu>/``, the
profile's ``gpu``): ``train_step.csv`` by model, attention path and compiled or eager; else the profile's achieved
``gpu_tflops`` (6 x forward MACs per training image). Either is capped by the data loader's measured images/s per
device (``data.csv``): a step cannot run faster than its images arrive."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
BENCH_DIR = Path("results") / "bench"  # of the working directory: the checkout's, where make device-check writes
LOADER_WIDTH = 500  # data.csv's row of ImageNet-like images (mean width in pixels)
# data.csv's column of each data loader: images/s on one GPU (DALI), else per CPU core (x the profile's cpus_per_task)
LOADER_COLUMNS = {"dali": "dali GPU img/s", "reference": "shards img/s/core", "imagefolder": "ImageFolder img/s/core"}
MEASURED, TFLOPS, UNKNOWN = "measured", "TFLOP/s", "unknown"  # where a run's speed comes from


def attention_path(attention: Mapping) -> str:
    """The label of ``train_step.csv`` for a run's attention: its activation (softmax: SDPA; relu: the fused kernel
    where ``impl`` lets it run), ``relu (unfused)`` for relu's reference path. Other activations are not measured."""
    activation = attention.get("activation")
    return f"{activation} (unfused)" if activation == "relu" and attention.get("impl") == "reference" else activation


@dataclass(frozen=True)
class RunSpeed:
    images_per_second: float | None  # per device; None: nothing to estimate it by
    source: str  # MEASURED, TFLOPS or UNKNOWN
    loader_bound: bool = False  # capped by the data loader's images/s


@dataclass(frozen=True)
class Speed:
    """A cluster's speeds: the profile's ``gpu_tflops`` and what its GPU's folder of measurements holds."""

    tflops: float | None
    folder: Path | None = None  # results/bench/<gpu>/, where it exists
    steps: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (variant, path, mode) -> images/s
    loaders: dict[str, float] = field(default_factory=dict)  # LOADER_COLUMNS key -> images/s (per core for CPUs)

    @classmethod
    def of(cls, tflops: float | None, gpu: str | None, bench_dir: Path = BENCH_DIR) -> Speed:
        """The speeds of a profile with ``gpu_tflops`` ``tflops`` whose GPU's measurements are ``bench_dir/gpu``."""
        folder = bench_dir / gpu if gpu else None
        if folder is None or not folder.is_dir():
            return cls(tflops, None)
        steps, loaders = {}, {}
        for row in _rows(folder / "train_step.csv"):
            if row.get("bench", "attention") == "attention" and row.get("img_per_s"):
                steps[(row["model"], row["attention"], row["mode"])] = float(row["img_per_s"])
        rows = sorted(_rows(folder / "data.csv"), key=lambda r: abs(float(r.get("mean width") or 0) - LOADER_WIDTH))
        for loader, column in LOADER_COLUMNS.items():
            if rows and rows[0].get(column):
                loaders[loader] = float(rows[0][column])
        return cls(tflops, folder, steps, loaders)

    def of_run(self, cfg, forward_macs: int, cpus_per_task: int) -> RunSpeed:
        """How fast one device trains the run of ``cfg`` (a resolved config) on this cluster."""
        path = attention_path(cfg.attention)
        modes = ("eager",) if cfg.trainer.compile is False else ("compiled", "eager")  # auto: compiled on a GPU
        measured = next((self.steps[key] for mode in modes if (key := (cfg.model.variant, path, mode)) in self.steps),
                        None)
        if measured is not None:
            speed, source = measured, MEASURED
        elif self.tflops:
            speed, source = self.tflops * 1e12 / (6 * forward_macs), TFLOPS
        else:
            return RunSpeed(None, UNKNOWN)
        loader = self._loader(cfg.data, cpus_per_task)
        return RunSpeed(min(speed, loader), source, True) if loader and loader < speed else RunSpeed(speed, source)

    def _loader(self, data, cpus_per_task: int) -> float | None:
        """The measured images/s per device of the run's data loader; None for data held in memory or not measured."""
        if data.dataset == "shards" and data.loader != "reference" and "dali" in self.loaders:
            return self.loaders["dali"]  # per GPU
        loader = {"imagefolder": "imagefolder", "shards": "reference"}.get(data.dataset)
        per_core = self.loaders.get(loader)
        return per_core * cpus_per_task if per_core else None

    def describe(self, unit: str) -> str:
        """What the estimate's speeds come from, one line."""
        tflops = f"the profile's gpu_tflops ({self.tflops:g} TFLOP/s per {unit})" if self.tflops else "nothing"
        if self.folder is None:
            return f"speed: {tflops} (no measured images/s: set the profile's gpu to a folder of results/bench/)"
        loaders = ", ".join(f"{name} {speed:,.0f}" for name, speed in self.loaders.items()) or "none"
        return (f"speed: images/s measured in {self.folder}/train_step.csv ({len(self.steps)} model x attention x "
                f"mode rows), else {tflops}; capped by the loaders' images/s of data.csv ({loaders})")


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))

"""What a sweep costs before it runs. A run trains epochs x training-set size examples (fewer with
``trainer.max_steps``) at the images/s per device of :mod:`reluvit.sweep.speed`: measured on the cluster's GPU where
``make device-check`` measured the run's model and attention, else the profile's achieved ``gpu_tflops`` at 6 x
forward MACs (:func:`reluvit.models.forward_macs`) FLOPs per example; capped by the data loader's measured images/s.
Its devices share the work evenly.

Wall time: SLURM starts an array's jobs in order, at most ``array_parallelism`` at a time, each as soon as a running
one ends; the arrays of a sweep run side by side. Queue waits, requeue restarts and evaluation are not counted, and
the cluster is assumed to have room for every array at its limit: the wall time is a lower bound.

Disk: a run keeps one checkpoint, ``checkpoints/last.ckpt`` (:func:`checkpoint_bytes`); its logs (train.log, CSV,
W&B) are small beside it and not counted.

What the estimate reads from the model and data code (:class:`ModelCost`, an embedded dataset's images) needs torch,
timm or the datasets' packages, seconds to import: it is read once and kept on disk, so that a dry run shown before
imports none of them."""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reluvit.cache import environment_digest, read_cached, write_cached
from reluvit.data.embedded import EMBEDDED
from reluvit.data.splits import parse_split
from reluvit.run.build import architecture
from reluvit.run.compose import Progress
from reluvit.sweep.speed import MEASURED, TFLOPS, Speed


def _cache_key(*parts) -> str:
    """Of a value read from the model or data code: what it was read from, and the code, packages and machine it was
    read with (:func:`reluvit.cache.environment_digest`: ``trainer.precision=auto`` depends on the GPUs)."""
    return hashlib.sha256(json.dumps([*parts, environment_digest()]).encode()).hexdigest()


@functools.cache
def _embedded_images(name: str, path: str | None, split_seed: int, val_size: int | None) -> int:
    """The training images of embedded dataset ``name``, loaded once and then read back from disk."""
    key = _cache_key("embedded training images", name, path, split_seed, val_size)
    count = read_cached("cost", key)
    if not isinstance(count, int):
        from reluvit.data.embedded import load, validation_split

        count = len(validation_split(load(name, path, split_seed), val_size, split_seed)[0])
        write_cached("cost", key, count)
    return count


def _shard_images(path: str) -> int | None:
    """The training images the shards' ``_info.json`` counts; None without one."""
    info = Path(path) / "_info.json"
    train = json.loads(info.read_text()).get("splits", {}).get("train", {}) if info.is_file() else {}
    return train.get("num_samples")


def train_images(data: DictConfig) -> int | None:
    """Training images per epoch: what the data itself holds (an embedded dataset, the ``data.train_split`` of shards
    with their ``_info.json``), else ``data.num_samples``; None when neither says."""
    if data.dataset in EMBEDDED:
        return _embedded_images(data.dataset, data.path, data.split_seed, data.val_size)
    counted = _shard_images(data.path) if data.dataset == "shards" and data.path else None
    if not counted:
        return data.num_samples
    lo, hi = parse_split(data.train_split).bounds(counted)  # train[:99%]: the slice trained on
    return hi - lo


def examples_trained(cfg: DictConfig) -> int | None:
    """Examples a run trains on: epochs x training images, or fewer with ``trainer.max_steps``."""
    images = train_images(cfg.data)
    if images is None:
        return None
    examples = cfg.recipe.epochs * images
    if cfg.trainer.max_steps > 0:
        examples = min(examples, cfg.trainer.max_steps * cfg.recipe.batch_size)
    return examples


def device_hours(cfg: DictConfig, images_per_second: float) -> float | None:
    """Device-hours a run needs at ``images_per_second`` per device; None when its training-set size is unknown."""
    examples = examples_trained(cfg)
    if examples is None:
        return None
    return examples / images_per_second / 3600


def makespan(durations: list[float], parallelism: int) -> float:
    """Wall time of jobs started in order, at most ``parallelism`` at a time, each when a running one ends."""
    ends = [0.0] * min(parallelism, len(durations))  # a heap: the earliest end first
    for duration in durations:
        heapq.heapreplace(ends, ends[0] + duration)
    return max(ends, default=0.0)


# What a checkpoint holds beside the parameters' tensors: the loops' and callbacks' state (the RNG states, ~16 kB),
# hyper-parameters, the scheduler (20 kB measured for micro4). Left out: a few hundred bytes of serialisation per
# tensor (3 % of a micro4 checkpoint, 0.1 % of an S/16 one).
CHECKPOINT_EXTRAS = 20_000
PRUNED = "once the finished runs drop their optimizer state (reluvit prune)"


@dataclass(frozen=True)
class CheckpointBytes:
    weights: int  # the model's state_dict, at the parameters' dtype
    optimizer: int  # AdamW's exp_avg and exp_avg_sq, at the same dtype

    @property
    def whole(self) -> int:
        """What training writes: enough to resume."""
        return self.weights + self.optimizer + CHECKPOINT_EXTRAS

    @property
    def pruned(self) -> int:
        """After :func:`reluvit.run.checkpoint.drop_optimizer_state`: enough to evaluate."""
        return self.weights + CHECKPOINT_EXTRAS


@dataclass(frozen=True)
class ModelCost:
    """What a run's estimate reads of its model."""

    forward_macs: int
    checkpoint: CheckpointBytes

    @classmethod
    def read(cls, cfg: DictConfig) -> ModelCost:
        """From the model code: :func:`reluvit.models.forward_macs`, and the parameters that
        :class:`reluvit.run.memory.TrainingStep` counts at the run's precision (the same on any device)."""
        from reluvit.models import forward_macs
        from reluvit.run.build import resolve_precision
        from reluvit.run.memory import TrainingStep

        arguments = architecture(cfg)
        step = TrainingStep.of(arguments, resolve_precision(cfg), "cpu")
        checkpoint = CheckpointBytes(step.vit.params * step.precision.param, step.optimizer_states())
        return cls(forward_macs(**arguments), checkpoint)


def _model_key(cfg: DictConfig) -> str:
    """What :meth:`ModelCost.read` reads of a config: the model's arguments, and the trainer (the precision, and the
    accelerator that ``auto`` resolves it by)."""
    return json.dumps([architecture(cfg), OmegaConf.to_container(cfg.trainer, resolve=True)], sort_keys=True)


def model_costs(cfgs: list[DictConfig]) -> list[ModelCost]:
    """The :class:`ModelCost` of each config: read once per model, and kept on disk as one entry for all of them (a
    sweep's dry run reads them back at once). Reading them imports torch and builds models: its progress is logged."""
    keys = [_model_key(cfg) for cfg in cfgs]
    models = dict(zip(keys, cfgs, strict=True))
    entry = _cache_key("model costs", sorted(models))
    costs = read_cached("cost", entry)
    if not (isinstance(costs, dict) and costs.keys() == models.keys()):
        with Progress("estimating the cost of", len(cfgs)) as progress:
            progress.stage("models read", len(models))
            costs = {}
            for key, cfg in models.items():
                costs[key] = ModelCost.read(cfg)
                progress.advance()
        write_cached("cost", entry, costs)
    return [costs[key] for key in keys]


def checkpoint_bytes(cfg: DictConfig) -> CheckpointBytes:
    """The size of a run's ``last.ckpt`` (:class:`ModelCost`)."""
    return model_costs([cfg])[0].checkpoint


@dataclass(frozen=True)
class ArrayCost:
    jobs: int
    device_hours: float | None  # of the jobs whose cost is known; None: no speed for any
    unknown: int  # jobs whose training-set size or speed is unknown (left out of the hours)
    longest_hours: float  # wall time of the longest job
    wall_hours: float  # of the whole array
    checkpoints: int  # bytes of the array's checkpoints once its runs end
    pruned_checkpoints: int  # the same without the optimizer state (reluvit prune)
    largest_checkpoint: int
    sources: Counter = field(default_factory=Counter)  # jobs by where their speed came from (reluvit.sweep.speed)
    loader_bound: int = 0  # jobs whose speed the data loader caps

    def starts(self, timeout_min: int) -> int:
        """Starts (the first and its requeues) that the longest job needs at this time limit per job."""
        return math.ceil(self.longest_hours * 60 / timeout_min)

    def describe(self, unit: str, timeout_min: int) -> str:
        if self.device_hours is None:
            return "none: no measured images/s and no gpu_tflops in the profile"
        starts = plural(self.starts(timeout_min), "start")
        return (f"{_hours(self.device_hours)} {unit}-hours ({priced(self.sources, self.loader_bound)}); longest job "
                f"{_hours(self.longest_hours)} h ({starts} of at most {timeout_min} min); wall "
                f"{_hours(self.wall_hours)} h" + _unknown(self.unknown))

    def disk(self) -> str:
        return (f"{byte_size(self.checkpoints)} (up to {byte_size(self.largest_checkpoint)} a run); "
                f"{byte_size(self.pruned_checkpoints)} {PRUNED}")


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def byte_size(count: float) -> str:
    """Bytes in decimal units to three digits: 1.32 MB, 121 GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 999.5:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB" if count < 999.5 else f"{count:,.0f} TB"


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def _unknown(jobs: int) -> str:
    return (f"; {plural(jobs, 'job')} not counted: no training-set size (set data.num_samples) or no speed"
            if jobs else "")


def priced(sources: Counter, loader_bound: int) -> str:
    """How many jobs each speed source priced: ``40 measured, 8 at TFLOP/s; 2 capped by the loader``."""
    text = ", ".join(f"{sources[source]} {'at ' * (source == TFLOPS)}{source}" for source in (MEASURED, TFLOPS)
                     if sources[source])
    return text + (f"; {loader_bound} capped by the loader" if loader_bound else "")


def array_cost(cfgs: list[DictConfig], devices_per_job: int, parallelism: int, speed: Speed,
               cpus_per_task: int) -> ArrayCost:
    """The cost of one job array of runs that each get ``devices_per_job`` devices at ``speed``."""
    models = model_costs(cfgs)
    speeds = [speed.of_run(cfg, model.forward_macs, cpus_per_task) for cfg, model in zip(cfgs, models, strict=True)]
    hours = [device_hours(cfg, s.images_per_second) if s.images_per_second else None
             for cfg, s in zip(cfgs, speeds, strict=True)]
    known = [h for h in hours if h is not None]
    walls = [h / devices_per_job for h in known]
    checkpoints = [model.checkpoint for model in models]
    return ArrayCost(len(cfgs), sum(known) if known else None, len(hours) - len(known), max(walls, default=0.0),
                     makespan(walls, parallelism), sum(c.whole for c in checkpoints),
                     sum(c.pruned for c in checkpoints), max((c.whole for c in checkpoints), default=0),
                     Counter(s.source for s, h in zip(speeds, hours, strict=True) if h is not None),
                     sum(s.loader_bound for s in speeds))


def total(arrays: list[ArrayCost], unit: str) -> str:
    """The sweep's jobs, device-hours and wall time (its arrays side by side), and what the wall time leaves out."""
    jobs = sum(a.jobs for a in arrays)
    if all(a.device_hours is None for a in arrays):
        return f"{jobs} jobs; no estimate: no measured images/s and no gpu_tflops in the profile"
    wall = max((a.wall_hours for a in arrays), default=0.0)
    sources = sum((a.sources for a in arrays), Counter())
    return (f"{jobs} jobs, {_hours(sum(a.device_hours or 0 for a in arrays))} {unit}-hours "
            f"({priced(sources, sum(a.loader_bound for a in arrays))}), wall {_hours(wall)} h "
            f"({wall / 24:,.1f} days)" + _unknown(sum(a.unknown for a in arrays))
            + "\n  (wall: every array at its limit, side by side; queue waits, requeues and evaluation not counted)")


def disk(arrays: list[ArrayCost]) -> str:
    """The sweep's checkpoints, as they are and with the optimizer state of the finished runs dropped."""
    return (f"{byte_size(sum(a.checkpoints for a in arrays))}; "
            f"{byte_size(sum(a.pruned_checkpoints for a in arrays))} {PRUNED}")

"""Compute accounting after big_vision's ``utils.Chrono``: training wall time measured step end to step end (so
data loading counts), with evaluation and the first steps of every (re)start (compilation, cache warm-up) left out.
``core_hours`` is that time x the number of devices / 3600, accumulated across restarts through the checkpoint, and
so is ``warmup_seconds``, the wall time of the steps left out (with trainer.compile, mostly compilation)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class Chrono(pl.Callback):
    """Logs ``core_hours``, ``examples_seen``, ``train_flops`` (analytic) and ``img_per_sec_per_device``; the
    summary adds ``train_seconds`` and ``warmup_seconds``.

    Args:
        flops_per_example: analytic training FLOPs of one example (6 x forward MACs).
        skip_first: step intervals not counted after each process start (big_vision skips 2 ticks).
    """

    def __init__(self, flops_per_example: float = 0.0, skip_first: int = 2) -> None:
        self.flops_per_example = flops_per_example
        self.skip_first = skip_first
        self.core_seconds = 0.0  # sum over counted intervals of wall time x world size
        self.train_seconds = 0.0
        self.warmup_seconds = 0.0  # wall time of the first skip_first steps of every start, not in core_seconds
        self.examples_seen = 0
        self._last: float | None = None  # time of the previous step end (or of training start), None while paused
        self._ticks = 0  # step ends seen since this process started

    @property
    def core_hours(self) -> float:
        return self.core_seconds / 3600.0

    def state_dict(self) -> dict:
        return {"core_seconds": self.core_seconds, "train_seconds": self.train_seconds,
                "warmup_seconds": self.warmup_seconds, "examples_seen": self.examples_seen}

    def load_state_dict(self, state: dict) -> None:
        self.core_seconds = state["core_seconds"]
        self.train_seconds = state["train_seconds"]
        self.warmup_seconds = state.get("warmup_seconds", 0.0)  # absent from checkpoints written before it existed
        self.examples_seen = state["examples_seen"]

    @staticmethod
    def _now(pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # time the work, not its queueing
        return time.perf_counter()

    def _elapse(self, trainer, now: float) -> float | None:
        """Book the time since ``_last``: training once the first steps are done, warm-up before; the counted
        interval, or None."""
        if self._last is None:
            return None
        interval = now - self._last
        if self._ticks < self.skip_first:
            self.warmup_seconds += interval
            return None
        self.train_seconds += interval
        self.core_seconds += interval * trainer.world_size
        return interval

    def on_train_start(self, trainer, pl_module) -> None:
        self._last = self._now(pl_module)  # the first step's interval (its compilation) is warm-up

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._now(pl_module)
        per_device = len(batch[0])
        self.examples_seen += per_device * trainer.world_size
        metrics = {"core_hours": self.core_hours}
        if (interval := self._elapse(trainer, now)) is not None:
            metrics["img_per_sec_per_device"] = per_device / interval
        self._ticks += 1
        self._last = now
        # only on the steps Lightning writes: log_dict costs milliseconds per call, a lot for a small model's step
        if trainer.global_step % trainer.log_every_n_steps == 0:
            metrics.update(core_hours=self.core_hours, examples_seen=float(self.examples_seen),
                           train_flops=self.examples_seen * self.flops_per_example)
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        """Pause: the time since the last step end was training (epoch-end hooks); evaluation is not."""
        self._elapse(trainer, self._now(pl_module))
        self._last = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self._ticks:
            self._last = self._now(pl_module)

    def summary(self) -> dict:
        return {"core_hours": self.core_hours, "train_seconds": self.train_seconds,
                "warmup_seconds": self.warmup_seconds, "examples_seen": self.examples_seen,
                "train_flops": self.examples_seen * self.flops_per_example}

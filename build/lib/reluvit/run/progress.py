"""Progress for output that is not a terminal (a SLURM job's log, ``train.log``): a log line every few percent of an
epoch instead of a progress bar redrawn as one line per step."""

from __future__ import annotations

import logging
import math
import time

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class LogProgress(pl.Callback):
    """Logs epoch, batch, step, loss and speed every ``percent`` % of an epoch (every 100 batches when the epoch's
    length is unknown) and at its end."""

    def __init__(self, percent: int = 10) -> None:
        self.percent = percent
        self._since: tuple[float, int] | None = None  # (time, batch) of the last line

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._since = (time.perf_counter(), 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.num_training_batches
        done = batch_idx + 1
        every = max(1, math.ceil(total * self.percent / 100)) if math.isfinite(total) else 100
        if done % every and done != total:
            return
        now, (then, before) = time.perf_counter(), self._since or (time.perf_counter(), 0)
        self._since = (now, done)
        loss = trainer.callback_metrics.get("train/loss")
        length = f"/{total}" if math.isfinite(total) else ""
        log.info("epoch %d/%d  batch %d%s  step %d  loss %s  %.1f batches/s", trainer.current_epoch + 1,
                 trainer.max_epochs, done, length, trainer.global_step,
                 "-" if loss is None else f"{float(loss):.4f}", (done - before) / max(now - then, 1e-9))


class HeartbeatProgress(pl.Callback):
    """Keeps the run's optimizer step and total steps in ``progress``, the dict the run's lock heartbeat records
    (:func:`reluvit.run.lock.hold`), so ``reluvit status`` shows how far a running run is."""

    def __init__(self, progress: dict) -> None:
        self.progress = progress

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = trainer.estimated_stepping_batches
        if (max_steps := pl_module.hparams.get("max_steps", -1)) > 0:
            total = min(total, max_steps)
        self.progress.update(step=trainer.global_step, total=int(total) if math.isfinite(total) else None)

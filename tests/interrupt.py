"""Train one run in this process and interrupt it at a chosen point (used by tests/test_resume.py as a subprocess).

    python tests/interrupt.py '<overrides as JSON>' <kind> <where> <at>

kind: ``kill`` (SIGKILL: nothing runs after it, as a lost node or the OOM killer) | ``usr2`` (the requeue signal:
the run checkpoints at the next step boundary and exits, as under submitit) | ``term`` (SIGTERM outside SLURM: the
same) | ``none`` (train, or resume, to the end).
where/at: ``step N`` (after optimizer step N) | ``validation N`` (inside the validation that follows step N) |
``epoch_end N`` (at the end of epoch N's training batches, before its checkpoint) | ``checkpoint N`` (halfway
through writing the N-th checkpoint file, 1-based) | ``fewshot N`` (inside the N-th few-shot probe).
With ``RELUVIT_TRACE_BATCHES=<file>`` each training batch's labels are appended to that file as a JSON line
``[epoch, batch_idx, labels]`` as the batch starts (the order of the samples trained, whatever their augmentations).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

import pytorch_lightning as pl
import torch

from reluvit.run import train
from reluvit.run.callbacks import FewshotProbe
from reluvit.run.compose import compose

SIGNALS = {"kill": signal.SIGKILL, "usr2": signal.SIGUSR2, "term": signal.SIGTERM}


def interrupt(kind: str) -> None:
    os.kill(os.getpid(), SIGNALS[kind])


class Interrupt(pl.Callback):
    def __init__(self, kind: str, where: str, at: int) -> None:
        self.kind, self.where, self.at, self.fired = kind, where, at, False

    def _fire(self, where: str, value: int) -> None:
        if not self.fired and where == self.where and value == self.at:
            self.fired = True
            interrupt(self.kind)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._fire("step", trainer.global_step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._fire("validation", trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._fire("epoch_end", trainer.current_epoch)


class TraceBatches(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps([trainer.current_epoch, batch_idx, batch[1].tolist()]) + "\n")


def patch_checkpoint_writes(kind: str, at: int) -> None:
    """The ``at``-th file torch.save writes gets half its bytes, then the interruption."""
    save, calls = torch.save, []

    def half_then_interrupt(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) != at or not isinstance(f, str | os.PathLike):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        interrupt(kind)
        return save(obj, f, *args, **kwargs)  # usr2: the signal is only recorded, the write completes

    torch.save = half_then_interrupt


def patch_probe(kind: str, at: int) -> None:
    probe, calls = FewshotProbe.probe, []

    def probe_then_interrupt(self, trainer, module):
        calls.append(1)
        if len(calls) == at:
            interrupt(kind)
        return probe(self, trainer, module)

    FewshotProbe.probe = probe_then_interrupt


def main(overrides: str, kind: str, where: str, at: str) -> None:
    cfg = compose(json.loads(overrides))
    callbacks = [TraceBatches(os.environ["RELUVIT_TRACE_BATCHES"])] if "RELUVIT_TRACE_BATCHES" in os.environ else []
    if kind != "none":
        if where == "checkpoint":
            patch_checkpoint_writes(kind, int(at))
        elif where == "fewshot":
            patch_probe(kind, int(at))
        callbacks.append(Interrupt(kind, where, int(at)))
    setup = train.setup

    def setup_with_callbacks(cfg, run_dir, progress=None):
        parts = setup(cfg, run_dir, progress)
        parts[2].callbacks.extend(callbacks)
        return parts

    train.setup = setup_with_callbacks
    train.run(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Preemption and time-outs inside a job: one owner of the signal, a checkpoint at a step boundary.

Under submitit the job receives USR2 before it is preempted or times out, and submitit's own handler requeues it
(calling the job's ``checkpoint``) and exits. Saving inside a signal handler can hang or corrupt the file, and
Lightning's own SLURM requeue is switched off (``SLURMEnvironment(auto_requeue=False)``), so this callback takes
the signal over: the handler only records it; at the next optimizer-step boundary all ranks agree, ``last.ckpt`` is
written atomically (model, optimizer, schedule, loop counters, callbacks' state such as ``core_hours``), and the
handler that was there before (submitit's) is called. The requeued job resumes from that checkpoint at that step,
with the random number generators' states saved in every checkpoint (mixup draws continue as if uninterrupted).

Outside a submitit job SIGTERM (what a terminal, ``docker stop`` or a workstation's scheduler sends) is taken the
same way: a checkpoint at the next step boundary, then exit status 143 with the run ``interrupted``; running it again
resumes. Inside one submitit ignores SIGTERM so that the USR2 requeue works, and it is left alone
(:func:`stop_signals`).

Not at an epoch's last step: Lightning (2.6) restores a checkpoint saved there without counting the next epoch as
started, so a second interruption within that epoch would replay it from its start. A signal that comes then is
answered at the next epoch's first step; one that comes after the last step of the run is handed over when the fit
ends, and the requeued job resumes from the last checkpoint written (the final epoch's; an earlier epoch's when
``max_steps`` ended the fit mid-epoch, whose last steps are then trained again, to the same weights).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch


def stop_signals() -> tuple[int, ...]:
    """The signals a run checkpoints and stops on: USR2 (submitit's requeue), and SIGTERM outside a submitit job."""
    return (signal.SIGUSR2,) if os.environ.get("SUBMITIT_EXECUTOR") else (signal.SIGUSR2, signal.SIGTERM)


class CheckpointOnSignal(pl.Callback):
    def __init__(self, path: Path, signums: tuple[int, ...] = (signal.SIGUSR2,)) -> None:
        self.path, self.signums = Path(path), tuple(signums)
        self._previous: dict[int, object] = {}  # the handlers there were, by signal
        self._sigterm = None  # SIGTERM's handler before Lightning's
        self._received = None  # (signum, frame) of a pending signal

    def state_dict(self) -> dict:
        # tensors and plain Python values only: checkpoints are loaded with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                          has_gauss, gauss],
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _record(self, signum, frame) -> None:
        self._received = (signum, frame)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._previous = {signum: signal.signal(signum, self._record) for signum in self.signums
                          if signum != signal.SIGTERM}
        self._sigterm = signal.getsignal(signal.SIGTERM)  # before Lightning adds its own (after on_fit_start)

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning's SIGTERM handler stops the fit at the next batch (exit status 0, no checkpoint). Where SIGTERM is
        # a stop signal this one replaces it; in a submitit job the handler that was there comes back (submitit's,
        # which ignores SIGTERM so that the USR2 that follows a preemption's SIGTERM checkpoints and requeues)
        if signal.SIGTERM in self.signums:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._record)
        else:
            signal.signal(signal.SIGTERM, self._sigterm)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()
        if trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            self._hand_over()  # see the module's docstring

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # accumulated gradients are not saved
        if not stepped or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # see the module's docstring
            return
        if trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            trainer.save_checkpoint(self.path, weights_only=False)  # every rank; rank 0 writes (atomically)
            self._restore()
            self._hand_over()

    def _hand_over(self) -> None:
        (signum, frame), self._received = self._received or (self.signums[0], None), None
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR2 and callable(previous):
            previous(signum, frame)  # submitit: requeue, then exit
        raise SystemExit(128 + signum)  # no one to requeue: stop here, the next start resumes

"""Preemption inside a job: the signal is taken at the next step boundary, the run is checkpointed there, and the
restarted run finishes with exactly the weights and metrics of an uninterrupted run."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from conftest import checkpoint_weights
from reluvit.run.module import ViTClassifier
from reluvit.run.rundir import read_summary
from reluvit.run.train import run

# 1500 training images at batch 128: 11 steps per epoch; mixup on, so the RNG state must survive the restart too
BASE = ("recipe.epochs=2", "recipe.batch_size=128", "trainer.deterministic=true",
        "recipe.augment.default.mixup=0.4")


# mid-epoch 0, the first step of epoch 1, mid-epoch 1 (tests/test_resume.py interrupts at many more points)
@pytest.mark.parametrize("signal_at_step", [4, pytest.param(11, marks=pytest.mark.slow),
                                            pytest.param(15, marks=pytest.mark.slow)])
def test_preempted_run_resumes_exactly(tiny_cfg, tmp_path, monkeypatch, signal_at_step):
    reference = run(tiny_cfg(*BASE, f"runs_dir={tmp_path / 'reference'}"))

    requeues = []

    def submitit_handler(signum, frame):  # stands in for submitit: requeue, then exit
        requeues.append(signum)
        raise SystemExit(-1)

    def preempt_during_a_step(self, batch, batch_idx):
        if self.global_step == signal_at_step and not requeues:
            os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    monkeypatch.setattr(ViTClassifier, "on_train_batch_start", preempt_during_a_step, raising=False)
    cfg = tiny_cfg(*BASE, f"runs_dir={tmp_path / 'preempted'}")
    try:
        with pytest.raises(SystemExit):
            run(cfg)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert requeues == [signal.SIGUSR2]
    interrupted = read_summary(cfg.run_dir)
    assert interrupted["status"] == "running"  # requeued, not failed
    assert interrupted["global_step"] == signal_at_step + 1  # checkpointed at the end of that step

    resumed = run(cfg)
    assert resumed["status"] == "completed" and resumed["global_step"] == reference["global_step"] == 22
    assert resumed["examples_seen"] == reference["examples_seen"]
    assert resumed["metrics"]["val/acc"] == reference["metrics"]["val/acc"]
    assert resumed["metrics"]["train/loss"] == reference["metrics"]["train/loss"]
    ref_w, res_w = checkpoint_weights(reference["run_dir"]), checkpoint_weights(cfg.run_dir)
    assert ref_w.keys() == res_w.keys()
    assert all(torch.equal(ref_w[k], res_w[k]) for k in ref_w)

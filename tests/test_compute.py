"""Chrono's accounting rules, the learning-rate schedule and mixup, against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from reluvit.run import compute
from reluvit.run.compute import Chrono
from reluvit.run.module import mixup, warmup_cosine


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(compute.time, "perf_counter", c)
    return c


def hooks(world_size=2, log_every_n_steps=1):
    logged = []
    trainer = SimpleNamespace(world_size=world_size, sanity_checking=False, global_step=0,
                              log_every_n_steps=log_every_n_steps)
    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: logged.append(m))
    return trainer, module, logged


def step(chrono, trainer, module, clock, seconds, batch=8):
    clock.t += seconds
    trainer.global_step += 1  # the optimizer has stepped when the hook runs
    chrono.on_train_batch_end(trainer, module, None, (torch.zeros(batch),), 0)


def test_chrono_skips_warmup_and_evaluation(clock):
    chrono = Chrono(flops_per_example=10.0, skip_first=2)
    trainer, module, logged = hooks(world_size=2)
    for seconds in (50.0, 30.0, 1.0, 1.0):  # tick 0 sets the origin; interval of tick 1 (30 s) is warm-up
        step(chrono, trainer, module, clock, seconds)
    assert chrono.train_seconds == pytest.approx(2.0)
    clock.t += 0.5
    chrono.on_validation_start(trainer, module)  # the 0.5 s of epoch end counts
    clock.t += 1000.0  # evaluation does not
    chrono.on_validation_end(trainer, module)
    step(chrono, trainer, module, clock, 1.0)
    assert chrono.train_seconds == pytest.approx(3.5)
    assert chrono.core_hours == pytest.approx(3.5 * 2 / 3600)  # x world size
    assert chrono.examples_seen == 5 * 8 * 2
    assert chrono.summary()["train_flops"] == pytest.approx(80 * 10.0)
    assert logged[-1]["img_per_sec_per_device"] == pytest.approx(8.0)


def test_chrono_logs_only_on_the_steps_lightning_writes(clock):
    chrono = Chrono(skip_first=0)
    trainer, module, logged = hooks(log_every_n_steps=3)
    for _ in range(7):
        step(chrono, trainer, module, clock, 1.0)
    assert [m["examples_seen"] for m in logged] == [3 * 16.0, 6 * 16.0]  # steps 3 and 6
    assert chrono.train_seconds == pytest.approx(6.0)  # the accounting itself runs every step


def test_chrono_state_survives_restart(clock):
    trainer, module, _ = hooks(world_size=1)
    first = Chrono(skip_first=0)
    for _ in range(4):
        step(first, trainer, module, clock, 2.0)
    restarted = Chrono(skip_first=2)
    restarted.load_state_dict(first.state_dict())
    for seconds in (100.0, 100.0, 100.0, 3.0):  # a new process: its first intervals are warm-up again
        step(restarted, trainer, module, clock, seconds)
    assert restarted.train_seconds == pytest.approx(6.0 + 100.0 + 3.0)
    assert restarted.examples_seen == 8 * 8


def test_warmup_is_recorded_apart_and_accumulates(clock):
    """From training start to the end of the skipped steps (the first step compiles), at every start."""
    trainer, module, _ = hooks(world_size=2)
    first = Chrono(skip_first=2)
    first.on_train_start(trainer, module)
    for seconds in (50.0, 30.0, 1.0, 1.0):
        step(first, trainer, module, clock, seconds)
    assert (first.warmup_seconds, first.train_seconds, first.core_seconds) == pytest.approx((80.0, 2.0, 4.0))
    restarted = Chrono(skip_first=2)
    restarted.load_state_dict(first.state_dict())
    clock.t += 7.0  # before training starts (setup, checkpoint loading): not counted
    restarted.on_train_start(trainer, module)
    for seconds in (20.0, 5.0, 1.0):
        step(restarted, trainer, module, clock, seconds)
    assert restarted.summary()["warmup_seconds"] == pytest.approx(80.0 + 25.0)
    assert restarted.train_seconds == pytest.approx(3.0)
    old = {k: v for k, v in first.state_dict().items() if k != "warmup_seconds"}  # a checkpoint from before it
    restarted.load_state_dict(old)
    assert restarted.warmup_seconds == 0.0


def test_sanity_check_does_not_start_the_clock(clock):
    chrono = Chrono(skip_first=0)
    trainer, module, _ = hooks()
    trainer.sanity_checking = True
    chrono.on_validation_start(trainer, module)
    chrono.on_validation_end(trainer, module)
    clock.t += 500.0
    step(chrono, trainer, module, clock, 1.0)
    assert chrono.train_seconds == 0.0


@pytest.mark.parametrize("step_, expected", [(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0), (120, 0.0)])
def test_warmup_cosine(step_, expected):
    assert warmup_cosine(step_, warmup_steps=10, total_steps=100) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_midway_cosine():
    value = warmup_cosine(10 + 30, warmup_steps=10, total_steps=100)
    assert value == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 90)))


def test_mixup_weights_original_more():
    torch.manual_seed(0)
    images = torch.eye(4).reshape(4, 1, 2, 2)
    targets = torch.eye(4)
    mixed, mixed_targets = mixup(images, targets, p=0.5)
    lam = mixed_targets[0, 0].item()
    assert 0.5 <= lam <= 1.0
    assert torch.allclose(mixed_targets, lam * targets + (1 - lam) * targets.roll(1, 0))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    assert torch.allclose(mixed_targets.sum(-1), torch.ones(4))


def test_epoch_end_interval_follows_the_same_warmup_rule(clock):
    """The time from the last step end to validation counts exactly when a next step's interval would."""
    trainer, module, _ = hooks(world_size=1)
    for skipped, steps in ((True, 1), (False, 2)):
        chrono = Chrono(skip_first=2)
        for _ in range(steps):
            step(chrono, trainer, module, clock, 1.0)
        clock.t += 5.0
        chrono.on_validation_start(trainer, module)
        assert chrono.train_seconds == (0.0 if skipped else 5.0)

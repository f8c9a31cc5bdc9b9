"""Shared fixtures: configs composed from the real ``conf/`` with small, CPU-only overrides."""

from __future__ import annotations

import pytest

from reluvit.config import compose

# A seconds-scale run: the digits dataset (8x8, patch 2 -> L = 16), the mini ViT, a handful of steps.
TINY = [
    "model=mini2", "data=digits", "recipe=smoke", "recipe.batch_size=64", "recipe.warmup_steps=5",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
]


@pytest.fixture
def tiny_cfg(tmp_path):
    """compose(TINY + extra overrides) with runs under a temporary directory."""

    def make(*overrides: str):
        return compose([*TINY, f"runs_dir={tmp_path / 'runs'}", *overrides])

    return make

"""Random draws per training sample: a sample's augmentation (Inception crop, flip, RandAugment) is drawn from
generators seeded by the sample's key, never by the loader worker that happens to transform it, so every batch is
the same for any ``data.num_workers`` and a resumed epoch draws what the interrupted one would have.

The keys: ``(seed, epoch, index)`` for a map-style set (:class:`reluvit.data.datamodules.SeededSamples`), ``(seed,
epoch, rank, slot, position in slot)`` for a shard stream (:class:`reluvit.data.stream.ShardStream`). The transforms
draw from the global generators: torch's CPU one (crop box, flip, big_vision's RandAugment), Python's ``random``
and NumPy's legacy one (timm's RandAugment).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info


def key_seed(key: tuple[int, ...]) -> int:
    """A 64-bit seed from a key of integers (any sign or size; distinct keys give unrelated seeds)."""
    return int.from_bytes(hashlib.sha256(repr(tuple(key)).encode()).digest()[:8], "little")


@contextlib.contextmanager
def seeded_draws(key: tuple[int, ...]) -> Iterator[None]:
    """Torch's CPU generator, ``random`` and NumPy's global generator seeded from ``key`` inside. In the training
    process (loading without workers) they are restored after, so that its own draws (mixup) go on as if no sample
    had been transformed; a worker draws nothing else, and saving NumPy's state would cost ~70 us a sample. Only the
    CPU generator: ``torch.manual_seed`` would reseed the CUDA ones too (dropout)."""
    seed = key_seed(key)
    states = None
    if get_worker_info() is None:  # the training process
        states = torch.default_generator.get_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # the legacy generator takes 32-bit words
    try:
        yield
    finally:
        if states is not None:
            torch.default_generator.set_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])

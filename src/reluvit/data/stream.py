"""Streaming webdataset shards into Lightning, correct under DDP and multi-worker loading.

An epoch's stream is every shard in one order that depends only on (seed, epoch). Each (rank, worker) slot reads
its own contiguous range of that stream, so every training sample is read once per epoch across all ranks and
workers; the ranges are whole batches and every rank gets the same number of batches (the last partial global
batch is dropped: no rank waits at a collective for one that has run dry). Within its range a slot shuffles through
a seeded buffer of encoded samples and decodes after it, so a run resumed mid-epoch replays the same order and
skips the batches already trained without decoding them. The epoch length is the loader's, set from
``_info.json``, never counted per worker.

Bad data (an undecodable image, a sample without one, a class id outside the label set, a missing or truncated
shard) is skipped and counted (``data/skipped``); a slot that comes up short repeats its own last good samples so
the batch count stays equal, and the run stops with the count once more than ``max_bad_fraction`` of a slot's
samples were bad. Validation reads every sample exactly once (no shuffle, no drop, ranks and workers take
contiguous ranges).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from reluvit.data.shards import IMAGE_SUFFIXES, read_info

IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)


class BadDataError(RuntimeError):
    pass


class ShardStream(IterableDataset):
    """One split of a shard directory as batches ``(images, labels)`` for rank ``rank`` of ``world``."""

    def __init__(self, root: str | Path, split: str, transform: Callable[[bytes], torch.Tensor], batch_size: int, *,
                 train: bool, num_classes: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01) -> None:
        info = read_info(root)
        if split not in info["splits"]:
            raise ValueError(f"{root}: no split {split!r} in _info.json (it has {', '.join(info['splits'])})")
        self.shards = [(str(Path(root) / s["file"]), s["num_samples"]) for s in info["splits"][split]["shards"]]
        self.total = sum(n for _, n in self.shards)
        self.transform, self.batch_size, self.train, self.num_classes = transform, batch_size, train, num_classes
        self.seed, self.rank, self.world = seed, rank, world
        self.shuffle_buffer, self.max_bad_fraction = shuffle_buffer, max_bad_fraction
        self.epoch, self.done = 0, 0  # set by the loader when an epoch starts
        self._skipped = multiprocessing.Value("q", 0)  # shared with the loader's (forked) workers

    @property
    def skipped(self) -> int:
        return self._skipped.value

    def set_position(self, epoch: int, done: int) -> None:
        """The epoch to stream and the batches of it this rank has already trained (a mid-epoch resume)."""
        self.epoch, self.done = epoch, done

    def __len__(self) -> int:
        if self.train:
            return self.total // (self.batch_size * self.world)
        return sum(math.ceil(n / self.batch_size) for n in self._eval_counts(self._workers()[1]))

    def _workers(self) -> tuple[int, int]:
        worker = get_worker_info()
        return (worker.id, worker.num_workers) if worker else (0, 1)

    def _eval_counts(self, workers: int) -> list[int]:
        """Samples of each of this rank's workers: ranks and workers split the split as evenly as possible."""
        lo, hi = _split(self.total, self.world, self.rank)
        return [b - a for a, b in (_split(hi - lo, workers, w) for w in range(workers))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker, workers = self._workers()
        if self.train:
            yield from self._train_batches(worker, workers)
        else:
            lo, _ = _split(self.total, self.world, self.rank)
            counts = self._eval_counts(workers)
            start, count = lo + sum(counts[:worker]), counts[worker]
            samples = self._decoded(self._raw(list(range(len(self.shards))), start, count),
                                    budget=self.max_bad_fraction * count)
            batch = []
            for sample in samples:
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield _collate(batch)
                    batch = []
            if batch:
                yield _collate(batch)

    def _train_batches(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the loader takes its first batch from worker 0: after `done` batches that is the turn of slot done % workers
        worker = (worker + self.done) % workers
        per_rank = len(self)
        # the loader takes batch i from worker i % workers
        shares = [per_rank // workers + (w < per_rank % workers) for w in range(workers)]
        mine, start = shares[worker], self.rank * per_rank + sum(shares[:worker])
        slot = (self.seed, self.epoch, self.rank, worker)
        if get_worker_info() is not None:  # a worker process: its own augmentation streams for this epoch and slot
            torch.manual_seed(hash(slot) % 2**62)
            random.seed(hash(slot))
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.shards)).tolist()
        raw = _shuffled(self._raw(order, start * self.batch_size, mine * self.batch_size), self.shuffle_buffer,
                        np.random.default_rng(slot))
        skip = max(0, math.ceil((self.done - worker) / workers))  # this worker's batches among those done
        for _ in range(skip * self.batch_size):
            next(raw, None)
        yielded, batch, recent = 0, [], []
        for sample in self._decoded(raw, budget=self.max_bad_fraction * mine * self.batch_size):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield _collate(batch)
                yielded, recent, batch = yielded + 1, batch, []
        # bad samples left this slot short: repeat its own last good ones, so every rank has the same batch count
        pool = itertools.cycle(recent + batch)
        for _ in range(mine - skip - yielded):
            batch += [next(pool) for _ in range(self.batch_size - len(batch))]
            yield _collate(batch)
            batch = []

    def _raw(self, order: list[int], start: int, count: int) -> Iterator[dict | None]:
        """``count`` encoded samples from position ``start`` of the stream of shards in ``order``; None for each
        sample a missing or truncated shard should have held."""
        position = 0
        for i in order:
            path, n = self.shards[i]
            lo, hi = max(start - position, 0), min(start + count - position, n)
            position += n
            if lo >= hi:
                continue
            read = 0
            try:
                with open(path, "rb") as stream:
                    samples = wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(
                        [{"url": path, "stream": stream}], eof_value=None))
                    for j, sample in enumerate(samples):
                        if j >= hi:
                            break
                        if j >= lo:
                            read += 1
                            yield sample
            except (OSError, tarfile.TarError, ValueError):
                pass
            for _ in range(hi - lo - read):  # what the shard should have held
                yield None
            if position >= start + count:
                return

    def _decoded(self, raw: Iterator[dict | None], budget: float) -> Iterator[tuple[torch.Tensor, int]]:
        """Decoded (image, label) pairs; a bad sample is counted and skipped, and more than ``budget`` of them
        stop the run."""
        bad = 0
        for sample in raw:
            try:
                image = next(sample[k] for k in IMAGE_KEYS if k in sample)
                label = int(sample["cls"])
                if not 0 <= label < self.num_classes:
                    raise ValueError(f"class id {label} outside 0..{self.num_classes - 1}")
                yield self.transform(image), label
            except Exception as e:  # noqa: BLE001 - every kind of bad sample is skipped and counted
                bad += 1
                with self._skipped.get_lock():
                    self._skipped.value += 1
                if bad > budget:
                    where = sample.get("__url__") if isinstance(sample, dict) else "a missing or truncated shard"
                    error = "no image in the sample" if isinstance(e, StopIteration | TypeError) else e
                    raise BadDataError(f"{bad} bad samples, more than max_bad_fraction={self.max_bad_fraction} "
                                       f"allows; the last: {error} ({where})") from None


class SkippedSamples(pl.Callback):
    """Logs ``data/skipped``, the bad samples this rank's loaders have skipped so far (data modules that count)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None)
        if skipped is not None:
            pl_module.log("data/skipped", float(skipped))


def _split(total: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous, near-equal ranges of ``range(total)``."""
    return total * i // parts, total * (i + 1) // parts


def _shuffled(samples: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A seeded shuffle buffer: fill to ``size``, then emit a random element for each one read."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([image for image, _ in batch]), torch.tensor([label for _, label in batch])

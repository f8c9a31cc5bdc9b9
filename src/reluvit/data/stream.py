"""Streaming webdataset shards into Lightning, correct under DDP and multi-worker loading.

A stream reads one split of the shards or a slice of it (``train[:99%]``, :mod:`reluvit.data.splits`): the slice is
a range of sample positions across the split's shards in file order, which is the seeded random order ``reluvit
shards`` wrote (every shard mixes all classes), so the first 99 % holds every class in proportion. It may start and
end inside a shard: the stream's piece of that shard is only its part of the slice.

An epoch's stream is every shard (piece) in one order that depends only on (seed, epoch). Each (rank, worker) slot
reads its own contiguous range of that stream, so every training sample is read once per epoch across all ranks and
workers; the ranges are whole batches and every rank gets the same number of batches (the last partial global batch
is dropped: no rank waits at a collective for one that has run dry). Within its range a slot shuffles through a
seeded buffer of encoded samples and decodes after it, so a run resumed mid-epoch replays the same order and skips
the batches already trained without decoding them. The epoch length is the loader's, set from ``_info.json``, never
counted per worker.

Bad data (an undecodable image, a sample without one, a class id outside the label set, a missing or truncated
shard) is skipped and counted (``data/skipped``); a slot that comes up short repeats its own last good samples so
the batch count stays equal, and the run stops with the count once more than ``max_bad_fraction`` of a slot's
samples were bad. A shard holding more samples than ``_info.json`` lists has the surplus counted too, once an
epoch, and logged (by the stream whose slice holds the shard's last listed sample); it is never read, and it does
not count against ``max_bad_fraction``, since the epoch still reads every sample it was planned with.

Validation reads every sample exactly once (no shuffle, no drop): ranks take contiguous ranges, each cut into
whole batches (only its last may be partial) that its workers share as contiguous stretches, so the loader's
length, computed the same in the main process and in a worker, is what the workers together yield.
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from reluvit.data.shards import IMAGE_SUFFIXES, read_info
from reluvit.data.splits import parse_split

IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    pass


class ShardStream(IterableDataset):
    """One split of a shard directory, or a slice of it (``split``: ``val``, ``train[:99%]``), as batches ``(images,
    labels)`` for rank ``rank`` of ``world``. ``target``: a sample's label from its raw webdataset sample (default:
    its class id, checked against ``num_classes``); ``collate``: a batch from its (transformed image, label) pairs
    (default: stacked tensors)."""

    def __init__(self, root: str | Path, split: str, transform: Callable[[bytes], torch.Tensor], batch_size: int, *,
                 train: bool, num_classes: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01,
                 target: Callable[[dict], int] | None = None, collate: Callable[[list], object] | None = None) -> None:
        info = read_info(root)
        selected = parse_split(split)
        if selected.name not in info["splits"]:
            raise ValueError(f"{root}: no split {selected.name!r} in _info.json (it has {', '.join(info['splits'])})")
        listed = info["splits"][selected.name]["shards"]
        self.shards = _pieces([(str(Path(root) / s["file"]), s["num_samples"]) for s in listed],
                              *selected.bounds(sum(s["num_samples"] for s in listed)))
        self.total = sum(piece.count for piece in self.shards)
        self.transform, self.batch_size, self.train, self.num_classes = transform, batch_size, train, num_classes
        self.target, self.collate = target, collate or _collate
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
        lo, hi = _split(self.total, self.world, self.rank)
        return math.ceil((hi - lo) / self.batch_size)

    def _workers(self) -> tuple[int, int]:
        worker = get_worker_info()
        return (worker.id, worker.num_workers) if worker else (0, 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._train_batches if self.train else self._eval_batches
        yield from batches(*self._workers())

    def _eval_batches(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The loader yields every batch of every worker (it goes round the workers until all have run dry), so
        # workers need only hold whole batches, as many together as len() counts. Contiguous stretches rather
        # than every workers-th batch: each worker then reads its shards once, front to back, as in training.
        lo, hi = _split(self.total, self.world, self.rank)
        first, mine = _batch_share(len(self), workers, worker)
        start, stop = (min(lo + b * self.batch_size, hi) for b in (first, first + mine))
        raw = self._raw(list(range(len(self.shards))), start, stop - start, stream_end=self.total)
        batch = []
        for sample in self._decoded(raw, budget=self.max_bad_fraction * (stop - start)):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)

    def _train_batches(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the loader takes its first batch from worker 0: after `done` batches that is the turn of slot done % workers
        worker = (worker + self.done) % workers
        per_rank = len(self)
        first, mine = _batch_share(per_rank, workers, worker)
        start = self.rank * per_rank + first
        slot = (self.seed, self.epoch, self.rank, worker)
        if get_worker_info() is not None:  # a worker process: its own augmentation streams for this epoch and slot
            torch.manual_seed(hash(slot) % 2**62)
            random.seed(hash(slot))
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.shards)).tolist()
        raw = self._raw(order, start * self.batch_size, mine * self.batch_size,
                        stream_end=per_rank * self.world * self.batch_size)
        raw = _shuffled(raw, self.shuffle_buffer, np.random.default_rng(slot))
        skip = max(0, math.ceil((self.done - worker) / workers))  # this worker's batches among those done
        for _ in range(skip * self.batch_size):
            next(raw, None)
        yielded, batch, recent = 0, [], []
        for sample in self._decoded(raw, budget=self.max_bad_fraction * mine * self.batch_size):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                yielded, recent, batch = yielded + 1, batch, []
        # bad samples left this slot short: repeat its own last good ones, so every rank has the same batch count
        pool = itertools.cycle(recent + batch)
        for _ in range(mine - skip - yielded):
            batch += [next(pool) for _ in range(self.batch_size - len(batch))]
            yield self.collate(batch)
            batch = []

    def _raw(self, order: list[int], start: int, count: int, stream_end: int) -> Iterator[dict | None]:
        """``count`` encoded samples from position ``start`` of the stream of shards in ``order``, of which the
        epoch reads the first ``stream_end``; None for each sample a missing or truncated shard should have held."""
        self._count_surplus(order, start, start + count, stream_end)
        position = 0
        for i in order:
            path, _, first, n = self.shards[i]
            lo, hi = max(start - position, 0), min(start + count - position, n)
            position += n
            if lo >= hi:
                continue
            lo, hi = first + lo, first + hi  # positions in the shard's tar
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

    def _count_surplus(self, order: list[int], start: int, stop: int, stream_end: int) -> None:
        """Count as skipped the samples a shard holds beyond its ``num_samples``, for the shards whose length the
        slot reading ``[start, stop)`` checks: those whose last listed sample it reads, and, if it reads the
        epoch's last sample, those that end past it (training drops the partial global batch). One slot per shard,
        so a surplus is counted once an epoch; up front, from the tar headers, so a loader that stops at its
        length still counts it. A shard whose listed end lies past this stream's slice is left to the stream that
        reads that end."""
        end = 0
        for i in order:
            path, listed, first, count = self.shards[i]
            end += count
            if first + count < listed or not start <= min(max(end - 1, 0), stream_end - 1) < stop:
                continue
            surplus = _samples_in(path) - listed
            if surplus > 0:
                log.warning("%s holds %d samples, %d more than _info.json lists; they are skipped", path,
                            listed + surplus, surplus)
                with self._skipped.get_lock():
                    self._skipped.value += surplus

    def _decoded(self, raw: Iterator[dict | None], budget: float) -> Iterator[tuple[torch.Tensor, int]]:
        """Decoded (image, label) pairs; a bad sample is counted and skipped, and more than ``budget`` of them
        stop the run."""
        bad = 0
        for sample in raw:
            try:
                image = next((sample[k] for k in IMAGE_KEYS if k in sample), None) if sample else None
                if image is None:
                    raise ValueError("no image in the sample")
                yield self.transform(image), self._label(sample)
            except Exception as e:  # noqa: BLE001 - every kind of bad sample is skipped and counted
                bad += 1
                with self._skipped.get_lock():
                    self._skipped.value += 1
                if bad > budget:
                    where = sample.get("__url__") if isinstance(sample, dict) else "a missing or truncated shard"
                    error = e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                    raise BadDataError(f"{bad} bad samples, more than max_bad_fraction={self.max_bad_fraction} "
                                       f"allows; the last: {error} ({where})") from None

    def _label(self, sample: dict) -> int:
        if self.target is not None:
            return self.target(sample)
        label = int(sample["cls"])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"class id {label} outside 0..{self.num_classes - 1}")
        return label


class SkippedSamples(pl.Callback):
    """Logs ``data/skipped``, the bad samples this rank's loaders have skipped so far (data modules that count)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        skipped = getattr(trainer.datamodule, "skipped", None)
        if skipped is not None:
            pl_module.log("data/skipped", float(skipped))


class Piece(NamedTuple):
    """The part of one shard a stream reads: ``count`` samples from position ``first`` of the ``listed`` that
    ``_info.json`` lists for it."""

    path: str
    listed: int
    first: int
    count: int


def _pieces(shards: list[tuple[str, int]], lo: int, hi: int) -> list[Piece]:
    """The pieces of ``shards`` (path, listed samples) in file order that hold sample positions ``[lo, hi)``."""
    pieces, offset = [], 0
    for path, listed in shards:
        first, last = max(lo - offset, 0), min(hi - offset, listed)
        if first < last:
            pieces.append(Piece(path, listed, first, last - first))
        offset += listed
    return pieces


def _split(total: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous, near-equal ranges of ``range(total)``."""
    return total * i // parts, total * (i + 1) // parts


def _batch_share(batches: int, workers: int, worker: int) -> tuple[int, int]:
    """(first batch, number of batches) of ``worker``: contiguous stretches, the first ``batches % workers`` one
    batch longer, as the loader takes batch i from worker i % workers until a worker runs dry."""
    shares = [batches // workers + (w < batches % workers) for w in range(workers)]
    return sum(shares[:worker]), shares[worker]


def _samples_in(path: str) -> int:
    """The samples a shard holds, from its tar headers (members grouped by key as webdataset groups them); 0 for
    one that cannot be opened, whose samples are counted as they are read."""
    try:
        with tarfile.open(path) as tar:
            keys = (wds.tariterators.base_plus_ext(m.name)[0] for m in tar if m.isreg())
            return sum(1 for _ in itertools.groupby(k for k in keys if k is not None))
    except (OSError, tarfile.TarError):
        return 0


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

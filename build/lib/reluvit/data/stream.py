"""Streaming webdataset shards into Lightning, correct under DDP and multi-worker loading.

A stream reads one split of the shards or a slice of it (``train[:99%]``, :mod:`reluvit.data.splits`): the slice is
a range of sample positions across the split's shards in file order, which is the seeded random order ``reluvit
shards`` wrote (every shard mixes all classes), so the first 99 % holds every class in proportion. It may start and
end inside a shard: the stream's piece of that shard is only its part of the slice.

An epoch's stream is every shard (piece) in one order that depends only on (seed, epoch). Each rank reads its own
contiguous range of that stream, whole batches, the same number on every rank (the last partial global batch is
dropped: no rank waits at a collective for one that has run dry), so every training sample is read once per epoch
across all ranks. A rank's range is cut into ``stream_slots`` slots (S, a fixed number: ``data.stream_slots``),
contiguous stretches of its batches; batch i of the rank is the next batch of slot i % S. A slot shuffles through
its own buffer of ``ceil(shuffle_buffer / S)`` encoded samples, seeded by (seed, epoch, rank, slot), and decodes
after it, each sample's augmentation drawn from generators seeded by (seed, epoch, rank, slot, its position in the
slot) (:mod:`reluvit.data.seeding`). So the batches depend on the slots, never on the loader's workers: worker w of
W serves the slots s with s % W == (w + done) % W, yielding its batches in increasing batch index, which is the
order the loader takes them in (batch j of the epoch's iteration from worker j % W); W must divide S. A run resumed
mid-epoch (``done`` batches trained) replays the same order and draws, skipping the trained samples undecoded. The
epoch length is the loader's, set from ``_info.json``, never counted per worker.

Bad data (an undecodable image, a sample without one, a class id outside the label set, a missing or truncated
shard) is skipped and counted (``data/skipped``); a slot that comes up short repeats its own last good samples so
the batch count stays equal, and the run stops with the count once more than ``max_bad_fraction`` of a slot's
samples were bad. A shard holding more samples than ``_info.json`` lists has the surplus counted too, once an
epoch, and logged (by the slot, or the validation stream, whose range holds the shard's last listed sample); it is
never read, and it does not count against ``max_bad_fraction``, since the epoch still reads every sample it was
planned with.

Validation reads every sample exactly once (no shuffle, no drop): ranks take contiguous ranges, each cut into
whole batches (only its last may be partial) that its workers share as contiguous stretches, so the loader's
length, computed the same in the main process and in a worker, is what the workers together yield.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from reluvit.data.seeding import seeded_draws
from reluvit.data.shards import IMAGE_SUFFIXES, read_info
from reluvit.data.splits import parse_split
from reluvit.errors import COUNT, check_range

IMAGE_KEYS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)

log = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    pass


class ShardStream(IterableDataset):
    """One split of a shard directory, or a slice of it (``split``: ``val``, ``train[:99%]``), as batches ``(images,
    labels)`` for rank ``rank`` of ``world``. ``target``: a sample's label from its raw webdataset sample (default:
    its class id, checked against ``num_classes``); ``collate``: a batch from its (transformed image, label) pairs
    (default: stacked tensors). Training: ``shuffle_buffer`` encoded samples held across the rank's
    ``stream_slots`` slots."""

    def __init__(self, root: str | Path, split: str, transform: Callable[[bytes], torch.Tensor], batch_size: int, *,
                 train: bool, num_classes: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle_buffer: int = 2000, max_bad_fraction: float = 0.01, stream_slots: int = 24,
                 target: Callable[[dict], int] | None = None, collate: Callable[[list], object] | None = None) -> None:
        check_range("stream_slots", stream_slots, COUNT)
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
        self.shuffle_buffer, self.max_bad_fraction, self.stream_slots = shuffle_buffer, max_bad_fraction, stream_slots
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
        order = list(range(len(self.shards)))
        self._count_surplus(order, start, stop, stream_end=self.total)
        raw = self._raw(order, start, stop - start)
        batch = []
        for sample in self._decoded(raw, budget=self.max_bad_fraction * (stop - start)):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)

    def _train_batches(self, worker: int, workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        check_workers(workers, self.stream_slots)
        per_rank, slots = len(self), self.stream_slots
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.shards)).tolist()
        # the loader takes this iteration's j-th batch, the epoch's batch done + j, from worker j % workers: this
        # worker's batches are i == done + worker (mod workers), held by the slots s == i (mod workers)
        served = {s: self._slot_batches(order, s) for s in range((self.done + worker) % workers, slots, workers)}
        for i in range(self.done + worker, per_rank, workers):
            yield next(served[i % slots])

    def _slot_batches(self, order: list[int], slot: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of this rank's ``slot`` not yet trained. The surplus of its shards is counted now, not when
        the slot is first read: a slot whose batches were all trained before a resume is never read."""
        per_rank = len(self)
        first, count = _batch_share(per_rank, self.stream_slots, slot)
        done = max(0, math.ceil((self.done - slot) / self.stream_slots))  # among its batches slot, slot + S, ...
        start = (self.rank * per_rank + first) * self.batch_size
        self._count_surplus(order, start, start + count * self.batch_size,
                            stream_end=per_rank * self.world * self.batch_size)
        return self._slot_decoded(order, slot, start, count, done)

    def _slot_decoded(self, order: list[int], slot: int, start: int, count: int,
                      done: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The last ``count - done`` of the ``count`` batches of ``slot``, which starts at sample ``start``."""
        key = (self.seed, self.epoch, self.rank, slot)
        raw = _shuffled(self._raw(order, start, count * self.batch_size),
                        math.ceil(self.shuffle_buffer / self.stream_slots), np.random.default_rng(key))
        for _ in range(done * self.batch_size):  # trained before the resume: skipped undecoded
            next(raw, None)
        decoded = self._decoded(raw, budget=self.max_bad_fraction * count * self.batch_size, draws=key,
                                first=done * self.batch_size)
        yielded, batch, recent = 0, [], []
        for sample in decoded:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                yielded, recent, batch = yielded + 1, batch, []
        # bad samples left this slot short: repeat its own last good ones, so every rank has the same batch count
        pool = itertools.cycle(recent + batch)
        for _ in range(count - done - yielded):
            batch += [next(pool) for _ in range(self.batch_size - len(batch))]
            yield self.collate(batch)
            batch = []

    def _raw(self, order: list[int], start: int, count: int) -> Iterator[dict | None]:
        """``count`` encoded samples from position ``start`` of the stream of shards in ``order``; None for each
        sample a missing or truncated shard should have held."""
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
        range ``[start, stop)`` of the stream (a slot's, a validation worker's) checks: those whose last listed
        sample it reads, and, if it reads the epoch's last sample (of ``stream_end``), those that end past it
        (training drops the partial global batch). One range per shard, so a surplus is counted once an epoch; up
        front, from the tar headers, so a loader that stops at its length still counts it. A shard whose listed end
        lies past this stream's slice is left to the stream that reads that end."""
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

    def _decoded(self, raw: Iterator[dict | None], budget: float, draws: tuple[int, ...] | None = None,
                 first: int = 0) -> Iterator[tuple[torch.Tensor, int]]:
        """Decoded (image, label) pairs; a bad sample is counted and skipped, and more than ``budget`` of them
        stop the run. ``draws``: the transform's random draws for the sample at position p of ``raw`` (from
        ``first``) are seeded by ``(*draws, p)``."""
        bad = 0
        for position, sample in enumerate(raw, first):
            try:
                image = next((sample[k] for k in IMAGE_KEYS if k in sample), None) if sample else None
                if image is None:
                    raise ValueError("no image in the sample")
                with seeded_draws((*draws, position)) if draws else contextlib.nullcontext():
                    image = self.transform(image)
                pair = image, self._label(sample)
            except Exception as e:  # noqa: BLE001 - every kind of bad sample is skipped and counted
                bad += 1
                with self._skipped.get_lock():
                    self._skipped.value += 1
                if bad > budget:
                    where = sample.get("__url__") if isinstance(sample, dict) else "a missing or truncated shard"
                    error = e if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                    raise BadDataError(f"{bad} bad samples, more than max_bad_fraction={self.max_bad_fraction} "
                                       f"allows; the last: {error} ({where})") from None
                continue
            yield pair

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


def check_workers(num_workers: int, stream_slots: int) -> None:
    """Each loader worker serves whole slots of a training stream: ``max(num_workers, 1)`` must divide
    ``stream_slots``."""
    check_range("stream_slots", stream_slots, COUNT)
    if stream_slots % max(num_workers, 1):
        allowed = [0, *(n for n in range(1, stream_slots + 1) if stream_slots % n == 0)]
        raise ValueError(f"data.num_workers={num_workers} does not divide data.stream_slots={stream_slots} (each "
                         f"worker serves whole slots of the shard stream): data.num_workers may be "
                         f"{', '.join(map(str, allowed))}")


def _split(total: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous, near-equal ranges of ``range(total)``."""
    return total * i // parts, total * (i + 1) // parts


def _batch_share(batches: int, parts: int, part: int) -> tuple[int, int]:
    """(first batch, number of batches) of ``part`` of ``parts`` (a validation worker, a training slot):
    contiguous stretches, the first ``batches % parts`` one batch longer, as part ``i % parts`` holds batch i when
    batches are taken round the parts until one runs dry."""
    shares = [batches // parts + (p < batches % parts) for p in range(parts)]
    return sum(shares[:part]), shares[part]


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

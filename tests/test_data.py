"""The training sampler: one order per (seed, epoch), sharded across ranks so that the global batches equal a
single-process run's, equal batch counts on every rank, and an exact skip for mid-epoch resume. Slices of the
training split (train[:90%] / train[90%:]): their samples in the shards' file order or a tree's seeded permutation,
training over a slice (once per epoch across ranks and workers, resume) and a boundary shard's accounting."""

from __future__ import annotations

import hashlib
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch

from reluvit.data.datamodules import EpochLoader, EpochSampler, ImageFolderDataModule, training_sampler
from reluvit.data.shards import read_info, write_shards
from reluvit.data.stream import ShardStream


def batches(sampler: EpochSampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def test_order_depends_only_on_seed_and_epoch():
    a = list(EpochSampler(100, 3, 10, 0, 1, lambda: (2, 0)))
    assert a == list(EpochSampler(100, 3, 10, 0, 1, lambda: (2, 0)))
    assert a != list(EpochSampler(100, 3, 10, 0, 1, lambda: (1, 0)))
    assert a != list(EpochSampler(100, 4, 10, 0, 1, lambda: (2, 0)))
    assert sorted(a) == list(range(100))


def test_ranks_together_see_the_single_process_global_batches():
    single = batches(EpochSampler(103, 0, 8, 0, 1, lambda: (5, 0)), 8)
    ranks = [batches(EpochSampler(103, 0, 4, r, 2, lambda: (5, 0)), 4) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 103 // 8  # no rank runs out early: no hang
    for i, global_batch in enumerate(single):
        assert sorted(ranks[0][i] + ranks[1][i]) == sorted(global_batch)


def test_resume_skips_exactly_the_trained_batches():
    full = batches(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 0)), 8)
    resumed = batches(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 5)), 8)
    assert resumed == full[5:]
    shard = batches(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 5)), 4)
    assert shard == batches(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 0)), 4)[5:]
    assert len(EpochSampler(96, 1, 4, 1, 2, lambda: (0, 0))) == 48
    assert torch.equal(torch.tensor(full[0]), torch.tensor(list(EpochSampler(96, 1, 8, 0, 1, lambda: (0, 0)))[:8]))


# --- slices of the training split (train[:90%] / train[90%:]) ------------------------------------------------------
def _identity(data: bytes) -> torch.Tensor:
    """A test 'transform': the sample's identity instead of its pixels."""
    return torch.tensor(int.from_bytes(hashlib.sha1(data).digest()[:6], "big"))


def _written(root: Path) -> list[int]:
    """The identities of the train split's samples in file order: the shards as _info.json lists them, each in
    tar order."""
    keys = []
    for shard in read_info(root)["splits"]["train"]["shards"]:
        with tarfile.open(root / shard["file"]) as tar:
            keys += [_identity(tar.extractfile(m).read()).item() for m in tar if m.name.endswith(".png")]
    return keys


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    write_shards("embedded:digits", out, shard_mb=0.015, val_count=297, progress=False)
    return out


def _stream(root, split, *, train=False, rank=0, world=1, workers=0, epoch=0, done=0, batch=16, **kw):
    """The batches of one rank's stream of ``split`` and the stream."""
    stream = ShardStream(root, split, _identity, batch, train=train, num_classes=10, rank=rank, world=world,
                         shuffle_buffer=50, **kw)
    return list(EpochLoader(stream, lambda: (epoch, done), workers)), stream


def _keys(batches) -> list[int]:
    return [k for images, _ in batches for k in images.tolist()]


def test_slices_are_positions_in_file_order_and_partition_the_split(shards):
    written = _written(shards)
    first = read_info(shards)["splits"]["train"]["shards"][0]["num_samples"]
    assert len(written) == 1500 and 1350 % first  # the boundary lies inside a shard
    head = _keys(_stream(shards, "train[:90%]")[0])
    tail = _keys(_stream(shards, "train[90%:]", rank=1, world=2, workers=2)[0] +
                 _stream(shards, "train[90%:]", rank=0, world=2, workers=2)[0])
    assert head == written[:1350]  # validation reads a slice in order
    assert sorted(tail) == sorted(written[1350:])
    assert not set(head) & set(tail) and len(set(head) | set(tail)) == 1500
    assert _keys(_stream(shards, "train[-100:-40]")[0]) == written[1400:1460]


def test_training_over_a_slice_reads_each_of_its_samples_once_per_epoch(shards):
    sliced = set(_written(shards)[:1350])
    for epoch in (0, 1):
        parts = [_stream(shards, "train[:90%]", train=True, rank=r, world=2, workers=2, epoch=epoch) for r in (0, 1)]
        keys = [k for batches, _ in parts for k in _keys(batches)]
        assert len(keys) == len(set(keys)) == 1350 // 32 * 32 and set(keys) <= sliced  # only the partial batch left
        assert all(len(batches) == len(stream) == 1350 // 32 for batches, stream in parts)


def test_a_resumed_epoch_over_a_slice_continues_where_it_stopped(shards):
    full = _stream(shards, "train[10%:95%]", train=True, workers=2, epoch=3)[0]
    resumed = _stream(shards, "train[10%:95%]", train=True, workers=2, epoch=3, done=7)[0]
    assert len(full) == 1275 // 16 and len(resumed) == len(full) - 7
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, full[7:], strict=True))


@pytest.mark.parametrize("change", [-2, 3], ids=["boundary shard longer than listed", "shorter than listed"])
def test_a_boundary_shard_is_checked_by_the_slice_holding_its_listed_end(shards, tmp_path, change):
    root = tmp_path / "relisted"
    root.mkdir()
    for f in shards.iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    info = json.loads((root / "_info.json").read_text())
    listed = info["splits"]["train"]["shards"]
    ends = list(itertools.accumulate(s["num_samples"] for s in listed))
    boundary = next(i for i, end in enumerate(ends) if end > 1350)  # the shard holding train[:90%]'s boundary
    listed[boundary]["num_samples"] += change
    info["splits"]["train"]["num_samples"] += change
    (root / "_info.json").write_text(json.dumps(info))
    cut = round(0.9 * (1500 + change))
    assert ends[boundary - 1] < cut < ends[boundary] + change  # still inside that shard
    train = [_stream(root, "train[:90%]", train=True, rank=r, world=2, workers=2, max_bad_fraction=0.5)
             for r in (0, 1)]
    minival = [_stream(root, "train[90%:]", rank=r, world=2, workers=2, max_bad_fraction=0.5) for r in (0, 1)]
    skipped = {"train": sum(s.skipped for _, s in train), "minival": sum(s.skipped for _, s in minival)}
    assert skipped == {"train": 0, "minival": abs(change)}  # the surplus or the missing samples lie past the cut
    assert all(len(batches) == len(stream) for batches, stream in train + minival)  # the batch counts hold


def _tree(root: Path, classes: int = 4, per_class: int = 25) -> None:
    for c in range(classes):
        (root / "train" / f"c{c}").mkdir(parents=True)
        (root / "val" / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / "train" / f"c{c}" / f"{i:03d}.png").write_bytes(f"{c}-{i}".encode())
        (root / "val" / f"c{c}" / "0.png").write_bytes(f"val-{c}".encode())


def test_an_image_folder_slices_a_seeded_permutation_of_its_files(tmp_path):
    _tree(tmp_path)

    def module(train, minival, seed=0):
        dm = ImageFolderDataModule(str(tmp_path), 8, img_size=8, num_workers=0, train_split=train,
                                   minival_split=minival, split_seed=seed)
        dm.setup()
        return dm

    def files(images) -> list[str]:
        return [Path(images.files[i][0]).relative_to(tmp_path / "train").as_posix() for i in images.indices]

    dm = module("train[:80%]", "train[80%:]")
    head, tail = files(dm.train_set), files(dm.minival_set)
    everything = sorted(f"c{c}/{i:03d}.png" for c in range(4) for i in range(25))
    assert len(head) == 80 and len(tail) == 20 and sorted(head + tail) == everything
    assert len({f.split("/")[0] for f in tail}) > 1  # not whole classes, as the sorted order would give
    assert files(module("train[:80%]", "train[80%:]").minival_set) == tail  # fixed by split_seed
    assert files(module("train[:80%]", "train[80%:]", seed=1).minival_set) != tail
    assert files(module("train", None).train_set) == everything  # the whole split: torchvision's sorted order
    assert module("train", None).minival_set is None
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [4, 20]  # val, minival
    sampler = training_sampler(dm, len(dm.train_set), seed=0, batch_size=8)
    trained = [files(dm.train_set)[i] for _, i in sampler]  # keyed: (epoch, index)
    assert len(trained) == len(set(trained)) == 80 and set(trained) == set(head)

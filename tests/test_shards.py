"""Shards: the writer (byte-identical round trip, labels, resumable), the streaming loader (exactly once per epoch
across 2 ranks x 2 workers, equal batch counts, (seed, epoch) order, mid-epoch resume), validation (every image
once for any worker count), bad data (shards shorter or longer than listed among it), label sets."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import tarfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from reluvit.data import stream as stream_module
from reluvit.data.datamodules import EpochLoader
from reluvit.data.labels import i1k_to_i21k, wordnet_ids
from reluvit.data.shards import read_info, write_shards
from reluvit.data.stream import BadDataError, ShardStream


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tree(root: Path, classes=("n01440764", "n01443537", "n01484850"), per_class=20) -> dict[bytes, int]:
    """An ImageFolder tree of distinct JPEGs; returns image bytes -> class index."""
    images = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            data = _jpeg(c * 1000 + i)
            (root / name / f"{name}_{i}.JPEG").write_bytes(data)
            images[data] = c
    return images


def _read_back(out: Path, split: str) -> dict[bytes, int]:
    found = {}
    for shard in read_info(out)["splits"][split]["shards"]:
        with tarfile.open(out / shard["file"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        keys = {name.rsplit(".", 1)[0] for name in members}
        assert len(keys) == shard["num_samples"]
        for key in keys:
            found[members[f"{key}.jpg"]] = int(members[f"{key}.cls"])
    return found


def test_shards_from_a_folder_read_back_byte_identical(tmp_path):
    images = _tree(tmp_path / "src")
    info = write_shards(str(tmp_path / "src"), tmp_path / "out", shard_mb=0.02, val_count=12, progress=False)
    assert info["num_classes"] == 3 and info["wnids"] == info["classes"] and info["label_set"] == "folder"
    train, val = _read_back(tmp_path / "out", "train"), _read_back(tmp_path / "out", "val")
    assert len(val) == 12 and len(train) == 48 and len(info["splits"]["train"]["shards"]) > 2
    assert {**train, **val} == images  # same bytes, same labels, nothing lost or duplicated


def test_shards_from_class_tars_with_a_named_label_set(tmp_path):
    images = _tree(tmp_path / "tree", per_class=4)
    (tmp_path / "src").mkdir()
    for d in (tmp_path / "tree").iterdir():
        with tarfile.open(tmp_path / "src" / f"{d.name}.tar", "w") as tar:
            for f in d.iterdir():
                tar.add(f, arcname=f.name)
    info = write_shards(str(tmp_path / "src"), tmp_path / "out", label_set="imagenet1k", progress=False)
    assert info["num_classes"] == 1000
    index = {w: i for i, w in enumerate(wordnet_ids("imagenet1k"))}
    names = sorted(d.name for d in (tmp_path / "tree").iterdir())
    assert _read_back(tmp_path / "out", "train") == {b: index[names[c]] for b, c in images.items()}


def test_rewriting_skips_finished_shards(tmp_path):
    _tree(tmp_path / "src", per_class=6)
    write_shards(str(tmp_path / "src"), tmp_path / "out", shard_mb=0.01, progress=False)
    shards = sorted((tmp_path / "out").glob("train-*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()  # an interrupted run: one shard missing
    write_shards(str(tmp_path / "src"), tmp_path / "out", shard_mb=0.01, progress=False)
    assert shards[1].exists()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards if p != shards[1])


def _key(data: bytes) -> torch.Tensor:
    """A test 'transform': the sample's identity instead of its pixels."""
    return torch.tensor(int.from_bytes(hashlib.sha1(data).digest()[:6], "big"))


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    write_shards("embedded:digits", out, shard_mb=0.015, val_count=297, progress=False)
    return out


def _epoch(root, *, rank=0, world=1, workers=0, epoch=0, done=0, batch=16, seed=0, split="train", **kw):
    stream = ShardStream(root, split, _key, batch, train=split == "train", num_classes=10, seed=seed, rank=rank,
                         world=world, shuffle_buffer=50, **kw)
    loader = EpochLoader(stream, lambda: (epoch, done), workers)
    return [b for b in loader], len(loader), stream


def test_two_ranks_two_workers_see_every_sample_once_with_equal_batch_counts(digit_shards):
    total = read_info(digit_shards)["splits"]["train"]["num_samples"]
    batches = {r: _epoch(digit_shards, rank=r, world=2, workers=2)[0] for r in (0, 1)}
    assert len(batches[0]) == len(batches[1]) == total // 32  # per-rank batch 16, global 32
    keys = [k for r in (0, 1) for images, _ in batches[r] for k in images.tolist()]
    assert len(keys) == len(set(keys)) == total // 32 * 32  # no repeats; only the partial global batch dropped
    single = _epoch(digit_shards, world=1)[0]
    assert len(single) == total // 16


@pytest.mark.slow
def test_order_depends_only_on_seed_and_epoch(digit_shards):
    def order(**kw):
        return torch.cat([images for images, _ in _epoch(digit_shards, workers=2, **kw)[0]]).tolist()

    assert order(epoch=3) == order(epoch=3)
    assert order(epoch=3) != order(epoch=4)
    assert order(epoch=3) != order(epoch=3, seed=1)


def test_a_resumed_epoch_continues_with_the_batches_not_yet_trained(digit_shards):
    full = _epoch(digit_shards, workers=2, epoch=1)[0]
    resumed = _epoch(digit_shards, workers=2, epoch=1, done=5)[0]
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, full[5:], strict=True))


def test_validation_reads_every_sample_exactly_once(digit_shards):
    parts = [_epoch(digit_shards, split="val", rank=r, world=2, workers=2) for r in (0, 1)]
    keys = [k for batches, _, _ in parts for images, _ in batches for k in images.tolist()]
    assert len(keys) == len(set(keys)) == 297
    assert all(len(batches) == length for batches, length, _ in parts)


def _contents(root: Path, split: str) -> list[list[tuple[int, int]]]:
    """Every shard's samples in tar order, as (image key, label)."""
    shards = []
    for shard in read_info(root)["splits"][split]["shards"]:
        with tarfile.open(root / shard["file"]) as tar:
            members = [(m.name.split(".", 1), tar.extractfile(m).read()) for m in tar]
        samples = [dict((suffix, data) for (_, suffix), data in group)
                   for _, group in itertools.groupby(members, key=lambda m: m[0][0])]
        shards.append([(_key(s["png"]).item(), int(s["cls"])) for s in samples])
    return shards


def _validate_as_lightning(root, *, world, workers, batch, **kw):
    """Each rank's validation stream through a plain DataLoader, taking ``len(loader)`` batches as Lightning does;
    returns the (key, label) pairs scored and the streams."""
    scored, streams = Counter(), []
    for rank in range(world):
        stream = ShardStream(root, "val", _key, batch, train=False, num_classes=10, rank=rank, world=world, **kw)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        batches = iter(loader)
        for images, labels in itertools.islice(batches, len(loader)):
            scored.update(zip(images.tolist(), labels.tolist(), strict=True))
        assert next(batches, None) is None  # nothing left beyond len(loader)
        streams.append(stream)
    return scored, streams


@pytest.mark.parametrize(("workers", "world", "batch"), [(0, 2, 64), (1, 2, 64), (2, 2, 64), (3, 2, 40),
                                                         (8, 2, 64), (3, 3, 16)])
def test_validation_scores_every_image_once_for_any_worker_count(digit_shards, workers, world, batch):
    scored, _ = _validate_as_lightning(digit_shards, world=world, workers=workers, batch=batch)
    assert scored == Counter(sample for shard in _contents(digit_shards, "val") for sample in shard)


def test_validation_length_is_the_same_in_a_worker(digit_shards, monkeypatch):
    stream = ShardStream(digit_shards, "val", _key, 40, train=False, num_classes=10, rank=1, world=2)
    assert len(stream) == math.ceil((297 - 297 // 2) / 40)
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: SimpleNamespace(id=2, num_workers=3))
    assert len(stream) == math.ceil((297 - 297 // 2) / 40)


def _relist(root: Path, split: str, change: int, shards=(0,)) -> None:
    """Rewrite ``_info.json`` as if the given shards held ``change`` more samples than they do."""
    info = json.loads((root / "_info.json").read_text())
    for i in shards:
        info["splits"][split]["shards"][i]["num_samples"] += change
        info["splits"][split]["num_samples"] += change
    (root / "_info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("change", [3, -3], ids=["shorter than listed", "longer than listed"])
def test_validation_counts_a_shard_shorter_or_longer_than_listed(digit_shards, tmp_path, change):
    root = _damaged_copy(digit_shards, tmp_path / "relisted", lambda d: _relist(d, "val", change))
    shards = _contents(root, "val")
    listed = shards[0][:len(shards[0]) + min(change, 0)] + shards[1]  # a longer shard's surplus is not read
    scored, streams = _validate_as_lightning(root, world=2, workers=3, batch=16, max_bad_fraction=0.5)
    assert scored == Counter(listed)
    assert sum(s.skipped for s in streams) == abs(change)


def test_training_counts_the_surplus_of_longer_shards_once_an_epoch(digit_shards, tmp_path):
    count = len(read_info(digit_shards)["splits"]["train"]["shards"])
    root = _damaged_copy(digit_shards, tmp_path / "relisted", lambda d: _relist(d, "train", -1, range(count)))
    listed = {key for shard in _contents(root, "train") for key, _ in shard[:-1]}
    for epoch in (0, 1):  # the epoch's last shard ends in the dropped partial global batch: still counted
        parts = [_epoch(root, rank=r, world=2, workers=2, epoch=epoch, max_bad_fraction=0.0) for r in (0, 1)]
        keys = [k for batches, _, _ in parts for images, _ in batches for k in images.tolist()]
        assert len(keys) == len(set(keys)) == (1500 - count) // 32 * 32 and set(keys) <= listed
        assert all(len(batches) == length for batches, length, _ in parts)
        assert sum(stream.skipped for _, _, stream in parts) == count  # not against max_bad_fraction=0


def _damaged_copy(src: Path, dst: Path, damage) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    damage(dst)
    return dst


def _rewrite_member(shard: Path, suffix: str, change) -> None:
    """Rewrite the first sample's ``suffix`` member of a shard through ``change``."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    first = members[0][0].name.rsplit(".", 1)[0]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if m.name == f"{first}.{suffix}":
                data = change(data)
                if data is None:
                    continue
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))


BAD_DATA = {
    "truncated image": (lambda d: _rewrite_member(d / "train-000000.tar", "png", lambda b: b[: len(b) // 2]), 1),
    "sample without image": (lambda d: _rewrite_member(d / "train-000000.tar", "png", lambda b: None), 1),
    "wrong class id": (lambda d: _rewrite_member(d / "train-000000.tar", "cls", lambda b: b"12"), 1),
    "missing shard": (lambda d: (d / "train-000001.tar").unlink(), "shard"),
    "empty shard": (lambda d: (d / "train-000001.tar").write_bytes(b""), "shard"),
    "shard shorter than listed": (lambda d: _relist(d, "train", 3), 3),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_skipped_counted_and_fails_past_the_fraction(digit_shards, tmp_path, case):
    from reluvit.data.preprocess import EvalTransform

    damage, expected = BAD_DATA[case]
    root = _damaged_copy(digit_shards, tmp_path / "bad", damage)
    if expected == "shard":
        expected = json.loads((root / "_info.json").read_text())["splits"]["train"]["shards"][1]["num_samples"]
    clean = _epoch(digit_shards, batch=15, max_bad_fraction=0.5)  # 1500 = 100 x 15: every sample is read
    # two slots of 750 samples: the budget, half of a slot, holds a missing shard's 245
    stream = ShardStream(root, "train", EvalTransform(8, 1), 15, train=True, num_classes=10, shuffle_buffer=50,
                         max_bad_fraction=0.5, stream_slots=2)
    batches = list(EpochLoader(stream, lambda: (0, 0), 0))
    assert stream.skipped == expected
    assert len(batches) == len(clean[0])  # the batch count never changes
    strict = ShardStream(root, "train", EvalTransform(8, 1), 15, train=True, num_classes=10, max_bad_fraction=0.0)
    with pytest.raises(BadDataError, match="1 bad samples, more than max_bad_fraction=0.0"):
        list(strict)


def test_a_missing_shard_directory_fails_at_start_with_its_path(tmp_path):
    from reluvit.data.datamodules import ShardDataModule

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        ShardDataModule(str(tmp_path / "nowhere"), 16, 8, 1, 10)


def test_i1k_maps_into_the_21k_label_sets_except_teddy_bear():
    for label_set, size in (("imagenet21k_goog", 21843), ("imagenet21k_fall11", 21841)):
        wnids = wordnet_ids(label_set)
        mapping = i1k_to_i21k(wnids)
        assert len(wnids) == size and list(wnids) == sorted(wnids)
        missing = [wordnet_ids("imagenet1k")[i] for i, j in enumerate(mapping) if j is None]
        assert missing == ["n04399382"]
        assert all(wnids[j] == wordnet_ids("imagenet1k")[i] for i, j in enumerate(mapping) if j is not None)
    assert set(wordnet_ids("imagenet21k_goog")) - set(wordnet_ids("imagenet21k_fall11")) == {"n03931044", "n09859684"}


def test_training_on_shards_records_the_label_set_and_skipped_count(digit_shards, tmp_path):
    from reluvit.run.compose import compose
    from reluvit.run.train import run

    summary = run(compose(["recipe=smoke", "model=micro2", "data=shards", f"data.path={digit_shards}",
                           "data.img_size=8", "data.in_chans=1", "data.num_classes=10", "data.num_workers=0",
                           "recipe.epochs=1", "recipe.batch_size=64", "trainer.enable_progress_bar=false",
                           f"runs_dir={tmp_path}"]))
    assert summary["status"] == "completed" and summary["label_set"] == "folder"
    assert summary["global_step"] == 1500 // 64 and summary["metrics"]["data/skipped"] == 0


def test_auto_on_a_gpu_without_dali_falls_back_with_a_warning(digit_shards, monkeypatch, caplog):
    """data.loader=auto on a machine with a GPU but no DALI decodes on the CPU: said in the log, and kept by the data
    module for the run's summary (data_loader_fallback); silent where there is no GPU or where it was asked for."""
    from reluvit.data import dali
    from reluvit.data.datamodules import ShardDataModule

    arguments = dict(path=str(digit_shards), batch_size=16, img_size=8, in_chans=1, num_classes=10, num_workers=0)
    assert ShardDataModule(**arguments, loader="auto").loader_fallback is None or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dali, "dali_installed", lambda: False)
    module = ShardDataModule(**arguments, loader="auto")
    assert module.loader == "reference" and "NVIDIA DALI is not installed" in module.loader_fallback
    assert module.loader_fallback in caplog.text
    assert ShardDataModule(**arguments, loader="reference").loader_fallback is None

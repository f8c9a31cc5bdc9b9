"""The training batches do not depend on ``data.num_workers``: for shards (reference loader), an ImageFolder tree and
an embedded set, epochs 0 and 1 are bitwise equal with 0, 1, 2 and 3 workers, augmentations (Inception crop, flip,
RandAugment) included; a mid-epoch resume gives the same remaining batches for 0 and 2 workers; a worker count that
does not divide ``data.stream_slots`` is refused; shards copied elsewhere give the same batches (and, end to end,
the same weights after a resume on the copy with another worker count)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from reluvit.data.datamodules import EmbeddedDataModule, ImageFolderDataModule, ShardDataModule
from reluvit.data.shards import write_shards

WORKERS = (0, 1, 2, 3)
CLASSES, PER_CLASS, VAL = 4, 30, 16
RANDAUG = {"randaug_layers": 2, "randaug_magnitude": 10}


class FakeTrainer:
    """What the data modules read of a trainer: rank, world size and the fit loop's position (epoch, batches done),
    which a test moves as Lightning's loop would."""

    def __init__(self, epoch: int = 0, done: int = 0) -> None:
        self.global_rank, self.world_size = 0, 1
        self.fit_loop = NS(epoch_progress=NS(current=NS(processed=epoch)),
                           epoch_loop=NS(batch_progress=NS(current=NS(completed=done))))

    def at(self, epoch: int, done: int = 0) -> FakeTrainer:
        self.fit_loop.epoch_progress.current.processed = epoch
        self.fit_loop.epoch_loop.batch_progress.current.completed = done
        return self


def _images(folder: Path, count: int, seed: int) -> None:
    """``count`` small JPEGs of random sizes (20-40 px) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(20, 40, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """104 training and 16 validation JPEGs in 8 shards or so."""
    source, out = tmp_path_factory.mktemp("jpegs"), tmp_path_factory.mktemp("shards")
    for c in range(CLASSES):
        _images(source / f"class{c}", PER_CLASS, seed=c)
    write_shards(str(source), out, shard_mb=0.01, val_count=VAL, progress=False)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for c in range(CLASSES):
        _images(root / "train" / f"class{c}", 12, seed=c)
        _images(root / "val" / f"class{c}", 2, seed=100 + c)
    return root


def _epochs(module, positions: list[tuple[int, int]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The batches of one training loader iterated at each (epoch, done), as Lightning iterates it epoch after
    epoch (persistent workers stay up)."""
    trainer = FakeTrainer()
    module.trainer = trainer
    loader = module.train_dataloader()
    out = []
    for epoch, done in positions:
        trainer.at(epoch, done)
        out.append(list(loader))
    return out


def _assert_equal(batches: list, expected: list) -> None:
    assert len(batches) == len(expected) > 0
    for (images, labels), (expected_images, expected_labels) in zip(batches, expected, strict=True):
        assert torch.equal(labels, expected_labels) and torch.equal(images, expected_images)


def _shard_module(root: str | Path, workers: int, **options) -> ShardDataModule:
    return ShardDataModule(str(root), 2, 16, 3, CLASSES, num_workers=workers, augment=RANDAUG, seed=3,
                           shuffle_buffer=40, loader="reference", **options)


def _tree_module(root: Path, workers: int, **augment) -> ImageFolderDataModule:
    module = ImageFolderDataModule(str(root), 4, img_size=16, num_workers=workers, augment={**RANDAUG, **augment},
                                   seed=3)
    module.setup()
    return module


def test_shard_batches_are_the_same_for_any_worker_count(shards):
    """52 batches of 2 from 24 slots (2 or 3 batches each), RandAugment and the Inception crop."""
    expected = _epochs(_shard_module(shards, 0), [(0, 0), (1, 0)])
    assert len(expected[0]) == (CLASSES * PER_CLASS - VAL) // 2
    assert not torch.equal(torch.cat([i for i, _ in expected[0]]), torch.cat([i for i, _ in expected[1]]))
    for workers in WORKERS[1:]:
        for batches, reference in zip(_epochs(_shard_module(shards, workers), [(0, 0), (1, 0)]), expected,
                                      strict=True):
            _assert_equal(batches, reference)


@pytest.mark.parametrize("impl", ["big_vision", "timm"])  # timm's RandAugment draws from random and numpy
def test_image_folder_batches_are_the_same_for_any_worker_count(tree, impl):
    expected = _epochs(_tree_module(tree, 0, augment_impl=impl), [(0, 0), (1, 0)])
    for workers in WORKERS[1:]:
        for batches, reference in zip(_epochs(_tree_module(tree, workers, augment_impl=impl), [(0, 0), (1, 0)]),
                                      expected, strict=True):
            _assert_equal(batches, reference)


class Jittered(Dataset):
    """An augmentation stand-in over an embedded set (whose recipes augment with mixup only, in the training step):
    draws from every generator the transforms use: torch's, Python's random and NumPy's."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.images[i]
        image = image.roll(random.randrange(image.shape[-1]), -1) + torch.rand(()).item()
        return (image.flip(-1) if np.random.rand() < 0.5 else image), label


def test_embedded_batches_are_the_same_for_any_worker_count():
    def module(workers: int) -> EmbeddedDataModule:
        digits = EmbeddedDataModule("digits", 64, num_workers=workers, seed=3)
        digits.setup()
        digits.train_set = Jittered(digits.train_set)
        return digits

    expected = _epochs(module(0), [(0, 0), (1, 0)])
    for workers in WORKERS[1:]:
        for batches, reference in zip(_epochs(module(workers), [(0, 0), (1, 0)]), expected, strict=True):
            _assert_equal(batches, reference)


def test_no_workers_leave_the_training_process_draws_alone(tree):
    """Without workers the samples are transformed in the training process: its generators (mixup's) continue as
    if none had been."""
    module = _tree_module(tree, 0)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    _epochs(module, [(0, 0)])
    after = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    assert torch.equal(after[0], torch.rand(3)) and after[1:] == (random.random(), np.random.rand())


@pytest.mark.parametrize("done", [5, 29])  # within the first round of the 24 slots, and past it
def test_a_mid_epoch_resume_gives_the_remaining_shard_batches_for_any_worker_count(shards, done):
    full = _epochs(_shard_module(shards, 0), [(1, 0)])[0]
    for workers in (0, 2):
        _assert_equal(_epochs(_shard_module(shards, workers), [(1, done)])[0], full[done:])


def test_a_mid_epoch_resume_gives_the_remaining_image_folder_batches_for_any_worker_count(tree):
    full = _epochs(_tree_module(tree, 0), [(1, 0)])[0]
    for workers in (0, 2):
        _assert_equal(_epochs(_tree_module(tree, workers), [(1, 5)])[0], full[5:])


def test_a_worker_count_that_does_not_divide_the_stream_slots_is_refused(shards):
    with pytest.raises(ValueError) as refused:
        _shard_module(shards, 5, stream_slots=24)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("data.num_workers=5 does not divide data.stream_slots=24")
    assert message.endswith("data.num_workers may be 0, 1, 2, 3, 4, 6, 8, 12, 24")
    _shard_module(shards, 3, stream_slots=6)  # accepted: 3 divides 6


def test_shards_copied_elsewhere_give_the_same_batches_after_a_resume(shards, tmp_path):
    copy = Path(shutil.copytree(shards, tmp_path / "moved" / "shards"))
    original = _epochs(_shard_module(shards, 2), [(1, 7)])[0]
    _assert_equal(_epochs(_shard_module(f"{copy}/", 3), [(1, 7)])[0], original)


HARNESS = Path(__file__).with_name("interrupt.py")


def _train(overrides: list[str], interrupt_at: int = 0) -> subprocess.CompletedProcess:
    """A run in a subprocess (tests/interrupt.py), to the end or interrupted by the requeue signal after that
    optimizer step."""
    kind = "usr2" if interrupt_at else "none"
    return subprocess.run([sys.executable, str(HARNESS), json.dumps(overrides), kind, "step", str(interrupt_at)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_run_resumed_on_a_copy_of_its_shards_with_other_workers_ends_with_the_same_weights(tmp_path):
    """Interrupted mid-epoch (the requeue signal) with 2 workers, the shards copied to a new path, resumed there with
    3 workers: the final weights equal an uninterrupted run's with none (mixup and RandAugment on)."""
    from conftest import TINY, checkpoint_weights
    from reluvit.run.compose import compose
    from reluvit.run.rundir import last_checkpoint, read_summary

    digits = tmp_path / "digit_shards"
    write_shards("embedded:digits", digits, shard_mb=0.015, val_count=297, progress=False)
    base = [*(o for o in TINY if o != "data=digits"), "data=shards", "data.num_classes=10", "data.img_size=8",
            "data.in_chans=1", "data.loader=reference", "eval=none", "trainer.deterministic=true",
            "data.train_split='train[:25%]'", "recipe.epochs=2", "recipe.augment.default.mixup=0.4",
            "recipe.augment.default.randaug_layers=2", "recipe.augment.default.randaug_magnitude=10"]
    reference = [*base, f"data.path={digits}", "data.num_workers=0", f"runs_dir={tmp_path / 'reference'}"]
    result = _train(reference)
    assert result.returncode == 0, result.stderr[-2000:]
    interrupted = [*base, f"data.path={digits}", "data.num_workers=2", f"runs_dir={tmp_path / 'runs'}"]
    result = _train(interrupted, interrupt_at=7)  # 5 steps an epoch: mid-epoch 1
    assert result.returncode == 128 + signal.SIGUSR2, result.stderr[-2000:]  # checkpointed, exited
    run_dir, reference_dir = compose(interrupted).run_dir, compose(reference).run_dir
    assert torch.load(last_checkpoint(run_dir), weights_only=True)["global_step"] == 8  # the next step boundary
    copy = shutil.copytree(digits, tmp_path / "elsewhere")
    resumed = [*base, f"data.path={copy}", "data.num_workers=3", f"runs_dir={tmp_path / 'runs'}"]
    result = _train(resumed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert compose(resumed).run_dir == run_dir and "resuming from" in (Path(run_dir) / "train.log").read_text()
    assert read_summary(run_dir)["global_step"] == read_summary(reference_dir)["global_step"] == 2 * (375 // 64)
    final, expected = checkpoint_weights(run_dir), checkpoint_weights(reference_dir)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)

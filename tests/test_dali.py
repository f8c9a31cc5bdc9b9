"""The DALI loader (reluvit.data.dali) against the reference pipeline, on DALI's CPU-only mode (CI has no GPU): the
same batches in the same order per rank and after a resume, the same crops and flips (training images equal to the
reference's up to float rounding), eval images within a grey level on average, bad data skipped and counted."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e '.[gpu]')")

from reluvit.data.dali import Encoded, check_complete, resolve_loader  # noqa: E402
from reluvit.data.datamodules import ShardDataModule  # noqa: E402
from reluvit.data.shards import write_shards  # noqa: E402

CLASSES, IMAGES, VAL = 4, 160, 32


def _photo(rng: np.random.Generator) -> np.ndarray:
    """A JPEG-friendly image of random size: smooth colour waves plus noise."""
    h, w = (int(v) for v in rng.integers(40, 120, 2))
    y, x = np.mgrid[0:h, 0:w] / 10.0
    waves = np.stack([np.sin(x * rng.uniform(0.3, 2) + y * rng.uniform(0.3, 2) + c) for c in range(3)], -1)
    return np.clip(waves * 90 + 128 + rng.normal(0, 10, waves.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    root, out = tmp_path_factory.mktemp("jpegs"), tmp_path_factory.mktemp("jpeg_shards")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(_photo(rng)).save(folder / f"{i:04d}.jpg", quality=90)
    write_shards(str(root), out, shard_mb=0.05, val_count=VAL, progress=False)
    return out


class FakeTrainer:
    """What the data module reads of a trainer: rank, world size and the fit loop's position (epoch, batches done)."""

    def __init__(self, rank: int = 0, world: int = 1, epoch: int = 0, done: int = 0) -> None:
        from types import SimpleNamespace as NS

        self.global_rank, self.world_size = rank, world
        self.fit_loop = NS(epoch_progress=NS(current=NS(processed=epoch)),
                           epoch_loop=NS(batch_progress=NS(current=NS(completed=done))))


def _batches(shards: Path, loader: str, *, split: str = "train", workers: int = 0, size: int = 32,
             trainer: FakeTrainer | None = None, **augment) -> list[tuple[torch.Tensor, torch.Tensor]]:
    module = ShardDataModule(str(shards), 8, size, 3, CLASSES, num_workers=workers, loader=loader, shuffle_buffer=20,
                             augment=augment or None)
    module.trainer = trainer
    torch.manual_seed(0)  # the main process's draws (workers=0) start alike for both loaders
    return list(module.train_dataloader() if split == "train" else module.val_dataloader())


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_the_reference_pipelines(jpeg_shards, workers):
    """Same samples in the same order, same crop boxes and flips: the ROI decode and DALI's bilinear resize without
    antialias give TF's bilinear exactly (the difference is the float rounding of the value range)."""
    reference, dali = (_batches(jpeg_shards, loader, workers=workers) for loader in ("reference", "dali"))
    assert len(reference) == len(dali) == (IMAGES - VAL) // 8
    for (ours, labels), (theirs, dali_labels) in zip(reference, dali, strict=True):
        assert torch.equal(labels, dali_labels) and dali_labels.dtype == torch.int64
        assert theirs.shape == ours.shape == (8, 3, 32, 32) and theirs.dtype == torch.float32
        assert (theirs - ours).abs().max() < 1e-5


def test_eval_images_are_within_a_grey_level_of_the_reference(jpeg_shards):
    """Validation: every image once, in the reference's order; DALI's antialiased linear resize against TF's exact
    area average: under a grey level on average."""
    reference, dali = (_batches(jpeg_shards, loader, split="val") for loader in ("reference", "dali"))
    assert sum(len(labels) for _, labels in dali) == VAL
    differences = []
    for (ours, labels), (theirs, dali_labels) in zip(reference, dali, strict=True):
        assert torch.equal(labels, dali_labels)
        differences.append((theirs - ours).abs() * 127.5)
    difference = torch.cat(differences)
    assert difference.mean() < 1.5 and difference.max() <= 12, (difference.mean(), difference.max())


def test_ranks_and_a_mid_epoch_resume_follow_the_reference_order(jpeg_shards):
    """Each rank reads its share, equal batch counts; a resume after 3 batches continues with batch 4 of the same
    epoch, as the reference loader does, with the same crops and flips (the stream draws them per sample)."""
    for rank in (0, 1):
        reference = _batches(jpeg_shards, "reference", trainer=FakeTrainer(rank, 2, epoch=1))
        dali = _batches(jpeg_shards, "dali", trainer=FakeTrainer(rank, 2, epoch=1))
        assert len(dali) == len(reference) == (IMAGES - VAL) // 16
        assert all(torch.equal(a[1], b[1]) for a, b in zip(reference, dali, strict=True))
    full = _batches(jpeg_shards, "dali", workers=2, trainer=FakeTrainer(epoch=2))
    resumed = _batches(jpeg_shards, "dali", workers=2, trainer=FakeTrainer(epoch=2, done=3))
    reference = _batches(jpeg_shards, "reference", workers=2, trainer=FakeTrainer(epoch=2, done=3))
    assert len(resumed) == len(reference) == len(full) - 3
    for (images, labels), (_, full_labels), (ours, _) in zip(resumed, full[3:], reference, strict=True):
        assert torch.equal(labels, full_labels) and (images - ours).abs().max() < 1e-5


def test_randaugment_runs_in_the_graph_and_keeps_the_value_range(jpeg_shards):
    plain = _batches(jpeg_shards, "dali")
    augmented = _batches(jpeg_shards, "dali", randaug_layers=2, randaug_magnitude=15)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, augmented, strict=True))
    images = torch.cat([images for images, _ in augmented])
    assert images.min() >= -1 and images.max() <= 1
    assert (images - torch.cat([images for images, _ in plain])).abs().mean() > 0.05  # it augments


def _jpeg(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_cut_short_image_is_refused_before_it_reaches_the_decoder():
    whole = _jpeg(120, 160)
    check_complete(whole, "JPEG")
    with pytest.raises(ValueError, match="truncated JPEG"):
        Encoded(8, train=True)(whole[: len(whole) // 2])
    with pytest.raises(Exception):  # noqa: B017 - PIL's own error for bytes that are no image
        Encoded(8, train=True)(b"not an image")
    sample = Encoded(24, train=False)(_jpeg(30, 40))
    assert sample.resize == (27, 36) and sample.box == (1, 6, 24, 24)  # shorter side 24 * 256/224; floored centre


def test_bad_samples_are_skipped_and_counted_as_in_the_reference(jpeg_shards, tmp_path):
    from test_shards import _damaged_copy, _rewrite_member

    root = _damaged_copy(jpeg_shards, tmp_path / "bad",
                         lambda d: _rewrite_member(d / "train-000000.tar", "jpg", lambda b: b[: len(b) // 2]))
    module = ShardDataModule(str(root), 8, 32, 3, CLASSES, loader="dali", shuffle_buffer=20, max_bad_fraction=0.5)
    batches = list(module.train_dataloader())
    assert module.skipped == 1 and len(batches) == (IMAGES - VAL) // 8


def test_loader_choice():
    assert resolve_loader("reference", "shards") == "reference"
    expected = "dali" if torch.cuda.is_available() else "reference"
    assert resolve_loader("auto", "shards") == expected and resolve_loader("auto", "digits") == "reference"
    with pytest.raises(ValueError, match="reads webdataset shards"):
        resolve_loader("dali", "imagefolder")


@pytest.mark.parametrize(("overrides", "message"), [
    (["data=digits", "data.loader=dali"], "data.loader: 'dali' reads webdataset shards (dataset=shards), not"),
    (["data.loader=nvjpeg"], "data.loader: 'nvjpeg' is not one of: auto, reference, dali"),
])
def test_config_errors_are_one_line(overrides, message):
    from reluvit.run.compose import compose
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    with pytest.raises(ConfigError) as error:
        validate(compose(["recipe=smoke", "model=micro2", *overrides]), data_path=False)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_training_with_dali_records_the_loader(jpeg_shards, tmp_path):
    from reluvit.run.compose import compose
    from reluvit.run.train import run

    summary = run(compose(["recipe=smoke", "model=micro2", "data=shards", f"data.path={jpeg_shards}",
                           "data.img_size=16", "data.in_chans=3", f"data.num_classes={CLASSES}", "data.loader=dali",
                           "recipe.epochs=1", "recipe.batch_size=16", "trainer.enable_progress_bar=false",
                           f"runs_dir={tmp_path}"]))
    assert summary["status"] == "completed" and summary["data_loader"] == "dali"
    assert summary["global_step"] == (IMAGES - VAL) // 16 and 0 <= summary["metrics"]["val/acc"] <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU decode (device 'mixed') needs a GPU")
def test_gpu_decoding_matches_the_cpu_graph(jpeg_shards, monkeypatch):
    gpu = _batches(jpeg_shards, "dali")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = _batches(jpeg_shards, "dali")
    for (images, labels), (cpu_images, cpu_labels) in zip(gpu, cpu, strict=True):
        assert images.is_cuda and torch.equal(labels.cpu(), cpu_labels)
        assert (images.cpu() - cpu_images).abs().mean() * 127.5 < 1.0  # nvJPEG's IDCT against libjpeg-turbo's


@pytest.mark.slow
def test_a_small_model_trains_the_same_on_either_loader(jpeg_shards, tmp_path):
    """Without RandAugment the two loaders feed the same training images (to float rounding): two epochs end at
    the same training loss; validation differs only by the eval resize (at most an image or two of 32)."""
    from reluvit.run.compose import compose
    from reluvit.run.train import run

    summaries = {loader: run(compose([
        "recipe=smoke", "model=micro2", "data=shards", f"data.path={jpeg_shards}", "data.img_size=16",
        "data.in_chans=3", f"data.num_classes={CLASSES}", f"data.loader={loader}", "data.num_workers=0",
        "recipe.epochs=2", "recipe.batch_size=16", "trainer.enable_progress_bar=false",
        f"runs_dir={tmp_path / loader}"])) for loader in ("reference", "dali")}
    reference, dali = (summaries[k]["metrics"] for k in ("reference", "dali"))
    assert summaries["dali"]["data_loader"] == "dali" and summaries["reference"]["data_loader"] == "reference"
    assert dali["train/loss"] == pytest.approx(reference["train/loss"], rel=1e-3)
    assert abs(dali["val/acc"] - reference["val/acc"]) <= 2 / VAL


def test_greyscale_shards_decode_and_augment_as_one_channel(tmp_path):
    """PNG digits (a greyscale source) at in_chans=1: the reference's pixels without RandAugment, to a grey level
    (DALI's grey output goes through its colour conversion); with it, one channel (augmented as three equal ones)
    in the value range."""
    shards = tmp_path / "digits"
    write_shards("embedded:digits", shards, shard_mb=0.05, val_count=100, progress=False)

    def batches(loader, **augment):
        module = ShardDataModule(str(shards), 16, 12, 1, 10, num_workers=0, loader=loader, shuffle_buffer=20,
                                 augment=augment)
        torch.manual_seed(0)
        return list(module.train_dataloader())

    for (ours, labels), (theirs, dali_labels) in zip(batches("reference"), batches("dali"), strict=True):
        assert torch.equal(labels, dali_labels) and theirs.shape == (16, 1, 12, 12)
        difference = (theirs - ours).abs() * 127.5
        assert difference.max() < 1 + 1e-3 and difference.mean() < 0.1, (difference.max(), difference.mean())
    augmented = torch.cat([images for images, _ in batches("dali", randaug_layers=2, randaug_magnitude=10)])
    assert augmented.shape[1] == 1 and augmented.min() >= -1 and augmented.max() <= 1

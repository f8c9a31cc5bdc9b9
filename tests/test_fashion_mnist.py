"""Fashion-MNIST from idx files: the reader against arrays written with ``struct`` here, the seeded stratified training
subset, the official test images as validation, a fingerprint of the files' content (not their place), one-line
errors; and the Debian package's files themselves where it is installed."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from reluvit.data import embedded
from reluvit.data.datamodules import EmbeddedDataModule
from reluvit.data.fingerprint import fingerprint

TRAIN, TEST = 10_300, 200  # the reader draws a 10 000-image subset: the train file must hold more


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """LeCun's idx layout written independently of the reader: magic 0x0000 08 <ndim>, big-endian sizes, bytes."""
    raw = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root, rng = tmp_path_factory.mktemp("fashion"), np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (TRAIN, 6, 5), dtype=np.uint8),
              "train-labels-idx1-ubyte": (np.arange(TRAIN) % 10).astype(np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (TEST, 6, 5), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, TEST, dtype=np.uint8)}
    for index, (name, array) in enumerate(arrays.items()):
        compress = index % 2 == 0  # the reader takes either
        write_idx(root / (f"{name}.gz" if compress else name), array, compress)
    return root, arrays


def test_idx_files_are_read_as_written(idx_dir):
    root, arrays = idx_dir
    assert np.array_equal(embedded.read_idx(root / "train-images-idx3-ubyte.gz"), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(embedded.read_idx(root / "train-labels-idx1-ubyte"), arrays["train-labels-idx1-ubyte"])


def test_a_seeded_stratified_subset_trains_and_the_official_test_images_validate(idx_dir):
    root, arrays = idx_dir
    data = embedded.fashion_mnist(str(root), split_seed=0)
    train, val = embedded.validation_split(data)
    assert len(train) == 10_000 and len(val) == TEST
    assert np.bincount(data.labels[train]).tolist() == [1000] * 10  # stratified: 1030 of each class in the file
    test_images = arrays["t10k-images-idx3-ubyte"].astype(np.float32) / 255
    assert np.array_equal(data.images[val], test_images)  # in the file's order
    assert np.array_equal(data.labels[val], arrays["t10k-labels-idx1-ubyte"])
    pool = {image.tobytes() for image in arrays["train-images-idx3-ubyte"]}
    drawn = [(data.images[i] * 255).round().astype(np.uint8).tobytes() for i in train]
    assert set(drawn) <= pool and len(set(drawn)) == 10_000  # distinct training images, none from the test file
    again, other = embedded.fashion_mnist(str(root), 0), embedded.fashion_mnist(str(root), 1)
    assert np.array_equal(again.images, data.images)
    assert not np.array_equal(other.images[train], data.images[train])


def test_the_fingerprint_follows_the_files_content_not_their_directory(idx_dir, tmp_path):
    root, _ = idx_dir
    config = {"dataset": "fashion_mnist", "path": str(root), "split_seed": 0}
    first = fingerprint(config)
    assert first["splits"] == {"train": 10_000, "val": TEST} and first["classes"] == 10
    copy = shutil.copytree(root, tmp_path / "copy")
    assert fingerprint({**config, "path": str(copy)})["digest"] == first["digest"]
    assert fingerprint({**config, "split_seed": 1})["digest"] != first["digest"]
    labels = embedded.read_idx(copy / "t10k-labels-idx1-ubyte").copy()
    labels[0] = (labels[0] + 1) % 10
    write_idx(copy / "t10k-labels-idx1-ubyte", labels, compress=False)
    assert fingerprint({**config, "path": str(copy)})["digest"] != first["digest"]


def test_the_datamodule_reads_the_configured_directory(idx_dir):
    root, _ = idx_dir
    module = EmbeddedDataModule("fashion_mnist", 32, path=str(root))
    module.setup()
    assert len(module.train_set) == 10_000 and len(module.val_set) == TEST
    assert module.train_set[0][0].shape == (1, 6, 5)


def test_missing_or_malformed_files_are_one_line_errors(idx_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as missing:
        embedded.fashion_mnist(str(tmp_path))
    assert "\n" not in str(missing.value)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x09\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        embedded.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros(4, np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="holds 3 bytes"):
        embedded.read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="official test images"):
        embedded.validation_split(embedded.fashion_mnist(str(idx_dir[0])), val_size=50)


@pytest.mark.skipif(not Path(embedded.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_debian_package_holds_the_official_splits():
    data = embedded.fashion_mnist()
    train, val = embedded.validation_split(data)
    assert data.images.shape[1:] == (28, 28) and len(train) == 10_000 and len(val) == 10_000
    assert np.bincount(data.labels[val]).tolist() == [1000] * 10  # the official test set: 1000 per class
    assert 0.2 < data.images.mean() < 0.4  # white-on-black clothing, scaled to [0, 1]

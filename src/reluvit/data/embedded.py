"""Image datasets held in memory as arrays, from installed packages, so the demo and the tests need no download.

* ``animal_mnist``: Animal-MNIST 0.4 (MIT): 10 000 28x28 white-on-black silhouettes, 10 classes x 1000. Installed with
  ``pip install --no-deps animal-mnist==0.4`` (its metadata asks for tensorflow, which its loader imports); the gzipped
  pickled arrays are read here directly.
* ``digits``: scikit-learn's copy of UCI optdigits: 1797 8x8 images with 17 grey levels, 10 classes.
* ``fashion_mnist``: Zalando's Fashion-MNIST (MIT) from the Debian package ``dataset-fashion-mnist`` (idx files under
  :data:`FASHION_MNIST_DIR`, or ``data.path``): a seeded, stratified 10 000-image subset of its 60 000 training images
  (a run costs what an Animal-MNIST run costs) and its official 10 000 test images as the validation split.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import pickle
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where dataset-fashion-mnist installs its idx files
FASHION_MNIST_TRAIN = 10_000  # the training subset: Animal-MNIST's size
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class ArrayDataset:
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    version: str  # of what it was read from: the package's version, or a digest of the files
    val_size: int  # images in its fixed validation split
    test_last: bool = False  # the last val_size images are the dataset's own test split (else a stratified split)


def animal_mnist() -> ArrayDataset:
    try:
        root = importlib.resources.files("animal_mnist") / "data" / "Animal_MNIST"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("Animal-MNIST is missing: pip install --no-deps animal-mnist==0.4") from e
    with gzip.open(root / "animal_data_version_3.gz") as f:
        images = pickle.load(f)
    with gzip.open(root / "animal_label_version_3.gz") as f:
        labels = pickle.load(f)
    classes = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
    return ArrayDataset(images.astype(np.float32) / 255.0, labels.astype(np.int64), classes,
                        version("animal-mnist"), val_size=1000)


def digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    return ArrayDataset(data.images.astype(np.float32) / 16.0, data.target.astype(np.int64),
                        tuple(str(c) for c in range(10)), version("scikit-learn"), val_size=297)  # 1500 to train


def fashion_mnist(path: str | None = None, split_seed: int = 0) -> ArrayDataset:
    """The training subset drawn by ``split_seed`` followed by the 10 000 official test images."""
    root = Path(path or FASHION_MNIST_DIR)
    files = {name: _idx_file(root, name) for pair in IDX_FILES.values() for name in pair}
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(files[name].read_bytes())
    (train_images, train_labels), (test_images, test_labels) = (
        (read_idx(files[images]), read_idx(files[labels])) for images, labels in IDX_FILES.values())
    subset = stratified_split(train_labels, FASHION_MNIST_TRAIN, split_seed)[1]
    classes = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
    images = np.concatenate([train_images[subset], test_images]).astype(np.float32) / 255.0
    labels = np.concatenate([train_labels[subset], test_labels]).astype(np.int64)
    return ArrayDataset(images, labels, classes, f"sha256:{digest.hexdigest()[:16]}", val_size=len(test_labels),
                        test_last=True)


def _idx_file(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST is missing: no {name}[.gz] in {root} (apt-get install "
                            f"dataset-fashion-mnist, or data.path=<the directory of its idx files>)")


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte idx array (LeCun's MNIST format: magic 0x0000080N, N big-endian int32 sizes, the bytes),
    gzipped or not."""
    raw = (gzip.decompress if path.suffix == ".gz" else bytes)(path.read_bytes())
    if raw[:3] != b"\0\0\x08" or not 1 <= raw[3] <= 4:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3]))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * len(shape))
    if data.size != np.prod(shape):
        raise ValueError(f"{path} holds {data.size} bytes, its header says {shape}")
    return data.reshape(shape)


EMBEDDED = {"animal_mnist": animal_mnist, "digits": digits, "fashion_mnist": fashion_mnist}
# the distribution that ships each dataset
PACKAGES = {"animal_mnist": "animal-mnist", "digits": "scikit-learn", "fashion_mnist": "dataset-fashion-mnist"}


def load(name: str, path: str | None = None, split_seed: int = 0) -> ArrayDataset:
    """Embedded dataset ``name``; ``path`` and ``split_seed`` where it reads a directory and draws a subset (the
    packaged sets ignore a path)."""
    if name == "fashion_mnist":
        return fashion_mnist(path, split_seed)
    return EMBEDDED[name]()


def validation_split(data: ArrayDataset, val_size: int | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: the dataset's own test split where it has one, else a stratified split of
    ``val_size`` images (default: its ``val_size``) drawn by ``seed``. ValueError, one line, for a size it cannot
    take."""
    if data.test_last:
        if val_size is not None and val_size != data.val_size:
            raise ValueError(f"data.val_size={val_size}: this dataset validates on its {data.val_size} official "
                             f"test images (data.val_size=null)")
        first = len(data.labels) - data.val_size
        return np.arange(first), np.arange(first, len(data.labels))
    return stratified_split(data.labels, data.val_size if val_size is None else val_size, seed)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded split with every class in proportion in the validation set; returns (train, val) indices."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels, random_state=seed)

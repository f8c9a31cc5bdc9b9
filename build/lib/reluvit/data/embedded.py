"""Image datasets that ship inside installed wheels, so the demo and the tests need no download.

* ``animal_mnist``: Animal-MNIST 0.4 (MIT): 10 000 28x28 white-on-black silhouettes, 10 classes x 1000. Installed with
  ``pip install --no-deps animal-mnist==0.4`` (its metadata asks for tensorflow, which its loader imports); the gzipped
  pickled arrays are read here directly.
* ``digits``: scikit-learn's copy of UCI optdigits: 1797 8x8 images with 17 grey levels, 10 classes.
"""

from __future__ import annotations

import gzip
import importlib.resources
import pickle
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    images: np.ndarray  # (N, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]


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
    return ArrayDataset(images.astype(np.float32) / 255.0, labels.astype(np.int64), classes)


def digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    return ArrayDataset(data.images.astype(np.float32) / 16.0, data.target.astype(np.int64),
                        tuple(str(c) for c in range(10)))


EMBEDDED = {"animal_mnist": animal_mnist, "digits": digits}
PACKAGES = {"animal_mnist": "animal-mnist", "digits": "scikit-learn"}  # the distribution that ships each dataset
# Each dataset's fixed validation split (the runs' validation set, the few-shot stand-ins' test set)
VAL_SIZES = {"animal_mnist": 1000, "digits": 297}  # digits: 1500 images remain for training


def validation_split(name: str, labels: np.ndarray, val_size: int | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of embedded dataset ``name``: :data:`VAL_SIZES` images unless ``val_size`` says."""
    return stratified_split(labels, VAL_SIZES[name] if val_size is None else val_size, seed)


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded split with every class in proportion in the validation set; returns (train, val) indices."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels, random_state=seed)

"""TensorFlow parity of big_vision's Inception crop and resizes (optional `parity` extra): the crop boxes of
``sample_distorted_box`` against ``tf.image.stateless_sample_distorted_bounding_box`` by two-sample
Kolmogorov-Smirnov tests (which reject torchvision's ``RandomResizedCrop`` sampler), ``resize_bilinear`` against
``tf.image.resize(..., "bilinear")`` and ``resize_area`` against ``tf.image.resize(..., "area")``, each followed by
big_vision's clip and truncating cast."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop

from reluvit.data.preprocess import resize_area, resize_bilinear, sample_distorted_box

# after torchvision: importing torchvision 0.29 after tensorflow-cpu 2.21 crashes the interpreter
tf = pytest.importorskip("tensorflow", reason="TensorFlow parity tests need the optional `parity` extra")

DRAWS = 2000
ALPHA = 0.001
CRITICAL = math.sqrt(-math.log(ALPHA / 2) / 2) * math.sqrt(2 / DRAWS)  # two-sample KS, equal sizes: 0.0616
# ImageNet-like, portrait, square, wide, and a strip where ~5 % of the boxes are the whole image (TF's fallback)
SHAPES = [(375, 500), (500, 333), (224, 224), (200, 1000), (40, 1056)]


@lru_cache
def _tf_boxes(height: int, width: int) -> np.ndarray:
    """(DRAWS, 4) boxes (top, left, crop height, crop width) from TF's op as big_vision calls it."""
    boxes = []
    for seed in range(DRAWS):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3], tf.zeros([0, 0, 4]), seed=[seed, 1], area_range=(0.05, 1.0), min_object_covered=0,
            use_image_if_no_bounding_boxes=True)
        boxes.append((*begin.numpy()[:2], *size.numpy()[:2]))
    return np.array(boxes)


def _our_boxes(height: int, width: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return np.array([sample_distorted_box(height, width, generator) for _ in range(DRAWS)])


def _torchvision_boxes(height: int, width: int) -> np.ndarray:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    image = torch.empty(1, height, width)
    boxes = np.array([RandomResizedCrop.get_params(image, [0.05, 1.0], [3 / 4, 4 / 3]) for _ in range(DRAWS)])
    torch.random.set_rng_state(generator_state)
    return boxes


def _statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T.astype(np.float64)
    return {"area": h * w / (height * width), "aspect": w / h, "height": h, "width": w, "top": top, "left": left}


@pytest.mark.parametrize("height, width", SHAPES)
def test_crop_box_distributions_match_tf(height, width):
    ours = _statistics(_our_boxes(height, width), height, width)
    reference = _statistics(_tf_boxes(height, width), height, width)
    statistics = {name: ks_2samp(ours[name], reference[name]).statistic for name in ours}
    assert max(statistics.values()) < CRITICAL, statistics


@pytest.mark.parametrize("height, width, names", [(375, 500, ["area"]), (500, 333, ["area", "aspect"]),
                                                   (224, 224, ["area", "aspect"]), (200, 1000, ["area", "aspect"])])
def test_ks_rejects_torchvisions_sampler(height, width, names):
    """torchvision draws the area uniformly and the aspect log-uniformly, then falls back to a central crop: its
    areas differ from TF's everywhere, its realised aspects except on 4:3 images (D = 0.016 at 375 x 500)."""
    theirs = _statistics(_torchvision_boxes(height, width), height, width)
    reference = _statistics(_tf_boxes(height, width), height, width)
    for name in names:
        assert ks_2samp(theirs[name], reference[name]).statistic > 1.5 * CRITICAL, name


def _images(channels: int) -> list[np.ndarray]:
    """uint8 HWC images of many shapes (to shrink and to enlarge): noise, a smooth pattern, two flat halves."""
    rng = np.random.default_rng(channels)
    images = []
    for height, width in [(375, 500), (17, 300), (100, 100), (224, 224), (1000, 37), (50, 60), (223, 225)]:
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([np.sin(x / 7 + y / 11 + c) * 120 + 128 for c in range(channels)], -1)
        flat = np.full((height, width, channels), 100)
        flat[: height // 2] = 37
        images += [rng.integers(0, 256, (height, width, channels)), smooth, flat]
    return [image.astype(np.uint8) for image in images]


def _tf_resized(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """big_vision's ``resize``: tf.image.resize, then clip and cast back to uint8 (truncating)."""
    return tf.cast(tf.clip_by_value(tf.image.resize(image, size, method), 0, 255), tf.uint8).numpy()


def _compare(ours: torch.Tensor, reference: np.ndarray) -> tuple[int, float]:
    """Max abs difference and fraction of differing values."""
    difference = np.abs(ours.permute(1, 2, 0).numpy().astype(int) - reference.astype(int))
    return int(difference.max()), float((difference > 0).mean())


@pytest.mark.parametrize("channels", [3, 1])
def test_resize_bilinear_matches_tf_resize(channels, one_thread):
    for image in _images(channels):
        ours = resize_bilinear(torch.from_numpy(image).permute(2, 0, 1), 224)
        largest, differing = _compare(ours, _tf_resized(image, (224, 224), "bilinear"))
        # measured: identical; F.interpolate (one thread) differs on 2.5-5 % of the two-level images' values
        assert largest <= 1 and differing < 1e-3, (image.shape, largest, differing)


@pytest.mark.parametrize("channels", [3, 1])
def test_resize_area_matches_tf_resize(channels):
    for image in _images(channels):
        size = (256, max(1, round(image.shape[1] * 256 / image.shape[0])))
        ours = resize_area(torch.from_numpy(image).permute(2, 0, 1), *size)
        largest, differing = _compare(ours, _tf_resized(image, size, "area"))
        assert largest <= 1 and differing < 1e-3, (image.shape, largest, differing)  # measured: identical

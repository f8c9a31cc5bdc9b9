"""``reluvit.data.randaug`` against big_vision's RandAugment ops (``pp/autoaugment.py``) written here with
TensorFlow's own image ops: ``tf.raw_ops.ImageProjectiveTransformV3`` with big_vision's wrap/unwrap for the geometric
ops (``tfa.image``'s rotate matrix), ``tf.image.rgb_to_grayscale``, ``tf.histogram_fixed_width``,
``tf.nn.depthwise_conv2d``, ``tf.bitwise``. Every op at m = 0, 10, 15 (both signs where signed, several Cutout
centres) on a few natural-looking images, and whole ``RandAugment`` draws, must agree within 1 grey level."""

from __future__ import annotations

import contextlib
import logging
import math

import numpy as np
import pytest
import torch

# reluvit (torch, torchvision, triton) loads before TensorFlow: importing triton after TensorFlow segfaults.
from reluvit.data.randaug import OPS, RandAugment, apply_op

tf = pytest.importorskip("tensorflow", reason="TensorFlow is the parity reference (the optional extra 'parity')")

log = logging.getLogger(__name__)

with contextlib.suppress(RuntimeError):  # already set (or TF already running) when another parity module ran first
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

MAGNITUDES = (0, 10, 15)
CUTOUT_SEEDS = (0, 1, 2, 3)
FILL = 128


def _natural(height: int, width: int, seed: int, dim: bool = False) -> np.ndarray:
    """H x W x 3 uint8: smooth gradients and waves, a bright disc and a dark bar (edges), pixel noise. ``dim`` squeezes
    the range (for AutoContrast) and makes the last channel constant (its "nothing to stretch" branch)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    freq = rng.uniform(1, 4, 3)
    img = np.stack([128 + 90 * np.sin(2 * np.pi * (freq[c] * x + (c + 1) * y / 2)) for c in range(3)], -1)
    img[(y - 0.5) ** 2 + (x - 0.4) ** 2 < 0.04] = (235, 220, 200)
    img[int(0.7 * height):int(0.8 * height), width // 4:] = (20, 30, 25)
    img += rng.normal(0, 6, img.shape)
    if dim:
        img = 70 + img * 0.4
        img[..., 2] = 99
    return np.clip(img, 0, 255).astype(np.uint8)


IMAGES = {"64x64": _natural(64, 64, 0), "48x80": _natural(48, 80, 1), "dim 40x56": _natural(40, 56, 2, dim=True),
          "224x224": _natural(224, 224, 3)}


# --- big_vision's ops, in TensorFlow, on H x W x 3 uint8 -------------------------------------------------------------

def bv_args(name: str, level: float, sign: int) -> tuple:
    """big_vision's ``level_to_arg`` (cutout_const 40, translate_const 100), with the drawn sign."""
    frac = level / 10.0
    return {
        "Rotate": (sign * frac * 30.0,), "ShearX": (sign * frac * 0.3,), "ShearY": (sign * frac * 0.3,),
        "TranslateX": (sign * frac * 100.0,), "TranslateY": (sign * frac * 100.0,),
        "Posterize": (int(frac * 4),), "Solarize": (int(frac * 256),), "SolarizeAdd": (int(frac * 110),),
        "Color": (frac * 1.8 + 0.1,), "Contrast": (frac * 1.8 + 0.1,), "Brightness": (frac * 1.8 + 0.1,),
        "Sharpness": (frac * 1.8 + 0.1,), "Cutout": (int(frac * 40),),
    }.get(name, ())


def tf_blend(image1, image2, factor: float):
    if factor in (0.0, 1.0):
        return image2 if factor else image1
    lo, hi = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    mixed = lo + factor * (hi - lo)
    if not 0.0 < factor < 1.0:
        mixed = tf.clip_by_value(mixed, 0.0, 255.0)
    return tf.cast(mixed, tf.uint8)


def tf_autocontrast(image):
    channels = []
    for c in range(3):
        ch = image[:, :, c]
        lo, hi = tf.cast(tf.reduce_min(ch), tf.float32), tf.cast(tf.reduce_max(ch), tf.float32)
        if hi > lo:
            scale = 255.0 / (hi - lo)
            ch = tf.cast(tf.clip_by_value(tf.cast(ch, tf.float32) * scale + (-lo * scale), 0.0, 255.0), tf.uint8)
        channels.append(ch)
    return tf.stack(channels, 2)


def tf_equalize(image):
    channels = []
    for c in range(3):
        ch = tf.cast(image[:, :, c], tf.int32)
        hist = tf.histogram_fixed_width(ch, [0, 255], nbins=256)
        used = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(used) - used[-1]) // 255
        if step > 0:
            lut = tf.clip_by_value(tf.concat([[0], ((tf.cumsum(hist) + step // 2) // step)[:-1]], 0), 0, 255)
            ch = tf.gather(lut, ch)
        channels.append(tf.cast(ch, tf.uint8))
    return tf.stack(channels, 2)


def tf_posterize(image, bits: int):
    shift = 8 - bits
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def tf_solarize(image, threshold: int):
    return tf.where(image < threshold, image, 255 - image)  # TF converts the Python threshold to uint8 itself


def tf_solarize_add(image, addition: int):
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int64) + addition, 0, 255), tf.uint8)
    return tf.where(image < 128, added, image)


def tf_color(image, factor: float):
    return tf_blend(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image, factor)


def tf_contrast(image, factor: float):
    grey = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
    total = tf.reduce_sum(tf.cast(tf.histogram_fixed_width(grey, [0, 255], nbins=256), tf.float32)) / 256.0
    flat = tf.cast(tf.clip_by_value(tf.ones_like(grey, tf.float32) * total, 0.0, 255.0), tf.uint8)
    return tf_blend(tf.image.grayscale_to_rgb(flat), image, factor)


def tf_brightness(image, factor: float):
    return tf_blend(tf.zeros_like(image), image, factor)


def tf_sharpness(image, factor: float):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32, shape=[3, 3, 1, 1]) / 13.0
    smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], tf.tile(kernel, [1, 1, 3, 1]),
                                    [1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.pad(tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8), [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(smooth[1:-1, 1:-1]), [[1, 1], [1, 1], [0, 0]])
    return tf_blend(tf.where(interior == 1, smooth, image), image, factor)


def tf_transform(image, transform):
    """big_vision's ``unwrap(tfa.image.transform(wrap(image), transform), 128)`` with TF's kernel."""
    wrapped = tf.concat([image, tf.ones_like(image[:, :, :1])], 2)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=wrapped[None], transforms=tf.reshape(tf.cast(transform, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")[0]
    return tf.where(out[:, :, 3:] == 0, tf.constant(FILL, tf.uint8), out[:, :, :3])


def tf_rotate(image, degrees: float):
    """``tfa.image.rotate``: its ``angles_to_projective_transforms`` in float32."""
    angles = (tf.constant(degrees, tf.float32) * (math.pi / 180.0))[None]
    height = tf.cast(tf.shape(image)[0], tf.float32)[None]
    width = tf.cast(tf.shape(image)[1], tf.float32)[None]
    cos, sin = tf.math.cos(angles), tf.math.sin(angles)
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return tf_transform(image, tf.concat([cos, -sin, x_offset, sin, cos, y_offset, tf.zeros([2])], 0))


def tf_cutout(image, pad: int, center_y: int, center_x: int):
    height, width = image.shape[0], image.shape[1]
    top, bottom = max(0, center_y - pad), max(0, height - center_y - pad)
    left, right = max(0, center_x - pad), max(0, width - center_x - pad)
    hole = tf.zeros([height - top - bottom, width - left - right], tf.uint8)
    mask = tf.tile(tf.pad(hole, [[top, bottom], [left, right]], constant_values=1)[:, :, None], [1, 1, 3])
    return tf.where(mask == 0, tf.constant(FILL, tf.uint8), image)


TF_OPS = {
    "AutoContrast": tf_autocontrast, "Equalize": tf_equalize, "Invert": lambda image: 255 - image,
    "Rotate": tf_rotate, "Posterize": tf_posterize, "Solarize": tf_solarize, "Color": tf_color,
    "Contrast": tf_contrast, "Brightness": tf_brightness, "Sharpness": tf_sharpness,
    "ShearX": lambda image, level: tf_transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
    "ShearY": lambda image, level: tf_transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]),
    "TranslateX": lambda image, pixels: tf_transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]),
    "TranslateY": lambda image, pixels: tf_transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]),
    "Cutout": tf_cutout, "SolarizeAdd": tf_solarize_add,
}
SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _cutout_centre(shape: tuple[int, ...], seed: int) -> tuple[int, int]:
    """The centre ``apply_op`` draws for Cutout from ``torch.Generator().manual_seed(seed)``: row, then column."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(int(torch.randint(size, (), generator=gen)) for size in shape[:2])


def _to_torch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def _compare(name: str, magnitude: float) -> tuple[int, int]:
    """Max abs difference and number of differing values, over the images and the op's random choices."""
    worst, differing = 0, 0
    for image in IMAGES.values():
        choices = [(s, None) for s in ((1, -1) if name in SIGNED else (1,))]
        if name == "Cutout":
            choices = [(1, seed) for seed in CUTOUT_SEEDS]
        for sign, seed in choices:
            args = bv_args(name, magnitude, sign) + (_cutout_centre(image.shape, seed) if seed is not None else ())
            want = TF_OPS[name](tf.constant(image), *args).numpy()
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            got = apply_op(_to_torch(image), name, magnitude, sign=sign, generator=gen).permute(1, 2, 0).numpy()
            diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
            worst, differing = max(worst, int(diff.max())), differing + int((diff > 0).sum())
    return worst, differing


@pytest.fixture(scope="module")
def parity() -> dict[tuple[str, int], tuple[int, int]]:
    return {(name, m): _compare(name, m) for name in OPS for m in MAGNITUDES}


@pytest.mark.parametrize("name", OPS)
def test_op_matches_big_vision_tensorflow_within_one_grey_level(parity, name):
    worst = {m: parity[name, m][0] for m in MAGNITUDES}
    assert max(worst.values()) <= 1, f"{name}: max abs difference per magnitude {worst}"


def test_parity_table(parity, tmp_path):
    """Logs the table (op, max abs diff and differing values per m) and writes it as markdown."""
    header = "| op | " + " | ".join(f"m={m} max diff (values differing)" for m in MAGNITUDES) + " |"
    rows = [header, "|---" * (len(MAGNITUDES) + 1) + "|"]
    for name in OPS:
        rows.append(f"| {name} | " + " | ".join("{} ({})".format(*parity[name, m]) for m in MAGNITUDES) + " |")
    table = "\n".join(rows)
    (tmp_path / "randaug_parity.md").write_text(table + "\n")
    log.info("RandAugment parity with big_vision's TF ops (%s):\n%s", tmp_path / "randaug_parity.md", table)
    assert len(rows) == len(OPS) + 2


@pytest.mark.parametrize("magnitude", (2.5, 7, 13.5))
def test_op_matches_at_other_magnitudes(magnitude):
    """Other angles, shears, factors and thresholds (non-integer levels too) than the table's."""
    worst = {name: _compare(name, magnitude)[0] for name in OPS}
    assert max(worst.values()) <= 1, f"max abs difference per op at m = {magnitude}: {worst}"


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_randaugment_matches_big_vision_chains(magnitude):
    """Whole RandAugment(2, m) draws replayed op by op in TF: the draw order (op, sign, Cutout's row and column) is
    RandAugment's documented one."""
    for seed in range(24):
        image = IMAGES["48x80"]
        gen = torch.Generator().manual_seed(seed)
        got = RandAugment(2, magnitude)(_to_torch(image), generator=gen).permute(1, 2, 0).numpy()
        replay, want = torch.Generator().manual_seed(seed), tf.constant(image)
        for _ in range(2):
            name = OPS[int(torch.randint(len(OPS), (), generator=replay))]
            sign = 1 - 2 * int(torch.randint(2, (), generator=replay))
            args = bv_args(name, magnitude, sign)
            if name == "Cutout":
                args += tuple(int(torch.randint(size, (), generator=replay)) for size in image.shape[:2])
            want = TF_OPS[name](want, *args)
        diff = np.abs(got.astype(np.int16) - want.numpy().astype(np.int16)).max()
        assert diff <= 1, f"seed {seed}: max abs difference {diff}"

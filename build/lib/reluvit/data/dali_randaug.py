"""big_vision's RandAugment (:mod:`reluvit.data.randaug`, the reference) as NVIDIA DALI operators, for the DALI
loader's pipeline definitions (``@pipeline_def(enable_conditionals=True)``): HWC uint8 RGB batches, on the GPU
(device "gpu") or the CPU (``device_id=None``).

Built on DALI's auto-augment library: :func:`rand_augment` is DALI's ``apply_rand_augment`` (per sample and layer
an op uniform over the 16 ``OPS`` and a sign uniform over +-1, the op always applied) over one ``@augmentation``
per op whose magnitudes are the single level ``magnitude`` (one bin, no clipping) and whose ``mag_to_param`` is
the reference's level -> argument function; the signs reach the same five ops (``randomly_negate``). DALI's own
suite is used where it computes big_vision's pixels (Invert, Posterize with the reference's clamped-shift mask,
Solarize with the threshold modulo 256); the rest are written here with the reference's float32 expressions, in
its order of operations, so that truncation lands on the same integers: AutoContrast, Equalize (PIL's lut, from a
one-hot histogram: DALI's ``equalize`` is OpenCV's), Color, Contrast (towards H * W / 256), Brightness, Sharpness
(PIL's kernel summed term by term, the border kept; DALI's ``filter`` rounds), SolarizeAdd (clipped), Cutout
(fill 128, a centre uniform over the pixels). The argument follows the reference's: no random sign for the
enhance ops (factor level / 10 * 1.8 + 0.1), translate by 100 * level / 10 pixels, fill 128, nearest neighbour.

Where DALI differs from the reference: the geometric ops are ``warp_affine``, which maps each output pixel centre
(x + 0.5, y + 0.5) to an input position and takes the pixel it falls in; the matrix here shifts by half a pixel
(plus ``TIE_BIAS``) so that this is the reference's position rounded half up, but computed in DALI's float32 order
instead of the reference's, so the two disagree at the reference's rounding ties, whose side depends on its own
float32 rounding (negative shears above all; positions at -0.5 are filled by the reference, not here). Measured on
natural-ish images: TranslateX/Y exact, Rotate exact at m <= 10 (45 degrees at m = 15: <= 0.2 % of pixels),
ShearX/Y <= 1.3 % of pixels (mean abs difference <= 0.31); tests/test_dali_randaug.py bounds them. The random
draws are DALI's (ops, signs, Cutout's centre), not torch's: the same distributions, other samples. Equalize costs
256 operations per pixel (DALI has no histogram or gather): cheap on the GPU, about 0.3 s per 224 px image on one
CPU thread (the other ops 0.1 - 15 ms).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.auto_aug import augmentations as dali_augs
from nvidia.dali.auto_aug.core import augmentation, signed_bin
from nvidia.dali.auto_aug.core._augmentation import Augmentation
from nvidia.dali.auto_aug.rand_augment import apply_rand_augment

from reluvit.data import randaug
from reluvit.data.randaug import FILL, OPS, SIGNED_OPS

__all__ = ["OPS", "apply_op", "augmentations", "rand_augment"]

F32 = np.float32
LAYOUT = "HWC"  # set on the input too: the conditional's branches must agree on it
# Half a pixel (DALI samples at pixel centres) plus a bias that sends DALI's float32 positions at the reference's
# rounding ties up, as its half-away-from-zero rounding does for positive positions (measured: 6e-4 keeps Rotate at
# m = 10 exact and fixes the positive shears' ties; 1e-3 starts moving genuine near-ties of rotations).
TIE_BIAS = 0.5 + 6e-4


def _argument(name: str, level: float):
    """The reference's (big_vision's) argument of op ``name`` at ``level`` (signed for the signed ops)."""
    return randaug.LEVEL_TO_ARGS[name](float(level))[0]


def _on_device_of(data, node):
    """``node`` (computed on the CPU from shapes or random draws) where ``data`` is, for arithmetic with it."""
    return node.gpu() if data.device == "gpu" else node


def _height_width(data, shape):
    """Per-sample (H, W): from ``shape`` (pairs of ints, or a DataNode of HW[C] shapes) or read from ``data``."""
    if shape is None:
        shape = data.shape()
    if isinstance(shape, (tuple, list)):
        return tuple(types.Constant(np.int64(size), device="cpu") for size in shape[:2])
    return shape[0], shape[1]


def _to_uint8(x):
    """The reference's float -> uint8 cast (TF's: truncation) of values clipped to [0, 255]; DALI's cast rounds."""
    return fn.cast(dmath.floor(dmath.clamp(x, 0.0, 255.0)), dtype=types.UINT8)


def _blend(degenerate, data, factor):
    """The reference's ``blend(degenerate, data, factor)`` in float32 (``degenerate`` a DataNode or a number);
    clipping is a no-op when interpolating."""
    base = F32(degenerate) if isinstance(degenerate, (int, float)) else fn.cast(degenerate, dtype=types.FLOAT)
    return _to_uint8(base + (fn.cast(data, dtype=types.FLOAT) - base) * factor)


def _select(mask, if_true, if_false):
    """Elementwise ``mask ? if_true : if_false`` for uint8 values (one of the two products is 0)."""
    return mask * if_true + (mask ^ True) * if_false


def _enhance_factor(level: float) -> np.ndarray:
    return F32(_argument("Color", level))


@augmentation(name="AutoContrast")
def auto_contrast(data, _):
    """Per channel, min -> 0 and max -> 255 as the reference computes it (``x * scale + offset``, float32)."""
    lo = fn.cast(fn.reductions.min(data, axes=[0, 1], keep_dims=True), dtype=types.FLOAT)
    hi = fn.cast(fn.reductions.max(data, axes=[0, 1], keep_dims=True), dtype=types.FLOAT)
    varies = hi > lo
    scale = 255.0 / (hi - lo + (varies ^ True))  # constant channels: any finite scale, they are kept as they are
    stretched = _to_uint8(fn.cast(data, dtype=types.FLOAT) * scale + (-lo * scale))
    return _select(varies, stretched, data)


@augmentation(name="Equalize")
def equalize(data, _):
    """PIL's equalisation with big_vision's integer lut, per channel: a pixel of value v becomes
    ``(#pixels below v + step // 2) // step``, ``step = (#pixels - #pixels at the maximum) // 255`` (kept as it is
    when step is 0). Histogram and lookup go through a 256-wide one-hot encoding (DALI has no histogram op)."""
    one_hot = fn.one_hot(data, num_classes=256, dtype=types.UINT8)  # H x W x C x 256
    hist = fn.cast(fn.reductions.sum(one_hot, axes=[0, 1]), dtype=types.INT32)  # C x 256
    values = types.Constant(np.arange(256, dtype=np.int32), device=data.device)
    below = types.Constant(np.tril(np.ones((256, 256), np.int32), -1), device=data.device)  # [v, u]: u < v
    count_below = fn.reductions.sum(fn.expand_dims(hist, axes=[1]) * below, axes=[2])  # C x 256
    top = fn.cast(fn.reductions.max(data, axes=[0, 1]), dtype=types.INT32)  # C
    count_top = fn.reductions.sum(hist * (values == fn.expand_dims(top, axes=[1])), axes=[1])
    step = fn.expand_dims((fn.reductions.sum(hist, axes=[1]) - count_top) // 255, axes=[1])  # C x 1
    flat = step == 0
    lut = dmath.min((count_below + step // 2) // (step + flat), 255)
    lut = fn.cast(_select(flat, values, lut), dtype=types.UINT8)
    equalized = fn.reductions.max(one_hot * lut, axes=[3])
    return fn.reshape(equalized, layout=LAYOUT)  # the reduction drops it; the branches' outputs must agree


def _rotation_param(level: float) -> np.ndarray:
    """(cos, sin) of the reference's angle: float32 radians, correctly rounded cos and sin (as TF's kernel)."""
    radians = F32(_argument("Rotate", level)) * F32(math.pi / 180.0)
    return np.array([math.cos(radians), math.sin(radians)], F32)


def _dali_matrix(a0, a1, a2, b0, b1, b2):
    """DALI's warp matrix for the reference's map (x, y) -> (a0 x + a1 y + a2, b0 x + b1 y + b2) rounded half up:
    DALI maps pixel centres (x + 0.5, y + 0.5) and takes the pixel its result falls in (floor)."""
    return [[a0, a1, a2 + TIE_BIAS - 0.5 * a0 - 0.5 * a1], [b0, b1, b2 + TIE_BIAS - 0.5 * b0 - 0.5 * b1]]


def _warp(data, matrix):
    return fn.warp_affine(data, matrix=matrix, fill_value=FILL, interp_type=types.INTERP_NN, inverse_map=True)


@augmentation(name="Rotate", randomly_negate=True, mag_to_param=_rotation_param)
def rotate(data, cos_sin, shape=None):
    """About ((W - 1) / 2, (H - 1) / 2), counterclockwise for positive levels (the reference's float32 offsets)."""
    height, width = _height_width(data, shape)
    h1, w1 = (fn.cast(size - 1, dtype=types.FLOAT) for size in (height, width))
    cos, sin = cos_sin[0], cos_sin[1]
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    matrix = fn.reshape(fn.stack(*[fn.cast(v, dtype=types.FLOAT) for row in _dali_matrix(
        cos, -sin, x_offset, sin, cos, y_offset) for v in row]), shape=[2, 3])
    return _warp(data, matrix)


def _affine_param(name: str):
    """``mag_to_param`` of a shear or translation: DALI's matrix of the reference's map at the signed level."""
    def param(level: float) -> np.ndarray:
        arg = F32(_argument(name, level))
        a, b = {"ShearX": ((1, arg, 0), (0, 1, 0)), "ShearY": ((1, 0, 0), (arg, 1, 0)),
                "TranslateX": ((1, 0, arg), (0, 1, 0)), "TranslateY": ((1, 0, 0), (0, 1, arg))}[name]
        return np.array(_dali_matrix(*a, *b), F32)
    return param


def _affine(name: str) -> Augmentation:
    @augmentation(name=name, randomly_negate=True, mag_to_param=_affine_param(name))
    def affine(data, matrix):
        return _warp(data, matrix)
    return affine


@augmentation(name="Color", mag_to_param=_enhance_factor, param_device="auto")
def color(data, factor):
    """Blend with ``tf.image.rgb_to_grayscale``'s grey image (float32 x / 255, weighted, x 255.5, truncated)."""
    unit = fn.cast(data, dtype=types.FLOAT) * F32(1 / 255.0)
    grey = unit[:, :, 0] * F32(0.2989) + unit[:, :, 1] * F32(0.5870) + unit[:, :, 2] * F32(0.1140)
    grey = fn.cast(dmath.floor(grey * F32(255.5)), dtype=types.UINT8)
    return _blend(fn.expand_dims(grey, axes=[2]), data, factor)


@augmentation(name="Contrast", mag_to_param=_enhance_factor, param_device="auto")
def contrast(data, factor, shape=None):
    """Blend with the constant H * W / 256 (capped at 255), big_vision's degenerate image."""
    height, width = _height_width(data, shape)
    level = dmath.min((height * width) // 256, 255)
    return _blend(_on_device_of(data, fn.cast(level, dtype=types.FLOAT)), data, factor)


@augmentation(name="Brightness", mag_to_param=_enhance_factor, param_device="auto")
def brightness(data, factor):
    return _blend(0.0, data, factor)


SMOOTH_WEIGHTS = [[F32(weight / 13.0) for weight in row] for row in randaug.SMOOTH_KERNEL]


@augmentation(name="Sharpness", mag_to_param=_enhance_factor, param_device="auto")
def sharpness(data, factor):
    """Blend with PIL's SMOOTH image: the 3 x 3 products summed in the reference's row-major float32 order over
    the valid interior (slices, as DALI's ``filter`` sums in its own order and rounds), the border kept."""
    pixels = fn.cast(data, dtype=types.FLOAT)
    rows, cols = (slice(0, -2), slice(1, -1), slice(2, None)), (slice(0, -2), slice(1, -1), slice(2, None))
    smooth = None
    for i, weights in enumerate(SMOOTH_WEIGHTS):
        for j, weight in enumerate(weights):
            term = pixels[rows[i], cols[j]] * weight
            smooth = term if smooth is None else smooth + term
    middle = fn.cat(data[1:-1, 0:1], _to_uint8(smooth), data[1:-1, -1:], axis=1)
    return _blend(fn.cat(data[0:1], middle, data[-1:], axis=0), data, factor)


def _int_argument(name: str):
    def param(level: float) -> np.ndarray:
        return np.int32(_argument(name, level))
    return param


@augmentation(name="Cutout", mag_to_param=_int_argument("Cutout"))
def cutout(data, pad, shape=None):
    """Fill [cy - pad, cy + pad) x [cx - pad, cx + pad), clipped to the image, with 128; the centre uniform over
    the pixels."""
    height, width = _height_width(data, shape)
    sizes = fn.cast(fn.stack(height, width), dtype=types.FLOAT)
    centre = dmath.min(dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[2]) * sizes), sizes - 1)
    corner = centre - fn.cast(pad, dtype=types.FLOAT)
    start = dmath.max(corner, 0.0)
    extent = dmath.min(corner + fn.cast(2 * pad, dtype=types.FLOAT), sizes) - start
    return fn.erase(data, anchor=start, shape=extent, axis_names="HW", fill_value=FILL)


@augmentation(name="SolarizeAdd", mag_to_param=_int_argument("SolarizeAdd"), param_device="auto")
def solarize_add(data, addition):
    """Add the level's addition to the pixels below 128, clipped to 255 (DALI's own wraps around past 255)."""
    added = fn.cast(dmath.min(fn.cast(data, dtype=types.INT32) + addition, 255), dtype=types.UINT8)
    return _select(data < 128, added, data)


def _posterize_mask(level: float) -> np.ndarray:
    """The reference's posterize of a 255 pixel: its bit mask (shift clamped to [0, 7] as TF's)."""
    full = torch.full((1, 1, 1), 255, dtype=torch.uint8)
    return np.uint8(randaug.posterize(full, _argument("Posterize", level)).item())


def _solarize_threshold(level: float) -> np.ndarray:
    """The reference's threshold modulo 256: TF compares with it cast to uint8."""
    return np.int32(_argument("Solarize", level) % 256)


_AUGMENTATIONS: dict[str, Augmentation] = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": dali_augs.invert.augmentation(name="Invert"),
    "Rotate": rotate,
    "Posterize": dali_augs.posterize.augmentation(name="Posterize", mag_to_param=_posterize_mask),
    "Solarize": dali_augs.solarize.augmentation(name="Solarize", mag_to_param=_solarize_threshold),
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": _affine("ShearX"),
    "ShearY": _affine("ShearY"),
    "TranslateX": _affine("TranslateX"),
    "TranslateY": _affine("TranslateY"),
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}
_WITHOUT_ARGUMENT = frozenset(name for name in OPS if not randaug.LEVEL_TO_ARGS[name](0.0))


def augmentations(magnitude: float) -> list[Augmentation]:
    """The 16 ops in ``OPS`` order at level ``magnitude``: DALI augmentations with the one magnitude (bin 0 of 1)."""
    if magnitude < 0:
        raise ValueError(f"RandAugment magnitude must be >= 0, got {magnitude}")
    levels = np.array([float(magnitude)])
    return [_AUGMENTATIONS[name] if name in _WITHOUT_ARGUMENT else _AUGMENTATIONS[name].augmentation(mag_range=levels)
            for name in OPS]


def rand_augment(images, num_layers: int, magnitude: float, shape=None):
    """big_vision's ``randaug(num_layers, magnitude)`` on a batch of HWC uint8 RGB images (a DataNode, CPU or GPU),
    inside a pipeline definition with conditionals enabled. ``shape``: the images' (H, W) as ints when all have that
    size (saves reading it per sample), a DataNode of per-sample shapes, or None (read from ``images``)."""
    if num_layers < 0:
        raise ValueError(f"RandAugment num_layers must be >= 0, got {num_layers}")
    if num_layers == 0:
        return images
    extra = {} if shape is None else {"shape": shape}
    images = fn.reshape(images, layout=LAYOUT)
    return apply_rand_augment(augmentations(magnitude), images, num_layers, 0, num_magnitude_bins=1, **extra)


def apply_op(images, name: str, magnitude: float, *, sign: int = 1, shape=None):
    """One op at level ``magnitude`` on every image, ``sign`` (+1/-1) for the signed ops: the DALI counterpart of
    :func:`reluvit.data.randaug.apply_op` (Cutout's centre drawn by DALI)."""
    if name not in _AUGMENTATIONS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {', '.join(OPS)}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    op = augmentations(magnitude)[OPS.index(name)]
    magnitude_bin = 0
    if name in SIGNED_OPS:
        magnitude_bin = signed_bin(0, random_sign=types.Constant(np.int32(sign == -1), device="cpu"))
    images = fn.reshape(images, layout=LAYOUT)
    return op(images, magnitude_bin=magnitude_bin, num_magnitude_bins=1, shape=shape)  # ops without it ignore it

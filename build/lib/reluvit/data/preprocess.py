"""big_vision's image preprocessing (paper.md §3) for the shard and ImageFolder pipelines; uint8 CHW tensors until
``value_range``.

* train: ``decode_jpeg_and_inception_crop(size)``, ``flip_lr``, ``randaug(n, m)`` (:mod:`reluvit.data.randaug`,
  big_vision's op for op; timm's ``rand-m{m}-n{n}`` with ``augment_impl="timm"``), ``value_range(-1, 1)``;
* eval: ``decode``, ``resize_small(256 * size / 224)`` ("area"), ``central_crop(size)``, ``value_range(-1, 1)``.

The Inception crop box follows TensorFlow's ``sample_distorted_bounding_box`` (no object boxes, area 5-100 %, TF's
default aspect range 0.75-1.33, 100 attempts), not torchvision's ``RandomResizedCrop``: the aspect ratio is drawn
uniformly (not log-uniformly); the crop height is drawn uniformly between the heights of the smallest and the largest
area that fit (so the area is not uniform: mean 0.34 of a 4:3 image, torchvision's 0.42); the width is
``round(height * aspect)``; offsets are drawn from ``[0, free space)``, so a crop narrower than the image never
touches its right or bottom edge; after 100 misses the crop is the whole image (torchvision: 10 tries, then a
central crop clamped to the aspect range).

Resizes compute what ``tf.image.resize`` computes, in its float32 arithmetic (equal to TF's output in
tests/test_parity_crop.py), then cast back as big_vision does: clip, then truncate (on average half a grey level
darker than rounding). The crop's "bilinear" has no antialiasing (half-pixel centres, two neighbours per axis), so
shrinking a large crop aliases; the eval "area" averages the covered input area exactly.

Decoding (:func:`decode_crop`): ``simplejpeg`` (libjpeg-turbo, 1.5x PIL's speed, the same pixels) decodes RGB JPEGs
whole, then the crop is cut out; PIL decodes the rest (PNG, CMYK, damaged files, greyscale output: PIL's RGB-to-L
conversion, not libjpeg's luma). big_vision's ``decode_and_crop_jpeg`` decodes only the crop's rows and iMCU columns
(different from a crop of the full decode only at 4:2:0 chroma edges, mean 0.003 grey levels); no registry package
offers that partial decode to Python but DALI, whose graph does it (``data.loader=dali``, :mod:`reluvit.data.dali`).
``inception_crop(antialias=True)`` is the faster variant: a JPEG decoded at a reduced size (``Image.draft``: DCT
scaling by 1/2, 1/4 or 1/8) whenever the crop keeps the output's resolution, then PIL's antialiased bilinear.
Left different: PIL decodes JPEGs as TF's ``dct_method="INTEGER_ACCURATE"``; big_vision's default decode (TF's
INTEGER_FAST) is darker by 0.8 grey levels on average, up to 5.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as F

from reluvit.data.randaug import RandAugment
from reluvit.errors import check_choice

try:
    import simplejpeg
except ImportError:  # optional: PIL decodes the same pixels, slower
    simplejpeg = None

CROP_AREA = (0.05, 1.0)  # big_vision's area_min=5, area_max=100 (%)
CROP_ASPECT = (0.75, 1.33)  # TF's default aspect_ratio_range, also big_vision's ratio_min/ratio_max
CROP_ATTEMPTS = 100  # TF's default max_attempts
MODES = {1: "L", 3: "RGB"}  # PIL mode by channel count


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """``value_range(-1, 1)``: a uint8 tensor to a float tensor in [-1, 1]."""
    return image.float().div_(127.5).sub_(1.0)


def open_image(data: bytes) -> Image.Image:
    """The image header only: size and format are known, pixels are decoded on first access."""
    return Image.open(io.BytesIO(data))


def _decode_full(data: bytes, mode: str) -> np.ndarray:
    """The whole image, (H, W, C) uint8: simplejpeg for RGB JPEGs (the pixels of PIL's decode, faster), else PIL."""
    if mode == "RGB" and simplejpeg is not None and simplejpeg.is_jpeg(data):
        try:
            if simplejpeg.decode_jpeg_header(data)[2] != "CMYK":  # PIL converts CMYK to RGB otherwise
                return simplejpeg.decode_jpeg(data, "RGB")
        except ValueError:  # damaged: PIL's decode and errors, as without simplejpeg
            pass
    pixels = np.array(open_image(data).convert(mode))  # writable, as the decoders' arrays
    return pixels if pixels.ndim == 3 else pixels[..., None]


def decode_crop(data: bytes, box: tuple[int, int, int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """The pixels of ``box`` (top, left, height, width; None: the whole image) of an encoded image in ``mode`` (RGB or
    L), an (height, width, C) uint8 array view of the full decode."""
    pixels = _decode_full(data, mode)
    if box is None:
        return pixels
    top, left, height, width = box
    return pixels[top:top + height, left:left + width]


def sample_distorted_box(height: int, width: int, generator: torch.Generator | None = None,
                         area_range: tuple[float, float] = CROP_AREA, aspect_range: tuple[float, float] = CROP_ASPECT,
                         max_attempts: int = CROP_ATTEMPTS) -> tuple[int, int, int, int]:
    """TF's ``sample_distorted_bounding_box`` without object boxes: ``(top, left, crop_height, crop_width)`` drawn
    from torch's ``generator`` (None: the global one, seeded per sample by the loader); the whole image when
    ``max_attempts`` aspect ratios all miss."""
    if not (0 < area_range[0] <= 1 and 0 < area_range[1] <= 1 and min(aspect_range) > 0):
        raise ValueError(f"area_range must lie in (0, 1] and aspect_range be positive: {area_range}, {aspect_range}")
    low, high = np.float32(aspect_range[0]), np.float32(aspect_range[1])
    for _ in range(max_attempts):
        aspect = np.float32(torch.rand((), generator=generator).item()) * (high - low) + low
        box = _random_box(height, width, area_range, aspect, generator)
        if box is not None:
            return box
    return 0, 0, height, width


def _random_box(height: int, width: int, area_range: tuple[float, float], aspect: np.float32,
                generator: torch.Generator | None) -> tuple[int, int, int, int] | None:
    """One attempt of TF's ``GenerateRandomCrop``, with its float32 arithmetic and round-half-even (``lrintf``):
    a crop height uniform between those giving the smallest and the largest area at ``aspect``; None on a miss."""
    f32 = np.float32
    min_area = f32(area_range[0]) * f32(width) * f32(height)
    max_area = f32(area_range[1]) * f32(width) * f32(height)
    crop_h = int(np.rint(np.sqrt(min_area / aspect)))
    max_h = int(np.rint(np.sqrt(max_area / aspect)))
    if np.rint(f32(max_h) * aspect) > width:  # the widest crop must fit: TF's bound, in double, then a check
        max_h = int((width + 0.5 - float(f32(1e-7))) / float(aspect))
        if np.rint(f32(max_h) * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    crop_h = min(crop_h, max_h)
    crop_h += _below(max_h - crop_h + 1, generator)
    crop_w = int(np.rint(f32(crop_h) * aspect))
    # TF's repair of rounding: one row more when under the area range, one less when over
    if crop_w * crop_h < min_area:
        crop_h += 1
        crop_w = int(np.rint(f32(crop_h) * aspect))
    if crop_w * crop_h > max_area:
        crop_h -= 1
        crop_w = int(np.rint(f32(crop_h) * aspect))
    if not (min_area <= crop_w * crop_h <= max_area and 0 < crop_w <= width and 0 < crop_h <= height):
        return None
    return _below(height - crop_h, generator), _below(width - crop_w, generator), crop_h, crop_w


def _below(n: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [0, n); 0 without a draw when n <= 1."""
    return int(torch.randint(n, (), generator=generator)) if n > 1 else 0


def _interpolation(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's half-pixel bilinear weights along one axis, in float32: lower and upper source indices and the fraction
    of the upper one."""
    scale = np.float32(in_size) / np.float32(out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    return floor.astype(np.int64).clip(min=0), np.ceil(source).astype(np.int64).clip(max=in_size - 1), source - floor


def resize_bilinear(image: torch.Tensor, size: int) -> torch.Tensor:
    """``tf.image.resize(image, (size, size), "bilinear")`` (no antialias) and big_vision's cast back (clip, then
    truncate) on a uint8 CHW tensor. See :func:`resize_bilinear_hwc`."""
    return resize_bilinear_hwc(image.permute(1, 2, 0).numpy(), size)


def resize_bilinear_hwc(pixels: np.ndarray, size: int) -> torch.Tensor:
    """:func:`resize_bilinear` of (H, W, C) uint8 pixels (any strides: a crop's view), to a uint8 CHW tensor.
    Interpolates as TF does, ``a + (b - a) * t`` across, then down, so flat regions stay exact (``F.interpolate``
    on one thread, as in data workers, truncates ~2 % of their pixels to one grey level less)."""
    y0, y1, ty = _interpolation(pixels.shape[0], size)
    x0, x1, tx = _interpolation(pixels.shape[1], size)
    channels = pixels.shape[2]
    # the four neighbours of every output pixel, gathered as uint8 (whole rows, then bytes within the rows)
    rows = pixels.take(np.concatenate([y0, y1]), axis=0).reshape(2 * size, -1)
    columns = (np.concatenate([x0, x1])[:, None] * channels + np.arange(channels)).ravel()
    taps = rows.take(columns, axis=1).astype(np.float32)
    left, right = taps[:, :size * channels], taps[:, size * channels:]
    across = right - left
    across *= np.repeat(tx, channels)
    across += left
    top, bottom = across[:size], across[size:]
    out = bottom - top
    out *= ty[:, None]
    out += top
    out = np.clip(out, 0, 255, out=out).astype(np.uint8).reshape(size, size, channels)
    return torch.from_numpy(out.transpose(2, 0, 1).copy())


def _reduced(img: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int], mode: str
             ) -> tuple[Image.Image, tuple]:
    """Decode ``img`` in ``mode`` (RGB or L) at the smallest JPEG reduction that keeps ``box`` (left, top, right,
    bottom) at least ``size`` (width, height) pixels; returns the decoded image and the box in its coordinates."""
    w, h = img.size
    shrink = min((box[2] - box[0]) / size[0], (box[3] - box[1]) / size[1])
    if img.format == "JPEG" and shrink >= 2:
        img.draft(mode, (math.ceil(w / shrink), math.ceil(h / shrink)))
    img = img.convert(mode)
    sx, sy = img.size[0] / w, img.size[1] / h
    return img, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def inception_crop(data: bytes, size: int, mode: str = "RGB", antialias: bool = False) -> torch.Tensor:
    """big_vision's ``decode_jpeg_and_inception_crop(size)`` of an encoded image: a crop box from
    ``sample_distorted_box`` resized to ``size`` x ``size``, a uint8 CHW tensor. ``antialias=False`` (big_vision's
    default): :func:`decode_crop` and ``resize_bilinear``; True: reduced JPEG decode and PIL's antialiased bilinear
    (faster, no aliasing)."""
    img = open_image(data)
    top, left, h, w = sample_distorted_box(img.height, img.width)
    if antialias:
        img, box = _reduced(img, (left, top, left + w, top + h), (size, size), mode)
        return F.pil_to_tensor(img.resize((size, size), Image.BILINEAR, box=box))
    return resize_bilinear_hwc(decode_crop(data, (top, left, h, w), mode), size)


def _area_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, np.float32]:
    """TF's "area" weights along one axis, in float32: output pixel ``i`` covers ``[i * scale, (i + 1) * scale)`` of
    the input; returns the covered input indices (out_size, taps), the covered fraction of each (0 for padding) and
    the scale."""
    scale = np.float32(in_size) / np.float32(out_size)
    edges = np.arange(out_size + 1, dtype=np.float32) * scale
    start, end = np.floor(edges[:-1]).astype(np.int64), np.ceil(edges[1:]).astype(np.int64)
    index = start[:, None] + np.arange((end - start).max())
    pixel, low, high = index.astype(np.float32), edges[:-1, None], edges[1:, None]
    fraction = np.where(pixel < low, np.where(pixel + 1 > high, scale, pixel + 1 - low),
                        np.where(pixel + 1 > high, high - pixel, np.float32(1)))
    fraction[index >= end[:, None]] = 0
    return torch.from_numpy(index.clip(0, in_size - 1)), torch.from_numpy(fraction.astype(np.float32)), scale


def resize_area(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``tf.image.resize(image, (height, width), "area")`` and big_vision's cast back (clip, then truncate) on a
    uint8 CHW tensor: each output pixel is the mean of the input area it covers. Sums in TF's order (each row across
    x, then the rows), so the float32 result and its truncation match TF's (a flat region may lose a grey level)."""
    ys, y_fraction, y_scale = _area_taps(image.shape[-2], height)
    xs, x_fraction, x_scale = _area_taps(image.shape[-1], width)
    columns = image.float().transpose(-1, -2).contiguous()  # (C, W, H): whole columns are gathered fast
    rows = columns.index_select(-2, xs[:, 0]) * x_fraction[:, :1]
    for k in range(1, xs.shape[1]):
        rows = rows + columns.index_select(-2, xs[:, k]) * x_fraction[:, k:k + 1]
    rows = rows.transpose(-1, -2).contiguous()  # (C, H, width)
    total = rows.index_select(-2, ys[:, 0]) * y_fraction[:, :1]
    for k in range(1, ys.shape[1]):
        total = total + rows.index_select(-2, ys[:, k]) * y_fraction[:, k:k + 1]
    inverse_area = np.float32(1.0 / float(y_scale * x_scale))
    return (total * float(inverse_area)).clamp_(0, 255).to(torch.uint8)


def eval_geometry(height: int, width: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """big_vision's ``resize_small(size * 256 / 224)`` and ``central_crop(size)`` for an image of ``height`` x
    ``width``: the resized (height, width) and the crop box (top, left, size, size), its offsets floored."""
    scale = round(size * 256 / 224) / min(height, width)
    resized = (round(height * scale), round(width * scale))
    return resized, ((resized[0] - size) // 2, (resized[1] - size) // 2, size, size)


def resize_small_center_crop(data: bytes, size: int, mode: str = "RGB") -> torch.Tensor:
    """big_vision's ``resize_small(size * 256 / 224)`` ("area") and ``central_crop(size)`` on the full decode of an
    encoded image, a uint8 CHW tensor."""
    pixels = decode_crop(data, None, mode)
    (height, width), (top, left, crop_height, crop_width) = eval_geometry(*pixels.shape[:2], size)
    image = resize_area(torch.from_numpy(pixels).permute(2, 0, 1), height, width)
    return image[:, top:top + crop_height, left:left + crop_width]


def random_flip() -> bool:
    """``flip_lr``'s draw, from torch's global generator (seeded per sample by the loader)."""
    return bool(torch.rand(()) < 0.5)


def _through_pil(op, image: torch.Tensor) -> torch.Tensor:
    """Apply a PIL-image op on RGB images (timm's RandAugment) to a uint8 CHW tensor; a greyscale one as three equal
    channels (which the op keeps equal)."""
    rgb = F.pil_to_tensor(op(F.to_pil_image(image.expand(3, -1, -1))))
    return rgb[:image.shape[0]]


AUGMENT_IMPLS = ("big_vision", "timm")  # RandAugment: reluvit.data.randaug (big_vision's) | timm's rand-m{m}-n{n}


class TrainTransform:
    """big_vision's training preprocessing for one encoded image; picklable (runs in loader workers).
    ``augment_impl``: whose RandAugment (:data:`AUGMENT_IMPLS`); ``crop_antialias``: see :func:`inception_crop`."""

    def __init__(self, size: int, in_chans: int = 3, randaug_layers: int = 0, randaug_magnitude: int = 0,
                 augment_impl: str = "big_vision", crop_antialias: bool = False) -> None:
        check_choice("augment_impl", augment_impl, AUGMENT_IMPLS)
        self.size, self.mode, self.antialias = size, MODES[in_chans], crop_antialias
        self.randaug = None
        if randaug_layers and augment_impl == "timm":
            from timm.data.auto_augment import rand_augment_transform

            timm_randaug = rand_augment_transform(f"rand-m{randaug_magnitude}-n{randaug_layers}",
                                                  {"img_mean": (128, 128, 128)})
            self.randaug = functools.partial(_through_pil, timm_randaug)
        elif randaug_layers:
            self.randaug = RandAugment(randaug_layers, randaug_magnitude)

    def __call__(self, data: bytes) -> torch.Tensor:
        image = inception_crop(data, self.size, self.mode, self.antialias)
        if random_flip():
            image = image.flip(-1)
        if self.randaug is not None:
            image = self.randaug(image)
        return to_unit_range(image)


class EvalTransform:
    """big_vision's evaluation preprocessing for one encoded image."""

    def __init__(self, size: int, in_chans: int = 3) -> None:
        self.size, self.mode = size, MODES[in_chans]

    def __call__(self, data: bytes) -> torch.Tensor:
        return to_unit_range(resize_small_center_crop(data, self.size, self.mode))

"""big_vision's image preprocessing (paper.md §3), on PIL images, for the shard and ImageFolder pipelines.

* train: ``decode_jpeg_and_inception_crop(size)`` (area 5-100 %, aspect 3/4-4/3, bilinear), ``flip_lr``,
  ``randaug(n, m)`` (timm's ``rand-m{m}-n{n}``; equivalence to big_vision's TF RandAugment UNCONFIRMED),
  ``value_range(-1, 1)``;
* eval: ``decode``, ``resize_small(256 * size / 224)`` (shorter side; "area" when shrinking), ``central_crop(size)``,
  ``value_range(-1, 1)``.

Decoding asks the JPEG decoder for a reduced size (``Image.draft``: DCT scaling by 1/2, 1/4 or 1/8) whenever the
region that is kept still has at least the output's resolution after the reduction: the result then differs from a
full decode only by the resampling filter, and decoding is several times faster on large photos.
"""

from __future__ import annotations

import io
import math

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as F

CROP_SCALE = (0.05, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
MODES = {1: "L", 3: "RGB"}  # PIL mode by channel count


def to_unit_range(img: Image.Image) -> torch.Tensor:
    """``value_range(-1, 1)``: uint8 pixels to a float CHW tensor in [-1, 1]."""
    return F.pil_to_tensor(img).float().div_(127.5).sub_(1.0)


def open_image(data: bytes) -> Image.Image:
    """The image header only: size and format are known, pixels are decoded on first access."""
    return Image.open(io.BytesIO(data))


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


def inception_crop(img: Image.Image, size: int, mode: str = "RGB") -> Image.Image:
    """A random crop of 5-100 % of the area with aspect ratio 3/4-4/3, resized to ``size`` x ``size`` (bilinear);
    draws from torch's generator (seeded per worker and epoch by the loader)."""
    top, left, h, w = RandomResizedCrop.get_params(img, CROP_SCALE, CROP_RATIO)
    img, box = _reduced(img, (left, top, left + w, top + h), (size, size), mode)
    return img.resize((size, size), Image.BILINEAR, box=box)


def resize_small_center_crop(img: Image.Image, size: int, mode: str = "RGB") -> Image.Image:
    """Shorter side to ``size * 256 / 224`` (box filter when shrinking, as TF's "area"), then the central
    ``size`` x ``size``."""
    small = round(size * 256 / 224)
    w, h = img.size
    scale = small / min(w, h)
    img, _ = _reduced(img, (0, 0, w, h), (math.ceil(w * scale), math.ceil(h * scale)), mode)
    new = (max(small, round(w * scale)), max(small, round(h * scale)))
    img = img.resize(new, Image.BOX if new[0] < img.size[0] else Image.BILINEAR)
    return F.center_crop(img, [size, size])


class TrainTransform:
    """big_vision's training preprocessing for one encoded image; picklable (runs in loader workers)."""

    def __init__(self, size: int, in_chans: int = 3, randaug_layers: int = 0, randaug_magnitude: int = 0) -> None:
        self.size, self.mode = size, MODES[in_chans]
        self.randaug = None
        if randaug_layers:
            from timm.data.auto_augment import rand_augment_transform

            self.randaug = rand_augment_transform(f"rand-m{randaug_magnitude}-n{randaug_layers}",
                                                  {"img_mean": (128, 128, 128)})

    def __call__(self, data: bytes) -> torch.Tensor:
        img = inception_crop(open_image(data), self.size, self.mode)
        if torch.rand(()) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.randaug is not None:
            img = self.randaug(img)
        return to_unit_range(img)


class EvalTransform:
    """big_vision's evaluation preprocessing for one encoded image."""

    def __init__(self, size: int, in_chans: int = 3) -> None:
        self.size, self.mode = size, MODES[in_chans]

    def __call__(self, data: bytes) -> torch.Tensor:
        return to_unit_range(resize_small_center_crop(open_image(data), self.size, self.mode))

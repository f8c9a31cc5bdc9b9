"""big_vision's RandAugment (``pp/autoaugment.py`` ``distort_image_with_randaugment``, the TF-EfficientNet one), op
for op, on uint8 C x H x W torch tensors (C = 3; C = 1 is run as three equal channels, which every op keeps equal).

Each of ``num_layers`` layers picks one of the 16 ``OPS`` uniformly and always applies it: big_vision draws a
probability per op too, but hands it only to ops with a ``prob`` argument (bounding-box ops), and none of the 16 has
one. The op's argument comes from level = magnitude as big_vision's ``level_to_arg`` computes it (``_MAX_LEVEL`` 10,
no clipping: m = 15 gives 1.5x the nominal ranges); rotate, shear and translate get a random sign; cutout_const 40,
translate_const 100, fill 128. m = 0 is no identity: Color, Contrast, Brightness and Sharpness blend with factor 0.1
(almost their degenerate image), Solarize inverts, Posterize keeps 1 bit.

TensorFlow's semantics are kept wherever they decide a pixel value:

* float -> uint8 casts truncate; ``blend`` clips only when it extrapolates (factor outside [0, 1]);
* Solarize's threshold ``int(m / 10 * 256)`` becomes a uint8 modulo 256 when TF compares it with the image, so
  m = 10 (256 -> 0) inverts every pixel and m = 15 (384 -> 128) is the threshold 128;
* Posterize keeps ``int(m / 10 * 4)`` bits; TF's bitwise shifts clamp the shift to [0, 7], so m = 0 (8 - 0 bits)
  keeps the top bit only;
* Contrast blends towards a constant image of ``histogram total / 256`` = H * W / 256 (capped at 255), not towards
  the mean grey level (what big_vision's code computes under the name "mean"; 196 at 224 x 224);
* Color's grey image is ``tf.image.rgb_to_grayscale`` in float32 (x / 255, weights 0.2989, 0.587, 0.114, x 255.5);
  Sharpness smooths with PIL's 3 x 3 kernel / 13 accumulated in float32 in row-major order (as TF's depthwise conv)
  and keeps the 1-pixel border unsmoothed;
* the geometric ops are TF's ``ImageProjectiveTransform`` with nearest interpolation: each output pixel maps to an
  input coordinate in float32 (rotation about the centre ((W-1)/2, (H-1)/2) with ``tfa.image.rotate``'s matrix),
  rounded half away from zero; positions that land outside the image get the fill 128 (big_vision's wrap/unwrap).
  That is TF 2.21's kernel; some TF revisions fill by the unrounded coordinate instead (border pixels differ).
  Positive signs: Rotate turns the content counterclockwise, TranslateX/Y move it left/up by the level in pixels,
  ShearX/Y sample x + level * y / y + level * x;
* Cutout fills the square [cy - pad, cy + pad) x [cx - pad, cx + pad), clipped to the image, with pad
  ``int(m / 10 * 40)`` and a centre uniform over the pixels.

Where timm's ``rand-m{m}-n{n}`` (reluvit's previous augmentation) differs: each op is applied with p = 0.5; the
magnitude is clipped to 10; no Cutout; translate is relative (0.45 of the size at m = 10, here 100 pixels); rotate
and shear resample bilinear or bicubic at random (here nearest); Solarize's threshold is capped at 256 (an identity
at m >= 10, here an invert at m = 10); Contrast blends towards the mean grey level; Posterize at 0 bits is black.
"""

from __future__ import annotations

import math

import torch

OPS: tuple[str, ...] = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
                        "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
                        "SolarizeAdd")
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})
MAX_LEVEL = 10.0
CUTOUT_CONST = 40
TRANSLATE_CONST = 100
FILL = 128

F32 = torch.float32


def _f32(value: float) -> torch.Tensor:
    """A float32 scalar: TF computes the ops' parameters in float32, and rounding them decides pixels."""
    return torch.tensor(value, dtype=F32)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """TF's float -> uint8 cast: truncation (callers keep x within [0, 256))."""
    return x.to(torch.uint8)


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: float) -> torch.Tensor:
    """``image1 + factor * (image2 - image1)`` in float32; clipped to [0, 255] only when extrapolating."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    base = image1.to(F32)
    out = base + (image2.to(F32) - base) * _f32(factor)
    if not 0.0 < factor < 1.0:
        out = out.clamp(0.0, 255.0)
    return _to_uint8(out)


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """Each channel stretched linearly so that its min maps to 0 and its max to 255; constant channels unchanged."""
    lo = image.amin(dim=(1, 2), keepdim=True).to(F32)
    hi = image.amax(dim=(1, 2), keepdim=True).to(F32)
    scale = _f32(255.0) / (hi - lo)
    offset = -lo * scale
    stretched = _to_uint8((image.to(F32) * scale + offset).clamp(0.0, 255.0))
    return torch.where(hi > lo, stretched, image)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalisation per channel, with big_vision's integer lut."""
    out = []
    for channel in image:
        flat = channel.reshape(-1).long()
        hist = torch.bincount(flat, minlength=256)
        nonzero = hist[hist > 0]
        step = (int(nonzero.sum()) - int(nonzero[-1])) // 255
        if step == 0:
            out.append(channel)
            continue
        lut = (torch.cumsum(hist, 0) + step // 2) // step
        lut = torch.cat([lut.new_zeros(1), lut[:-1]]).clamp(0, 255)
        out.append(lut[flat].reshape(channel.shape).to(torch.uint8))
    return torch.stack(out)


def invert(image: torch.Tensor) -> torch.Tensor:
    return 255 - image


def posterize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the top ``bits`` bits; the shift 8 - bits is clamped to [0, 7] as TF's bitwise shifts do on uint8."""
    shift = min(max(8 - bits, 0), 7)
    return image & ((0xFF << shift) & 0xFF)


def solarize(image: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert the pixels >= threshold; TF compares with the threshold cast to uint8, i.e. modulo 256."""
    return torch.where(image < threshold % 256, image, 255 - image)


def solarize_add(image: torch.Tensor, addition: int, threshold: int = 128) -> torch.Tensor:
    """Add ``addition`` (clipped to [0, 255]) to the pixels below ``threshold``."""
    added = (image.to(torch.int64) + addition).clamp(0, 255).to(torch.uint8)
    return torch.where(image < threshold, added, image)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """``tf.image.rgb_to_grayscale`` on uint8, 1 x H x W: float32 x / 255, weighted sum in channel order, x 255.5."""
    unit = image.to(F32) * _f32(1 / 255.0)
    red, green, blue = unit
    grey = red * _f32(0.2989) + green * _f32(0.5870) + blue * _f32(0.1140)
    return _to_uint8(grey * _f32(255.5))[None]


def color(image: torch.Tensor, factor: float) -> torch.Tensor:
    return blend(grayscale(image).expand_as(image), image, factor)


def contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with big_vision's degenerate image: the grey histogram's total / 256 = H * W / 256, not a mean."""
    _, height, width = image.shape
    level = min(height * width / 256.0, 255.0)
    return blend(torch.full_like(image, int(level)), image, factor)


def brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return blend(torch.zeros_like(image), image, factor)


SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))  # PIL's SMOOTH, divided by 13


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (valid part; the 1-pixel border stays the original's)."""
    _, height, width = image.shape
    pixels = image.to(F32)
    smooth = torch.zeros_like(pixels[:, 1:-1, 1:-1])
    for i, row in enumerate(SMOOTH_KERNEL):  # float32 sums in TF's order, so truncation matches pixel for pixel
        for j, weight in enumerate(row):
            smooth = smooth + pixels[:, i:i + height - 2, j:j + width - 2] * _f32(weight / 13.0)
    degenerate = image.clone()
    degenerate[:, 1:-1, 1:-1] = _to_uint8(smooth.clamp(0.0, 255.0))
    return blend(degenerate, image, factor)


def _round_half_away(coord: torch.Tensor) -> torch.Tensor:
    """``std::round`` (torch.round rounds half to even); via trunc, as adding 0.5 would itself round in float32."""
    whole = coord.trunc()
    return (whole + coord.sign() * ((coord - whole).abs() >= 0.5).to(F32)).long()


def affine(image: torch.Tensor, a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """TF's ImageProjectiveTransform (affine rows ``a``, ``b``), nearest interpolation, fill 128: output pixel (x, y)
    reads input (a0 x + a1 y + a2, b0 x + b1 y + b2), computed in float32 in that order and rounded half away from
    zero; positions that round to outside the image are filled."""
    _, height, width = image.shape
    x = torch.arange(width, dtype=F32)[None, :]
    y = torch.arange(height, dtype=F32)[:, None]
    col = _round_half_away(a[0] * x + a[1] * y + a[2])
    row = _round_half_away(b[0] * x + b[1] * y + b[2])
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    return torch.where(inside, image[:, row.clamp(0, height - 1), col.clamp(0, width - 1)], FILL)


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counterclockwise for positive degrees, about the image centre (``tfa.image.rotate``'s matrix in float32)."""
    _, height, width = image.shape
    radians = _f32(degrees) * _f32(math.pi / 180.0)
    # Correctly rounded cos/sin: what TF's kernel gives for single angles, unlike torch's vectorised float32 ones.
    cos, sin = _f32(math.cos(radians.item())), _f32(math.sin(radians.item()))
    w1, h1 = _f32(width - 1), _f32(height - 1)
    x_offset = (w1 - (cos * w1 - sin * h1)) / 2.0
    y_offset = (h1 - (sin * w1 + cos * h1)) / 2.0
    return affine(image, (cos, -sin, x_offset), (sin, cos, y_offset))


def shear_x(image: torch.Tensor, level: float) -> torch.Tensor:
    return affine(image, (_f32(1.0), _f32(level), _f32(0.0)), (_f32(0.0), _f32(1.0), _f32(0.0)))


def shear_y(image: torch.Tensor, level: float) -> torch.Tensor:
    return affine(image, (_f32(1.0), _f32(0.0), _f32(0.0)), (_f32(level), _f32(1.0), _f32(0.0)))


def translate_x(image: torch.Tensor, pixels: float) -> torch.Tensor:
    """Content moves left by ``pixels`` (right when negative)."""
    return affine(image, (_f32(1.0), _f32(0.0), _f32(pixels)), (_f32(0.0), _f32(1.0), _f32(0.0)))


def translate_y(image: torch.Tensor, pixels: float) -> torch.Tensor:
    """Content moves up by ``pixels`` (down when negative)."""
    return affine(image, (_f32(1.0), _f32(0.0), _f32(0.0)), (_f32(0.0), _f32(1.0), _f32(pixels)))


def cutout(image: torch.Tensor, pad_size: int, center_y: int, center_x: int) -> torch.Tensor:
    """Fill the 2 pad_size square centred at (center_y, center_x), clipped to the image, with 128."""
    _, height, width = image.shape
    out = image.clone()
    out[:, max(0, center_y - pad_size):min(height, center_y + pad_size),
        max(0, center_x - pad_size):min(width, center_x + pad_size)] = FILL
    return out


_OP_FUNCS = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate, "Posterize": posterize,
    "Solarize": solarize, "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
    "ShearX": shear_x, "ShearY": shear_y, "TranslateX": translate_x, "TranslateY": translate_y, "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}


def _enhance(level: float) -> tuple[float]:
    return (level / MAX_LEVEL) * 1.8 + 0.1,


# big_vision's level_to_arg with the same Python (float64) expressions, so int() truncates identically.
LEVEL_TO_ARGS = {
    "AutoContrast": lambda level: (),
    "Equalize": lambda level: (),
    "Invert": lambda level: (),
    "Rotate": lambda level: ((level / MAX_LEVEL) * 30.0,),
    "Posterize": lambda level: (int((level / MAX_LEVEL) * 4),),
    "Solarize": lambda level: (int((level / MAX_LEVEL) * 256),),
    "SolarizeAdd": lambda level: (int((level / MAX_LEVEL) * 110),),
    "Color": _enhance,
    "Contrast": _enhance,
    "Brightness": _enhance,
    "Sharpness": _enhance,
    "ShearX": lambda level: ((level / MAX_LEVEL) * 0.3,),
    "ShearY": lambda level: ((level / MAX_LEVEL) * 0.3,),
    "Cutout": lambda level: (int((level / MAX_LEVEL) * CUTOUT_CONST),),
    "TranslateX": lambda level: ((level / MAX_LEVEL) * float(TRANSLATE_CONST),),
    "TranslateY": lambda level: ((level / MAX_LEVEL) * float(TRANSLATE_CONST),),
}


def _check_image(image: torch.Tensor) -> None:
    if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.dim() == 3
            and image.shape[0] in (1, 3)):
        desc = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"RandAugment needs a uint8 C x H x W tensor with C = 1 or 3, got {desc}")


def apply_op(image: torch.Tensor, name: str, magnitude: float, *, sign: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One op at level ``magnitude``, uint8 C x H x W in and out. ``sign`` (+1/-1) applies to Rotate, ShearX/Y and
    TranslateX/Y. Cutout draws its centre from ``generator`` (None: torch's global one): row
    ``torch.randint(H, ())`` first, then column ``torch.randint(W, ())``."""
    _check_image(image)
    if name not in _OP_FUNCS:
        raise ValueError(f"unknown RandAugment op {name!r}; expected one of {', '.join(OPS)}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    args = LEVEL_TO_ARGS[name](float(magnitude))
    if name in SIGNED_OPS:
        args = (sign * args[0],)
    if name == "Cutout":
        args += tuple(int(torch.randint(size, (), generator=generator)) for size in image.shape[1:])
    if image.shape[0] == 1:
        return _OP_FUNCS[name](image.repeat(3, 1, 1), *args)[:1]
    return _OP_FUNCS[name](image, *args)


class RandAugment:
    """big_vision's ``randaug(num_layers, magnitude)``: per layer an op uniform over ``OPS`` and a sign uniform over
    +-1 (drawn in that order, from ``generator``, or torch's global generator, which the loader seeds per sample),
    always applied. Picklable (runs in loader workers)."""

    def __init__(self, num_layers: int = 2, magnitude: float = 10) -> None:
        if num_layers < 0:
            raise ValueError(f"RandAugment num_layers must be >= 0, got {num_layers}")
        if magnitude < 0:
            raise ValueError(f"RandAugment magnitude must be >= 0, got {magnitude}")
        self.num_layers, self.magnitude = num_layers, magnitude

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(self.num_layers):  # always applied: big_vision's per-op probability only reaches bbox ops
            name = OPS[int(torch.randint(len(OPS), (), generator=generator))]
            sign = 1 - 2 * int(torch.randint(2, (), generator=generator))
            image = apply_op(image, name, self.magnitude, sign=sign, generator=generator)
        return image

    def __repr__(self) -> str:
        return f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude})"

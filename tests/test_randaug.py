"""big_vision's RandAugment (``reluvit.data.randaug``) against references written here without TensorFlow: numpy
formulas, PIL's ImageOps (the ops big_vision's TF code imitates), ``torch.rot90``, float64 geometry; and the policy:
every layer applies its op, ops are drawn uniformly, draws are reproducible (tests/test_parity_randaug.py compares
every op with TensorFlow)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from reluvit.data import randaug
from reluvit.data.randaug import OPS, RandAugment, apply_op


def _image(height: int = 40, width: int = 56, seed: int = 0, high: int = 256) -> torch.Tensor:
    """Smooth waves plus noise, 3 x H x W uint8 in [0, high)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = np.stack([np.sin(2 * np.pi * ((c + 1) * x + (3 - c) * y)) for c in range(3)])
    img = (waves + 1) / 2 * (high - 1) + rng.normal(0, 8, waves.shape)
    return torch.from_numpy(np.clip(img, 0, high - 1).astype(np.uint8))


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def _from_pil(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


IMG = _image()


def test_ops_are_big_vision_list_in_its_order():
    assert OPS == ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
                   "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd")


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("magnitude", [0, 10, 15])
def test_every_op_keeps_uint8_shape_and_leaves_its_input_alone(name, magnitude):
    before = IMG.clone()
    out = apply_op(IMG, name, magnitude, sign=-1, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == IMG.shape
    assert torch.equal(IMG, before)


def test_invert_is_255_minus_pixel():
    assert np.array_equal(apply_op(IMG, "Invert", 7).numpy(), 255 - IMG.numpy())


@pytest.mark.parametrize("magnitude, bits", [(2.5, 1), (5, 2), (7.5, 3), (10, 4), (15, 6)])
def test_posterize_keeps_top_bits_like_pil(magnitude, bits):
    got = apply_op(IMG, "Posterize", magnitude)
    assert np.array_equal(got.numpy(), IMG.numpy() & ((0xFF << (8 - bits)) & 0xFF))
    assert torch.equal(got, _from_pil(ImageOps.posterize(_pil(IMG), bits)))


def test_posterize_at_zero_keeps_the_top_bit_as_tf_clamps_the_shift():
    # TF's right/left shifts clamp the shift 8 to 7 (checked in TF 2.21); PIL would return black here.
    assert np.array_equal(apply_op(IMG, "Posterize", 0).numpy(), (IMG.numpy() >= 128) * 128)


@pytest.mark.parametrize("magnitude, reference", [
    (0, "invert"),  # threshold 0
    (10, "invert"),  # threshold 256, which TF casts to uint8 0
    (15, 128),  # threshold 384 -> 128
    (3, 76),
])
def test_solarize_threshold_as_tf_casts_it(magnitude, reference):
    want = 255 - IMG if reference == "invert" else _from_pil(ImageOps.solarize(_pil(IMG), reference))
    assert torch.equal(apply_op(IMG, "Solarize", magnitude), want)


def test_solarize_add_adds_below_128_and_clips():
    x = IMG.numpy().astype(np.int64)
    want = np.where(x < 128, np.minimum(x + 110, 255), x)
    assert np.array_equal(apply_op(IMG, "SolarizeAdd", 10).numpy(), want)


def test_equalize_matches_pil():
    for seed, high in [(0, 256), (1, 90)]:
        image = _image(seed=seed, high=high)
        assert torch.equal(apply_op(image, "Equalize", 5), _from_pil(ImageOps.equalize(_pil(image))))


def test_autocontrast_matches_pil_within_one_level_and_keeps_constant_channels():
    image = _image(high=120) + 60
    image[2] = 77
    got = apply_op(image, "AutoContrast", 5)
    want = _from_pil(ImageOps.autocontrast(_pil(image)))  # float64 scale in PIL, float32 in TF
    assert (got.int() - want.int()).abs().max() <= 1
    # float32 may put the maximum at 254.99998, truncated to 254 (TF does the same: see the parity test)
    assert got[:2].amin() == 0 and got[:2].amax() >= 254 and torch.equal(got[2], image[2])


@pytest.mark.parametrize("size, level", [((64, 64), 16), ((40, 56), 8), ((256, 256), 255)])
def test_contrast_blends_towards_pixel_count_over_256_not_the_mean(size, level):
    image = _image(*size)
    factor = 0.1  # m = 0
    want = np.trunc(level + factor * (image.numpy().astype(np.float64) - level))
    got = apply_op(image, "Contrast", 0).numpy()
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("magnitude", [0, 10])
def test_brightness_scales_towards_black(magnitude):
    factor = magnitude / 10 * 1.8 + 0.1
    want = np.trunc(np.clip(IMG.numpy().astype(np.float64) * factor, 0, 255))
    assert np.abs(apply_op(IMG, "Brightness", magnitude).numpy() - want).max() <= 1


def test_sharpness_keeps_the_border_and_smooths_the_inside():
    got = apply_op(IMG, "Sharpness", 0)  # factor 0.1: almost the smoothed image
    assert torch.equal(got[:, [0, -1]], IMG[:, [0, -1]]) and torch.equal(got[:, :, [0, -1]], IMG[:, :, [0, -1]])
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    x = IMG.numpy().astype(np.float64)
    smooth = sum(kernel[i, j] * x[:, i:i + x.shape[1] - 2, j:j + x.shape[2] - 2] for i in range(3) for j in range(3))
    want = np.trunc(np.trunc(smooth) + 0.1 * (x[:, 1:-1, 1:-1] - np.trunc(smooth)))
    assert np.abs(got[:, 1:-1, 1:-1].numpy() - want).max() <= 1


@pytest.mark.parametrize("sign, turns", [(1, 1), (-1, -1)])
def test_rotate_by_90_degrees_is_rot90_counterclockwise_for_positive_sign(sign, turns):
    square = _image(33, 33)
    assert torch.equal(apply_op(square, "Rotate", 30, sign=sign), torch.rot90(square, turns, dims=(1, 2)))


def _nearest_reference(image: torch.Tensor, source) -> tuple[np.ndarray, np.ndarray]:
    """float64 nearest-neighbour resampling (fill 128) with ``source(x, y) -> (x', y')``, and the mask of pixels
    whose source coordinate is not within 1e-3 of a rounding boundary (float32 may round those either way)."""
    _, h, w = image.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    sx, sy = source(x, y)
    col, row = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.where(inside, image.numpy()[:, row.clip(0, h - 1), col.clip(0, w - 1)], 128)
    clear = (np.abs(np.abs(sx - np.floor(sx)) - 0.5) > 1e-3) & (np.abs(np.abs(sy - np.floor(sy)) - 0.5) > 1e-3)
    return out, clear


@pytest.mark.parametrize("magnitude, degrees", [(15, 45.0), (10, 30.0), (5, 15.0)])
@pytest.mark.parametrize("sign", [1, -1])
def test_rotate_turns_about_the_centre_by_3_degrees_per_level(magnitude, degrees, sign):
    image = _image(48, 64)
    _, h, w = image.shape
    t = math.radians(sign * degrees)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel p reads input R(t) (p - c) + c: in y-down coordinates the content turns counterclockwise.
    want, clear = _nearest_reference(image, lambda x, y: (math.cos(t) * (x - cx) - math.sin(t) * (y - cy) + cx,
                                                          math.sin(t) * (x - cx) + math.cos(t) * (y - cy) + cy))
    got = apply_op(image, "Rotate", magnitude, sign=sign).numpy()
    assert clear.mean() > 0.9  # 45 degrees puts whole lines of pixels exactly on a rounding tie
    assert np.array_equal(got[:, clear], want[:, clear])


@pytest.mark.parametrize("name, sign", [("ShearX", 1), ("ShearX", -1), ("ShearY", 1), ("ShearY", -1)])
def test_shear_at_m15_is_0_45(name, sign):
    level = sign * 0.45
    shear = (lambda x, y: (x + level * y, y)) if name == "ShearX" else (lambda x, y: (x, y + level * x))
    want, clear = _nearest_reference(IMG, shear)
    got = apply_op(IMG, name, 15, sign=sign).numpy()
    assert clear.mean() > 0.9
    assert np.array_equal(got[:, clear], want[:, clear])


@pytest.mark.parametrize("sign", [1, -1])
def test_translate_shifts_by_level_pixels_and_fills_128(sign):
    pixels = 7  # m = 0.7: 0.07 * translate_const 100
    x_shift = np.full_like(IMG.numpy(), 128)
    y_shift = np.full_like(IMG.numpy(), 128)
    if sign == 1:  # content moves left / up
        x_shift[:, :, :-pixels], y_shift[:, :-pixels] = IMG[:, :, pixels:], IMG[:, pixels:]
    else:
        x_shift[:, :, pixels:], y_shift[:, pixels:] = IMG[:, :, :-pixels], IMG[:, :-pixels]
    assert np.array_equal(apply_op(IMG, "TranslateX", 0.7, sign=sign).numpy(), x_shift)
    assert np.array_equal(apply_op(IMG, "TranslateY", 0.7, sign=sign).numpy(), y_shift)


def test_half_pixel_translate_rounds_half_away_from_zero():
    # m = 0.05 translates by 0.5 px: TF's std::round sends x + 0.5 to x + 1 and x - 0.5 to x (and -0.5 outside).
    left, same = apply_op(IMG, "TranslateX", 0.05, sign=1), apply_op(IMG, "TranslateX", 0.05, sign=-1)
    assert torch.equal(left[:, :, :-1], IMG[:, :, 1:]) and (left[:, :, -1] == 128).all()
    assert torch.equal(same[:, :, 1:], IMG[:, :, 1:]) and (same[:, :, 0] == 128).all()


def test_translate_at_m15_moves_150_pixels():
    assert (apply_op(_image(160, 160), "TranslateX", 15).numpy()[:, :, 10:] == 128).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("magnitude, pad", [(10, 40), (15, 60), (2.5, 10)])
def test_cutout_fills_one_clipped_square_with_128(seed, magnitude, pad):
    image = _image(90, 110, high=128)  # no 128 in the input, so the filled pixels are exactly the 128s
    gen = torch.Generator().manual_seed(seed)
    cy, cx = (int(torch.randint(size, (), generator=gen)) for size in image.shape[1:])
    got = apply_op(image, "Cutout", magnitude, generator=torch.Generator().manual_seed(seed))
    want = image.clone()
    want[:, max(0, cy - pad):cy + pad, max(0, cx - pad):cx + pad] = 128
    assert torch.equal(got, want)
    filled = (got == 128).all(0).nonzero()
    rows, cols = filled[:, 0], filled[:, 1]
    assert rows.max() - rows.min() < 2 * pad and cols.max() - cols.min() < 2 * pad
    assert len(filled) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_cutout_at_m0_changes_nothing():
    assert torch.equal(apply_op(IMG, "Cutout", 0, generator=torch.Generator().manual_seed(0)), IMG)


def test_greyscale_runs_as_three_equal_channels():
    grey = IMG[:1]
    for name in OPS:
        rgb = apply_op(grey.repeat(3, 1, 1), name, 12, sign=-1, generator=torch.Generator().manual_seed(1))
        out = apply_op(grey, name, 12, sign=-1, generator=torch.Generator().manual_seed(1))
        assert out.shape == grey.shape and torch.equal(out[0], rgb[0])
        assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], rgb[2]), name


@pytest.mark.parametrize("image", [IMG.float(), IMG[None], IMG[:2], IMG.numpy()])
def test_rejects_what_is_not_a_uint8_chw_image(image):
    with pytest.raises(ValueError, match="uint8 C x H x W"):
        apply_op(image, "Invert", 10)


def test_rejects_unknown_op_bad_sign_and_bad_policy():
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        apply_op(IMG, "Blur", 10)
    with pytest.raises(ValueError, match="sign"):
        apply_op(IMG, "Rotate", 10, sign=0)
    with pytest.raises(ValueError, match="num_layers"):
        RandAugment(-1, 10)
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment(2, -0.5)


def _replay(seed: int, num_layers: int, image: torch.Tensor, magnitude: float) -> torch.Tensor:
    """RandAugment by hand from its documented draw order: op, sign (and Cutout's centre inside apply_op)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(num_layers):
        name = OPS[int(torch.randint(len(OPS), (), generator=gen))]
        sign = 1 - 2 * int(torch.randint(2, (), generator=gen))
        image = apply_op(image, name, magnitude, sign=sign, generator=gen)
    return image


def test_every_layer_applies_its_op():
    image = _image(high=200)  # not full range, so that AutoContrast changes it too
    changed = 0
    for seed in range(64):
        got = RandAugment(1, 10)(image, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(got, _replay(seed, 1, image, 10))
        changed += not torch.equal(got, image)
    assert changed == 64  # at m = 10 every op changes this image, so a skipped op would show


def test_invert_is_never_skipped():
    inverted = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        if OPS[int(torch.randint(len(OPS), (), generator=gen))] == "Invert":
            assert torch.equal(RandAugment(1, 10)(IMG, generator=torch.Generator().manual_seed(seed)), 255 - IMG)
            inverted += 1
    assert inverted > 5


def test_seeded_generator_is_deterministic_and_global_generator_is_used_without_one():
    aug = RandAugment(2, 15)
    runs = [aug(IMG, generator=torch.Generator().manual_seed(seed)) for seed in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(runs[0], _replay(3, 2, IMG, 15))
    torch.manual_seed(5)
    first = aug(IMG)
    torch.manual_seed(5)
    assert torch.equal(aug(IMG), first)


def test_ops_and_signs_are_drawn_uniformly(monkeypatch):
    drawn = []
    monkeypatch.setattr(randaug, "apply_op", lambda image, name, magnitude, *, sign, generator: drawn.append(
        (name, sign)) or image)
    aug, gen = RandAugment(2, 10), torch.Generator().manual_seed(0)
    for _ in range(4000):
        aug(IMG, generator=gen)
    counts = np.array([sum(name == op for name, _ in drawn) for op in OPS])
    expected = len(drawn) / len(OPS)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 37.7  # chi-square, 15 degrees of freedom, p = 0.001
    plus = sum(sign == 1 for _, sign in drawn)
    assert abs(plus - len(drawn) / 2) < 3.3 * math.sqrt(len(drawn) / 4)


def test_zero_layers_is_identity_and_policy_pickles():
    assert torch.equal(RandAugment(0, 15)(IMG), IMG)
    aug = pickle.loads(pickle.dumps(RandAugment(2, 15)))
    assert (aug.num_layers, aug.magnitude) == (2, 15)
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(aug(IMG, generator=gen_a), RandAugment(2, 15)(IMG, generator=gen_b))

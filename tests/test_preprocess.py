"""big_vision preprocessing against references written here: TF's crop-box rule (bounds, the fallback, the expected
area from float64 integration), the resizes against float64 bilinear and area references, the training transform
recomposed by hand, the eval resize + centre crop, and the JPEG draft decode of the antialiased path."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from reluvit.data import preprocess
from reluvit.data.preprocess import EvalTransform, TrainTransform, resize_area, resize_bilinear, sample_distorted_box
from reluvit.data.randaug import RandAugment
from reluvit.errors import ArgumentError


def _photo(w: int, h: int, seed: int = 0) -> bytes:
    """A smooth image (JPEG-friendly, so reduced decodes are comparable) with some detail."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rng = np.random.default_rng(seed)
    f = rng.uniform(2, 6, 3)
    rgb = np.stack([np.sin(2 * np.pi * (f[c] * x + (c + 1) * y)) for c in range(3)], -1) * 110 + 128
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).transpose(2, 0, 1)


def _truncated_within_rounding(ours: torch.Tensor, reference: np.ndarray, rounding: float = 1e-3) -> bool:
    """``ours`` is the float64 ``reference`` truncated, up to float32 ``rounding`` next to an integer."""
    ours = ours.numpy().astype(np.float64)
    return bool(np.all((ours == np.floor(reference - rounding)) | (ours == np.floor(reference + rounding))))


def test_value_range_maps_0_255_to_minus_one_one():
    image = torch.tensor([[[0, 255, 127]]], dtype=torch.uint8)
    assert torch.allclose(preprocess.to_unit_range(image).flatten(), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (64, 48), (90, 1600)])
def test_crop_boxes_stay_within_the_image_and_the_area_and_aspect_ranges(height, width):
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        top, left, h, w = sample_distorted_box(height, width, generator)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert top + h < height or h == height  # TF draws the offset from [0, free rows): the last one is never used
        assert left + w < width or w == width
        if (h, w) != (height, width):
            assert 0.05 * height * width <= h * w <= height * width
            assert 0.75 * h - 0.5 <= w <= 1.33 * h + 0.5  # width = round(height * aspect)


def test_impossible_ranges_fall_back_to_the_whole_image():
    generator = torch.Generator().manual_seed(0)
    assert sample_distorted_box(100, 100, generator, aspect_range=(3, 4), area_range=(0.5, 1)) == (0, 0, 100, 100)
    # a 40:1 strip holds crops of at most 1.33 * 50^2 pixels, 3.3 % of it
    assert sample_distorted_box(50, 2000, generator) == (0, 0, 50, 2000)
    with pytest.raises(ValueError, match="area_range"):
        sample_distorted_box(100, 100, area_range=(0.0, 1.0))


def test_crop_boxes_are_deterministic_under_a_seed():
    def draws(generator=None):
        return [sample_distorted_box(375, 500, generator) for _ in range(20)]

    assert draws(torch.Generator().manual_seed(3)) == draws(torch.Generator().manual_seed(3))
    assert draws(torch.Generator().manual_seed(3)) != draws(torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    first = draws()
    torch.manual_seed(5)
    assert draws() == first  # no generator: the global one, seeded per sample by the loader (data.seeding)


def _expected_area_fraction() -> float:
    """TF's rule on a large square: aspect a ~ U(0.75, 1.33), height ~ U(sqrt(0.05 / a), h_max(a)) in units of the
    side with h_max = min(1, 1 / a) (the crop fits) and width a * height; E[area] by float64 integration."""
    a = np.linspace(0.75, 1.33, 200_001)
    low, high = np.sqrt(0.05 / a), np.minimum(1.0, 1.0 / a)
    return float(np.mean(a * (high**3 - low**3) / (3 * (high - low))))


def test_crop_area_follows_tfs_rule_not_a_uniform_area():
    generator = torch.Generator().manual_seed(0)
    boxes = np.array([sample_distorted_box(1000, 1000, generator)[2:] for _ in range(4000)], dtype=np.float64)
    area = boxes[:, 0] * boxes[:, 1] / 1e6
    expected = _expected_area_fraction()  # 0.376; torchvision's uniform area: 0.525
    assert abs(area.mean() - expected) < 4 * area.std() / math.sqrt(len(area))


def _bilinear_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel bilinear in float64, separably with np.interp (which holds the edge values outside)."""
    def along(values: np.ndarray, axis: int) -> np.ndarray:
        n = values.shape[axis]
        source = (np.arange(size) + 0.5) * n / size - 0.5
        return np.apply_along_axis(lambda v: np.interp(source, np.arange(n), v), axis, values)

    return along(along(image.astype(np.float64), 1), 2)


@pytest.mark.parametrize("shape", [(3, 37, 50), (3, 300, 211), (1, 224, 224), (3, 900, 17)])
def test_resize_bilinear_truncates_a_float64_half_pixel_bilinear(shape):
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    ours = resize_bilinear(image, 64)
    assert ours.dtype == torch.uint8 and ours.shape == (shape[0], 64, 64)
    assert _truncated_within_rounding(ours, _bilinear_reference(image.numpy(), 64))


def test_resize_bilinear_keeps_two_flat_regions_exact(one_thread):
    image = torch.full((3, 375, 500), 100, dtype=torch.uint8)
    image[:, :187] = 37
    out = resize_bilinear(image, 224)  # F.interpolate on one thread: 1.7 % of these pixels are one grey level less
    assert (out[:, :110] == 37).all() and (out[:, 113:] == 100).all()
    assert (resize_bilinear(torch.full((3, 97, 131), 100, dtype=torch.uint8), 224) == 100).all()


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): the fraction of input pixel j inside output pixel i's span [i, i + 1) * n_in / n_out."""
    edges = np.arange(n_out + 1) * n_in / n_out
    j = np.arange(n_in)
    return np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0, None) * n_out / n_in


@pytest.mark.parametrize("shape, out", [((3, 375, 500), (256, 341)), ((1, 257, 300), (256, 299)),
                                        ((3, 100, 80), (256, 205)), ((3, 37, 1000), (13, 224))])
def test_resize_area_truncates_a_float64_area_mean(shape, out):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    reference = _area_weights(shape[1], out[0]) @ image.astype(np.float64) @ _area_weights(shape[2], out[1]).T
    ours = resize_area(torch.from_numpy(image), *out)
    assert ours.dtype == torch.uint8 and ours.shape == (shape[0], *out)
    assert _truncated_within_rounding(ours, reference, rounding=0.01)  # TF's float32 span edges: errors to 0.005


@pytest.mark.parametrize("antialias", [False, True])
def test_train_transform_is_the_crop_resize_and_flip_drawn_in_order(antialias):
    data = _photo(500, 375)
    for seed in range(4):  # both flip outcomes
        torch.manual_seed(seed)
        ours = TrainTransform(224, crop_antialias=antialias)(data)
        torch.manual_seed(seed)
        box = sample_distorted_box(375, 500)
        # the crop's decode (tests/test_decode.py: the full decode's crop, or TF's decode_and_crop)
        crop = torch.from_numpy(preprocess.decode_crop(data, box)).permute(2, 0, 1)
        expected = resize_bilinear(crop, 224)
        if torch.rand(()) < 0.5:
            expected = expected.flip(-1)
        error = (ours - preprocess.to_unit_range(expected)).abs()
        if antialias:  # a reduced decode and PIL's antialiased filter: close on a smooth image
            assert error.mean() < 0.01  # (measured 0.004; a box one pixel off: ~0.04)
        else:
            assert error.max() == 0


@pytest.mark.parametrize("impl", ["big_vision", "timm"])
def test_train_transform_runs_randaugment_after_the_flip(impl):
    data = _photo(120, 90)
    for seed in range(4):
        torch.manual_seed(seed)
        ours = TrainTransform(64, 3, randaug_layers=2, randaug_magnitude=15, augment_impl=impl)(data)
        torch.manual_seed(seed)
        plain = TrainTransform(64, 3)(data)  # crop and flip: RandAugment draws after them
        if impl == "big_vision":  # from the same generator, next in line
            pixels = ((plain + 1) * 127.5).round().to(torch.uint8)
            assert torch.equal(ours, preprocess.to_unit_range(RandAugment(2, 15)(pixels)))
        assert ours.shape == (3, 64, 64) and ours.dtype == torch.float32 and -1 <= ours.min() and ours.max() <= 1


def test_train_transform_refuses_an_unknown_augment_impl():
    with pytest.raises(ArgumentError, match="augment_impl: 'tf' is not one of: big_vision, timm"):
        TrainTransform(64, augment_impl="tf")


def _reference_eval(data: bytes, size: int) -> np.ndarray:
    """Shorter side to size*256/224 by float64 area means on the full decode, truncated; big_vision's central crop
    (offsets rounded down); to [-1, 1]."""
    image = _decoded(data)
    small = round(size * 256 / 224)
    scale = small / min(image.shape[1:])
    out = round(image.shape[1] * scale), round(image.shape[2] * scale)
    resized = _area_weights(image.shape[1], out[0]) @ image @ _area_weights(image.shape[2], out[1]).T
    top, left = (out[0] - size) // 2, (out[1] - size) // 2
    return resized[:, top:top + size, left:left + size]


@pytest.mark.parametrize("size", [(1200, 900), (500, 700), (256, 300), (150, 180)])
def test_eval_resize_and_centre_crop_match_the_reference(size):
    data = _photo(*size, seed=1)
    ours = EvalTransform(224)(data)
    assert ours.shape == (3, 224, 224)
    assert _truncated_within_rounding(((ours + 1) * 127.5).round(), _reference_eval(data, 224), rounding=0.01)


def test_draft_decode_is_used_only_when_the_kept_region_keeps_its_resolution():
    img = preprocess.open_image(_photo(1600, 1200))
    decoded, box = preprocess._reduced(img, (0, 0, 1600, 1200), (224, 224), "RGB")
    assert decoded.size == (400, 300)  # 1/4: the region still spans >= 224 pixels each way
    assert math.isclose(box[2], 400) and math.isclose(box[3], 300)
    img = preprocess.open_image(_photo(1600, 1200))
    decoded, _ = preprocess._reduced(img, (0, 0, 300, 300), (224, 224), "RGB")
    assert decoded.size == (1600, 1200)  # a small crop needs the full resolution


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("impl", ["big_vision", "timm"])
def test_greyscale_shards_keep_one_channel(antialias, impl):
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(buf, "PNG")
    augment = {"randaug_layers": 2, "randaug_magnitude": 15, "augment_impl": impl, "crop_antialias": antialias}
    for seed in range(8):  # RandAugment's ops on three equal channels, the first kept
        torch.manual_seed(seed)
        assert TrainTransform(8, in_chans=1, **augment)(buf.getvalue()).shape == (1, 8, 8)
    assert EvalTransform(8, in_chans=1)(buf.getvalue()).shape == (1, 8, 8)

"""big_vision preprocessing against references written here: shapes, value range, Inception-crop area and aspect
bounds, the eval resize + centre crop, and the JPEG draft decode against a full decode."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from reluvit.data import preprocess
from reluvit.data.preprocess import EvalTransform, TrainTransform


def _photo(w: int, h: int, seed: int = 0) -> bytes:
    """A smooth image (JPEG-friendly, so reduced decodes are comparable) with some detail."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rng = np.random.default_rng(seed)
    f = rng.uniform(2, 6, 3)
    rgb = np.stack([np.sin(2 * np.pi * (f[c] * x + (c + 1) * y)) for c in range(3)], -1) * 110 + 128
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_value_range_maps_0_255_to_minus_one_one():
    img = Image.fromarray(np.array([[[0, 255, 127]]], dtype=np.uint8))
    assert torch.allclose(preprocess.to_unit_range(img).flatten(), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


@pytest.mark.slow
@pytest.mark.parametrize("size", [(640, 480), (300, 900)])
def test_inception_crop_boxes_stay_within_area_and_aspect_bounds(size, monkeypatch):
    boxes = []
    real = preprocess._reduced

    def spy(img, box, out, mode):
        boxes.append((img.size, box))
        return real(img, box, out, mode)

    monkeypatch.setattr(preprocess, "_reduced", spy)
    torch.manual_seed(0)
    transform = TrainTransform(224)
    for _ in range(200):
        out = transform(_photo(*size))
        assert out.shape == (3, 224, 224) and out.min() >= -1 and out.max() <= 1
    for (w, h), (left, top, right, bottom) in boxes:
        area = (right - left) * (bottom - top) / (w * h)
        aspect = (right - left) / (bottom - top)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        # torchvision's sampling, which falls back to a central crop when 10 tries miss
        assert 0.05 - 1e-3 <= area <= 1.0 and (3 / 4 - 0.02 <= aspect <= 4 / 3 + 0.02 or area > 0.5)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / (w * h) for (w, h), b in boxes]
    assert min(areas) < 0.2 and max(areas) > 0.4  # the range is drawn (a 1:3 image holds 3:4 crops of <= 4/9)


def _reference_eval(data: bytes, size: int) -> np.ndarray:
    """Resize the shorter side to size*256/224 with a box filter on the full decode, centre-crop, to [-1, 1]."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    small = round(size * 256 / 224)
    scale = small / min(img.size)
    img = img.resize((max(small, round(img.size[0] * scale)), max(small, round(img.size[1] * scale))), Image.BOX)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    crop = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float64)
    return crop.transpose(2, 0, 1) / 127.5 - 1


@pytest.mark.parametrize("size", [(1200, 900), (500, 700), (256, 300)])
def test_eval_resize_and_centre_crop_match_the_reference(size):
    data = _photo(*size, seed=1)
    ours = EvalTransform(224)(data).double().numpy()
    reference = _reference_eval(data, 224)
    assert ours.shape == reference.shape == (3, 224, 224)
    # large images are decoded at 1/2 or 1/4 by the JPEG decoder: equal up to the resampling filter
    assert np.abs(ours - reference).mean() < 0.02 and np.abs(ours - reference).max() < 0.35


def test_draft_decode_is_used_only_when_the_kept_region_keeps_its_resolution():
    img = preprocess.open_image(_photo(1600, 1200))
    decoded, box = preprocess._reduced(img, (0, 0, 1600, 1200), (224, 224), "RGB")
    assert decoded.size == (400, 300)  # 1/4: the region still spans >= 224 pixels each way
    assert math.isclose(box[2], 400) and math.isclose(box[3], 300)
    img = preprocess.open_image(_photo(1600, 1200))
    decoded, _ = preprocess._reduced(img, (0, 0, 300, 300), (224, 224), "RGB")
    assert decoded.size == (1600, 1200)  # a small crop needs the full resolution


def test_greyscale_shards_keep_one_channel():
    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(buf, "PNG")
    assert TrainTransform(8, in_chans=1)(buf.getvalue()).shape == (1, 8, 8)
    assert EvalTransform(8, in_chans=1)(buf.getvalue()).shape == (1, 8, 8)

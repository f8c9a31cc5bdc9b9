"""The JPEG decoders of the preprocessing (:func:`reluvit.data.preprocess.decode_crop`: simplejpeg, else PIL) against
PIL's full decode (the same libjpeg-turbo, ISLOW IDCT, fancy upsampling)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from reluvit.data import preprocess
from reluvit.data.preprocess import decode_crop

BOXES = [(37, 53, 200, 211), (0, 0, 375, 500), (100, 17, 50, 300), (1, 1, 373, 497), (374, 499, 1, 1)]


def _noise_jpeg(subsampling: int, mode: str = "RGB", size: tuple[int, int] = (500, 375)) -> bytes:
    """Noise (the hardest case for chroma upsampling) as a JPEG with ``subsampling`` (PIL: 0 = 4:4:4, 2 = 4:2:0)."""
    pixels = np.random.default_rng(subsampling).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=90, subsampling=subsampling)
    return buf.getvalue()


def _pil(data: bytes, mode: str = "RGB") -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert(mode))
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = box
    return pixels[top:top + height, left:left + width]


@pytest.fixture(params=["simplejpeg", "PIL"])
def decoder(request, monkeypatch):
    """Each decoder in turn: simplejpeg switched off as where not installed."""
    if request.param == "simplejpeg":
        pytest.importorskip("simplejpeg", reason="simplejpeg not installed")
    if request.param == "PIL":
        monkeypatch.setattr(preprocess, "simplejpeg", None)
    return request.param


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("subsampling", [0, 2])
def test_decode_crop_is_the_crop_of_pils_decode(decoder, subsampling, box):
    data = _noise_jpeg(subsampling)
    ours, reference = decode_crop(data, box), _crop(_pil(data), box)
    assert ours.shape == reference.shape and np.array_equal(ours, reference)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("source", ["L", "CMYK", "PNG"])
def test_other_images_decode_as_pil_does(decoder, source, mode):
    if source == "PNG":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
    else:
        data = _noise_jpeg(0, source, (40, 30))
    for box in [None, (3, 5, 20, 30)]:
        reference = _pil(data, mode) if box is None else _crop(_pil(data, mode), box)
        assert np.array_equal(decode_crop(data, box, mode), reference), box


def test_the_whole_image_and_its_colour_to_grey_conversion_are_pils(decoder):
    data = _noise_jpeg(2)
    assert np.array_equal(decode_crop(data), _pil(data))
    assert np.array_equal(decode_crop(data, (3, 5, 20, 30), "L"), _crop(_pil(data, "L"), (3, 5, 20, 30)))


def test_damaged_jpegs_fail_as_in_pil(decoder):
    data = _noise_jpeg(2)[:5000]
    with pytest.raises(OSError):
        _pil(data)
    with pytest.raises(OSError):
        decode_crop(data, (0, 0, 375, 500))

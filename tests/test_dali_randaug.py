"""big_vision's RandAugment as DALI operators (``reluvit.data.dali_randaug``) against the reference
(``reluvit.data.randaug``, itself checked against TensorFlow), on DALI's CPU backend: every op alone at m = 0, 10,
15 and both signs, on images of several sizes; and the policy: every layer applies an op, ops and signs uniform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e '.[gpu]')")

from nvidia.dali import fn, pipeline_def  # noqa: E402

from reluvit.data import randaug  # noqa: E402
from reluvit.data.dali_randaug import OPS, apply_op, rand_augment  # noqa: E402

MAGNITUDES = (0, 10, 15)
GEOMETRIC = frozenset({"Rotate", "ShearX", "ShearY"})  # warp_affine's rounding at ties (see the module docstring)
# Measured worst cases over these images: 1.23 % of pixels (ShearY m = 10), mean 0.31 (ShearX m = 10).
MAX_DIFFERING_FRACTION, MAX_MEAN_DIFF = 0.02, 0.5


def _image(height: int, width: int, seed: int, low: int = 0, high: int = 255) -> np.ndarray:
    """Smooth waves plus noise, H x W x 3 uint8 in [low, high]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    waves = np.stack([np.sin(2 * np.pi * ((c + 1) * x + (3 - c) * y)) for c in range(3)], axis=-1)
    img = low + (waves + 1) / 2 * (high - low) + rng.normal(0, 8, waves.shape)
    return np.clip(img, low, high).astype(np.uint8)


def _with_constant_channel(img: np.ndarray) -> np.ndarray:
    """A low-contrast image whose blue channel is constant (AutoContrast and Equalize keep such channels)."""
    out = img // 2 + 60
    out[..., 2] = 77
    return out


IMAGES = [_image(224, 224, 0), _image(150, 200, 1), _image(64, 48, 2), _with_constant_channel(_image(224, 224, 3))]


def _run(graph, images: list[np.ndarray], seed: int = 0, iterations: int = 1) -> list[list[np.ndarray]]:
    """The outputs of ``graph(batch)`` (a DataNode or a tuple of them), per output a list over the samples of
    ``iterations`` batches of ``images``, on DALI's CPU backend."""
    @pipeline_def(enable_conditionals=True, batch_size=len(images), num_threads=1, device_id=None, seed=seed)
    def pipeline():
        outputs = graph(fn.external_source(source=lambda: images, batch=True, layout="HWC"))
        return outputs if isinstance(outputs, tuple) else (outputs,)

    pipe = pipeline()
    pipe.build()
    results = None
    for _ in range(iterations):
        batches = [[np.array(sample) for sample in output] for output in pipe.run()]
        results = batches if results is None else [a + b for a, b in zip(results, batches, strict=True)]
    return results


def _reference(img: np.ndarray, name: str, magnitude: float, sign: int = 1) -> np.ndarray:
    out = randaug.apply_op(torch.from_numpy(img).permute(2, 0, 1), name, magnitude, sign=sign)
    return out.permute(1, 2, 0).numpy()


def _cases(magnitude: float) -> list[tuple[str, int]]:
    return [(name, sign) for name in OPS if name != "Cutout" for sign in ((1, -1) if name in randaug.SIGNED_OPS
                                                                         else (1,))]


@pytest.fixture(scope="module", params=MAGNITUDES)
def op_outputs(request):
    """magnitude, and {(op, sign): DALI's outputs on IMAGES}: one pipeline per magnitude for all ops."""
    magnitude = request.param
    cases = _cases(magnitude)
    outputs = _run(lambda images: tuple(apply_op(images, name, magnitude, sign=sign) for name, sign in cases),
                   IMAGES)
    return magnitude, dict(zip(cases, outputs, strict=True))


def test_ops_are_the_reference_list_in_its_order():
    assert OPS == randaug.OPS


def test_every_op_matches_the_reference(op_outputs):
    magnitude, outputs = op_outputs
    for (name, sign), got in outputs.items():
        for img, out in zip(IMAGES, got, strict=True):
            want = _reference(img, name, magnitude, sign)
            assert out.shape == want.shape and out.dtype == np.uint8, (name, sign)
            diff = np.abs(out.astype(np.int16) - want.astype(np.int16))
            where = f"{name} m={magnitude} sign={sign} {img.shape}"
            if name in GEOMETRIC:
                assert (diff > 0).mean() <= MAX_DIFFERING_FRACTION, where
                assert diff.mean() <= MAX_MEAN_DIFF, where
            else:  # the pixel ops and whole-pixel translations are computed as the reference does: equal
                assert diff.max() == 0, where


def _cutout_centre(img: np.ndarray, out: np.ndarray, pad: int) -> tuple[int, int]:
    """The centre of the square DALI filled, from the extent of the changed pixels (where the square is clipped
    by the image, any centre that clips it the same way gives the same output)."""
    rows, cols = np.nonzero((out != img).any(axis=-1))
    height, width = img.shape[:2]
    cy = rows.min() + pad if rows.min() > 0 else min(rows.max() + 1, height) - pad
    cx = cols.min() + pad if cols.min() > 0 else min(cols.max() + 1, width) - pad
    return int(cy), int(cx)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_cutout_fills_the_reference_square_around_a_pixel(magnitude):
    pad = randaug.LEVEL_TO_ARGS["Cutout"](float(magnitude))[0]
    (outputs,) = _run(lambda images: apply_op(images, "Cutout", magnitude), IMAGES, iterations=3)
    for img, out in zip(IMAGES * 3, outputs, strict=True):
        if pad == 0:
            assert np.array_equal(out, img)
            continue
        cy, cx = _cutout_centre(img, out, pad)
        want = randaug.cutout(torch.from_numpy(img).permute(2, 0, 1), pad, cy, cx).permute(1, 2, 0).numpy()
        assert np.array_equal(out, want)


SMALL = _image(128, 160, 5, low=30, high=220)  # not full range, so AutoContrast changes it too


def _candidates(magnitude: float) -> dict[tuple[str, int], np.ndarray]:
    """The reference's output of every op and sign on SMALL (Cutout excepted: its centre is random)."""
    return {(name, sign): _reference(SMALL, name, magnitude, sign) for name, sign in _cases(magnitude)}


def _classify(out: np.ndarray, candidates: dict[tuple[str, int], np.ndarray]) -> tuple[str, int]:
    """The op (and sign) whose reference output is nearest to ``out``; a square of 128s alone is Cutout."""
    changed = (out != SMALL).any(axis=-1)
    rows, cols = np.nonzero(changed)
    if len(rows) and (out[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 128).all():
        return "Cutout", 1
    return min(candidates, key=lambda key: np.abs(candidates[key].astype(np.int16) - out).mean())


def test_every_layer_applies_an_op_drawn_uniformly_with_a_random_sign():
    # At 10 Solarize (threshold 256 -> 0) is Invert; at 15 translations move SMALL out of the picture.
    magnitude, batch, iterations = 12, 32, 10
    (outputs,) = _run(lambda images: rand_augment(images, 1, magnitude), [SMALL] * batch, seed=3,
                      iterations=iterations)
    unchanged = np.mean([np.array_equal(out, SMALL) for out in outputs])
    assert unchanged == 0.0  # no op is an identity on SMALL; timm's p = 0.5 would leave half unchanged
    candidates = _candidates(magnitude)
    drawn = [_classify(out, candidates) for out in outputs]
    counts = np.array([sum(name == op for name, _ in drawn) for op in OPS])
    expected = len(drawn) / len(OPS)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 37.7, dict(zip(OPS, counts.tolist(), strict=True))  # chi-square, 15 degrees of freedom, p = 0.001
    signs = [sign for name, sign in drawn if name in randaug.SIGNED_OPS]
    assert 0.3 < np.mean(np.array(signs) > 0) < 0.7


def test_two_layers_run_on_every_size_with_a_static_or_read_shape():
    (read,) = _run(lambda images: rand_augment(images, 2, 15), IMAGES, seed=7)
    square = [img for img in IMAGES if img.shape[:2] == (224, 224)]
    (static,) = _run(lambda images: rand_augment(images, 2, 15, shape=(224, 224)), square, seed=7)
    assert [out.shape for out in read] == [img.shape for img in IMAGES]
    assert [out.shape for out in static] == [img.shape for img in square]
    assert not any(np.array_equal(out, img) for out, img in zip(read, IMAGES, strict=True))


def test_zero_layers_is_the_identity_and_bad_arguments_are_refused():
    (outputs,) = _run(lambda images: rand_augment(images, 0, 10), IMAGES[:2])
    assert all(np.array_equal(out, img) for out, img in zip(outputs, IMAGES[:2], strict=True))
    with pytest.raises(ValueError, match="num_layers"):
        _run(lambda images: rand_augment(images, -1, 10), IMAGES[:1])
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        _run(lambda images: apply_op(images, "Blur", 10), IMAGES[:1])

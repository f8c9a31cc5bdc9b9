"""The DALI loader (``data.loader=dali``): NVIDIA DALI decodes, crops, resizes and augments the shards' JPEGs on
the GPU (nvJPEG, device "mixed"), or on the CPU where there is none (``device_id=None``: how CI runs it).

What DALI does and what stays in Python: the samples are read by the reference :class:`ShardStream` (in loader
workers) with the transform :class:`Encoded`, which decodes nothing: it reads the image header, draws the crop box
and the flip exactly as :class:`reluvit.data.preprocess.TrainTransform` draws them (same generator, same order of
draws), checks that the file is complete, and hands DALI the encoded bytes with those numbers. So the order of an
epoch, the split of the samples over ranks and workers, the equal batch counts, the mid-epoch resume and the
handling of bad data are the stream's (one implementation); DALI's own webdataset reader is not used, since its
shuffling cannot replay an epoch's order from (seed, epoch) after a restart. The crop box follows TF's
``sample_distorted_bounding_box`` as the reference's does: DALI's ``random_resized_crop`` draws the aspect ratio
log-uniformly, like torchvision's.

Training graph: ``decoders.image_slice`` (decodes only the box, an ROI decode), ``resize`` to the model's size
(bilinear without antialias, as TF's; float, then truncated to uint8 as big_vision casts), ``flip``, big_vision's
RandAugment as DALI operators (:mod:`reluvit.data.dali_randaug`), ``crop_mirror_normalize`` to [-1, 1] CHW.
Validation: decode, resize the shorter side to ``256 / 224`` of the size (DALI's antialiased linear filter where the
reference averages areas exactly), the same floored central crop. Mixup stays in the training step.

What differs from the reference pipeline: the resampling filters (DALI's linear and antialiased filters against
TF's bilinear and area: a mean difference of about a grey level, tests/test_dali.py measures it), RandAugment's
geometric ops' rounding (:mod:`reluvit.data.dali_randaug`), and RandAugment's random draws (DALI's generator,
seeded per (seed, epoch, rank) when an epoch starts, where the reference seeds each sample's draws by its place in
the stream, :mod:`reluvit.data.seeding`). A run resumed mid-epoch trains the same samples in the same order, with
the same crop boxes and flips (drawn per sample by the stream), as the interrupted one; DALI's RandAugment draws
after the restart are new (its generator starts again at the resumed batch), where the reference's are the same.
A file that passes the completeness check but that DALI cannot decode stops the run with DALI's error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from reluvit.data.preprocess import eval_geometry, open_image, random_flip, sample_distorted_box
from reluvit.errors import check_choice

LOADERS = ("auto", "reference", "dali")  # data.loader: auto is DALI where a GPU and the package are present
OUTPUTS = ("images", "labels")  # the pipeline's outputs, by name


def dali_installed() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_loader(loader: str, dataset: str) -> str:
    """The loader that runs: ``auto`` is ``dali`` for shards where a GPU and DALI are present, else ``reference``;
    ``dali`` reads shards only and needs the package (a one-line error naming the fix otherwise)."""
    check_choice("loader", loader, LOADERS)
    if loader == "auto":
        return "dali" if dataset == "shards" and torch.cuda.is_available() and dali_installed() else "reference"
    if loader == "dali" and dataset != "shards":
        raise ValueError(f"'dali' reads webdataset shards (dataset=shards), not dataset={dataset}")
    if loader == "dali" and not dali_installed():
        raise ValueError("'dali' needs NVIDIA DALI: pip install -e '.[gpu]' (or data.loader=reference)")
    return loader


def loader_fallback(loader: str, dataset: str) -> str | None:
    """Why ``auto`` decodes shards on the CPU on a machine with a GPU (DALI missing), or None: a GPU left waiting for
    its images is worth a warning in the log and a line in the run's summary."""
    if loader == "auto" and dataset == "shards" and torch.cuda.is_available() and not dali_installed():
        return ("data.loader=auto decodes the shards on the CPU (the reference loader): NVIDIA DALI is not installed "
                "(pip install 'reluvit[gpu]'; data.loader=reference says this is meant)")
    return None


def dali_randaug_arguments(augment: dict) -> tuple[int, float]:
    """(layers, magnitude) of DALI's RandAugment from :class:`reluvit.data.preprocess.TrainTransform`'s arguments:
    DALI runs big_vision's RandAugment only (timm's works on PIL images, in the reference loader)."""
    if augment.get("randaug_layers") and augment.get("augment_impl", "big_vision") != "big_vision":
        raise ValueError(f"augment_impl={augment['augment_impl']} runs in the reference loader only (DALI runs "
                         "big_vision's RandAugment)")
    return augment.get("randaug_layers", 0), augment.get("randaug_magnitude", 0)


class Sample(NamedTuple):
    """One encoded image and what DALI does with it: the box of the decoded image to keep (top, left, height,
    width), the size to resize the whole image to first (height, width; eval) and whether to flip it (training)."""

    data: bytes
    box: tuple[int, int, int, int]
    resize: tuple[int, int]
    flip: bool


class Encoded:
    """The stream's transform for DALI: an encoded image as a :class:`Sample`, the random draws (crop box, flip)
    made as :class:`reluvit.data.preprocess.TrainTransform` makes them; picklable (runs in loader workers).
    Raises ValueError for a file that is not an image or is cut short (the stream skips and counts it)."""

    def __init__(self, size: int, train: bool) -> None:
        self.size, self.train = size, train

    def __call__(self, data: bytes) -> Sample:
        with open_image(data) as image:  # the header only
            width, height = image.size
            check_complete(data, image.format)
        if self.train:
            return Sample(data, sample_distorted_box(height, width), (height, width), random_flip())
        resize, box = eval_geometry(height, width, self.size)
        return Sample(data, box, resize, False)


TAIL = 1024  # bytes after the end-of-image marker that a JPEG may carry (padding, trailing metadata)


def check_complete(data: bytes, image_format: str | None) -> None:
    """A JPEG must end in its end-of-image marker (within :data:`TAIL` bytes of the end; entropy-coded data never
    holds one) and a PNG hold its end chunk: a file cut short (the usual bad sample of a broken copy) would otherwise
    reach the decoder, where DALI fails the whole batch."""
    if image_format == "JPEG" and b"\xff\xd9" not in data[-TAIL:]:
        raise ValueError("truncated JPEG (no end-of-image marker)")
    if image_format == "PNG" and b"IEND" not in data[-16:]:
        raise ValueError("truncated PNG (no IEND chunk)")


def encoded_batch(samples: list[tuple[Sample, int]]) -> tuple[list[Sample], np.ndarray]:
    """A batch for DALI: the samples as a list (their sizes differ) and the labels."""
    return [sample for sample, _ in samples], np.array([label for _, label in samples], np.int32)


def _columns(batch: tuple[list[Sample], np.ndarray], train: bool) -> tuple[list[np.ndarray], ...]:
    """One batch of the stream as the external source's columns: encoded bytes, box anchors and shapes, then the
    flips (training) or the resize shapes (eval), then the labels."""
    samples, labels = batch
    last = [np.array(s.flip) for s in samples] if train else [np.array(s.resize, np.float32) for s in samples]
    return ([np.frombuffer(s.data, np.uint8) for s in samples], [np.array(s.box[:2], np.int32) for s in samples],
            [np.array(s.box[2:], np.int32) for s in samples], last, [np.asarray(label).reshape(1) for label in labels])


def _graph(source: Iterator, size: int, in_chans: int, train: bool, randaug: tuple[int, float], gpu: bool):
    """The pipeline's operators on the columns of the batches of ``source`` (:func:`_columns`)."""
    from nvidia.dali import fn, types
    from nvidia.dali.math import floor

    data, anchor, shape, flip_or_resize, labels = fn.external_source(source=source, num_outputs=5, batch=True)
    color = types.RGB if in_chans == 3 else types.GRAY
    decode = {"device": "mixed" if gpu else "cpu", "output_type": color}
    if train:
        images = fn.decoders.image_slice(data, anchor, shape, axes=[0, 1], **decode)
        images = fn.resize(images, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=False,
                           dtype=types.FLOAT)
        images = fn.cast(floor(images), dtype=types.UINT8)  # big_vision's cast truncates
        images = fn.flip(images, horizontal=fn.cast(flip_or_resize, dtype=types.INT32))
        layers, magnitude = randaug
        if layers:
            from reluvit.data.dali_randaug import rand_augment

            grey = in_chans == 1  # as the reference: three equal channels, which every op keeps equal
            images = fn.cat(images, images, images, axis=2) if grey else images
            images = rand_augment(images, layers, magnitude, shape=(size, size))
            images = images[:, :, 0:1] if grey else images
    else:
        images = fn.decoders.image(data, **decode)
        images = fn.resize(images, size=flip_or_resize, interp_type=types.INTERP_LINEAR, antialias=True,
                           dtype=types.FLOAT)
        images = fn.cast(floor(images), dtype=types.UINT8)
        images = fn.slice(images, anchor, shape, axes=[0, 1])
    images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * in_chans,
                                      std=[127.5] * in_chans)
    return images, labels


def build_pipeline(source: Iterator, seed: int, *, size: int, in_chans: int, train: bool,
                   randaug: tuple[int, float], batch_size: int, num_threads: int, device_id: int | None):
    """A DALI pipeline over the encoded batches of ``source`` (of up to ``batch_size`` samples); ``device_id``
    None runs every operator on the CPU."""
    from nvidia.dali import pipeline_def

    build = pipeline_def(_graph, enable_conditionals=True)
    return build(source, size, in_chans, train, randaug, device_id is not None, batch_size=batch_size,
                 num_threads=num_threads, device_id=device_id, seed=seed)


class DaliLoader:
    """Batches ``(images, labels)`` of an epoch: the encoded batches of ``encoded`` (an iterable whose iteration
    starts the epoch at the trainer's position, :class:`reluvit.data.datamodules.EpochLoader`) through the DALI
    pipeline ``pipeline(source, seed)`` (:func:`build_pipeline`), built for each epoch with the seed ``seed_of()``
    returns when it starts."""

    def __init__(self, encoded, pipeline: Callable[[Iterator, int], object], seed_of: Callable[[], int]) -> None:
        self.encoded, self.pipeline, self.seed_of = encoded, pipeline, seed_of

    def __len__(self) -> int:
        return len(self.encoded)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        columns = functools.partial(_columns, train=self.encoded.dataset.train)
        pipe = self.pipeline(map(columns, iter(self.encoded)), self.seed_of())
        outputs = DALIGenericIterator(pipe, list(OUTPUTS), auto_reset=False, prepare_first_batch=False,
                                      last_batch_policy=LastBatchPolicy.PARTIAL)
        for (batch,) in outputs:  # one pipeline: a list of one dict
            yield batch["images"], batch["labels"].view(-1).long()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """DALI's seed for one rank's epoch: a 31-bit digest of the three."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{rank}".encode()).digest()[:4], "little") >> 1

"""Input pipeline throughput: decoded + augmented 224-px training images per second per CPU core, the shard stream
(``data=shards``) against a plain torchvision ImageFolder loader over the same generated JPEGs.

    .venv/bin/python bench/data.py [--images 600] [--randaug 2,10]

Both run in this process on one thread (per core, as a data worker would), over generated JPEGs (quality 90)
of ImageNet's typical size (500 x 375) and of twice that; img/s per core is images per CPU second of this process
(``time.process_time``: steady on a shared machine, where wall time counts other processes' turns). The shard side
is big_vision's pipeline (Inception crop with TF's non-antialiased bilinear, flip, RandAugment, value range) with
each JPEG decoder of :mod:`reluvit.data.preprocess` (simplejpeg, the default where installed; PIL), and again with
``recipe.crop_antialias=true`` (a reduced-size JPEG decode where equivalent, PIL's antialiased bilinear); the folder
side is torchvision's usual one (full decode, RandomResizedCrop, flip, the same RandAugment, to float + Normalize).
The DALI loader (``--dali``, the default where DALI is installed): per core on the CPU (decode in its CPU graph, one
thread), per GPU where there is one (wall time, 4 threads).
Goals (issue #15): >= 400 img/s/core and >= 1.5x the folder; on an H100/H200 the DALI loader >= 15 000 img/s with
the S/16 i21k recipe's augmentation (``--randaug 2,0``).
Writes results/bench/data-<device>.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch
from benchlib import device_name, goal, show, write_csv
from PIL import Image

from reluvit.data import preprocess
from reluvit.data.dali import dali_installed
from reluvit.data.preprocess import TrainTransform
from reluvit.data.shards import write_shards
from reluvit.data.stream import ShardStream

CLASSES = 10
ROUNDS = 2  # the reference variants are measured this many times each, in turn; the best counts
# shard pipelines: (column name, crop_antialias, simplejpeg decodes: else PIL, as where it is not installed)
PIPELINES = [("shards", False, True), ("shards PIL", False, False), ("shards antialiased", True, True)]


def generate_jpegs(root: Path, count: int, width: int) -> None:
    """Photo-like JPEGs (smooth structure plus texture), ``width`` x 3/4 of it on average, in class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        w = int(rng.integers(width * 4 // 5, width * 6 // 5))
        h = int(w * rng.uniform(0.6, 0.9))
        y, x = np.mgrid[0:h, 0:w] / 100.0
        base = np.stack([np.sin(x * rng.uniform(0.5, 3) + y * rng.uniform(0.5, 3) + c) for c in range(3)], -1)
        pixels = np.clip(base * 80 + 128 + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())


def images_per_second(batches, count: int, clock=time.process_time) -> float:
    start = clock()
    seen = sum(len(labels) for _, labels in batches)
    assert seen == count, (seen, count)
    return seen / (clock() - start)


def reference_speeds(shards: Path, randaug: tuple[int, int]) -> dict[str, float]:
    """Images per CPU second of the reference pipeline's variants (:data:`PIPELINES`) over the shards, the best of
    :data:`ROUNDS` rounds that take the variants in turn (a process's first minutes run slower: the first variant
    measured lost 20-40 % in a single round)."""
    speed = {}
    for _ in range(ROUNDS):
        for name, antialias, simplejpeg in PIPELINES:
            transform = TrainTransform(224, 3, *randaug, crop_antialias=antialias)
            stream = ShardStream(shards, "train", transform, 50, train=True, num_classes=CLASSES, shuffle_buffer=200)
            with contextlib.nullcontext() if simplejpeg else mock.patch.object(preprocess, "simplejpeg", None):
                speed[name] = max(speed.get(name, 0.0), images_per_second(iter(stream), len(stream) * 50))
    return speed


def dali_images_per_second(shards: Path, randaug: tuple[int, int]) -> float:
    """The DALI loader (``data.loader=dali``) over the shards: on the CPU, images per CPU second of this process
    (its one DALI thread included); on a GPU, images per second of wall time with 4 DALI threads and 4 workers."""
    from reluvit.data.datamodules import ShardDataModule

    gpu = torch.cuda.is_available()
    module = ShardDataModule(str(shards), 50, 224, 3, CLASSES, num_workers=4 if gpu else 0, loader="dali",
                             augment={"randaug_layers": randaug[0], "randaug_magnitude": randaug[1]},
                             shuffle_buffer=200)
    loader = module.train_dataloader()
    if gpu:  # a first epoch builds and warms the pipeline (nvJPEG's allocations)
        images_per_second(iter(loader), len(loader) * 50)
        torch.cuda.synchronize()
    return images_per_second(iter(loader), len(loader) * 50, time.perf_counter if gpu else time.process_time)


def folder_loader(root: Path, randaug: tuple[int, int]):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    ops = [T.RandomResizedCrop(224, scale=(0.05, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()]
    if randaug[0]:  # the same RandAugment ops as the shard side: the comparison is of loading and decoding
        ops.append(TrainTransform(224, 3, *randaug).randaug)
    ops += [T.ConvertImageDtype(torch.float32), T.Normalize([0.5] * 3, [0.5] * 3)]
    return torch.utils.data.DataLoader(ImageFolder(str(root), T.Compose(ops)), batch_size=50, shuffle=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="generated JPEGs (default: 600)")
    parser.add_argument("--randaug", default="2,10", help="RandAugment layers,magnitude; 0,0 = none (default: 2,10)")
    parser.add_argument("--width", type=int, nargs="+", default=[500, 1000],
                        help="mean image widths to measure (default: 500 (ImageNet-like) and 1000)")
    parser.add_argument("--dali-only", action="store_true", help="the DALI loader alone (make device-check)")
    parser.add_argument("--out", type=Path, default=None, help="write <out>/data.csv (default: results/bench/)")
    parser.add_argument("--dali", action=argparse.BooleanOptionalAction, default=dali_installed(),
                        help="measure the DALI loader too (default: where DALI is installed); on a GPU per GPU")
    args = parser.parse_args()
    torch.set_num_threads(1)
    randaug = tuple(int(v) for v in args.randaug.split(","))
    rows = []
    for width in args.width:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            generate_jpegs(tmp / "jpegs", args.images, width)
            write_shards(str(tmp / "jpegs"), tmp / "shards", shard_mb=16, progress=False)
            speed = {} if args.dali_only else reference_speeds(tmp / "shards", randaug)
            if args.dali or args.dali_only:
                speed["dali " + ("GPU" if torch.cuda.is_available() else "CPU")] = dali_images_per_second(
                    tmp / "shards", randaug)
            row = {"mean width": width, **{f"{k} img/s{'' if 'GPU' in k else '/core'}": v for k, v in speed.items()}}
            if not args.dali_only:
                folder = images_per_second(iter(folder_loader(tmp / "jpegs", randaug)), args.images)
                row["ImageFolder img/s/core"] = folder
                row.update({f"{k} / folder": v / folder for k, v in speed.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    device = device_name(torch.device("cpu"))
    show(table, f"224-px training images per second on one core, RandAugment{randaug}: {device}")
    print(f"-> {write_csv(table.assign(randaug=str(randaug), images=args.images), 'data', device, args.out)}")


DALI_GPU_GOAL = 15_000  # images/s on one H100/H200 with the S/16 i21k recipe's augmentation (issue #15)


def goals(table: pd.DataFrame, training_images_per_second: float | None, device: str) -> list[dict]:
    """The GPU loader's goals from a ``--dali`` run on a GPU: its images/s against 15 000, and against the S/16
    training step's images/s (``training_images_per_second``: the step never waits for data when the loader is
    faster)."""
    column = "dali GPU img/s"
    speed = float(table[column].iloc[0]) if column in table else None
    missing = "no DALI GPU column (DALI not installed, or no GPU)"
    rows = [goal("DALI loader images/s per GPU, S/16 i21k augmentation", speed, DALI_GPU_GOAL, unit=" img/s",
                 where=device, missing=missing)]
    ratio = speed / training_images_per_second if speed and training_images_per_second else None
    rows.append(goal("DALI loader / S/16 training step images/s (>= 1: the step never waits for data)", ratio, 1.0,
                     where=device, missing=missing if speed is None else "no S/16 training step images/s"))
    return rows


if __name__ == "__main__":
    main()

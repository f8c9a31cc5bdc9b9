"""Write webdataset tar shards (``reluvit shards``) from an image tree, a directory of class tars, or an embedded
dataset, with an ``_info.json`` the streaming loader reads (sample counts per shard, classes, label set).

Sources:

* ``folder``: ``<src>/<class>/<image>`` (ImageNet's JPEGs in WordNet-id directories; any ImageFolder tree);
* ``class-tars``: ``<src>/<wnid>.tar`` (the ImageNet-21k releases; ImageNet-1k's train tar once unpacked);
* ``embedded:<name>``: an embedded dataset (PNG-encoded, lossless).

A source with ``train/`` and ``val/`` subdirectories gives both splits; otherwise ``val_count`` images are held
out as ``val`` (ImageNet-21k has no validation split; big_vision holds out its first 51 200 images).

Samples are written in one seeded random order, so every shard mixes all classes (the sources are grouped by
class), as the original encoded bytes (no re-encode) unless ``resize`` asks for a smaller shorter side. Shard
boundaries are planned up front from the file sizes, so the plan is the same on every run: a shard is written to a
``.partial`` file and renamed when complete, and re-running skips the shards that exist.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from reluvit.data.labels import LABEL_SETS, wordnet_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
INFO = "_info.json"


@dataclass(frozen=True)
class Item:
    """One image to write: where its bytes are (a file, or a member of a tar), its size and class index."""

    key: str
    source: str  # a file path, "<tar path>::<member>", or "embedded:<name>::<index>"
    size: int
    label: int


def list_source(src: str, label_set: str) -> tuple[dict[str, list[Item]], list[str], list[str] | None]:
    """Every image of ``src`` by split, the class names in index order and their WordNet ids (or None)."""
    if src.startswith("embedded:"):
        return _list_embedded(src.removeprefix("embedded:"))
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"shard source {src!r} is not a directory")
    splits = {s: root / s for s in ("train", "val") if (root / s).is_dir()} or {"all": root}
    tars = {s: sorted(p.glob("*.tar")) for s, p in splits.items()}
    names = sorted({p.stem for ts in tars.values() for p in ts} if any(tars.values())
                   else {d.name for p in splits.values() for d in p.iterdir() if d.is_dir()})
    if not names:
        raise FileNotFoundError(f"{src}: no class directories and no class tars found")
    classes, wnids = _classes(names, label_set)
    index = {c: i for i, c in enumerate(classes)}
    items = {}
    for split, path in splits.items():
        found = _list_tars(tars[split], index) if tars[split] else _list_folders(path, index)
        items[split] = sorted(found, key=lambda it: it.key)
    return items, classes, wnids


def _classes(names: list[str], label_set: str) -> tuple[list[str], list[str] | None]:
    if label_set not in LABEL_SETS:
        raise ValueError(f"label set {label_set!r} is not one of: {', '.join(LABEL_SETS)}")
    if label_set == "folder":
        looks_wordnet = all(n.startswith("n") and n[1:].isdigit() for n in names)
        return names, names if looks_wordnet else None
    wnids = list(wordnet_ids(label_set))
    unknown = sorted(set(names) - set(wnids))
    if unknown:
        raise ValueError(f"{len(unknown)} classes of the source are not in label set {label_set}: {unknown[:5]}")
    return wnids, wnids


def _list_folders(root: Path, index: dict[str, int]) -> Iterator[Item]:
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name in index):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                yield Item(f"{d.name}/{f.stem}", str(f), f.stat().st_size, index[d.name])


def _list_tars(tars: list[Path], index: dict[str, int]) -> Iterator[Item]:
    for t in tars:
        with tarfile.open(t) as tar:  # reads the headers only
            for m in tar:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES:
                    yield Item(f"{t.stem}/{Path(m.name).stem}", f"{t}::{m.name}", m.size, index[t.stem])


def _list_embedded(name: str) -> tuple[dict[str, list[Item]], list[str], None]:
    from reluvit.data.embedded import EMBEDDED

    if name not in EMBEDDED:
        raise ValueError(f"embedded dataset {name!r} is not one of: {', '.join(EMBEDDED)}")
    data = EMBEDDED[name]()
    items = [Item(f"{i:06d}", f"embedded:{name}::{i}", data.images[i].size, int(label))
             for i, label in enumerate(data.labels)]
    return {"all": items}, list(data.classes), None


def hold_out(items: dict[str, list[Item]], val_count: int, seed: int) -> dict[str, list[Item]]:
    """Split a source without a validation split: ``val_count`` seeded-random images become ``val``."""
    if "all" not in items:
        return items
    pool = list(items["all"])
    if val_count >= len(pool):
        raise ValueError(f"val_count {val_count} leaves no training images (the source has {len(pool)})")
    random.Random(seed).shuffle(pool)
    return {"train": sorted(pool[val_count:], key=lambda it: it.key),
            "val": sorted(pool[:val_count], key=lambda it: it.key)} if val_count else {"train": pool}


def plan_shards(items: list[Item], shard_bytes: int, seed: int) -> list[list[Item]]:
    """The items in one seeded random order, cut into shards of about ``shard_bytes`` (at least one item each)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    shards, current, size = [], [], 0
    for it in order:
        if current and size + it.size > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(it)
        size += it.size
    return [*shards, current] if current else shards


class _Reader:
    """Reads items' bytes, keeping a few class tars open (ImageNet-21k has 21k of them)."""

    def __init__(self, resize: int | None, keep_open: int = 64) -> None:
        self.resize, self.keep_open = resize, keep_open
        self.tars: OrderedDict[str, tarfile.TarFile] = OrderedDict()
        self.embedded: dict = {}

    def read(self, it: Item) -> tuple[bytes, str]:
        """The encoded image and its file suffix (jpg, png, ...)."""
        path, _, member = it.source.partition("::")
        if path.startswith("embedded:"):
            data, ext = self._embedded(path.removeprefix("embedded:"), int(member)), "png"
        elif member:
            data, ext = self._tar(path).extractfile(member).read(), Path(member).suffix
        else:
            data, ext = Path(path).read_bytes(), Path(path).suffix
        ext = ext.lower().lstrip(".").replace("jpeg", "jpg")
        return (self._resized(data), "jpg") if self.resize else (data, ext)

    def _tar(self, path: str) -> tarfile.TarFile:
        if path in self.tars:
            self.tars.move_to_end(path)
        else:
            if len(self.tars) >= self.keep_open:
                self.tars.popitem(last=False)[1].close()
            self.tars[path] = tarfile.open(path)
        return self.tars[path]

    def _embedded(self, name: str, i: int) -> bytes:
        from reluvit.data.embedded import EMBEDDED

        if name not in self.embedded:
            self.embedded[name] = EMBEDDED[name]().images
        buf = io.BytesIO()
        Image.fromarray((self.embedded[name][i] * 255).round().astype("uint8")).save(buf, "PNG")
        return buf.getvalue()

    def _resized(self, data: bytes) -> bytes:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (self.resize, self.resize))  # decode no larger than needed
        img = img.convert("RGB")
        scale = self.resize / min(img.size)
        if scale < 1:
            img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        return buf.getvalue()

    def close(self) -> None:
        for tar in self.tars.values():
            tar.close()


def write_shards(src: str, out: str | Path, *, shard_mb: float = 512, val_count: int = 0, label_set: str = "folder",
                 resize: int | None = None, seed: int = 0, name: str | None = None, progress: bool = True) -> dict:
    """Write ``<out>/<split>-NNNNNN.tar`` and ``<out>/_info.json``; returns the info. Existing shards are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items, classes, wnids = list_source(src, label_set)
    items = hold_out(items, val_count, seed)
    reader = _Reader(resize)
    info = {"name": name or Path(src.removeprefix("embedded:")).name, "source": src, "label_set": label_set,
            "classes": classes, "wnids": wnids, "num_classes": len(classes), "seed": seed, "resize": resize,
            "splits": {}}
    try:
        for split, split_items in items.items():
            plan = plan_shards(split_items, int(shard_mb * 2**20), seed)
            shards = []
            bar = tqdm(total=len(split_items), desc=f"shards {split}", unit="img", disable=not progress)
            for i, shard in enumerate(plan):
                path = out / f"{split}-{i:06d}.tar"
                if not path.exists():
                    _write_one(path, shard, reader)
                shards.append({"file": path.name, "num_samples": len(shard)})
                bar.update(len(shard))
            bar.close()
            info["splits"][split] = {"num_samples": len(split_items), "shards": shards}
    finally:
        reader.close()
    tmp = out / f"{INFO}.partial"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, out / INFO)
    return info


def _write_one(path: Path, shard: list[Item], reader: _Reader) -> None:
    partial = path.with_suffix(".partial")
    with wds.TarWriter(str(partial), encoder=False) as sink:
        for it in shard:
            data, ext = reader.read(it)
            sink.write({"__key__": it.key.replace("/", "_").replace(".", "_"), ext: data,
                        "cls": str(it.label).encode()})
    os.replace(partial, path)


def read_info(path: str | Path) -> dict:
    """The ``_info.json`` of a shard directory; a missing directory or file is named in the error."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"shard directory {path} does not exist")
    if not (path / INFO).exists():
        raise FileNotFoundError(f"{path / INFO} is missing: write the shards with `reluvit shards`")
    return json.loads((path / INFO).read_text())

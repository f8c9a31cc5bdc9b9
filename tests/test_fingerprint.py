"""The dataset fingerprint (reluvit.data.fingerprint): the same data at another path (a copy, a trailing slash, ``..``)
gives the same fingerprint, other data another; a tree's listing of 10 000 files takes well under a second; a
missing path is a one-line error naming it."""

from __future__ import annotations

import json
import re
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from reluvit.data.fingerprint import fingerprint
from reluvit.data.shards import write_shards


def _tree(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """An ImageFolder tree of small files (their bytes are never decoded here)."""
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i:03d}.jpg").write_bytes(f"{split} {c} {i}".encode())
    return root


def _shards(data: str | Path) -> dict:
    return fingerprint({"dataset": "shards", "path": str(data), "num_classes": 3})


def _folder(data: str | Path) -> dict:
    return fingerprint({"dataset": "imagefolder", "path": str(data)})


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    source = _tree(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("shards")
    write_shards(str(source), out, shard_mb=0.0001, progress=False)
    return out


def test_shards_are_the_same_data_wherever_they_live(shards, tmp_path):
    found = _shards(shards)
    assert found["kind"] == "shards" and found["classes"] == 3 and found["label_set"] == "folder"
    assert found["splits"] == {"train": 24, "val": 6} and re.fullmatch(r"[0-9a-f]{16}", found["digest"])
    assert json.loads(json.dumps(found)) == found
    copy = Path(shutil.copytree(shards, tmp_path / "elsewhere" / "shards"))
    (copy.parent / "sibling").mkdir()
    assert _shards(copy) == _shards(f"{copy}/") == _shards(f"{copy.parent}/sibling/../shards") == found
    info = json.loads((copy / "_info.json").read_text())  # written from another source directory
    (copy / "_info.json").write_text(json.dumps({**info, "source": "/mnt/other/imagenet", "name": "imagenet"}))
    assert _shards(copy) == found


def test_other_shards_are_other_data(shards, tmp_path):
    reordered = tmp_path / "reordered"
    write_shards(json.loads((shards / "_info.json").read_text())["source"], reordered, shard_mb=0.0001, seed=1,
                 progress=False)
    assert _shards(reordered)["digest"] != _shards(shards)["digest"]  # the same images in another order
    relisted = Path(shutil.copytree(shards, tmp_path / "relisted"))
    info = json.loads((relisted / "_info.json").read_text())
    info["splits"]["train"]["shards"][0]["num_samples"] -= 1
    (relisted / "_info.json").write_text(json.dumps(info))
    assert _shards(relisted)["digest"] != _shards(shards)["digest"]


def test_a_tree_is_the_same_data_wherever_it_lives(tmp_path):
    root = _tree(tmp_path / "tree")
    found = _folder(root)
    assert {k: found[k] for k in ("kind", "classes", "splits")} == {
        "kind": "imagefolder", "classes": 3, "splits": {"train": 24, "val": 6}}
    copy = shutil.copytree(root, tmp_path / "a" / "copy")
    assert _folder(copy) == _folder(f"{copy}/") == _folder(f"{copy}/train/..") == found
    (Path(copy) / "train" / "notes.txt").write_text("not an image")  # ImageFolder does not read it either
    assert _folder(copy) == found


@pytest.mark.parametrize("change", ["rename", "resize", "remove", "move to another class"])
def test_a_changed_tree_is_other_data(tmp_path, change):
    root = _tree(tmp_path / "tree")
    before = _folder(root)["digest"]
    image = root / "train" / "class1" / "003.jpg"
    if change == "rename":
        image.rename(image.with_name("003b.jpg"))
    elif change == "resize":
        image.write_bytes(image.read_bytes() + b"!")
    elif change == "remove":
        image.unlink()
    else:
        image.rename(root / "train" / "class2" / "003b.jpg")
    assert _folder(root)["digest"] != before


def test_listing_ten_thousand_files_takes_well_under_a_second(tmp_path):
    root = _tree(tmp_path / "tree", classes=10, per_class=1000)
    start = time.perf_counter()
    found = _folder(root)
    assert time.perf_counter() - start < 1.0  # ~0.1 s
    assert found["splits"] == {"train": 10_000, "val": 20}


def test_embedded_and_synthetic_data_are_their_package_and_parameters():
    digits = fingerprint({"dataset": "digits", "path": None, "val_size": None, "split_seed": 0})
    assert digits["package"] == "scikit-learn" and digits["version"] == version("scikit-learn")
    assert digits["splits"] == {"train": 1500, "val": 297} and digits["classes"] == 10
    assert fingerprint({"dataset": "digits", "val_size": None, "split_seed": 0, "path": "/anywhere"}) == digits
    for other in ({"val_size": 200, "split_seed": 0}, {"val_size": None, "split_seed": 1}):
        assert fingerprint({"dataset": "digits", **other})["digest"] != digits["digest"]
    synthetic = {"dataset": "synthetic", "img_size": 32, "in_chans": 3, "num_classes": 10, "num_samples": 100,
                 "val_size": 20, "split_seed": 0}
    found = fingerprint(synthetic)
    assert found["splits"] == {"train": 100, "val": 20} and found["classes"] == 10
    assert fingerprint({**synthetic, "img_size": 64})["digest"] != found["digest"]


@pytest.mark.parametrize(("data", "error", "named"), [
    ({"dataset": "shards", "path": "{tmp}/nowhere"}, FileNotFoundError, "{tmp}/nowhere"),
    ({"dataset": "shards", "path": "{tmp}"}, FileNotFoundError, "{tmp}/_info.json"),
    ({"dataset": "imagefolder", "path": "{tmp}/nowhere"}, FileNotFoundError, "{tmp}/nowhere"),
    ({"dataset": "imagefolder", "path": "{tmp}"}, FileNotFoundError, "{tmp}/train"),
    ({"dataset": "shards", "path": None}, ValueError, "data.path is required for dataset=shards"),
    ({"dataset": "cifar", "path": None}, ValueError, "data.dataset='cifar' is not one of"),
])
def test_missing_data_is_a_one_line_error_naming_the_path(tmp_path, data, error, named):
    data = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in data.items()}
    with pytest.raises(error) as refused:
        fingerprint(data)
    assert named.format(tmp=tmp_path) in str(refused.value) and "\n" not in str(refused.value)

"""TFDS-style split strings: the samples they select against exact rational rounding and Python's slices, the one-line
errors, the config checks of data.train_split / data.minival_split, and a run that validates on minival beside val
(summary, roll-up)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from reluvit.data.shards import write_shards
from reluvit.data.splits import Split, overlap, parse_split
from reluvit.report.rollup import rollup
from reluvit.run.schema import ConfigError
from reluvit.run.train import run
from reluvit.run.validate import validate

IMAGENET_TRAIN = 1_281_167


def closest(percent: int, n: int) -> int:
    """TFDS's ``closest`` rounding in exact arithmetic: p * n / 100 to the nearest integer, ties to even."""
    exact = Fraction(percent * n, 100)
    floor = exact.numerator // exact.denominator
    rest = exact - floor
    return floor + (rest > Fraction(1, 2) or rest == Fraction(1, 2) and floor % 2 == 1)


def test_imagenet_train_99_percent_is_big_vision_s():
    assert parse_split("train[:99%]").bounds(IMAGENET_TRAIN) == (0, 1_268_355)
    assert parse_split("train[99%:]").bounds(IMAGENET_TRAIN) == (1_268_355, IMAGENET_TRAIN)
    assert not overlap(parse_split("train[:99%]"), parse_split("train[99%:]"), IMAGENET_TRAIN)


@pytest.mark.parametrize("n", [1, 7, 99, 100, 150, 250, 1500, 12_345, IMAGENET_TRAIN])
def test_percentages_round_to_the_closest_sample_ties_to_even(n):
    for p in range(-100, 101):
        samples = closest(p, n)
        at = samples + n if samples < 0 else samples  # a negative boundary counts from the end
        if at > 0:
            assert parse_split(f"train[:{p}%]").bounds(n) == (0, at), (p, n)
        if at < n:
            assert parse_split(f"train[{p}%:]").bounds(n) == (at, n), (p, n)
    assert closest(50, 7) == 4 and closest(50, 5) == 2 and closest(50, 3) == 2  # 3.5 -> 4, 2.5 -> 2, 1.5 -> 2


@pytest.mark.parametrize("n", [10, 37, 100])
def test_sample_counts_select_as_python_slices(n):
    samples = list(range(n))
    for a in (None, 0, 3, -5, n - 1, -n):
        for b in (None, 1, 7, -1, -n + 1, n):
            if a is None and b is None:
                continue
            text = f"train[{'' if a is None else a}:{'' if b is None else b}]"
            selected = samples[slice(a, b)]
            if not selected:
                with pytest.raises(ValueError, match="selects no samples"):
                    parse_split(text).bounds(n)
                continue
            lo, hi = parse_split(text).bounds(n)
            assert samples[lo:hi] == selected, text


def test_a_split_keeps_what_was_written():
    assert parse_split("train") == Split("train") and parse_split("train").whole
    assert parse_split("train[:99%]") == Split("train", None, 99, percent=True)
    assert parse_split("val[-5000:-10]") == Split("val", -5000, -10)
    assert parse_split("train").bounds(12) == (0, 12)
    for text in ("train", "train[:99%]", "train[99%:]", "train[-5:]", "train[10:20]", "val[-3%:-1%]"):
        assert str(parse_split(text)) == text


@pytest.mark.parametrize("text,message", [
    ("train[", "is not a split"), ("train[:]", "is not a split"), ("train[5]", "is not a split"),
    ("train[1:2:3]", "is not a split"), ("train[a:b]", "is not a split"), ("", "is not a split"),
    ("train[1.5:]", "is not a split"), ("train+val", "is not a split"),
    ("train[10:50%]", "mixes a percentage"), ("train[:101%]", r"lies in \[-100%, 100%\]"),
])
def test_bad_syntax_is_one_line(text, message):
    with pytest.raises(ValueError, match=message) as e:
        parse_split(text)
    assert "\n" not in str(e.value)


def test_selections_past_the_end_or_empty_are_refused():
    with pytest.raises(ValueError, match="reaches past the 10 samples"):
        parse_split("train[:11]").bounds(10)
    with pytest.raises(ValueError, match="reaches past"):
        parse_split("train[-11:]").bounds(10)
    with pytest.raises(ValueError, match="selects no samples"):
        parse_split("train[60%:40%]").bounds(10)
    with pytest.raises(ValueError, match="selects no samples"):
        parse_split("train[:1%]").bounds(10)  # 0.1 samples rounds to none


def test_overlap():
    a, b = parse_split("train[:50%]"), parse_split("train[40%:]")
    assert overlap(a, b, 100) and overlap(b, a, 100)
    assert not overlap(parse_split("train[:40]"), parse_split("train[40:]"), 100)
    assert overlap(parse_split("train"), parse_split("train[-1:]"), 100)
    assert not overlap(parse_split("train[:10]"), parse_split("val[:10]"), 100)  # other splits
    assert all(not overlap(parse_split(f"train[:{p}%]"), parse_split(f"train[{p}%:]"), n)
               for n in (3, 101, 999) for p in range(1, 100) if 0 < closest(p, n) < n)


# --- the config keys ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    write_shards("embedded:digits", out, shard_mb=0.015, val_count=297, progress=False)
    return out


def shard_overrides(path: Path, train: str = "train[:90%]", minival: str | None = "train[90%:]") -> list[str]:
    return ["data=shards", f"data.path={path}", "data.num_classes=10", "data.img_size=8", "data.in_chans=1",
            "data.num_workers=0", "eval=none", f"data.train_split='{train}'",
            f"data.minival_split={'null' if minival is None else repr(minival)}"]


@pytest.mark.parametrize("overrides,key,message", [
    (["data.train_split='train[:99'"], "data.train_split", "is not a split"),
    (["data.train_split='val[:100]'"], "data.train_split", "only the train split is sliced"),
    (["data.train_split='train[:90%]'"], "data.train_split", "dataset=digits has its own fixed split"),
    (["data.minival_split='train[90%:]'"], "data.minival_split", "dataset=digits has its own fixed split"),
    (["data=synthetic", "data.minival_split='train[-100:]'"], "data.minival_split", "dataset=synthetic"),
])
def test_invalid_splits_name_the_key(tiny_cfg, overrides, key, message):
    with pytest.raises(ConfigError, match=rf"^{key}: .*{message}"):
        validate(tiny_cfg(*overrides))


def test_minival_must_not_overlap_the_training_samples(tiny_cfg, shards):
    validate(tiny_cfg(*shard_overrides(shards)))
    with pytest.raises(ConfigError, match=r"^data.minival_split: train\[85%:\] overlaps data.train_split=train\[:90%\] "
                                          r"\(samples 1275..1349 of 1500\)"):
        validate(tiny_cfg(*shard_overrides(shards, minival="train[85%:]")))
    with pytest.raises(ConfigError, match=r"^data.train_split: .* reaches past the 1500 samples"):
        validate(tiny_cfg(*shard_overrides(shards, train="train[:2000]", minival=None)))
    # no data: the sizes are unknown, so only a whole train split beside a minival is refused
    absent = ["data.path=/no/such/shards"]
    validate(tiny_cfg(*shard_overrides(shards, minival="train[85%:]"), *absent), data_path=False)
    with pytest.raises(ConfigError, match=r"^data.minival_split: train\[-10:\] overlaps data.train_split=train$"):
        validate(tiny_cfg(*shard_overrides(shards, train="train", minival="train[-10:]"), *absent), data_path=False)


def test_a_run_validates_on_minival_beside_val(tiny_cfg, shards, tmp_path):
    cfg = tiny_cfg(*shard_overrides(shards), "model=micro2", "recipe.epochs=1")
    summary = run(cfg)
    metrics = summary["metrics"]
    assert summary["status"] == "completed" and summary["global_step"] == 1350 // 64  # the 90 % trained
    for name in ("val/acc", "val/loss", "val/minival_acc", "val/minival_loss"):
        assert name in metrics
    assert metrics["val/acc"] != metrics["val/minival_acc"]  # 297 val images, 150 minival images
    assert 0 <= metrics["val/minival_acc"] <= 1
    table = rollup(tmp_path / "runs", tmp_path / "results" / "runs")
    assert table.loc[0, "val_minival_acc"] == pytest.approx(metrics["val/minival_acc"])
    recorded = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert recorded["config"]["data"]["minival_split"] == "train[90%:]"

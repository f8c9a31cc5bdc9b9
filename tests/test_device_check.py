"""The GPU check's plumbing without a GPU: the synthetic dataset it trains on, the goal tables of the benchmarks
(fed made-up measurements whose ratios are known), the search for the largest micro-batch that fits, and the whole
check at CPU scale (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from reluvit.data import build_datamodule
from reluvit.data.datamodules import SyntheticDataModule, SyntheticImages
from reluvit.errors import ArgumentError

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the benchmarks import each other as top-level modules, as when run as scripts
import attention as attention_bench  # noqa: E402
import benchlib  # noqa: E402
import device_check  # noqa: E402
import train_step  # noqa: E402

SYNTHETIC = ["data=synthetic", "data.img_size=8", "data.in_chans=1", "data.num_classes=7", "data.num_samples=96",
             "data.val_size=20", "data.num_workers=0", "model=mini2", "eval=none"]


def test_synthetic_images_are_fixed_by_their_seed_and_index():
    images = SyntheticImages(50, img_size=6, in_chans=3, num_classes=7, seed=3)
    again = SyntheticImages(50, img_size=6, in_chans=3, num_classes=7, seed=3)
    other_seed = SyntheticImages(50, img_size=6, in_chans=3, num_classes=7, seed=4)
    for i in (0, 17, 49):
        image, label = images[i]
        assert image.shape == (3, 6, 6) and image.dtype == torch.float32
        assert torch.equal(image, again[i][0]) and label == again[i][1]  # drawn again, the same
        assert not torch.equal(image, other_seed[i][0])
    assert not torch.equal(images[0][0], images[1][0])
    with pytest.raises(IndexError):
        images[50]


def test_synthetic_values_and_labels_cover_their_ranges():
    images = SyntheticImages(400, img_size=4, in_chans=1, num_classes=5, seed=0)
    pixels = torch.stack([images[i][0] for i in range(400)])
    labels = torch.tensor([images[i][1] for i in range(400)])
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert pixels.mean().abs() < 0.05 and pixels.std() == pytest.approx(3**-0.5, rel=0.05)  # uniform on [-1, 1]
    assert set(labels.tolist()) == set(range(5))
    counts = torch.bincount(labels, minlength=5).double()
    assert (counts / 400 - 0.2).abs().max() < 0.07


def test_synthetic_validation_images_are_other_draws(tiny_cfg):
    cfg = tiny_cfg(*SYNTHETIC)
    module = build_datamodule(OmegaConf.to_container(cfg.data), batch_size=16, augment={}, seed=0)
    assert isinstance(module, SyntheticDataModule)
    train, val = module.train_set, module.val_set
    assert (len(train), len(val)) == (96, 20)
    assert torch.equal(val[0][0], SyntheticImages(200, 8, 1, 7, seed=0)[96][0])  # val starts after the train draws
    assert not any(torch.equal(val[0][0], train[i][0]) for i in range(len(train)))
    images, labels = next(iter(module.train_dataloader()))
    assert images.shape == (16, 1, 8, 8) and labels.shape == (16,) and labels.max() < 7
    assert len(module.train_dataloader()) == 96 // 16


def test_synthetic_counts_are_checked():
    with pytest.raises(ArgumentError, match="num_samples"):
        SyntheticDataModule(8, 8, 1, 7, num_samples=None, val_size=4)


def test_synthetic_sample_count_is_refused_before_the_run(tiny_cfg):
    from reluvit.run.schema import ConfigError
    from reluvit.run.validate import validate

    with pytest.raises(ConfigError, match="data.num_samples"):
        validate(tiny_cfg(*SYNTHETIC, "data.num_samples=0"))


def test_reluvit_train_on_synthetic_data_completes(tiny_overrides, tmp_path):
    from reluvit import cli

    cli.main(["train", *tiny_overrides, *SYNTHETIC, "recipe.batch_size=32", "trainer.max_steps=2"])
    summary = json.loads(next((tmp_path / "runs").glob("**/summary.json")).read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["config"]["data"]["dataset"] == "synthetic" and summary["examples_seen"] == 64


@pytest.mark.parametrize("largest", [1, 5, 37, 100, 255, 256, 1000, 3000, 4096])
def test_largest_fitting_finds_the_threshold_within_its_resolution(largest):
    tried = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= largest

    found = device_check.largest_fitting(fits, start=256, limit=4096)
    assert found <= largest and largest - found <= max(1, device_check.SEARCH_RESOLUTION * found)
    assert len(tried) <= 20 and max(tried) <= 4096


def test_largest_fitting_is_zero_when_nothing_fits():
    assert device_check.largest_fitting(lambda n: False, start=64, limit=4096) == 0


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                            ("NVIDIA H200", 989.0), ("NVIDIA H200 NVL", 835.0),
                                            ("NVIDIA A100-SXM4-80GB", 312.0), ("AMD EPYC (2 threads)", None)])
def test_bf16_peak_by_gpu_name(name, peak):
    assert benchlib.bf16_peak_tflops(name) == peak


def _attention_table(fused_ms: dict[int, float], fused_mib: float) -> pd.DataFrame:
    """SDPA at 10 ms and 100 MiB per shape; the fused kernel at the given times; TFLOP/s from the times."""
    rows = []
    for length, model in ((49, "S/32"), (196, "S/16"), (784, "S/8")):
        for impl, ms, mib in (("sdpa softmax", 10.0, 100.0), ("fused relu", fused_ms[length], fused_mib)):
            rows.append({"model": model, "img": 224, "L": length, "dtype": "bf16", "impl": impl, "fwd_ms": ms,
                         "fwd_bwd_ms": ms, "peak_mib": mib, "fwd_bwd_tflops": 1000.0 / ms})
    return pd.DataFrame(rows)


def test_attention_goals_take_the_worst_shape_they_cover():
    table = _attention_table({49: 20.0, 196: 8.0, 784: 5.0}, fused_mib=120.0)  # L = 49 is outside the goal
    speedup, peak, memory = attention_bench.goals(table, "NVIDIA H200")
    assert speedup["value"] == pytest.approx(10 / 8) and speedup["verdict"] == "NOT met"  # 1.25 < 1.3
    assert "S/16" in speedup["measured"]
    assert peak["value"] == pytest.approx(200 / 989) and peak["verdict"] == "NOT met"  # 1000 / 5 ms = 200 TFLOP/s
    assert memory["value"] == pytest.approx(1.2) and memory["verdict"] == "NOT met"
    table = _attention_table({49: 20.0, 196: 5.0, 784: 1.5}, fused_mib=90.0)
    assert [g["verdict"] for g in attention_bench.goals(table, "NVIDIA H200")] == ["met"] * 3
    unknown = attention_bench.goals(table, "Some GPU")[1]
    assert unknown["verdict"] == "not measured" and "Some GPU" in unknown["measured"]


def test_attention_goals_are_not_measured_without_the_fused_kernel():
    table = _attention_table({49: 1.0, 196: 1.0, 784: 1.0}, 1.0)
    cpu = table[table["impl"] != "fused relu"].assign(dtype="fp32")
    assert {g["verdict"] for g in attention_bench.goals(cpu, "AMD EPYC")} == {"not measured"}


def test_train_step_goals():
    attention = pd.DataFrame([
        {"model": m, "mode": mode, "attention": a, "img_per_s": speed, "attention_impl": impl}
        for m, mode, a, speed, impl in [
            ("S/16", "eager", train_step.SOFTMAX, 100.0, "sdpa"), ("S/16", "eager", train_step.RELU, 110.0, "fused"),
            ("S/16", "compiled", train_step.SOFTMAX, 200.0, "sdpa"),
            ("S/16", "compiled", train_step.RELU, 150.0, "fused"),
            ("S/8", "eager", train_step.SOFTMAX, 50.0, "sdpa"), ("S/8", "eager", train_step.RELU, 40.0, "reference")]])
    loops = pd.DataFrame({"mode": ["compiled"] * 3, "timm_source": ["timm-style loop"] * 3,
                          "harness_vs_bare": [0.99, 0.9, 0.98], "harness_vs_timm": [1.1, 0.95, 1.2]})
    goals = {g["goal"]: g for g in train_step.goals(attention, loops)}
    s16_eager, s16_compiled = (goals[f"relu (fused) >= softmax (SDPA) images/s, S/16 {m}"] for m in ("eager",
                                                                                                      "compiled"))
    assert (s16_eager["value"], s16_eager["verdict"]) == (pytest.approx(1.1), "met")
    assert (s16_compiled["value"], s16_compiled["verdict"]) == (pytest.approx(0.75), "NOT met")
    assert goals["relu (fused) >= softmax (SDPA) images/s, S/8"]["verdict"] == "not measured"  # relu ran unfused
    assert goals["harness >= 0.97 x bare loop images/s, compiled"]["value"] == pytest.approx(0.98)  # the median
    assert goals["harness >= timm's training step images/s, compiled"]["value"] == pytest.approx(1.1)


@pytest.mark.parametrize(("loader", "training", "verdicts"), [
    (20_000, 12_000, ["met", "met"]), (14_000, 16_000, ["NOT met", "NOT met"]), (None, 12_000, ["not measured"] * 2),
    (20_000, None, ["met", "not measured"])])
def test_the_dali_loader_goals_compare_with_15000_and_the_training_step(loader, training, verdicts):
    import data

    table = pd.DataFrame({"dali GPU img/s": [loader]} if loader else {"shards img/s/core": [300.0]})
    rows = data.goals(table, training, "GPU")
    assert [row["verdict"] for row in rows] == verdicts
    if loader and training:
        assert rows[1]["value"] == pytest.approx(loader / training)


@pytest.mark.parametrize(("planned", "largest", "verdict"), [(2048, 2200, "met"), (2048, 3000, "NOT met"),
                                                               (4096, 4000, "NOT met"), (None, 3000, "not measured")])
def test_micro_batch_goal_wants_the_plan_just_below_the_largest_fit(planned, largest, verdict):
    row = {"attention": "relu", "planned": planned, "largest_fitting": largest, "largest_divisor": 2048, "note": ""}
    assert device_check.micro_batch_goal(row)["verdict"] == verdict


@pytest.mark.slow
def test_device_check_at_cpu_scale_writes_its_files_and_goal_table(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "device_check.py"), "--reduced", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} == set(device_check.OUTPUTS) and len(device_check.OUTPUTS) <= 8
    summary = (folder / "summary.md").read_text()
    for part in ("kernel", "attention", "train_step", "data", "train", "micro_batch"):
        status = next(line for line in summary.splitlines() if line.startswith(f"| {part} |")).split("|")[2]
        assert status.strip() == "ok" or status.strip().startswith(("skipped (no CUDA", "skipped (needs")), summary
    goals = pd.read_csv(folder / "goals.csv").set_index("goal")
    for name in goals.index:  # every goal has its row in the summary's table
        assert f"| {name} |" in summary
    measured_on_cpu = ["harness >= 0.97 x bare loop images/s, compiled",
                       "harness >= timm's training step images/s, compiled", device_check.NEVER_OOM]
    assert goals.loc[measured_on_cpu, "value"].notna().all() and (goals.loc[measured_on_cpu, "value"] > 0).all()
    assert goals.loc[device_check.NEVER_OOM, "verdict"] == "met"
    assert set(goals["verdict"]) <= {"met", "NOT met", "not measured"}
    attention = pd.read_csv(folder / "attention.csv")
    assert (attention["fwd_bwd_ms"] > 0).all() and set(attention["L"]) == {49, 196}
    micro = pd.read_csv(folder / "micro_batch.csv")
    assert list(micro["per_device_batch"]) == [32, 32] and micro["planned"].between(1, 32).all()
    assert json.loads((folder / "train_summary.json").read_text())["status"] == "completed"

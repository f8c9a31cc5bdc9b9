"""The dry run (``reluvit sweep|train --dry-run``): it prints each job array, the sbatch script submitit would write and
the cost estimate, submits nothing (conftest's guard fails the session on any SLURM command) and needs no data; the
cost model against an independent computation; profile keys reaching submitit's executor; a missing dataset found
before the whole sweep is composed."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys

import pytest
import submitit
import torch

from conftest import TINY
from reluvit import cache, cli
from reluvit.models import create_model, forward_macs
from reluvit.run.compose import compose, compose_points
from reluvit.run.schema import ConfigError
from reluvit.run.validate import validate
from reluvit.search import packaged
from reluvit.sweep import cost, execute, spec
from reluvit.sweep.slurm import PreviewExecutor, Profile, Resources, load_profile, preview, sbatch_script, submit

# paper.md §2 "Steps": ImageNet-1k train[:99%]; ImageNet-21k full[51200:] as a scenic config counts it
PAPER_IMAGES = {"imagenet21k": 12_743_321, "imagenet1k": 1_268_355}
# the recipes' epochs and heads (paper.md §3) and the datasets' classes
PAPER_RUNS = {"imagenet21k": {"epochs": 30, "pool": "gap", "rep_size": False, "num_classes": 21843},
              "imagenet1k": {"epochs": 300, "pool": "tok", "rep_size": True, "num_classes": 1000}}
EXAMPLE_TFLOPS = 250  # slurm/profiles/example_gpu.yaml


@pytest.fixture
def no_data(monkeypatch):
    for variable in ("RELUVIT_IMAGENET1K", "RELUVIT_IMAGENET21K"):
        monkeypatch.delenv(variable, raising=False)


def paper_gpu_hours(variant: str, data: str, tflops: float = EXAMPLE_TFLOPS) -> float:
    """6 x forward MACs x epochs x training images / throughput, for one paper-scale run."""
    run = PAPER_RUNS[data]
    macs = forward_macs(variant, img_size=224, num_classes=run["num_classes"], pool=run["pool"],
                        rep_size=run["rep_size"])
    return 6 * macs * run["epochs"] * PAPER_IMAGES[data] / (tflops * 1e12) / 3600


def printed_number(text: str, pattern: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match[1].replace(",", ""))


def dry_run(args: list[str], capsys) -> str:
    cli.main([*args, "--dry-run"])
    return capsys.readouterr().out


@pytest.mark.slow  # composes and validates 384 points
def test_fig2_at_paper_scale(no_data, tmp_path, capsys, caplog):
    out = dry_run(["sweep", "fig2", "--scale", "paper", "--cluster", "example_gpu",
                   "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")], capsys)
    assert "384 runs in 1 job array on partition 'gpu'" in out
    assert "array 1: 384 jobs (S/32: 128, S/16: 128, S/8: 128), at most 64 at a time" in out
    for line in ("#SBATCH --array=0-383%64", "#SBATCH --gpus-per-node=1", "#SBATCH --time=1440", "-m submitit.core"):
        assert line in out
    expected = sum(64 * paper_gpu_hours(v, d) for v in ("S/32", "S/16", "S/8") for d in PAPER_IMAGES)
    assert printed_number(out, r"total: 384 jobs, ([\d,.]+) GPU-hours") == pytest.approx(expected, abs=0.5)
    assert "the 192 runs of data=imagenet21k" in caplog.text and "RELUVIT_IMAGENET21K" in caplog.text
    assert "RELUVIT_IMAGENET1K" in caplog.text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()  # nothing written


def test_a_few_paper_runs_in_two_arrays(no_data, tmp_path, capsys):
    """S runs get 1 GPU each, B runs 4 (the default gpus_by_size): two arrays, each with its sbatch script."""
    out = dry_run(["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s32,s16,b16", "attention=relu,softmax",
                   f"runs_dir={tmp_path / 'runs'}", "--cluster", "example_gpu"], capsys)
    assert "6 runs in 2 job arrays" in out
    assert "array 1: 4 jobs (S/32: 2, S/16: 2)" in out and "array 2: 2 jobs (B/16: 2)" in out
    assert "each: 1 node x 4 GPUs; 8 CPUs and 60 GB per task" in out
    assert out.count("#!/bin/bash") == 2
    for line in ("--array=0-3%4", "--array=0-1%2", "--ntasks-per-node=4", "--gpus-per-node=4", "--mem=240GB"):
        assert f"#SBATCH {line}" in out  # the array's size caps the jobs at a time
    expected = sum(2 * paper_gpu_hours(v, "imagenet21k") for v in ("S/32", "S/16", "B/16"))
    assert printed_number(out, r"total: 6 jobs, ([\d,.]+) GPU-hours") == pytest.approx(expected, abs=0.5)
    b16 = 2 * paper_gpu_hours("B/16", "imagenet21k")
    assert printed_number(out, r"array 2.*\n.*\n  estimate: ([\d,.]+) GPU-hours") == pytest.approx(b16, abs=0.5)
    assert not (tmp_path / "runs").exists()


UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
DISK = re.compile(r"checkpoints: ([\d.]+) (\w+)(?: \(up to ([\d.]+) (\w+) a run\))?; ([\d.]+) (\w+) once")


def printed_disk(line: str) -> list[float]:
    """Bytes of a checkpoints line: all of them, (the largest,) and after reluvit prune."""
    numbers = [n for n in DISK.search(line).groups() if n is not None]
    return [float(value) * UNITS[unit] for value, unit in zip(numbers[::2], numbers[1::2], strict=True)]


def test_checkpoint_disk_per_array_and_in_all(no_data, tmp_path, capsys):
    """Weights and AdamW's two moments in float32 per run, and the weights alone after reluvit prune (the estimate
    against a trained checkpoint: tests/test_prune.py)."""
    out = dry_run(["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s16,b16", "seed=0,1",
                   f"runs_dir={tmp_path / 'runs'}", "--cluster", "example_gpu"], capsys)
    with torch.device("meta"):
        weights = {v: 4 * sum(p.numel() for p in create_model(v, num_classes=21843).parameters())
                   for v in ("S/16", "B/16")}
    whole = {v: 3 * w + cost.CHECKPOINT_EXTRAS for v, w in weights.items()}
    pruned = {v: w + cost.CHECKPOINT_EXTRAS for v, w in weights.items()}
    arrays = [line for line in out.splitlines() if line.startswith("  checkpoints: ")]
    for line, variant in zip(arrays, ("S/16", "B/16"), strict=True):  # 2 runs each
        assert printed_disk(line) == pytest.approx([2 * whole[variant], whole[variant], 2 * pruned[variant]],
                                                   rel=5e-3)
    total, = (line for line in out.splitlines() if line.startswith("total checkpoints: "))
    assert printed_disk(total) == pytest.approx([2 * sum(whole.values()), 2 * sum(pruned.values())], rel=5e-3)


@pytest.mark.parametrize("count,shown", [(0, "0 B"), (999, "999 B"), (999.6, "1 kB"), (1_321_995, "1.32 MB"),
                                         (121.6e9, "122 GB"), (40.6e12, "40.6 TB"), (2.5e15, "2,500 TB")])
def test_byte_sizes(count, shown):
    assert cost.byte_size(count) == shown


def test_a_cpu_profile_given_by_path(tmp_path, capsys):
    """A profile outside the repository; the embedded dataset counts its own training images (digits: 1797 - 297
    held out)."""
    profile = tmp_path / "elsewhere" / "cpus.yaml"
    profile.parent.mkdir()
    profile.write_text("partition: cpu\ngpu_tflops: 1.0e-6\narray_parallelism: 1\ntimeout_min: 600\n"
                       "max_num_timeout: 2\n")
    out = dry_run(["train", *TINY, "seed=0,1,2", f"runs_dir={tmp_path / 'runs'}", "--cluster", str(profile)], capsys)
    assert "3 runs in 1 job array on partition 'cpu'" in out and "each: 1 node x 1 CPU task" in out
    assert "#SBATCH --partition=cpu" in out and "gpus-per-node" not in out
    epochs = compose(TINY).recipe.epochs  # the smoke recipe's
    hours = 6 * forward_macs("mini/2", img_size=8, in_chans=1, num_classes=10) * epochs * 1500 / 1e6 / 3600
    assert printed_number(out, r"total: 3 jobs, ([\d,.]+) CPU task-hours") == pytest.approx(3 * hours, rel=1e-3)
    assert printed_number(out, r"wall ([\d,.]+) h") == pytest.approx(3 * hours, rel=1e-3)  # one job at a time
    starts = math.ceil(hours * 60 / 600)
    assert starts > 3 and f"warning: the longest job needs {starts} starts of 600 min" in out  # 3 at most


def test_training_images_come_from_the_data_when_it_is_there(tmp_path):
    assert cost.train_images(compose(TINY).data) == 1797 - 297
    assert cost.train_images(compose([*TINY, "data.val_size=100"]).data) == 1797 - 100
    shards = ["data=imagenet21k", f"data.path={tmp_path}"]
    assert cost.train_images(compose(shards).data) == PAPER_IMAGES["imagenet21k"]  # no _info.json: the config's
    (tmp_path / "_info.json").write_text(json.dumps({"splits": {"train": {"num_samples": 5000}}}))
    assert cost.train_images(compose(shards).data) == 5000
    assert cost.examples_trained(compose([*TINY, "trainer.max_steps=3"])) == 3 * 64  # max_steps stops earlier


@pytest.mark.parametrize("durations,parallelism,wall", [
    ([3, 1, 1, 1], 2, 3), ([2, 2, 2], 2, 4), ([1, 2, 3], 1, 6), ([1, 2, 3], 5, 3), ([], 4, 0),
    ([1, 1, 1, 1, 4], 2, 6),  # in order: the long job starts last, when a slot frees at 2
])
def test_array_wall_time_runs_jobs_in_order_at_the_limit(durations, parallelism, wall):
    assert cost.makespan(durations, parallelism) == wall


def test_profile_keys_reach_submitits_executor(tmp_path, monkeypatch):
    profile = Profile(partition="gpu", account="acc", qos="high", constraint="h100", gpus_per_node=8,
                      mem_gb_per_task=50, gpus_by_size={"B": 2},
                      slurm_additional_parameters={"exclusive": True, "reservation": "paper", "exclude": "n[1-2]"})
    submitted = []
    monkeypatch.setattr(submitit.SlurmExecutor, "map_array",
                        lambda executor, fn, configs: submitted.append((executor.parameters, configs)) or [None])
    config = {"model": {"variant": "B/16"}, "trainer": {"devices": "auto", "num_nodes": 1},
              "recipe": {"batch_size": 4096}, "run_dir": "runs/b16"}
    submit([config], profile, tmp_path, "reluvit-test")
    (parameters, configs), = submitted
    assert {k: parameters[k] for k in ("partition", "account", "qos", "constraint", "nodes", "ntasks_per_node",
                                       "gpus_per_node", "mem", "additional_parameters")} == {
        "partition": "gpu", "account": "acc", "qos": "high", "constraint": "h100", "nodes": 1, "ntasks_per_node": 2,
        "gpus_per_node": 2, "mem": "100GB",
        "additional_parameters": {"exclusive": True, "reservation": "paper", "exclude": "n[1-2]"}}
    assert configs[0]["trainer"] == {"devices": 2, "num_nodes": 1, "accelerator": "gpu", "strategy": "ddp"}
    script = sbatch_script(profile, Resources(1, 2, 2), tmp_path, "reluvit-test", 3)
    for line in ("--account=acc", "--qos=high", "--constraint=h100", "--exclusive\n", "--reservation=paper",
                 "--exclude='n[1-2]'", "--gpus-per-node=2", "--array=0-2%3", "--job-name=reluvit-test"):
        assert f"#SBATCH {line}" in script


def test_the_sbatch_script_needs_no_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    with pytest.raises(RuntimeError, match="srun"):
        submitit.SlurmExecutor(tmp_path)
    script = sbatch_script(Profile(partition="debug"), Resources(1, 1, 0), tmp_path, "one", 1)
    assert "#SBATCH --partition=debug" in script and "--array" not in script  # one job: no array
    with pytest.raises(RuntimeError, match="submits nothing"):
        PreviewExecutor(tmp_path)._submit_command("true")


def test_a_missing_dataset_fails_before_the_sweep_is_composed(no_data, tmp_path, monkeypatch, capsys):
    """Figure 2 at paper scale without RELUVIT_IMAGENET21K: one line naming it, after composing one point per data
    selection (2), not the sweep's 384."""
    composed = []
    compose_points = execute.compose_points
    monkeypatch.setattr(execute, "compose_points",
                        lambda points: composed.append(len(points)) or compose_points(points))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "fig2", "--scale", "paper", "--runs-dir", str(tmp_path / "runs"),
                  "--results-dir", str(tmp_path / "results")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.path" in err and "set RELUVIT_IMAGENET21K" in err, err
    assert composed == [2]


def test_no_wait_logs_each_arrays_job_ids(tmp_path, monkeypatch, caplog):
    """The real submission path up to sbatch, which is a stand-in here (sinfo and sbatch of a one-partition CPU
    cluster): the command returns at once with each array's first and last job ids and how to follow them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, output in (("sinfo", "debug*|(null)"), ("sbatch", "Submitted batch job 4242")):
        (bin_dir / name).write_text(f"#!/bin/sh\necho '{output}'\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    caplog.set_level(logging.INFO)
    cli.main(["train", *TINY, "seed=0,1", f"runs_dir={tmp_path / 'runs'}", "--launcher", "slurm", "--no-wait"])
    assert "array 4242: 2 jobs, 4242_0 ... 4242_1" in caplog.text
    assert "follow with `squeue --me; reluvit results`" in caplog.text
    script = next((tmp_path / "runs" / ".submitit").glob("train-*/*/*.sh")).read_text()
    assert "#SBATCH --array=0-1%2" in script  # the local profile's array_parallelism
    assert not any((tmp_path / "runs").glob("smoke-*"))  # nothing trained here


# Paper sweeps (S/8 to L/16, SOFT, gates, learned alphas, ImageNet-21k and -1k with their heads) and a CPU sweep on
# an embedded dataset: (sweep, scale, every how many points)
ESTIMATED = [("fig1", "paper", 1), ("fig2", "paper", 48), ("fig4", "paper", 9), ("fig5", "paper", 1),
             ("fig2", "smoke", 20)]


def test_the_estimate_read_back_from_disk_is_the_one_read_cold(no_data, tmp_path, monkeypatch):
    """What the estimate reads from torch-side code (forward MACs, parameters, embedded images) is kept on disk: a
    preview that reads it back shows every number as the preview that read it from the model code."""
    monkeypatch.setenv("RELUVIT_CACHE_DIR", str(tmp_path / "cache"))
    profiles = {"paper": load_profile("example_gpu"), "smoke": Profile(partition="cpu", gpu_tflops=1e-3)}
    sweeps = [(compose_points(spec.load(name, scale).points(scale == "paper", [f"runs_dir={tmp_path}"])[::every]),
               profiles[scale]) for name, scale, every in ESTIMATED]

    def previews() -> list[str]:
        return [preview(cfgs, profile, tmp_path, "test") for cfgs, profile in sweeps]

    cold = previews()
    cost._embedded_images.cache_clear()  # as a new process
    monkeypatch.setattr(cost.ModelCost, "read", lambda cfg: pytest.fail("a model read again"))
    monkeypatch.setattr("reluvit.data.embedded.EMBEDDED", {})  # a dataset loaded again: KeyError
    assert previews() == cold
    assert all(re.search(r"estimate: [\d,.]+ (GPU|CPU task)-hours", text) for text in cold)


HEAVY = {"torch", "timm", "pytorch_lightning", "lightning", "lightning_fabric"}


def without_time(preview_text: str) -> str:
    """The preview less the time in its submitit folder's name (``train-20260101-120000``)."""
    return re.sub(r"-\d{8}-\d{6}", "-TIME", preview_text)


def test_a_dry_run_shown_before_imports_neither_torch_timm_nor_lightning(no_data, tmp_path, monkeypatch, capsys):
    """The composition, the validation outcomes and the estimate's model readings come back from the disk cache: a
    new process shows the same preview without the ~5 s of torch, timm and Lightning imports."""
    monkeypatch.setenv("RELUVIT_CACHE_DIR", str(tmp_path / "cache"))
    cache._installation_digest.cache_clear()  # the code as the new process reads it
    args = ["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s32,b16", "attention=relu,softmax",
            f"runs_dir={tmp_path / 'runs'}", "--cluster", "example_gpu", "--dry-run"]
    cli.main(args)
    cold = capsys.readouterr().out
    warm = subprocess.run([sys.executable, "-X", "importtime", "-m", "reluvit", *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert warm.returncode == 0, warm.stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in warm.stderr.splitlines()
                if line.startswith("import time:")}
    assert "reluvit" in imported and not imported & HEAVY
    assert without_time(warm.stdout) == without_time(cold) and "4 runs in 2 job arrays" in cold


def test_a_worker_count_that_does_not_divide_the_stream_slots_is_refused_before_anything_runs(no_data, tmp_path,
                                                                                              capsys):
    """The shard stream's rule (reluvit.data.stream.check_workers), checked with the config: a dry run and a sweep's
    prepare refuse it, not the data module once the run has started. Other datasets take any count."""
    runs = ["recipe=i21k_30ep", "data=imagenet21k", "model=s16", f"runs_dir={tmp_path / 'runs'}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *runs, "data.num_workers=5", "--dry-run"])
    assert exit_info.value.code == 2
    assert ("config error: data.num_workers: data.num_workers=5 does not divide data.stream_slots=24"
            in capsys.readouterr().err)
    with pytest.raises(ConfigError, match="data.num_workers=3 does not divide data.stream_slots=16") as error:
        execute.prepare([[*runs, "data.num_workers=3", "data.stream_slots=16", f"seed={seed}"] for seed in (0, 1)],
                        dry_run=True)
    assert error.value.key == "data.num_workers"
    validate(compose([*TINY, "data.num_workers=5", f"runs_dir={tmp_path / 'runs'}"]))


@pytest.mark.parametrize("cluster,message", [
    (None, "--cluster: a paper-scale sweep has no default profile: name your GPU cluster's"),
    ("local", "--cluster: profile 'local' has no GPUs (gpus_per_node: 0): a paper-scale sweep needs a GPU cluster's"),
])
def test_a_paper_sweep_is_not_priced_on_a_cpu_profile(cluster, message, no_data, tmp_path, capsys):
    """No default profile at paper scale, and none without GPUs: one line, exit 2, before anything is composed."""
    args = ["sweep", "fig2", "--scale", "paper", "--launcher", "slurm", "--dry-run", "--runs-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, *(["--cluster", cluster] if cluster else [])])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"reluvit: config error: {message}")


def write_measurements(folder, steps: list[tuple[str, str, str, float]], loaders: dict[str, float]) -> None:
    """A fixture of make device-check's train_step.csv and data.csv (their columns, other columns left out)."""
    folder.mkdir(parents=True)
    rows = ["bench,model,img,batch,attention,mode,img_per_s"]
    rows += [f"attention,{model},224,128,{attention},{mode},{speed}" for model, attention, mode, speed in steps]
    rows.append("loops,S/16,224,128,softmax,compiled,")  # the harness rows: no img_per_s
    (folder / "train_step.csv").write_text("\n".join(rows) + "\n")
    columns = ["mean width", *loaders]
    (folder / "data.csv").write_text(",".join(f'"{c}"' for c in columns) + "\n"
                                     + ",".join(map(str, [500, *loaders.values()])) + "\n"
                                     + ",".join(map(str, [1000, *(v / 2 for v in loaders.values())])) + "\n")


def test_measured_images_per_second_price_the_runs_they_cover(no_data, tmp_path, monkeypatch, capsys):
    """results/bench/<gpu>/ (the profile's gpu) of a fixture: S/16 softmax and relu measured (compiled before eager:
    trainer.compile is auto), B/16 and relu2 not (the profile's TFLOP/s); the DALI loader's 20,000 images/s caps
    relu's 24,000. With data.loader=reference, the reference loader's images/s per core x the CPUs of a task."""
    monkeypatch.chdir(tmp_path)
    write_measurements(tmp_path / "results" / "bench" / "fixture-gpu",
                       [("S/16", "softmax", "compiled", 8000.0), ("S/16", "softmax", "eager", 5000.0),
                        ("S/16", "relu", "compiled", 24000.0)],
                       {"dali GPU img/s": 20000.0, "shards img/s/core": 300.0})
    profile = tmp_path / "gpu.yaml"
    profile.write_text((packaged("profiles") / "example_gpu.yaml").read_text().replace("gpu: null", "gpu: fixture-gpu"))
    out = dry_run(["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s16,b16", "attention=softmax,relu,relu2",
                   f"runs_dir={tmp_path / 'runs'}", "--cluster", str(profile)], capsys)
    examples = 30 * PAPER_IMAGES["imagenet21k"]
    expected = ((examples / 8000 + examples / 20000) / 3600 + paper_gpu_hours("S/16", "imagenet21k")
                + 3 * paper_gpu_hours("B/16", "imagenet21k"))
    assert ("speed: images/s measured in results/bench/fixture-gpu/train_step.csv (3 model x attention x mode rows), "
            "else the profile's gpu_tflops (250 TFLOP/s per GPU); capped by the loaders' images/s of data.csv "
            "(dali 20,000, reference 300)") in out
    assert "estimate: " in out and "(2 measured, 1 at TFLOP/s; 1 capped by the loader)" in out  # the S/16 array
    assert "(2 measured, 4 at TFLOP/s; 1 capped by the loader)" in out  # in all
    assert printed_number(out, r"total: 6 jobs, ([\d,.]+) GPU-hours") == pytest.approx(expected, abs=0.5)
    out = dry_run(["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s16", "attention=relu",
                   "data.loader=reference", f"runs_dir={tmp_path / 'runs'}", "--cluster", str(profile)], capsys)
    per_task = 300.0 * 8  # the reference loader: images/s per core x the profile's 8 CPUs per task
    assert printed_number(out, r"total: 1 jobs, ([\d,.]+) GPU-hours") == pytest.approx(examples / per_task / 3600,
                                                                                      rel=2e-3)


def test_without_measurements_the_preview_says_it_uses_the_profiles_tflops(no_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = dry_run(["train", "recipe=i21k_30ep", "data=imagenet21k", "model=s16", f"runs_dir={tmp_path / 'runs'}",
                   "--cluster", "example_gpu"], capsys)
    assert ("speed: the profile's gpu_tflops (250 TFLOP/s per GPU) (no measured images/s: set the profile's gpu to a "
            "folder of results/bench/)") in out and "(1 at TFLOP/s)" in out


def test_the_sbatch_script_of_a_gres_cluster_without_wckey(tmp_path):
    """gpus_as: gres asks for the GPUs as --gres=gpu:<type>:N in place of --gpus-per-node (another gres joins it); no
    wckey line unless the profile sets one; every job exports SRUN_CPUS_PER_TASK for Slurm 22.05-23.02's srun."""
    gres = Profile(partition="gpu", gpus_per_node=8, gpus_as="gres", gpu_type="h100",
                   slurm_additional_parameters={"gres": "nvme:1"})
    script = sbatch_script(gres, Resources(1, 4, 4), tmp_path, "gres", 2)
    assert "#SBATCH --gres=gpu:h100:4,nvme:1\n" in script and "gpus-per-node" not in script
    assert "wckey" not in script and "\nexport SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK}\n" in script
    plain = sbatch_script(Profile(partition="gpu", gpus_per_node=8, wckey="paper"), Resources(1, 4, 4), tmp_path,
                          "plain", 2)
    assert "#SBATCH --gpus-per-node=4\n" in plain and "#SBATCH --wckey=paper\n" in plain and "gres" not in plain
    untyped = Profile(partition="gpu", gpus_per_node=8, gpus_as="gres")
    assert "#SBATCH --gres=gpu:2\n" in sbatch_script(untyped, Resources(1, 2, 2), tmp_path, "untyped", 1)
    for gpus in ("gpu:a100:2", "nvme:1,gpu:2"):
        with pytest.raises(ConfigError, match="slurm_additional_parameters: gres: names GPUs, which would add to"):
            Profile(partition="gpu", gpus_per_node=8, slurm_additional_parameters={"gres": gpus})
    with pytest.raises(ConfigError, match="gpus_as: 'gpu' is not one of: gpus-per-node, gres"):
        Profile(partition="gpu", gpus_as="gpu")

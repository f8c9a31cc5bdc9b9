"""SLURM launch through submitit: profiles, resources per model size, and a real 2-point sweep submitted as a job
array to the one-node cluster of slurm/up.sh (the SLURM tests: ``make test-all`` starts that cluster and sets
RELUVIT_SLURM_TESTS=1; the default suite skips them and cannot reach any cluster)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import submitit

from conftest import GUARD_LOG, SLURM_TESTS, TWO_POINTS, checkpoint_weights, sweep_file
from reluvit.run.schema import ConfigError
from reluvit.sweep.slurm import GPUS_BY_SIZE, Profile, Resources, load_profile, resources

ROOT = Path(__file__).resolve().parents[1]


def test_profiles_load_and_validate(tmp_path, monkeypatch):
    """The packaged profiles, and a user's profile directory ($RELUVIT_PROFILES_DIR) searched before them: its files
    are found by name beside the packaged ones, and hide a packaged one of the same name."""
    assert load_profile("local").partition == "debug"
    assert load_profile("example_gpu").gpus_per_node == 8
    monkeypatch.setenv("RELUVIT_PROFILES_DIR", str(tmp_path))
    (tmp_path / "nopart.yaml").write_text("gpus_per_node: 4\n")
    with pytest.raises(ConfigError, match="partition"):
        load_profile("nopart")
    (tmp_path / "typo.yaml").write_text("partition: gpu\ngpus_per_nod: 4\n")
    with pytest.raises(ConfigError, match="gpus_per_nod"):
        load_profile("typo")
    (tmp_path / "local.yaml").write_text("partition: mine\n")
    assert load_profile("local").partition == "mine" and load_profile("example_gpu").gpus_per_node == 8
    with pytest.raises(ConfigError, match="known: example_gpu, local, nopart, typo "):
        load_profile("no-such-cluster")


def test_a_profile_anywhere_with_every_key(tmp_path):
    """CLUSTER=/path/to/profile.yaml: a profile outside the repository; gpus_by_size entries replace the defaults'
    (GPUS_BY_SIZE), the other sizes keep theirs."""
    path = tmp_path / "site" / "cluster.yaml"
    path.parent.mkdir()
    path.write_text("partition: gpu\ngpus_per_node: 4\ngpus_by_size: {B: 2, S: 2}\ngpu_tflops: 400\n"
                    "slurm_additional_parameters: {exclusive: true, gres: 'nvme:1'}\n")
    profile = load_profile(str(path))
    assert profile.gpu_tflops == 400 and profile.slurm_additional_parameters == {"exclusive": True, "gres": "nvme:1"}
    assert profile.gpus_by_size == {**GPUS_BY_SIZE, "B": 2, "S": 2}
    assert resources("B/16", profile) == Resources(1, 2, 2) and resources("L/16", profile) == Resources(2, 4, 4)
    example = load_profile(str(ROOT / "slurm" / "profiles" / "example_gpu.yaml"))
    assert example == load_profile("example_gpu")
    documented = {line.split(":")[0] for line in (ROOT / "slurm" / "profiles" / "example_gpu.yaml").read_text()
                  .splitlines() if line and line[0].isalpha()}
    assert documented == {f.name for f in fields(Profile)}  # the template shows every key


@pytest.mark.parametrize("variant,expected", [
    ("S/16", Resources(1, 1, 1)), ("B/16", Resources(1, 4, 4)), ("L/16", Resources(1, 8, 8)),
    ("H/14", Resources(2, 8, 8)),
])
def test_resources_follow_model_size(variant, expected):
    gpu = Profile(partition="gpu", gpus_per_node=8)
    assert resources(variant, gpu) == expected
    assert resources(variant, Profile(partition="cpu")) == Resources(1, 1, 0)
    assert resources("L/16", Profile(partition="gpu", gpus_per_node=4)) == Resources(2, 4, 4)


def test_trainer_settings_match_the_allocation():
    assert Resources(2, 4, 4).trainer_settings() == {"accelerator": "gpu", "devices": 4, "num_nodes": 2,
                                                     "strategy": "ddp"}
    assert Resources(1, 1, 0).trainer_settings()["accelerator"] == "cpu"


def _ours() -> bool:
    """Whether the reachable SLURM controller is the one slurm/up.sh started (its pid file is under SLURM_PREFIX)."""
    pid_file = Path(os.environ.get("SLURM_PREFIX", "/tmp/slurm-local")) / "run" / "slurmctld.pid"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    return config.returncode == 0 and any(line.split("=", 1)[-1].strip() == str(pid_file)
                                          for line in config.stdout.splitlines() if line.startswith("SlurmctldPidFile"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """The one-node cluster that slurm/up.sh started for these tests: asked for with RELUVIT_SLURM_TESTS=1 (make
    test-all), never another cluster that happens to be reachable."""
    if not SLURM_TESTS:
        pytest.skip("SLURM tests run with RELUVIT_SLURM_TESTS=1 on the cluster of slurm/up.sh (make test-all)")
    if not _ours():
        pytest.fail("RELUVIT_SLURM_TESTS=1 but the reachable SLURM is not the one slurm/up.sh starts: run slurm/up.sh")
    # The tests' jobs would queue behind another sweep's (for hours): say so at once instead
    queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split()
    if queued:
        pytest.fail(f"the local SLURM has {len(queued)} jobs queued (squeue), and the SLURM tests need it idle: "
                    "wait for them, or scancel them")


def test_the_default_suite_cannot_install_or_reach_a_cluster():
    """The guard of conftest: a package install or a SLURM command fails and is recorded (this call is removed from
    the record again, so that only unexpected calls fail the session)."""
    if SLURM_TESTS:
        pytest.skip("the full suite may use the cluster")
    log = Path(os.environ[GUARD_LOG])
    before = log.read_text()
    for command in (["apt-get", "install", "-y", "slurm-wlm"], ["sbatch", "--wrap", "true"], ["sinfo"]):
        assert subprocess.run(command, capture_output=True).returncode == 127
    calls = [line.strip() for line in log.read_text()[len(before):].splitlines()]
    assert calls == ["apt-get install -y slurm-wlm", "sbatch --wrap true", "sinfo"]
    log.write_text(before)


def test_two_point_sweep_as_a_job_array(slurm_cluster, tmp_path):
    env = sweep_file(tmp_path, TWO_POINTS)
    result = subprocess.run(
        [sys.executable, "-m", "reluvit.cli", "sweep", "fig3", "--launcher", "slurm", "--cluster", "local",
         "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
         "trainer.max_steps=4", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 of 2 jobs finished" in result.stderr
    table = pd.read_parquet(tmp_path / "results" / "runs.parquet")
    assert sorted(table["run_name"]) == ["smoke-digits/micro2/relu-a1-noqkln-s0+trainer.max_steps=4",
                                         "smoke-digits/micro2/relu-a1-s0+trainer.max_steps=4"]
    assert set(table["status"]) == {"completed"} and set(table["global_step"]) == {4}
    tasks = sorted(p.name for p in (tmp_path / "runs" / ".submitit").glob("*/*_*") if p.is_dir())
    assert len(tasks) == 2 and {t.split("_")[1] for t in tasks} == {"0", "1"}, tasks  # one array, tasks 0 and 1
    script = next((tmp_path / "runs" / ".submitit").glob("*/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1%2" in script  # the profile's array_parallelism caps the running jobs


def test_no_wait_submits_and_returns(slurm_cluster, tmp_path):
    """--no-wait: the command returns once the array is submitted, naming its jobs and how to follow them, and
    rolls nothing up; the jobs finish on their own, and `reluvit status` counts them."""
    env = sweep_file(tmp_path, TWO_POINTS)
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    result = subprocess.run(
        [sys.executable, "-m", "reluvit.cli", "sweep", "fig3", "--launcher", "slurm", "--cluster", "local", *dirs,
         "--no-wait", "trainer.max_steps=4", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    array = re.search(r"array (\d+): 2 jobs, \1_0 \.\.\. \1_1", result.stderr)
    assert array, result.stderr[-3000:]
    assert f"follow with `reluvit status fig3 --scale smoke --runs-dir {tmp_path / 'runs'}`" in result.stderr
    assert not (tmp_path / "results").exists()  # no roll-up, no figure: the command did not wait
    manifest = json.loads((tmp_path / "runs" / ".reluvit" / "sweeps" / "fig3-smoke.json").read_text())
    assert sorted(run["jobs"][-1]["job_id"] for run in manifest["runs"]) == [f"{array[1]}_0", f"{array[1]}_1"]
    folder = next((tmp_path / "runs" / ".submitit").glob("fig3-smoke-*"))
    jobs = [submitit.SlurmJob(folder=folder / "%j", job_id=f"{array[1]}_{task}") for task in (0, 1)]
    assert [job.result() for job in jobs] == ["completed", "completed"]
    # the manifest says which runs the sweep has: no launch overrides needed
    status = subprocess.run([sys.executable, "-m", "reluvit.cli", "status", "fig3", *dirs],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=True).stdout
    assert re.search(r"fig3\s+smoke\s+2\s+2\s", status), status  # 2 runs, 2 completed
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("summary.json")]
    assert sorted(s["slurm"]["job"] for s in summaries) == [f"{array[1]}_0", f"{array[1]}_1"]
    assert all(Path(s["slurm"]["stderr"]).exists() for s in summaries)


def test_status_cancel_and_resubmit_failed(slurm_cluster, tmp_path):
    """A sweep's jobs while they wait or train are queued or running (never missing); cancel stops them; the
    cancelled runs are then failed (never started) or interrupted (stopped mid-run), and --resubmit-failed trains
    the failed ones again: the status reads each step from the manifest."""
    env = sweep_file(tmp_path, TWO_POINTS)
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    launch = [sys.executable, "-m", "reluvit.cli", "sweep", "fig3", "--launcher", "slurm", "--cluster", "local",
              *dirs, "--no-wait", "trainer.max_steps=100000", "trainer.enable_progress_bar=false"]

    def status(*flags):
        return subprocess.run([sys.executable, "-m", "reluvit.cli", "status", "fig3", *dirs, *flags],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=True).stdout

    subprocess.run(launch, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=True)
    counts = _status_counts(status())
    assert counts["queued"] + counts["running"] == 2, counts
    cancelled = subprocess.run([sys.executable, "-m", "reluvit.cli", "cancel", "fig3", *dirs], capture_output=True,
                               text=True, timeout=300, cwd=tmp_path, env=env, check=True).stdout
    assert cancelled.startswith("cancelled 2 jobs of fig3-smoke"), cancelled
    deadline = time.time() + 120
    while subprocess.run(["squeue", "-h", "-r"], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline, "cancelled jobs still in the queue"
        time.sleep(1)
    counts = _status_counts(status("--failed"))
    assert counts["failed"] + counts["interrupted"] == 2 and counts["queued"] + counts["running"] == 0, counts
    again = subprocess.run([*launch[:-2], "trainer.max_steps=2", "--resubmit-failed"], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr[-3000:]


def _status_counts(text: str) -> dict[str, int]:
    header, row = text.splitlines()[:2]
    return dict(zip(header.split()[3:], map(int, row.split()[3:]), strict=True))


@pytest.mark.slow
def test_unknown_cluster_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reluvit", "sweep", "fig1", "--launcher", "slurm",
                             "--cluster", "nowhere", "--runs-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nowhere" in result.stderr


def _uninterrupted(point: list[str]) -> dict:
    """The same run trained here in one piece, with the job's single thread (float sums depend on it)."""
    import torch

    from reluvit.run.compose import compose
    from reluvit.run.train import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(compose(point))
    finally:
        torch.set_num_threads(threads)


def _config(point: list[str]) -> dict:
    """The resolved config a sweep submits for a point."""
    from omegaconf import OmegaConf

    from reluvit.run.compose import compose

    return OmegaConf.to_container(compose(point))


def _point(runs_dir: Path, epochs: int) -> list[str]:
    return ["recipe=smoke", "data=animal_mnist", "model=micro4", "attention=relu", f"recipe.epochs={epochs}",
            "recipe.augment.default.mixup=0.4", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1", f"runs_dir={runs_dir}"]


def _assert_same_run(resumed: dict, reference: dict) -> None:
    import torch

    assert resumed["status"] == "completed" and resumed["global_step"] == reference["global_step"]
    assert resumed["metrics"]["val/acc"] == reference["metrics"]["val/acc"]
    ours, theirs = checkpoint_weights(Path(resumed["run_dir"])), checkpoint_weights(Path(reference["run_dir"]))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_preempted_job_is_requeued_and_resumes_exactly(slurm_cluster, tmp_path):

    from reluvit.run.rundir import read_summary
    from reluvit.sweep.slurm import load_profile, submit

    reference = _uninterrupted(_point(tmp_path / "reference", epochs=2))
    point = [*_point(tmp_path / "runs", epochs=2), "logger=wandb", "logger.wandb_mode=offline"]
    job = submit([_config(point)], load_profile("local"), tmp_path / "submitit", "preempt-test").popitem()[1]
    metrics = Path(reference["run_dir"].replace(str(tmp_path / "reference"), str(tmp_path / "runs")))
    log = metrics / "csv" / "version_0" / "metrics.csv"
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) > 30) and time.time() < deadline:
        time.sleep(0.5)
    job._interrupt()  # what SLURM does before preempting: SIGTERM, then USR2
    assert job.result() == "completed"
    resumed = read_summary(metrics)
    _assert_same_run(resumed, reference)
    assert len(list((metrics / "csv").glob("version_*"))) == 2  # trained in two pieces
    assert resumed["examples_seen"] == reference["examples_seen"]
    wandb_runs = sorted(p.name for p in (metrics / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and len({name.rsplit("-", 1)[1] for name in wandb_runs}) == 1  # one W&B run id


def test_job_hitting_its_time_limit_is_requeued_until_done(slurm_cluster, tmp_path):
    from dataclasses import replace

    from reluvit.run.rundir import read_summary
    from reluvit.sweep.slurm import load_profile, submit

    # SLURM may send USR2 up to 60 s before the asked time (sbatch --signal): with a 2-minute limit and 20 s of
    # warning it comes 40-100 s into each piece, after start-up. ~2 min of training on an idle core needs at
    # least two pieces (and more on a loaded machine: hence the generous requeue budget). The reference trains
    # here meanwhile, on the other core. What is checked does not depend on where the signals land: a resume is
    # exact from any step (tests/test_resume.py), so the final weights equal the reference's for any pieces.
    profile = replace(load_profile("local"), timeout_min=2, signal_delay_s=20, max_num_timeout=30)
    config = _config(_point(tmp_path / "runs", epochs=24))
    job = submit([config], profile, tmp_path / "submitit", "timeout-test").popitem()[1]
    reference = _uninterrupted(_point(tmp_path / "reference", epochs=24))
    assert job.result() == "completed"
    resumed = read_summary(Path(reference["run_dir"].replace(str(tmp_path / "reference"), str(tmp_path / "runs"))))
    _assert_same_run(resumed, reference)
    pieces = len(list((Path(resumed["run_dir"]) / "csv").glob("version_*")))
    assert pieces >= 2, f"the run fit in one {profile.timeout_min}-minute piece: make it longer"
    assert resumed["core_hours"] > 0


def test_the_job_module_imports_no_framework():
    """submitit installs its signal handlers after unpickling the job: that import must be quick."""
    frameworks = "{'torch', 'timm', 'hydra', 'pytorch_lightning'}"
    code = f"import sys, reluvit.sweep.job; print(sorted({frameworks} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_two_task_ddp_job_equals_the_single_process_run(slurm_cluster, tmp_path):
    """srun with 2 CPU tasks (gloo) and the same global batch: the result equals one process's within float
    tolerance; core hours count both processes."""
    import torch

    from reluvit.run.rundir import read_summary
    from reluvit.sweep.slurm import load_profile, submit

    point = ["recipe=smoke", "data=digits", "model=micro2", "attention=relu", "recipe.epochs=2",
             "recipe.batch_size=64", "trainer.deterministic=true", "trainer.enable_progress_bar=false"]
    reference = _uninterrupted([*point, f"runs_dir={tmp_path / 'single'}"])
    ddp = [*point, f"runs_dir={tmp_path / 'ddp'}", "trainer.accelerator=cpu", "trainer.devices=2"]
    job = submit([_config(ddp)], load_profile("local"), tmp_path / "submitit", "ddp-test").popitem()[1]
    assert job.results() == ["completed", "completed"]  # one result per task
    summary = read_summary(Path(reference["run_dir"].replace(str(tmp_path / "single"), str(tmp_path / "ddp"))))
    assert summary["world_size"] == 2 and summary["micro_batch_size"] == 32
    assert summary["global_step"] == reference["global_step"] and summary["examples_seen"] == reference["examples_seen"]
    ours, theirs = checkpoint_weights(Path(summary["run_dir"])), checkpoint_weights(Path(reference["run_dir"]))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-4, atol=1e-5, msg=name)
    assert abs(summary["metrics"]["val/acc"] - reference["metrics"]["val/acc"]) <= 1 / 297  # one image at most


@pytest.mark.parametrize("profile,message", [
    ("partition: nosuch\n", "'nosuch' is not on this cluster"),
    ("partition: debug\ngpus_per_node: 8\n", "have 0"),
    ("partition: debug\ntimeout_min: 2\nsignal_delay_s: 100\n", "leaves no time to train"),
])
def test_bad_profiles_are_refused_before_submitting(slurm_cluster, tmp_path, profile, message):
    from reluvit.sweep.slurm import check_cluster

    (tmp_path / "bad.yaml").write_text(profile)
    with pytest.raises(ConfigError, match=message):
        check_cluster(load_profile(str(tmp_path / "bad.yaml")), "bad")


def test_no_reachable_slurm_is_one_line(tmp_path, monkeypatch):
    from reluvit.sweep.slurm import check_cluster

    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo on the PATH
    with pytest.raises(ConfigError, match="no SLURM cluster is reachable"):
        check_cluster(load_profile("local"), "local")

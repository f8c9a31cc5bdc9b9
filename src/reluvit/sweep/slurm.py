"""Submit a sweep to SLURM with submitit: one job array per resource class, a cap on the jobs running at once,
resources derived from the model size and the cluster profile (``slurm/profiles/<name>.yaml``, or a profile file
anywhere); or preview that submission (:func:`preview`): the arrays, the sbatch script submitit would write, the cost.

Each job is a :class:`reluvit.sweep.job.TrainJob` that trains one run, from the config composed on the submitting
side, in its run directory. On a time-out or a preemption the run checkpoints at the next step boundary
(:mod:`reluvit.run.requeue`), submitit calls the job's ``checkpoint`` and requeues it with the same config, and the
run continues from that step.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import submitit
import yaml

from reluvit import search
from reluvit.errors import COUNT, above
from reluvit.run.schema import ConfigError
from reluvit.sweep.job import TrainJob
from reluvit.variants import SIZES, parse_variant

if TYPE_CHECKING:
    from reluvit.sweep.cost import ArrayCost

log = logging.getLogger(__name__)

# GPUs one run asks for, by model size (a profile's gpus_by_size entries replace these): enough memory and speed for
# the recipe's global batch of 4096 with gradient accumulation; jobs needing more GPUs than a node has span nodes.
GPUS_BY_SIZE = {"micro": 1, "mini": 1, "Ti": 1, "S": 1, "M": 1, "B": 4, "L": 8, "H": 16}
TFLOPS = above(0, null=True)
GPU_REQUESTS = ("gpus-per-node", "gres")  # a profile's gpus_as
# the line of every job's setup: Slurm 22.05-23.02 gives srun's tasks one core each unless it is exported
SRUN_CPUS = "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK}"


@dataclass
class Profile:
    """A cluster profile: the keys of its YAML file (``slurm/profiles/example_gpu.yaml`` shows them all)."""

    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb_per_task: int = 4
    timeout_min: int = 60
    max_num_timeout: int = 10
    signal_delay_s: int = 120
    array_parallelism: int = 32
    setup: list[str] = field(default_factory=list)
    gpus_by_size: dict[str, int] = field(default_factory=dict)  # entries replace GPUS_BY_SIZE's
    slurm_additional_parameters: dict = field(default_factory=dict)  # more sbatch options: gres, exclude, ...
    gpu_tflops: float | None = None  # achieved training TFLOP/s per GPU (per task on a CPU cluster): the cost model
    gpus_as: str = "gpus-per-node"  # how a job asks for its GPUs: --gpus-per-node=N, or --gres=gpu[:gpu_type]:N
    gpu_type: str | None = None  # the GPU type a gres request names (gpus_as: gres), e.g. a100
    wckey: str | None = None  # --wckey; none: no such line (submitit's default would be --wckey=submitit)
    gpu: str | None = None  # the GPU's folder of measurements, results/bench/<gpu>/ (make device-check's slug)

    def __post_init__(self) -> None:
        for key in ("gpus_by_size", "slurm_additional_parameters"):
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(key, f"{getattr(self, key)!r} is not a mapping ({{key: value, ...}})")
        unknown = sorted(set(self.gpus_by_size) - set(SIZES))
        if unknown:
            raise ConfigError("gpus_by_size", f"unknown model sizes {unknown}; the sizes are: {', '.join(SIZES)}")
        if not all(count in COUNT for count in self.gpus_by_size.values()):
            raise ConfigError("gpus_by_size", f"{self.gpus_by_size} holds a GPU count that is not {COUNT}")
        self.gpus_by_size = {**GPUS_BY_SIZE, **self.gpus_by_size}
        if self.gpu_tflops not in TFLOPS:
            raise ConfigError("gpu_tflops", f"{self.gpu_tflops!r} is not {TFLOPS}")
        if self.gpus_as not in GPU_REQUESTS:
            raise ConfigError("gpus_as", f"{self.gpus_as!r} is not one of: {', '.join(GPU_REQUESTS)}")
        gres = str(self.slurm_additional_parameters.get("gres", "")).split(",")
        if any(item.split(":")[0] == "gpu" for item in gres):
            raise ConfigError("slurm_additional_parameters: gres", "names GPUs, which would add to the GPUs the "
                              "runs ask for: set gpus_as: gres (and gpu_type) instead")

    def gpu_options(self, gpus_per_node: int) -> dict:
        """submitit's parameters asking for ``gpus_per_node`` GPUs on each node, in the cluster's style
        (:attr:`gpus_as`); a ``gres`` of ``slurm_additional_parameters`` (``nvme:1``) joins a gres request."""
        other = self.slurm_additional_parameters.get("gres")
        if not gpus_per_node:
            return {}
        if self.gpus_as == "gpus-per-node":
            return {"gpus_per_node": gpus_per_node}
        gpu = ":".join(["gpu", *([self.gpu_type] if self.gpu_type else []), str(gpus_per_node)])
        return {"gres": ",".join([gpu, *([str(other)] if other else [])])}


def _is_path(cluster: str) -> bool:
    """Whether ``--cluster`` names a profile file (else a profile of the profile directories)."""
    return cluster.endswith((".yaml", ".yml")) or os.sep in cluster


def profile_path(cluster: str) -> Path | None:
    """``cluster``: the name of a profile in the profile directories (:mod:`reluvit.search`: the user's, then the
    packaged ``profiles``), or the path of a profile file anywhere; None when there is no such file."""
    if _is_path(cluster):
        path = Path(cluster).expanduser()
        return path if path.is_file() else None
    return search.find("profiles", f"{cluster}.yaml")


def load_profile(cluster: str) -> Profile:
    path = profile_path(cluster)
    if path is None:
        known = ", ".join(search.names("profiles"))
        named = cluster if _is_path(cluster) else f"named {cluster!r}"
        raise ConfigError("CLUSTER", f"no profile {named}; known: {known} (or the path of a profile file)")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {f.name for f in fields(Profile)}
    if unknown:
        raise ConfigError(f"{path.name}", f"unknown keys {sorted(unknown)}")
    if not raw.get("partition"):
        raise ConfigError(f"{path.name}: partition", "a partition is required")
    try:
        return Profile(**raw)
    except ConfigError as e:
        raise ConfigError(f"{path.name}: {e.key}", e.message) from None


def check_cluster(profile: Profile, file: str) -> None:
    """Refuse, before anything is submitted, what cannot run: no reachable SLURM, an unknown partition, more GPUs
    per node than its nodes have, a time limit the preemption signal would eat entirely."""
    # SLURM may send USR2 up to 60 s before it was asked to (sbatch --signal); keep 30 s to train after that
    if profile.timeout_min * 60 < profile.signal_delay_s + 90:
        raise ConfigError(f"{file}: timeout_min", f"{profile.timeout_min} min leaves no time to train: USR2 "
                          f"comes up to {profile.signal_delay_s + 60} s before the limit (allow 30 s more at least)")
    info = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True) if shutil.which("sinfo") \
        else None
    if info is None or info.returncode:
        raise ConfigError("LAUNCHER=slurm", "no SLURM cluster is reachable (sinfo failed); on this machine "
                          "`sudo slurm/up.sh` starts a local one")
    gres = {}
    for line in info.stdout.split():
        part, _, g = line.partition("|")
        gres.setdefault(part.rstrip("*"), []).append(g)
    if profile.partition not in gres:
        raise ConfigError(f"{file}: partition", f"{profile.partition!r} is not on this cluster; it has: "
                          f"{', '.join(sorted(gres))}")
    gpus = max((int(m) for g in gres[profile.partition] for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", g)),
               default=0)
    if profile.gpus_per_node > gpus:
        raise ConfigError(f"{file}: gpus_per_node", f"{profile.gpus_per_node} GPUs per node, but the nodes of "
                          f"partition {profile.partition!r} have {gpus}")


@dataclass(frozen=True)
class Resources:
    nodes: int
    tasks_per_node: int  # = devices per node for Lightning
    gpus_per_node: int

    @property
    def devices(self) -> int:
        """Training processes of one job: GPUs, or CPU tasks on a CPU-only cluster."""
        return self.nodes * self.tasks_per_node

    def trainer_settings(self) -> dict:
        """Lightning's devices and nodes must equal SLURM's tasks per node and nodes (one process per task)."""
        strategy = {"strategy": "ddp"} if self.devices > 1 else {}
        return {"accelerator": "gpu" if self.gpus_per_node else "cpu", "devices": self.tasks_per_node,
                "num_nodes": self.nodes, **strategy}


def resources(variant: str, profile: Profile, cpu_tasks: tuple[int, int] = (1, 1)) -> Resources:
    """What a run of ``variant`` asks for on this cluster; on a CPU-only cluster, ``cpu_tasks`` = (nodes, tasks per
    node), from the run's own trainer.num_nodes and trainer.devices (CPU DDP with gloo)."""
    parse_variant(variant)
    if not profile.gpus_per_node:
        return Resources(*cpu_tasks, 0)
    gpus = profile.gpus_by_size[variant.split("/")[0]]
    per_node = min(gpus, profile.gpus_per_node)
    return Resources(math.ceil(gpus / per_node), per_node, per_node)


def job_arrays(configs: list, profile: Profile) -> dict[Resources, list]:
    """The resolved run configs (plain or DictConfig) grouped into one job array per resource class; refused when a
    run's devices do not divide its global batch (a profile's gpus_by_size)."""
    arrays: dict[Resources, list] = {}
    for config in configs:
        trainer, variant = config["trainer"], config["model"]["variant"]
        devices = trainer["devices"] if isinstance(trainer["devices"], int) else 1
        res = resources(variant, profile, (trainer["num_nodes"], devices))
        if config["recipe"]["batch_size"] % res.devices:
            raise ConfigError("gpus_by_size", f"{res.devices} GPUs for {variant} do not divide the global batch "
                                              f"recipe.batch_size={config['recipe']['batch_size']}")
        arrays.setdefault(res, []).append(config)
    return arrays


class PreviewExecutor(submitit.SlurmExecutor):
    """submitit's SLURM executor on a machine without SLURM: it renders the sbatch script and submits nothing."""

    @classmethod
    def affinity(cls) -> int:
        return 2  # SlurmExecutor refuses to exist without srun on the PATH

    def _submit_command(self, command: str):
        raise RuntimeError("a preview submits nothing")


def executor(profile: Profile, res: Resources, folder: Path, name: str,
             kind: type[submitit.SlurmExecutor] = submitit.SlurmExecutor) -> submitit.SlurmExecutor:
    """submitit's executor for one job array of ``res`` jobs: every sbatch option comes from the profile."""
    optional = {key: getattr(profile, key) for key in ("account", "qos", "constraint") if getattr(profile, key)}
    gpus = profile.gpu_options(res.gpus_per_node)
    additional = {**profile.slurm_additional_parameters, **{k: v for k, v in gpus.items() if k == "gres"}}
    slurm = kind(folder / "%j", max_num_timeout=profile.max_num_timeout)
    slurm.update_parameters(
        job_name=name, partition=profile.partition, nodes=res.nodes, ntasks_per_node=res.tasks_per_node,
        gpus_per_node=gpus.get("gpus_per_node"), cpus_per_task=profile.cpus_per_task,
        mem=f"{profile.mem_gb_per_task * res.tasks_per_node}GB", time=profile.timeout_min,
        array_parallelism=profile.array_parallelism, setup=[SRUN_CPUS, *profile.setup],
        signal_delay_s=profile.signal_delay_s, wckey=profile.wckey, additional_parameters=additional or None,
        **optional,
    )
    return slurm


def sbatch_script(profile: Profile, res: Resources, folder: Path, name: str, jobs: int) -> str:
    """The sbatch script submitit writes for an array of ``jobs`` jobs of ``res`` (submitit's own rendering)."""
    preview_executor = executor(profile, res, folder, name, PreviewExecutor)
    if jobs > 1:  # what SlurmExecutor sets when it submits an array
        preview_executor.parameters["map_count"] = jobs
    return preview_executor._make_submission_file_text(preview_executor._submitit_command_str, uid="preview")


def submit(configs: list[dict], profile: Profile, folder: Path, name: str) -> dict[str, submitit.Job]:
    """Submit one job per resolved run config (:mod:`reluvit.sweep.execute` composed and checked them), one array
    per resource class, each config with the trainer's devices and nodes set to the allocation; returns run
    directory -> its job."""
    jobs = {}
    for res, group in job_arrays(configs, profile).items():
        group = [{**config, "trainer": {**config["trainer"], **res.trainer_settings()}} for config in group]
        submitted = executor(profile, res, folder, name).map_array(TrainJob(), group)
        jobs.update(zip((config["run_dir"] for config in group), submitted, strict=True))
    return jobs


def job_record(job: submitit.Job) -> dict:
    """What a sweep's manifest keeps of a submitted job: its ids and log files."""
    array, _, index = job.job_id.partition("_")
    return {"job_id": job.job_id, "array_id": array if index else None, "index": int(index) if index else None,
            "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def wait(jobs: list[submitit.Job]) -> dict[str, str]:
    """Block until every job ends, logging each outcome; returns job id -> outcome (run status or the error)."""
    outcomes = {}
    for done, job in enumerate(submitit.helpers.as_completed(jobs, poll_frequency=2), 1):
        try:
            outcomes[job.job_id] = job.result()
        except Exception as e:  # a failed job: keep going, report it
            outcomes[job.job_id] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"
        log.info("[%d/%d] job %s: %s", done, len(jobs), job.job_id, outcomes[job.job_id])
    return outcomes


def job_ranges(jobs: list[submitit.Job]) -> list[str]:
    """One line per array (``<array id>_<index>``) or single job: its job count and first and last job ids."""
    arrays: dict[str, list[str]] = {}
    for job in jobs:
        arrays.setdefault(job.job_id.split("_")[0], []).append(job.job_id)
    return [f"array {array}: {len(ids)} jobs, {ids[0]} ... {ids[-1]}" if len(ids) > 1 else f"job {ids[0]}"
            for array, ids in arrays.items()]


def run_on_slurm(configs: list[dict], cluster: str, folder: Path, name: str, block: bool = True,
                 on_submit: Callable[[dict[str, dict]], None] | None = None) -> dict[str, str]:
    """Submit the runs to the cluster of profile ``cluster`` (checked first) and hand ``on_submit`` run directory
    -> job record (:func:`job_record`); ``block``: wait for them and return job id -> outcome, else return nothing
    at once (the job ids are logged)."""
    profile = load_profile(cluster)
    check_cluster(profile, profile_path(cluster).name)
    by_run = submit(configs, profile, folder, name)
    if on_submit is not None:
        on_submit({run_dir: job_record(job) for run_dir, job in by_run.items()})
    jobs = list(by_run.values())
    log.info("submitted %d jobs to partition %r; logs in %s", len(jobs), profile.partition, folder)
    if not block:
        for line in job_ranges(jobs):
            log.info("%s", line)
        return {}
    return wait(jobs)


def preview(cfgs: list, profile: Profile, folder: Path, name: str) -> str:
    """What submitting the resolved run configs (DictConfig) would do, as text: each job array (jobs, models,
    resources, time limit, the sbatch script submitit would write) and the cost estimate of each and of all
    (:mod:`reluvit.sweep.cost`: device-hours, wall time, checkpoint disk). Submits nothing and needs no cluster."""
    from reluvit.sweep import cost  # the estimate (and its cache of model readings): a preview's only
    from reluvit.sweep.cost import plural
    from reluvit.sweep.speed import Speed

    arrays = job_arrays(cfgs, profile)
    unit = "GPU" if profile.gpus_per_node else "CPU task"
    speed = Speed.of(profile.gpu_tflops, profile.gpu)
    lines = [f"{plural(len(cfgs), 'run')} in {plural(len(arrays), 'job array')} on partition "
             f"{profile.partition!r} (a dry run: nothing is submitted)", speed.describe(unit)]
    costs = []
    for number, (res, group) in enumerate(arrays.items(), 1):
        costs.append(cost.array_cost(group, res.devices, profile.array_parallelism, speed, profile.cpus_per_task))
        models = ", ".join(f"{variant}: {n}" for variant, n in Counter(cfg.model.variant for cfg in group).items())
        lines += [
            f"array {number}: {plural(len(group), 'job')} ({models}), at most {profile.array_parallelism} at a time",
            f"  each: {plural(res.nodes, 'node')} x {plural(res.tasks_per_node, unit)}; {profile.cpus_per_task} "
            f"CPUs and {profile.mem_gb_per_task} GB per task; time limit {profile.timeout_min} min, requeued up to "
            f"{profile.max_num_timeout} times",
            f"  estimate: {costs[-1].describe(unit, profile.timeout_min)}",
            *_too_long(costs[-1], profile),
            f"  checkpoints: {costs[-1].disk()}",
            "  the sbatch script submitit writes for it:",
            textwrap.indent(sbatch_script(profile, res, folder, name, len(group)), "    ").rstrip(),
        ]
    lines += [f"total: {cost.total(costs, unit)}", f"total checkpoints: {cost.disk(costs)}"]
    return "\n".join(lines)


def _too_long(array: ArrayCost, profile: Profile) -> list[str]:
    """A warning line when the longest job needs more starts (requeues after time-outs) than the profile allows."""
    starts = array.starts(profile.timeout_min)
    if starts <= profile.max_num_timeout + 1:
        return []
    return [f"  warning: the longest job needs {starts} starts of {profile.timeout_min} min, but max_num_timeout="
            f"{profile.max_num_timeout} allows {profile.max_num_timeout + 1}: raise timeout_min or max_num_timeout"]

"""Submit a sweep to SLURM with submitit: one job array per resource class, a cap on the jobs running at once,
resources derived from the model size and the cluster profile (``slurm/profiles/<name>.yaml``).

Each job is a :class:`reluvit.sweep.job.TrainJob` that trains one run, from the config composed on the submitting
side, in its run directory. On a time-out or a preemption the run checkpoints at the next step boundary
(:mod:`reluvit.run.requeue`), submitit calls the job's ``checkpoint`` and requeues it with the same config, and the
run continues from that step.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path

import submitit
import yaml

from reluvit import ROOT
from reluvit.models import parse_variant
from reluvit.run.schema import ConfigError
from reluvit.sweep.job import TrainJob

log = logging.getLogger(__name__)

PROFILES_DIR = ROOT / "slurm" / "profiles"
# GPUs one run asks for, by model size: enough memory and speed for the recipe's global batch of 4096 with
# gradient accumulation; jobs needing more GPUs than a node has span several nodes.
GPUS_BY_SIZE = {"micro": 1, "mini": 1, "Ti": 1, "S": 1, "M": 1, "B": 4, "L": 8, "H": 16}


@dataclass
class Profile:
    """A cluster profile: the keys of ``slurm/profiles/<name>.yaml``."""

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


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> Profile:
    path = profiles_dir / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in profiles_dir.glob("*.yaml")))
        raise ConfigError("CLUSTER", f"no profile {path}; known: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {f.name for f in fields(Profile)}
    if unknown:
        raise ConfigError(f"{path.name}", f"unknown keys {sorted(unknown)}")
    if not raw.get("partition"):
        raise ConfigError(f"{path.name}: partition", "a partition is required")
    return Profile(**raw)


def check_cluster(profile: Profile, name: str) -> None:
    """Refuse, before anything is submitted, what cannot run: no reachable SLURM, an unknown partition, more GPUs
    per node than its nodes have, a time limit the preemption signal would eat entirely."""
    # SLURM may send USR2 up to 60 s before it was asked to (sbatch --signal); keep 30 s to train after that
    if profile.timeout_min * 60 < profile.signal_delay_s + 90:
        raise ConfigError(f"{name}.yaml: timeout_min", f"{profile.timeout_min} min leaves no time to train: USR2 "
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
        raise ConfigError(f"{name}.yaml: partition", f"{profile.partition!r} is not on this cluster; it has: "
                          f"{', '.join(sorted(gres))}")
    gpus = max((int(m) for g in gres[profile.partition] for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", g)),
               default=0)
    if profile.gpus_per_node > gpus:
        raise ConfigError(f"{name}.yaml: gpus_per_node", f"{profile.gpus_per_node} GPUs per node, but the nodes of "
                          f"partition {profile.partition!r} have {gpus}")


@dataclass(frozen=True)
class Resources:
    nodes: int
    tasks_per_node: int  # = devices per node for Lightning
    gpus_per_node: int

    def trainer_settings(self) -> dict:
        """Lightning's devices and nodes must equal SLURM's tasks per node and nodes (one process per task)."""
        strategy = {"strategy": "ddp"} if self.nodes * self.tasks_per_node > 1 else {}
        return {"accelerator": "gpu" if self.gpus_per_node else "cpu", "devices": self.tasks_per_node,
                "num_nodes": self.nodes, **strategy}


def resources(variant: str, profile: Profile, cpu_tasks: tuple[int, int] = (1, 1)) -> Resources:
    """What a run of ``variant`` asks for on this cluster; on a CPU-only cluster, ``cpu_tasks`` = (nodes, tasks per
    node), from the run's own trainer.num_nodes and trainer.devices (CPU DDP with gloo)."""
    parse_variant(variant)
    if not profile.gpus_per_node:
        return Resources(*cpu_tasks, 0)
    gpus = GPUS_BY_SIZE[variant.split("/")[0]]
    per_node = min(gpus, profile.gpus_per_node)
    return Resources(math.ceil(gpus / per_node), per_node, per_node)


def submit(configs: list[dict], profile: Profile, folder: Path, name: str) -> list[submitit.Job]:
    """Submit one job per resolved run config (:mod:`reluvit.sweep.execute` composed and checked them), one array
    per resource class, each config with the trainer's devices and nodes set to the allocation; returns the jobs."""
    by_class: dict[Resources, list[dict]] = {}
    for config in configs:
        trainer = config["trainer"]
        devices = trainer["devices"] if isinstance(trainer["devices"], int) else 1
        res = resources(config["model"]["variant"], profile, (trainer["num_nodes"], devices))
        by_class.setdefault(res, []).append({**config, "trainer": {**trainer, **res.trainer_settings()}})
    jobs = []
    for res, group in by_class.items():
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=profile.max_num_timeout)
        optional = {f"slurm_{k}": getattr(profile, k) for k in ("account", "qos", "constraint") if getattr(profile, k)}
        executor.update_parameters(
            name=name, slurm_partition=profile.partition, nodes=res.nodes, tasks_per_node=res.tasks_per_node,
            gpus_per_node=res.gpus_per_node or None, cpus_per_task=profile.cpus_per_task,
            mem_gb=profile.mem_gb_per_task * res.tasks_per_node, timeout_min=profile.timeout_min,
            slurm_array_parallelism=profile.array_parallelism, slurm_setup=list(profile.setup),
            slurm_signal_delay_s=profile.signal_delay_s, **optional,
        )
        jobs += executor.map_array(TrainJob(), group)
    return jobs


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


def run_on_slurm(configs: list[dict], cluster: str, folder: Path, name: str) -> dict[str, str]:
    """Submit the runs to the cluster of profile ``cluster`` (checked first), wait for them; job id -> outcome."""
    profile = load_profile(cluster)
    check_cluster(profile, cluster)
    jobs = submit(configs, profile, folder, name)
    log.info("submitted %d jobs to partition %r; logs in %s", len(jobs), profile.partition, folder)
    return wait(jobs)

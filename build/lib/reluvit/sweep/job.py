"""The function a SLURM job runs: train one run (``python -m submitit.core._submit`` unpickles it).

submitit installs its USR2/SIGTERM handlers only after unpickling the job, which imports this module; until then
a signal kills the job instead of requeueing it. So this module imports nothing heavy at import time (torch,
timm, Lightning and Hydra load inside ``__call__``, after the handlers are in place), and the job's argument is
the run's resolved config as plain values.
"""

from __future__ import annotations

import os

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """Train one run from its resolved config; ``checkpoint`` (inherited) requeues it with the same config."""

    def __call__(self, config: dict) -> str:
        import torch

        from reluvit.run.compose import from_container
        from reluvit.run.train import run

        torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK", torch.get_num_threads())))
        return run(from_container(config))["status"]

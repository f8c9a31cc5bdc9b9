"""Where and how a command's points run (:class:`Launch`): the launcher and the SLURM profile, checked before
anything is composed; the points executed (:func:`reluvit.sweep.execute.execute`) or their submission previewed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from reluvit.run.schema import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Launch:
    """Where and how points run: ``launcher`` (:data:`reluvit.sweep.execute.LAUNCHERS`), the SLURM profile
    ``cluster`` (None: ``local``, the test cluster, but at paper scale), a ``dry_run`` that previews a SLURM
    submission whichever the launcher, and ``no_wait``: return once submitted."""

    launcher: str = "local"
    cluster: str | None = None
    dry_run: bool = False
    no_wait: bool = False

    def profile(self, scale: str | None = None):
        """The cluster's profile (None for a local launch), the options checked before anything is composed: a
        paper-scale sweep names its profile, one with GPUs."""
        from reluvit.sweep.execute import LAUNCHERS

        if self.launcher not in LAUNCHERS:
            raise ConfigError("launcher", f"{self.launcher!r} is not one of: {', '.join(LAUNCHERS)}")
        if self.no_wait and (self.dry_run or self.launcher != "slurm"):
            raise ConfigError("--no-wait", "returns after submitting: it takes --launcher slurm and no --dry-run")
        if self.launcher != "slurm" and not self.dry_run:
            return None
        from reluvit.sweep.slurm import load_profile

        if self.cluster is None:
            if scale == "paper":
                raise ConfigError("--cluster", "a paper-scale sweep has no default profile: name your GPU cluster's "
                                  "(--cluster example_gpu for the template, or the path of a profile file)")
            self.cluster = "local"
        profile = load_profile(self.cluster)
        if scale == "paper" and not profile.gpus_per_node:
            raise ConfigError("--cluster", f"profile {self.cluster!r} has no GPUs (gpus_per_node: 0): a paper-scale "
                              "sweep needs a GPU cluster's profile")
        return profile

    def run(self, points: list, label: str, follow: str, on_submit=None) -> list[str]:
        """Execute the points (:func:`reluvit.sweep.execute.execute`); returns what failed. ``follow``: the command
        that shows the progress of runs submitted without waiting."""
        from reluvit.sweep.execute import execute

        failed = execute(points, self.launcher, self.cluster, label, block=not self.no_wait, on_submit=on_submit)
        if self.no_wait:
            log.info("follow with `%s`", follow)
        return failed

    def preview(self, points: list, label: str) -> str:
        from reluvit.sweep.execute import preview

        return preview(points, self.cluster, label)

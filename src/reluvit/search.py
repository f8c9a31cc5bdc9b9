"""Where reluvit reads its Hydra configs, sweep files and SLURM profiles: the user's own directories first
(``$RELUVIT_CONF_DIR``, ``$RELUVIT_SWEEPS_DIR``, ``$RELUVIT_PROFILES_DIR``; each one directory or several joined
by ``:``), then the ones packaged inside reluvit (``reluvit/conf``, ``reluvit/sweeps``, ``reluvit/profiles``,
installed with the wheel). A file of a user's directory hides the packaged file of the same name; the packaged
others stay found, so one more sweep or model config needs no copy of the rest."""

from __future__ import annotations

import os
from pathlib import Path

from reluvit.errors import ArgumentError

PACKAGE = Path(__file__).resolve().parent
USER_DIRS = {"conf": "RELUVIT_CONF_DIR", "sweeps": "RELUVIT_SWEEPS_DIR", "profiles": "RELUVIT_PROFILES_DIR"}


def packaged(kind: str) -> Path:
    """The directory of ``kind`` (``conf``, ``sweeps`` or ``profiles``) that ships with reluvit."""
    return PACKAGE / kind


def search_path(kind: str) -> list[Path]:
    """The directories of ``kind``, in the order they are searched: the user's, then the packaged one. A user
    directory that does not exist is an :class:`ArgumentError` naming its variable."""
    variable = USER_DIRS[kind]
    user = [Path(p).expanduser().absolute() for p in os.environ.get(variable, "").split(os.pathsep) if p]
    for directory in user:
        if not directory.is_dir():
            raise ArgumentError(variable, f"no directory {directory}")
    return [*dict.fromkeys([*user, packaged(kind)])]


def find(kind: str, name: str) -> Path | None:
    """The first file ``name`` (relative) in the search path of ``kind``; None when none has it."""
    return next((d / name for d in search_path(kind) if (d / name).is_file()), None)


def names(kind: str, pattern: str = "*.yaml") -> list[str]:
    """The stems of the files matching ``pattern`` in any directory of the search path of ``kind``."""
    return sorted({p.stem for d in search_path(kind) for p in d.glob(pattern)})

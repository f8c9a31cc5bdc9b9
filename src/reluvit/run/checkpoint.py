"""Checkpoint files, for training (as Lightning's ``CheckpointIO``) and for ``reluvit evaluate``.

Written atomically: the file goes to ``<name>.partial`` first and replaces the old one only when complete, so a run
killed during the write resumes from the previous checkpoint. Read with ``torch.load(weights_only=True)``: a
checkpoint is tensors and plain containers (the RNG states too, see reluvit.run.requeue), so a file whose pickle
would build other Python objects (and could run code) is refused, as is a truncated one, by an error that names the
file and says how to go on.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; ``str()`` is one line naming the file."""


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """A checkpoint's contents, tensors and plain Python values only."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r".*\bGLOBAL\b.*", str(e))  # torch's reason: the global it would have loaded
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and containers "
                              f"({refused[0].strip()[:200] if refused else type(e).__name__}); only load files you "
                              "trust with torch.load yourself") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable, truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).strip()[:200]}); move it away to train the run again from its start, "
                              "or resume=false") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with an atomic local write and the safe read of :func:`load_checkpoint`."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(checkpoint, partial)
        os.replace(partial, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path, map_location)

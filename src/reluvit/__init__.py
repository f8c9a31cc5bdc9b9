"""reluvit: ReLU (and other softmax-free) attention for Vision Transformers, on timm, Lightning and Hydra."""

import importlib

# Loaded on first use, so that importing a light submodule (``reluvit.sweep.job`` in a SLURM job) does not import torch
_EXPORTS = {"ACTIVATIONS": "attention", "POINTWISE": "attention", "PointwiseAttention": "attention",
            "attention_layer": "attention", "SIZES": "variants", "create_model": "models"}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reluvit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"reluvit.{_EXPORTS[name]}"), name)

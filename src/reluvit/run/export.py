"""A run's weights for people who use timm and not reluvit: ``reluvit export <run>`` writes the model's state dict
as safetensors and, beside it, a JSON of how to build the model (also in the file's metadata).

- Softmax runs without big_vision's pre-logits layer (the i21k recipe's) are timm's own ``VisionTransformer``:
  ``timm.create_model("vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=..., num_classes=N),
  **timm_kwargs)`` loads them. timm's qk-LayerNorm has a bias that reluvit's has not: the file holds it as zeros.
- Every other run needs its attention module (or the pre-logits layer): ``reluvit.create_model(**arguments)``
  builds it, and ``model.load_state_dict(safetensors.torch.load_file(...))`` loads the weights; timm's
  ``create_model`` does too with ``attn_layer=reluvit.attention_layer(...)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from reluvit.models import attention_class, create_model, vit_arguments
from reluvit.run.checkpoint import load_checkpoint
from reluvit.run.rundir import FINISHED, last_checkpoint, read_summary

TIMM_NAME = "vit_base_patch16_224"  # any timm ViT name serves: timm_kwargs set the whole architecture
MODEL_PREFIX = "model."  # of the LightningModule's state dict keys (ViTClassifier.model)


class ExportRefused(RuntimeError):
    """A run that cannot be exported; ``str()`` is one line."""


def export(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, dict]:
    """Write the weights of the finished run in ``run_dir`` to ``out`` (default ``<run_dir>/export/<run
    name>.safetensors``) and its recipe to build them to the same name with ``.json``; returns the file and the
    recipe."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    if summary is None or summary.get("status") not in FINISHED:
        status = summary and summary.get("status")
        raise ExportRefused(f"{run_dir}: not a finished run (status {status}); export trains nothing")
    arguments = {k: v for k, v in summary["config"]["model"].items() if k != "name"}
    arguments["attention"] = summary["config"]["attention"]
    checkpoint = load_checkpoint(last_checkpoint(run_dir), map_location="cpu")
    state = {k.removeprefix(MODEL_PREFIX): v.contiguous() for k, v in checkpoint["state_dict"].items()
             if k.startswith(MODEL_PREFIX)}
    recipe = build_recipe(summary, arguments)
    if recipe["stock_timm"]:
        state = timm_layout(state)
    out = Path(out) if out else run_dir / "export" / f"{summary['run_name']}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out, metadata={"reluvit": json.dumps(recipe)})
    out.with_suffix(".json").write_text(json.dumps(recipe, indent=2) + "\n")
    return out, recipe


def build_recipe(summary: dict, arguments: dict) -> dict:
    """How to build the model of a run whose ``create_model`` arguments are ``arguments``: with stock timm where its
    modules are timm's own (softmax attention, no pre-logits layer, no gate), else with reluvit's."""
    _, qk_norm = attention_class(arguments["attention"], arguments["pool"])
    timm_kwargs = vit_arguments(arguments["variant"], num_classes=arguments["num_classes"],
                                img_size=arguments["img_size"], in_chans=arguments["in_chans"],
                                pool=arguments["pool"], qk_norm=qk_norm)
    attention = arguments["attention"]
    stock = (attention.get("activation") == "softmax" and not attention.get("gate")
             and not arguments.get("rep_size"))
    return {"run_name": summary["run_name"], "identity": summary.get("identity"), "status": summary["status"],
            "metrics": summary.get("metrics", {}), "stock_timm": stock, "timm_model": TIMM_NAME,
            "timm_kwargs": timm_kwargs, "reluvit_create_model": arguments}


def timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """reluvit's state dict as timm's ``Attention`` names it: qk-LayerNorms with their (zero) biases."""
    biases = {}
    for key, weight in state.items():
        if key.endswith(("attn.q_norm.weight", "attn.k_norm.weight")):
            biases.setdefault(key.removesuffix("weight") + "bias", torch.zeros_like(weight))
    return {**state, **{k: v for k, v in biases.items() if k not in state}}


def load_with_reluvit(path: str | Path) -> torch.nn.Module:
    """The exported model, built by reluvit (any attention): what the JSON's ``reluvit_create_model`` says."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        recipe = json.loads(f.metadata()["reluvit"])
    model = create_model(**recipe["reluvit_create_model"])
    state = load_file(str(path))
    if recipe["stock_timm"]:  # timm's zero qk-norm biases, which reluvit's LayerNorms do not have
        state = {k: v for k, v in state.items() if k in model.state_dict()}
    model.load_state_dict(state)
    return model

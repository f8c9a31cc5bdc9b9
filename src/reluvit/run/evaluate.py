"""``reluvit evaluate``: the few-shot probe and the held-out accuracies (i1k of a 21k run, ImageNet-ReaL, -v2) of a
finished run's checkpoint, added to its ``summary.json`` (the roll-up then carries them into the figures)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from reluvit.evaluate.fewshot import evaluating
from reluvit.evaluate.imagenet import accuracy_counts
from reluvit.run.build import architecture
from reluvit.run.callbacks import fewshot_evaluator, held_out_evaluations
from reluvit.run.checkpoint import check_checkpoint, load_checkpoint
from reluvit.run.grid import identities
from reluvit.run.module import ViTClassifier
from reluvit.run.rundir import SUMMARY, last_checkpoint, read_summary, write_json_atomic
from reluvit.run.validate import validate_eval


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of a run directory or of a checkpoint inside ``<run>/checkpoints/``."""
    target = Path(target)
    if target.is_file():
        run_dir, ckpt = target.parent.parent, target
    else:
        run_dir, ckpt = target, last_checkpoint(target)
    if not (run_dir / SUMMARY).is_file():
        raise FileNotFoundError(f"{run_dir} holds no summary.json: give a run directory or its checkpoint")
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} does not exist")
    return run_dir, ckpt


def evaluate_run(target: str | Path, eval_config: dict, device: str | None = None) -> dict[str, float]:
    """Evaluate a run's checkpoint as ``eval_config`` (an ``eval`` config, unresolved: ``${data...}`` resolves
    against the run's own config) describes, add the metrics to its ``summary.json`` (with what was evaluated under
    ``evaluation``) and return them. The run's ``config`` is left as trained."""
    run_dir, ckpt = locate(target)
    summary = read_summary(run_dir)
    cfg = OmegaConf.merge(summary["config"], {"eval": eval_config})
    validate_eval(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = load_checkpoint(ckpt, map_location=device)
    known = [*identities(summary["config"]), *([summary["identity"]] if summary.get("identity") else [])]
    check_checkpoint(checkpoint, ckpt, summary.get("run_name", run_dir.name), known, architecture(cfg))
    module = ViTClassifier(**checkpoint["hyper_parameters"]).to(device)
    module.load_state_dict(checkpoint["state_dict"])
    metrics = {}
    if evaluator := fewshot_evaluator(cfg):
        metrics.update(evaluator(module.model, device))
    for evaluation in held_out_evaluations(cfg, cfg.eval.fewshot.batch_size):
        with evaluating(module.model), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            correct, counted = accuracy_counts(module.model, evaluation, device)
        metrics[evaluation.metric] = correct / max(counted, 1)
    summary.setdefault("metrics", {}).update(metrics)
    summary["evaluation"] = {"checkpoint": str(ckpt), "global_step": checkpoint.get("global_step"),
                             "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "eval": OmegaConf.to_container(cfg.eval, resolve=True)}
    write_json_atomic(run_dir / SUMMARY, summary)
    return metrics

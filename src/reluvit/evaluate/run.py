"""Evaluation of a run: the callbacks ``reluvit.run.train`` registers (``val/i1k_acc`` at every validation, the few-shot
probe every ``eval.fewshot.every_n_steps`` and at the end) and ``reluvit evaluate`` for a finished run, which adds
the metrics to its ``summary.json``."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from reluvit.run.compute import Chrono
from reluvit.evaluate.fewshot import FewshotEvaluator, evaluating
from reluvit.evaluate.i1k import I1kAccuracy, I1kRestriction, i1k_counts, i1k_val_loader, is_21k_label_set, run_wnids


def fewshot_evaluator(cfg: DictConfig) -> FewshotEvaluator | None:
    """The probe ``eval.fewshot`` describes, at the model's input size; None when no dataset is listed."""
    f = cfg.eval.fewshot
    if not f.datasets:
        return None
    return FewshotEvaluator(f.datasets, OmegaConf.to_container(f.paths, resolve=True), cfg.model.img_size,
                            cfg.model.in_chans, f.shots, f.seeds, f.l2, f.l2_grid, f.batch_size, f.num_workers)


def i1k_restriction(cfg: DictConfig) -> I1kRestriction | None:
    """The i1k restriction of a run on a 21k label set when ``eval.i1k.path`` is set; None otherwise."""
    if not cfg.eval.i1k.path:
        return None
    wnids = run_wnids(cfg.data, cfg.eval.i1k.label_set)
    return I1kRestriction(wnids, cfg.eval.i1k.missing) if is_21k_label_set(wnids) else None


class FewshotProbe(pl.Callback):
    """Runs the few-shot probe every ``every_n_steps`` optimizer steps (0: never during training) on rank 0, left
    out of core hours like validation, and logs it; :meth:`probe` is also the end-of-run evaluation."""

    def __init__(self, evaluator: FewshotEvaluator, every_n_steps: int = 0) -> None:
        self.evaluator, self.every_n_steps = evaluator, every_n_steps
        self.metrics: dict[str, float] = {}
        self.step: int | None = None  # global step of the latest probe

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self.step:
            chronos = [c for c in trainer.callbacks if isinstance(c, Chrono)]
            for chrono in chronos:  # its validation hooks pause and resume the core-hour clock
                chrono.on_validation_start(trainer, pl_module)
            self.probe(trainer, pl_module)
            for chrono in chronos:
                chrono.on_validation_end(trainer, pl_module)

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """The probe's metrics at the current step (computed once per step; empty on ranks other than 0)."""
        if self.step != trainer.global_step:
            self.step = trainer.global_step
            if trainer.is_global_zero:
                self.metrics = self.evaluator(pl_module.model, pl_module.device)
                for logger in trainer.loggers:
                    logger.log_metrics(self.metrics, step=trainer.global_step)
        return self.metrics


def evaluation_callbacks(cfg: DictConfig, batch_size: int) -> list[pl.Callback]:
    """The callbacks of a training run's ``eval`` config (the few-shot probe, if any, first)."""
    callbacks = []
    if evaluator := fewshot_evaluator(cfg):
        callbacks.append(FewshotProbe(evaluator, cfg.eval.fewshot.every_n_steps))
    if restriction := i1k_restriction(cfg):
        callbacks.append(I1kAccuracy(restriction, cfg.eval.i1k.path, cfg.model.img_size, cfg.model.in_chans,
                                     batch_size, cfg.data.num_workers))
    return callbacks


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint) of a run directory or of a checkpoint inside ``<run>/checkpoints/``."""
    from reluvit.run.train import SUMMARY, last_checkpoint  # (train imports this module)

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


def evaluate_run(target: str | Path, overrides: list[str] = (), device: str | None = None) -> dict[str, float]:
    """Evaluate a run's checkpoint as ``eval`` (the current defaults with ``overrides``, e.g. ``eval=embedded``)
    describes, add the metrics to its ``summary.json`` (with what was evaluated under ``evaluation``) and return
    them. The run's ``config`` is left as trained."""
    from reluvit.run.config import ConfigError, compose, validate_eval
    from reluvit.run.module import ViTClassifier
    from reluvit.run.train import SUMMARY, read_summary, write_json_atomic

    bad = [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith("eval")]
    if bad:
        raise ConfigError(bad[0].split("=")[0], "reluvit evaluate takes eval=... and eval.* overrides only")
    run_dir, ckpt = locate(target)
    summary = read_summary(run_dir)
    eval_cfg = OmegaConf.to_container(compose(list(overrides)).eval, resolve=False)
    cfg = OmegaConf.merge(summary["config"], {"eval": eval_cfg})  # ${data...} now resolves against the run's
    validate_eval(cfg)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = torch.load(ckpt, map_location=device, weights_only=False)
    module = ViTClassifier(**checkpoint["hyper_parameters"]).to(device)
    module.load_state_dict(checkpoint["state_dict"])
    metrics = {}
    if evaluator := fewshot_evaluator(cfg):
        metrics.update(evaluator(module.model, device))
    if restriction := i1k_restriction(cfg):
        loader, to_i1k = i1k_val_loader(cfg.eval.i1k.path, cfg.model.img_size, cfg.model.in_chans,
                                        cfg.eval.fewshot.batch_size, cfg.data.num_workers)
        with evaluating(module.model), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            correct, counted = i1k_counts(module.model, loader, to_i1k, restriction, device)
        metrics["val/i1k_acc"] = correct / max(counted, 1)
    summary.setdefault("metrics", {}).update(metrics)
    summary["evaluation"] = {"checkpoint": str(ckpt), "global_step": checkpoint.get("global_step"),
                             "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "eval": OmegaConf.to_container(cfg.eval, resolve=True)}
    write_json_atomic(run_dir / SUMMARY, summary)
    return metrics

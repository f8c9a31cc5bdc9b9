"""The evaluation a training run carries out, from its ``eval`` config: at every validation ``val/i1k_acc`` (21k
runs), ``val/real_acc`` and ``val/v2_acc`` (ImageNet-ReaL and -v2), and the few-shot probe every
``eval.fewshot.every_n_steps`` and at the end (Lightning callbacks), and the evaluators that ``reluvit evaluate``
uses on a finished run."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from reluvit.evaluate.fewshot import FewshotEvaluator
from reluvit.evaluate.i1k import I1kEvaluation, I1kRestriction, is_21k_label_set, run_wnids
from reluvit.evaluate.imagenet import Evaluation, RealEvaluation, V2Evaluation, accuracy_counts, read_real_labels
from reluvit.run.compute import Chrono


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
    wnids = run_wnids(cfg.data.dataset, cfg.data.path, cfg.eval.i1k.label_set)
    return I1kRestriction(wnids, cfg.eval.i1k.missing) if is_21k_label_set(wnids) else None


def imagenet_restriction(cfg: DictConfig) -> I1kRestriction | None:
    """How a run's logits predict ImageNet-1k classes (ReaL, v2): all of them on ImageNet-1k, those of the i1k
    classes for a 21k label set; None when the run's classes hold no ImageNet-1k class."""
    wnids = run_wnids(cfg.data.dataset, cfg.data.path, cfg.eval.i1k.label_set)
    restriction = I1kRestriction(wnids, cfg.eval.i1k.missing) if wnids else None
    return restriction if restriction is not None and len(restriction.present) else None


def real_images(cfg: DictConfig) -> str | None:
    """Where ReaL's images are: the run's own validation images on ImageNet-1k, ``eval.i1k.path`` for a run on
    another label set."""
    own = not is_21k_label_set(run_wnids(cfg.data.dataset, cfg.data.path, cfg.eval.i1k.label_set))
    return cfg.data.path if own else cfg.eval.i1k.path


def held_out_evaluations(cfg: DictConfig, batch_size: int) -> list[Evaluation]:
    """The held-out accuracies of the ``eval`` config (validated: :func:`reluvit.run.validate.validate_eval`)."""
    shape = (cfg.model.img_size, cfg.model.in_chans, batch_size, cfg.data.num_workers)
    evaluations = []
    if restriction := i1k_restriction(cfg):
        evaluations.append(I1kEvaluation(restriction, cfg.eval.i1k.path, *shape))
    if not (cfg.eval.real.labels or cfg.eval.v2.path) or (restriction := imagenet_restriction(cfg)) is None:
        return evaluations  # ReaL and v2 score ImageNet-1k classes: runs without them skip both
    if cfg.eval.real.labels:
        evaluations.append(RealEvaluation(read_real_labels(cfg.eval.real.labels), restriction, real_images(cfg),
                                          *shape))
    if cfg.eval.v2.path:
        evaluations.append(V2Evaluation(restriction, cfg.eval.v2.path, *shape))
    return evaluations


class HeldOutAccuracy(pl.Callback):
    """Logs an :class:`Evaluation`'s accuracy at the end of every validation (not the sanity check), every rank
    scoring its share of the images."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        with trainer.precision_plugin.forward_context():  # the loop has set eval mode and inference mode
            correct, counted = accuracy_counts(pl_module, self.evaluation, pl_module.device, trainer.global_rank,
                                               trainer.world_size)
        totals = trainer.strategy.reduce(torch.tensor([correct, counted], dtype=torch.float64,
                                                      device=pl_module.device), reduce_op="sum")
        pl_module.log(self.evaluation.metric, float(totals[0] / totals[1].clamp(min=1)))  # the same on every rank


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
    callbacks += [HeldOutAccuracy(evaluation) for evaluation in held_out_evaluations(cfg, batch_size)]
    return callbacks

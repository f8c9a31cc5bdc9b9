"""Train one run: ``run(cfg)`` with a composed config (reluvit.run.compose) trains it in ``cfg.run_dir`` and
ends with ``summary.json``. Running the same config again resumes from ``checkpoints/last.ckpt`` or, when the run
completed (or diverged), skips it; a directory holding a run with other training values is refused
(reluvit.run.rundir), and so is one that another live process is training (reluvit.run.lock).
The run's story (config, progress, outcome) is logged to the console and to ``<run_dir>/train.log``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import socket
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities import rank_zero_only

from reluvit.data import build_datamodule
from reluvit.data.fingerprint import fingerprint
from reluvit.data.stream import SkippedSamples
from reluvit.models import forward_macs
from reluvit.run.build import (
    architecture,
    build_module,
    micro_batch_size,
    resolve_compile,
    resolve_precision,
    train_augmentation,
)
from reluvit.run.callbacks import FewshotProbe, evaluation_callbacks
from reluvit.run.checkpoint import AtomicCheckpointIO, CheckpointError, RunRecord, check_resumed
from reluvit.run.compute import Chrono
from reluvit.run.grid import identity, wandb_config, wandb_group, wandb_tags
from reluvit.run.lock import hold, slurm_job_record
from reluvit.run.progress import HeartbeatProgress, LogProgress
from reluvit.run.requeue import CheckpointOnSignal, stop_signals
from reluvit.run.rundir import (
    FINISHED,
    SUMMARY,
    Status,
    check_same_data,
    check_same_run,
    git_revision,
    last_checkpoint,
    package_versions,
    read_summary,
    write_json_atomic,
)
from reluvit.run.validate import validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train one run described by a composed config; return its summary (also written to ``summary.json``)."""
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    previous = read_summary(run_dir)
    data_fingerprint = fingerprint(config["data"])
    if cfg.resume:
        check_same_run(previous, config)
        check_same_data(previous, data_fingerprint, config["data"]["path"])
        if previous and previous["status"] in FINISHED:
            log.info("%s %s at step %s; skipping (resume=false trains it again from the start)", run_dir,
                     previous["status"], previous.get("global_step"))
            return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    # one writer per directory: rank 0 holds the lock (the other ranks of a DDP job are its partners)
    writer = hold(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext({})
    with writer as progress, _log_to(run_dir / "train.log"):
        log.info("run %s in %s (identity %s)", cfg.run_name, run_dir, identity(config))
        return _train(cfg, run_dir, config, previous, progress, data_fingerprint)


def _train(cfg: DictConfig, run_dir: Path, config: dict, previous: dict | None, progress: dict,
           data_fingerprint: dict) -> dict:
    summary = {
        "run_name": cfg.run_name, "run_dir": str(run_dir), "status": Status.RUNNING, "identity": identity(config),
        "config": config, "data_fingerprint": data_fingerprint,
        "started": (previous or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "git_revision": git_revision(), "host": socket.gethostname(), "versions": package_versions(),
        **({"slurm": job} if (job := slurm_job_record()) else {}),
    }
    try:
        module, datamodule, trainer, chrono, evaluation, facts = setup(cfg, run_dir, progress)
    except Exception as e:  # recorded, so the roll-up and `make status` count the run as failed, not missing
        write_json_atomic(run_dir / SUMMARY, {**summary, "status": Status.FAILED, "error": f"{type(e).__name__}: {e}"})
        raise
    summary.update(device=_device_name(trainer), world_size=trainer.world_size, devices=trainer.num_devices,
                   threads=torch.get_num_threads(),  # intra-op CPU threads of each process
                   params=sum(p.numel() for p in module.parameters()), **facts,
                   label_set=getattr(datamodule, "label_set", None),  # shards: the label set _info.json names
                   data_loader=getattr(datamodule, "loader", "reference"),  # shards: reference | dali
                   **({"data_loader_fallback": note} if (note := getattr(datamodule, "loader_fallback", None)) else {}))
    last = last_checkpoint(run_dir)
    resume = cfg.resume and last.exists()
    if resume:
        log.info("resuming from %s", last)
        _note_stream_layout(summary, previous, cfg.data.dataset)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / SUMMARY, summary)
    metrics, restored = trainer.callback_metrics, True
    try:
        if resume:  # another run's checkpoint is refused, not trained on (a SLURM job comes here without prepare)
            check_resumed(cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
        metrics = dict(trainer.callback_metrics)
        if not module.diverged and "val/acc" not in metrics:  # stopped by max_steps mid-epoch: validate the end
            for loader_metrics in trainer.validate(module, datamodule=datamodule, verbose=False):  # val, minival
                metrics.update(loader_metrics)
        if not module.diverged:  # the few-shot probe of the final weights
            for probe in (c for c in evaluation if isinstance(c, FewshotProbe)):
                metrics.update(probe.probe(trainer, module))
        summary["status"] = Status.DIVERGED if module.diverged else Status.COMPLETED
        trainer.save_checkpoint(last, weights_only=False)  # the final weights, also when max_steps ended mid-epoch
    except SystemExit:  # submitit requeued the job (preemption or time-out): the next start continues the run
        summary["status"] = Status.RUNNING
        raise
    except CheckpointError as e:  # unreadable, or not written: the summary keeps the figures of the last good start
        restored, summary = False, {**(previous or summary), "status": Status.FAILED, "error": str(e)}
        raise
    except BaseException as e:
        summary["status"], summary["error"] = Status.FAILED, f"{type(e).__name__}: {e}"
        raise
    finally:
        if restored:
            _record_progress(summary, module, trainer, chrono, metrics)
        if trainer.is_global_zero:
            write_json_atomic(run_dir / SUMMARY, summary)
        close_loggers(trainer, summary["status"], cfg.logger.wandb)
        shown = {k: v for k, v in summary.get("metrics", {}).items() if k.startswith("val/")}  # none: failed early
        log.info("%s: %s at step %d (%s)", cfg.run_name, summary["status"], trainer.global_step,
                 ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) or "-")
    return summary


# What the shard stream's order depends on besides the run's training values (reluvit.data.stream): its batches are
# the loader's micro-batches, cut per rank. Map-style data (embedded, trees) keeps one order whatever they are.
STREAM_LAYOUT = ("world_size", "micro_batch_size")


def _note_stream_layout(summary: dict, previous: dict | None, dataset: str) -> None:
    """A shard run resumed on another layout (GPU count, micro-batch) continues with another sample order from the
    resumed step on: say so in the log and record it in the summary (``stream_layout_changes``)."""
    before = {key: (previous or {}).get(key) for key in STREAM_LAYOUT}
    now = {key: summary.get(key) for key in STREAM_LAYOUT}
    changes = list((previous or {}).get("stream_layout_changes", []))
    if dataset == "shards" and None not in before.values() and before != now:
        step = previous.get("global_step")
        log.warning("resuming with %s where the run trained with %s: the shard order differs from step %s on",
                    now, before, step)
        changes.append({"step": step, "from": before, "to": now})
    if changes:
        summary["stream_layout_changes"] = changes


def _record_progress(summary: dict, module, trainer: pl.Trainer, chrono: Chrono, metrics) -> None:
    """The run's figures as they stand: steps, core hours, metrics, learned alphas, the kernels that ran."""
    if alphas := module.learned_alphas():  # their final values (also the last logged metrics)
        summary["learned_alpha"] = alphas
    summary.update(chrono.summary(), attention_impl=attention_impl(module),
                   finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   global_step=trainer.global_step, epoch=trainer.current_epoch,
                   metrics={k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1})


def setup(cfg: DictConfig, run_dir: Path, progress: dict | None = None) -> tuple:
    """The run's module, data module, trainer with its callbacks (Chrono, checkpoints, evaluation, progress), the
    Chrono and evaluation callbacks, and the facts the summary records about them."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    plan = micro_batch_size(cfg)
    micro = plan.micro_batch_size
    log.info("memory plan: %s", plan)
    module = build_module(cfg, plan.grad_checkpointing)
    compiled = resolve_compile(cfg)
    if compiled:  # in place: the state-dict keys, so the checkpoints, stay the eager model's (no `_orig_mod.`)
        module.model.compile(dynamic=False)  # train batches are whole (drop_last); eval's last one recompiles once
    datamodule = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True), micro, train_augmentation(cfg),
                                  cfg.seed)
    macs = forward_macs(**architecture(cfg))
    chrono = Chrono(flops_per_example=6 * macs)
    evaluation = evaluation_callbacks(cfg, micro)  # after chrono: a probe during training pauses its clock
    last = last_checkpoint(run_dir)
    progress_bar = cfg.trainer.enable_progress_bar and sys.stdout.isatty()
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=resolve_precision(cfg),
        max_epochs=cfg.recipe.epochs, accumulate_grad_batches=plan.accumulate,  # the module counts max_steps
        gradient_clip_val=cfg.recipe.grad_clip_norm, gradient_clip_algorithm="norm",
        deterministic=cfg.trainer.deterministic, check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        log_every_n_steps=cfg.trainer.log_every_n_steps, enable_progress_bar=progress_bar,
        logger=build_loggers(cfg, run_dir), enable_model_summary=False,
        use_distributed_sampler=False,  # the loaders shard by rank themselves (EpochSampler, ShardStream)
        # under SLURM submitit owns the requeue signal: Lightning must not install its own requeue handler
        plugins=[AtomicCheckpointIO(), *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else [])],
        callbacks=[chrono, CheckpointOnSignal(last, stop_signals()), SkippedSamples(),
                   RunRecord(cfg.run_name, identity(OmegaConf.to_container(cfg, resolve=True))),
                   pl.callbacks.ModelCheckpoint(  # rewritten at every epoch end
                       dirpath=last.parent, filename=last.stem, save_top_k=1, enable_version_counter=False),
                   *evaluation, HeartbeatProgress({} if progress is None else progress),
                   *([LogProgress()] if cfg.trainer.enable_progress_bar and not progress_bar else [])],
    )
    facts = {"forward_macs": macs, **plan.facts(), "compile": compiled}
    return module, datamodule, trainer, chrono, evaluation, facts


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    # one csv/version_<n>/metrics.csv per (re)start: Lightning's CSVLogger deletes an existing metrics file
    loggers = [CSVLogger(save_dir=str(run_dir), name="csv")]
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        from reluvit.login import resolve_mode

        config = OmegaConf.to_container(cfg, resolve=True)
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, save_dir=str(run_dir),
            mode=resolve_mode(cfg.logger.wandb_mode), job_type="train",
            id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],  # same dir -> same W&B run
            name=cfg.run_name, group=wandb_group(config), tags=wandb_tags(config), config=wandb_config(config),
            resume="allow",
        ))
    return loggers


@contextlib.contextmanager
def _log_to(path: Path):
    """Also write the log records of this run (reluvit's and Lightning's) to ``path``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger()]
    loggers += [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")
                if not logging.getLogger(n).propagate]  # Lightning keeps its records to itself without handlers
    package = logging.getLogger("reluvit")
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


def attention_impl(module: torch.nn.Module) -> str | None:
    """What the attention layers last ran, ``fused`` | ``sdpa`` | ``reference`` (comma-joined if they differ), so
    that core hours are compared knowing which kernels they measured; None before any forward."""
    ran = sorted({impl for m in module.modules() if (impl := getattr(m, "last_impl", None))})
    return ",".join(ran) or None


def close_loggers(trainer: pl.Trainer, status: str, wandb_used: bool) -> None:
    """Finalize the loggers without letting a logger's failure replace the run's outcome: on preemption SLURM
    sends SIGTERM to every process of the job, W&B's service included, and the job must still requeue cleanly."""
    closers = [lambda lg=lg: lg.finalize("success" if status == Status.COMPLETED else status) for lg in trainer.loggers]
    if wandb_used:
        import wandb

        closers.append(wandb.finish)  # the next run of a multirun in this process must not log into this one
    for close in closers:
        try:
            close()
        except Exception as e:  # the metrics are safe in the CSV log and the checkpoint
            log.warning("closing a logger failed (%s: %s); CSV metrics are complete", type(e).__name__, e)


def _device_name(trainer: pl.Trainer) -> str:
    root = trainer.strategy.root_device
    return torch.cuda.get_device_name(root) if root.type == "cuda" else f"cpu ({platform.processor() or 'x86_64'})"

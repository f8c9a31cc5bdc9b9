"""Hydra entry point: ``python -m reluvit.run.train [group=option ...] [key=value ...]`` trains one run;
``-m`` sweeps. A config the code cannot run with exits with status 2 and one line naming the key, before training.

Every run lives in ``<runs_dir>/<run_name>`` (stable per grid point) and ends with ``summary.json``; re-running the
same point resumes from ``checkpoints/last.ckpt`` or, when the run already completed, skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment

from reluvit.run.compute import Chrono
from reluvit.run.config import CONF_DIR, ConfigError, augment_for, compose, micro_batch_size, validate
from reluvit.data import build_datamodule
from reluvit.data.stream import SkippedSamples
from reluvit.evaluate.run import FewshotProbe, evaluation_callbacks
from reluvit.models import forward_macs
from reluvit.run.module import ViTClassifier
from reluvit.run.requeue import CheckpointOnSignal
from reluvit.report.rollup import grid_point

SUMMARY = "summary.json"


def last_checkpoint(run_dir: Path) -> Path:
    """Where a run keeps the checkpoint it resumes from (rewritten every epoch and on a requeue signal)."""
    return run_dir / "checkpoints" / "last.ckpt"


def model_kwargs(cfg: DictConfig) -> dict:
    """Arguments of :func:`reluvit.create_model` from the ``model`` and ``attention`` groups."""
    a, m = cfg.attention, cfg.model
    return dict(
        variant=m.variant, attention=a.activation, alpha=float(a.alpha), qk_norm=a.qk_norm, gate=a.gate,
        gate_activation=a.gate_activation, gelu_approximate=a.gelu_approximate, seq_len=a.seq_len,
        sigmoid_bias=a.sigmoid_bias, learn_alpha=a.learn_alpha, soft=soft_options(a), attention_impl=a.impl,
        num_classes=m.num_classes, img_size=m.img_size, in_chans=m.in_chans, pool=m.pool, rep_size=m.rep_size,
        head_bias_init=float(m.head_bias_init),
    )


def soft_options(a: DictConfig) -> dict | None:
    """:class:`reluvit.soft.SoftAttention`'s options from ``attention.soft_*``; None unless attention is soft."""
    if a.activation != "soft":
        return None
    return dict(sr=a.soft_sr, newton_iters=a.soft_newton_iters, local_kernel=a.soft_local_kernel,
                sym_norm=a.soft_sym_norm)


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def resolve_precision(cfg: DictConfig) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    on_gpu = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu else "32-true"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger

    # one csv/version_<n>/metrics.csv per (re)start: Lightning's CSVLogger deletes an existing metrics file
    loggers = [CSVLogger(save_dir=str(run_dir), name="csv")]
    if cfg.logger.wandb:
        from pytorch_lightning.loggers import WandbLogger

        mode = cfg.logger.wandb_mode
        if mode == "auto":
            logged_in = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
            mode = "online" if logged_in else "offline"
        config = OmegaConf.to_container(cfg, resolve=True)
        grid = grid_point(config)  # flat keys, so a dashboard can filter and plot by them
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, save_dir=str(run_dir), mode=mode,
            id=hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16],  # same dir -> same W&B run
            name=cfg.run_name, group=cfg.logger.group or cfg.run_name.rsplit("/", 1)[0],
            tags=[f"{k}={v}" for k, v in grid.items()] + list(cfg.logger.tags),
            resume="allow", config={**grid, **config},
        ))
    return loggers


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def run(cfg: DictConfig) -> dict:
    """Train one run described by a composed config; return its summary (also written to ``summary.json``)."""
    validate(cfg)
    run_dir = Path(cfg.run_dir)
    previous = read_summary(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.resume and previous and previous["status"] == "completed" and trained_as(previous["config"], config):
        print(f"reluvit: {run_dir} already completed; skipping (resume=false retrains it)", file=sys.stderr)
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "run_name": cfg.run_name, "run_dir": str(run_dir), "status": "running", "config": config,
        "started": (previous or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "git_revision": git_revision(), "host": socket.gethostname(), "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        module, datamodule, trainer, chrono, evaluation, facts = setup(cfg, run_dir)
    except Exception as e:  # recorded, so the roll-up and `make status` count the run as failed, not missing
        write_json_atomic(run_dir / SUMMARY, {**summary, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    summary.update(device=_device_name(trainer), world_size=trainer.world_size,
                   params=sum(p.numel() for p in module.parameters()), **facts,
                   label_set=getattr(datamodule, "label_set", None))  # shards: the label set _info.json names
    last = last_checkpoint(run_dir)
    if trainer.is_global_zero:
        write_json_atomic(run_dir / SUMMARY, summary)
    metrics = trainer.callback_metrics
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if cfg.resume and last.exists() else None)
        metrics = dict(trainer.callback_metrics)
        if not module.diverged and "val/acc" not in metrics:  # stopped by max_steps mid-epoch: validate the end
            metrics.update(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
        if not module.diverged:  # the few-shot probe of the final weights
            for probe in (c for c in evaluation if isinstance(c, FewshotProbe)):
                metrics.update(probe.probe(trainer, module))
        summary["status"] = "diverged" if module.diverged else "completed"
    except SystemExit:  # submitit requeued the job (preemption or time-out): the next start continues the run
        summary["status"] = "running"
        raise
    except BaseException as e:
        summary["status"], summary["error"] = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        if alphas := module.learned_alphas():  # their final values (also the last logged metrics)
            summary["learned_alpha"] = alphas
        summary.update(chrono.summary(), attention_impl=attention_impl(module),
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       global_step=trainer.global_step, epoch=trainer.current_epoch,
                       metrics={k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1})
        if trainer.is_global_zero:
            write_json_atomic(run_dir / SUMMARY, summary)
        close_loggers(trainer, summary["status"], cfg.logger.wandb)
    return summary


def setup(cfg: DictConfig, run_dir: Path) -> tuple:
    """The run's module, data module, trainer with its callbacks (Chrono, checkpoints, evaluation), the Chrono and
    evaluation callbacks, and the facts the summary records about them."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    micro, accumulate = micro_batch_size(cfg)
    augment = augment_for(cfg)
    recipe = cfg.recipe
    module = ViTClassifier(
        model_kwargs(cfg), lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.eps,
        weight_decay=recipe.weight_decay, warmup_steps=recipe.warmup_steps, loss=recipe.loss, mixup=augment.mixup,
    )
    datamodule = build_datamodule(cfg.data, micro, (augment.randaug_layers, augment.randaug_magnitude), cfg.seed)
    macs = forward_macs(cfg.model.variant, img_size=cfg.model.img_size, num_classes=cfg.model.num_classes,
                        pool=cfg.model.pool, gate=cfg.attention.gate, rep_size=cfg.model.rep_size,
                        in_chans=cfg.model.in_chans, soft=soft_options(cfg.attention))
    chrono = Chrono(flops_per_example=6 * macs)
    evaluation = evaluation_callbacks(cfg, micro)  # after chrono: a probe during training pauses its clock
    last = last_checkpoint(run_dir)
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=resolve_precision(cfg),
        max_epochs=recipe.epochs, max_steps=cfg.trainer.max_steps, accumulate_grad_batches=accumulate,
        gradient_clip_val=recipe.grad_clip_norm, gradient_clip_algorithm="norm",
        deterministic=cfg.trainer.deterministic, check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        log_every_n_steps=cfg.trainer.log_every_n_steps, enable_progress_bar=cfg.trainer.enable_progress_bar,
        logger=build_loggers(cfg, run_dir), enable_model_summary=False,
        use_distributed_sampler=False,  # the loaders shard by rank themselves (EpochSampler, ShardStream)
        # under SLURM submitit owns the requeue signal: Lightning must not install its own requeue handler
        plugins=[SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else None,
        callbacks=[chrono, CheckpointOnSignal(last), SkippedSamples(),
                   pl.callbacks.ModelCheckpoint(  # rewritten at every epoch end
                       dirpath=last.parent, filename=last.stem, save_top_k=1, enable_version_counter=False),
                   *evaluation],
    )
    facts = {"forward_macs": macs, "micro_batch_size": micro, "accumulate_grad_batches": accumulate}
    return module, datamodule, trainer, chrono, evaluation, facts


# Keys that do not change what a run trains: how it is evaluated (``reluvit evaluate`` re-evaluates a completed
# run), where it logs, whether a progress bar is drawn.
NOT_TRAINING = ("eval", "logger", "trainer.enable_progress_bar")


def trained_as(previous: dict, config: dict) -> bool:
    """Whether a completed run's recorded config trains the same run as ``config``, ignoring :data:`NOT_TRAINING`.
    A key only one side has is a knob that a later version of reluvit added (or removed): the run trained as it
    was, so a sweep does not start over."""
    def same(a, b, path: str) -> bool:
        if path.rstrip(".") in NOT_TRAINING:
            return True
        if isinstance(a, dict) and isinstance(b, dict):
            return all(same(a[k], b[k], f"{path}{k}.") for k in a.keys() & b.keys())
        return a == b

    return same(previous, config, "")


def attention_impl(module: torch.nn.Module) -> str | None:
    """What the attention layers last ran, ``fused`` | ``sdpa`` | ``reference`` (comma-joined if they differ), so
    that core hours are compared knowing which kernels they measured; None before any forward."""
    ran = sorted({impl for m in module.modules() if (impl := getattr(m, "last_impl", None))})
    return ",".join(ran) or None


def close_loggers(trainer: pl.Trainer, status: str, wandb_used: bool) -> None:
    """Finalize the loggers without letting a logger's failure replace the run's outcome: on preemption SLURM
    sends SIGTERM to every process of the job, W&B's service included, and the job must still requeue cleanly."""
    closers = [lambda lg=lg: lg.finalize("success" if status == "completed" else status) for lg in trainer.loggers]
    if wandb_used:
        import wandb

        closers.append(wandb.finish)  # the next run of a multirun in this process must not log into this one
    for close in closers:
        try:
            close()
        except Exception as e:  # the metrics are safe in the CSV log and the checkpoint
            print(f"reluvit: closing a logger failed ({type(e).__name__}: {e}); CSV metrics are complete",
                  file=sys.stderr)


def _device_name(trainer: pl.Trainer) -> str:
    root = trainer.strategy.root_device
    return torch.cuda.get_device_name(root) if root.type == "cuda" else f"cpu ({platform.processor() or 'x86_64'})"


def exit_config_error(error: ConfigError) -> None:
    print(f"reluvit: config error: {error}", file=sys.stderr)
    raise SystemExit(2)


_task_started = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    try:
        run(cfg)
    except ConfigError as e:  # raised by validate(), before anything trains
        exit_config_error(e)


def main() -> None:
    args = sys.argv[1:]
    if all(not a.startswith("-") and not a.startswith("hydra") for a in args):
        try:  # single run: compose and validate before Hydra sets up the run directory
            validate(compose(args))
        except ConfigError as e:
            exit_config_error(e)
    try:
        _hydra_main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:  # Hydra could not compose the config: a config error
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()

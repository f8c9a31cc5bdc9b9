"""Every value a run depends on, checked before anything runs: :func:`validate` raises :class:`ConfigError`, which
the entry points print as one line naming the key (exit status 2). Model, attention and optimiser values are
checked by their constructors, built here on the meta device; this module checks what no constructor sees
(paths, counts, the batch split, Lightning's names)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from reluvit.errors import ArgumentError, check_choice
from reluvit.run.build import build_module, micro_batch_size
from reluvit.run.schema import ConfigError


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    try:
        check_choice(key, OmegaConf.select(cfg, key), allowed)
    except ArgumentError as e:
        raise ConfigError(e.name, e.message) from None


def validate(cfg: DictConfig) -> None:
    """Check every value the run depends on; raise :class:`ConfigError` on the first bad one."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], f"a value is required (add {missing[0]}=...)")
    _validate_data(cfg)
    for key in ("recipe.epochs", "recipe.batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(key, f"{OmegaConf.select(cfg, key)} is not a positive integer")
    _validate_trainer(cfg)
    micro_batch_size(cfg)
    _build_on_meta(cfg)
    validate_eval(cfg)


def _build_on_meta(cfg: DictConfig) -> None:
    """Build the LightningModule without memory: its constructors refuse what they cannot build."""
    import torch

    try:
        with torch.device("meta"):
            build_module(cfg)
    except ArgumentError as e:
        raise ConfigError(_config_key(e.name, cfg), e.message) from None


def _config_key(argument: str, cfg: DictConfig) -> str:
    """The config key of a refused constructor argument (``model.attention.alpha`` -> ``attention.alpha``)."""
    if argument.startswith("model.attention."):
        return argument.removeprefix("model.")
    if argument.startswith("model."):
        return argument
    return f"recipe.augment.{cfg.model.name}.mixup" if argument == "mixup" else f"recipe.{argument}"


def _validate_data(cfg: DictConfig) -> None:
    from reluvit.data import DATASETS

    _choice(cfg, "data.dataset", DATASETS)
    if cfg.data.dataset in ("imagefolder", "shards"):
        path = cfg.data.path
        if not path:
            raise ConfigError("data.path", f"a value is required for dataset={cfg.data.dataset} (add data.path=...)")
        if cfg.data.dataset == "imagefolder" and not all((Path(path) / s).is_dir() for s in ("train", "val")):
            raise ConfigError("data.path", f"{path!r} is not a folder with train/ and val/ subfolders")
        if cfg.data.dataset == "shards" and not (Path(path) / "_info.json").is_file():
            raise ConfigError("data.path", f"{path!r} holds no _info.json: write shards with `reluvit shards`")
    if not 0 <= cfg.data.max_bad_fraction < 1:
        raise ConfigError("data.max_bad_fraction", f"{cfg.data.max_bad_fraction} is not in [0, 1)")
    for key in ("data.num_classes", "data.img_size", "data.shuffle_buffer"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(key, f"{OmegaConf.select(cfg, key)} is not a positive integer")


def _validate_trainer(cfg: DictConfig) -> None:
    """Accelerator and strategy names against Lightning's registries ("gpu" and "auto" are Lightning's aliases)."""
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    _choice(cfg, "trainer.accelerator", ("auto", "gpu", *AcceleratorRegistry.available_accelerators()))
    _choice(cfg, "trainer.strategy", ("auto", *StrategyRegistry.available_strategies()))


def validate_eval(cfg: DictConfig) -> None:
    """The ``eval`` keys: i1k accuracy of 21k runs and the few-shot probe (reluvit/evaluate)."""
    from reluvit.data.labels import MISSING_POLICIES, TIMM_LISTS
    from reluvit.evaluate.transfer import NAMES as TRANSFER_SETS

    i1k, fewshot = cfg.eval.i1k, cfg.eval.fewshot
    if i1k.path and not Path(i1k.path).is_dir():
        raise ConfigError("eval.i1k.path", f"{i1k.path!r} is not a directory (ImageNet-1k val: shards or folders)")
    _choice(cfg, "eval.i1k.label_set", (None, *TIMM_LISTS))
    _choice(cfg, "eval.i1k.missing", MISSING_POLICIES)
    for name in fewshot.datasets:
        if name not in TRANSFER_SETS:
            raise ConfigError("eval.fewshot.datasets", f"{name!r} is not one of: {', '.join(TRANSFER_SETS)}")
    if not fewshot.shots or min(fewshot.shots) < 1:
        raise ConfigError("eval.fewshot.shots", f"{list(fewshot.shots)} is not a non-empty list of counts >= 1")
    if not fewshot.seeds:
        raise ConfigError("eval.fewshot.seeds", "at least one seed is required")
    if fewshot.l2 <= 0:
        raise ConfigError("eval.fewshot.l2", f"{fewshot.l2} is not > 0")
    if any(v <= 0 for v in fewshot.l2_grid or []):
        raise ConfigError("eval.fewshot.l2_grid", f"{list(fewshot.l2_grid)} has a value <= 0")
    for key, low in (("every_n_steps", 0), ("batch_size", 1)):
        if fewshot[key] < low:
            raise ConfigError(f"eval.fewshot.{key}", f"{fewshot[key]} is not an integer >= {low}")

"""Typed schema of the Hydra configs in ``conf/``, their validation, and composition outside ``@hydra.main``.

The schema (registered as ``train_schema``, the first entry of ``conf/train.yaml``'s defaults) makes a misspelt key
or a wrongly typed value fail while Hydra composes. :func:`validate` then checks values against what the code
accepts (the allowed sets are imported from the modules that define them) and raises :class:`ConfigError`, which
the entry point prints as one line naming the key, exiting with status 2 before anything trains or is submitted.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from reluvit import ROOT

from reluvit.attention import GATE_ACTIVATIONS, GELU_APPROXIMATIONS, LEARN_ALPHA, POINTWISE, SEQ_LEN_MODES
from reluvit.data import DATASETS
from reluvit.data.labels import MISSING_POLICIES, TIMM_LISTS
from reluvit.evaluate.transfer import NAMES as TRANSFER_SETS
from reluvit.kernels import FUSED_ACTIVATIONS, IMPLS
from reluvit.models import ATTENTIONS, POOLS, parse_variant
from reluvit.run.module import LOSSES

CONF_DIR = Path(os.environ.get("RELUVIT_CONF_DIR", ROOT / "conf"))


@dataclass
class AttentionConfig:
    activation: str = "relu"
    alpha: float = 1.0
    qk_norm: bool = True
    gate: bool = False
    gate_activation: str = "none"
    gelu_approximate: str = "none"
    seq_len: str = "keys"
    learn_alpha: str = "none"
    sigmoid_bias: float | None = None
    soft_sr: int = 2
    soft_newton_iters: int = 20
    soft_local_kernel: int = 3
    soft_sym_norm: bool = False
    impl: str = "auto"  # point-wise attention's implementation: auto | fused | reference (not a grid key)


@dataclass
class ModelConfig:
    name: str = MISSING
    variant: str = MISSING
    pool: str = "${recipe.pool}"
    rep_size: Any = "${recipe.rep_size}"
    head_bias_init: Any = "${recipe.head_bias_init}"
    img_size: Any = "${data.img_size}"
    in_chans: Any = "${data.in_chans}"
    num_classes: Any = "${data.num_classes}"


@dataclass
class AugmentConfig:
    randaug_layers: int = 0
    randaug_magnitude: int = 0
    mixup: float = 0.0


@dataclass
class RecipeConfig:
    name: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 10_000
    grad_clip_norm: float = 1.0
    loss: str = "sigmoid"
    pool: str = "gap"
    rep_size: bool = False
    head_bias_init: float = 0.0
    augment: dict[str, AugmentConfig] = field(default_factory=dict)


@dataclass
class DataConfig:
    name: str = MISSING
    dataset: str = MISSING
    path: str | None = None
    img_size: int = MISSING
    in_chans: int = MISSING
    num_classes: int = MISSING
    val_size: int = 0
    split_seed: int = 0
    num_workers: int = 0
    shuffle_buffer: int = 2000
    max_bad_fraction: float = 0.01


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    micro_batch_size: int | None = None
    deterministic: bool = False
    max_steps: int = -1
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    wandb: bool = False
    wandb_mode: str = "auto"
    project: str = "reluvit"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class I1kEvalConfig:
    path: str | None = None
    label_set: str | None = None
    missing: str = "wrong"


@dataclass
class FewshotConfig:
    datasets: list[str] = field(default_factory=list)
    paths: dict[str, str | None] = field(default_factory=dict)
    shots: list[int] = field(default_factory=lambda: [1, 5, 10, 25])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    l2: float = 1024.0
    l2_grid: list[float] | None = None
    every_n_steps: int = 0
    batch_size: int = 256
    num_workers: Any = "${data.num_workers}"


@dataclass
class EvalConfig:
    i1k: I1kEvalConfig = field(default_factory=I1kEvalConfig)
    fewshot: FewshotConfig = field(default_factory=FewshotConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    runs_dir: str = "runs"
    run_name: str = "${run_name:}"
    run_dir: str = "${runs_dir}/${run_name}"
    resume: bool = True


class ConfigError(ValueError):
    """A config value the code cannot run with; ``str()`` is one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _format_alpha(alpha: float) -> str:
    return f"{alpha:g}"


def run_name(*, _root_: DictConfig) -> str:
    """Stable, readable run directory name from the grid keys, e.g. ``smoke-animal_mnist/mini4/relu-a1-s0``: the
    same point of a grid always maps to the same directory, which is what makes re-runs resume or skip."""
    a = _root_.attention
    attn = _attention_name(a)
    if a.activation == "gelu" and a.gelu_approximate != "none":
        attn += f"-{a.gelu_approximate}"
    if not a.qk_norm:
        attn += "-noqkln"
    if a.gate:
        attn += "-gate" if a.gate_activation == "none" else f"-gate_{a.gate_activation}"
    if a.seq_len != "keys" and a.activation not in ("softmax", "soft"):
        attn += f"-L{a.seq_len}"
    return f"{_root_.recipe.name}-{_root_.data.name}/{_root_.model.name}/{attn}-s{_root_.seed}"


def _attention_name(a: DictConfig) -> str:
    """``softmax``, ``relu-a1``, ``relu-a1-learn_head``, ``sigmoid_attn-blogL``, ``soft-sr2``, ... (the keys that
    are not at their defaults)."""
    if a.activation == "softmax":
        return "softmax"
    if a.activation == "sigmoid_attn":
        return "sigmoid_attn-b" + ("logL" if a.sigmoid_bias is None else _format_alpha(a.sigmoid_bias))
    if a.activation == "soft":
        default = AttentionConfig()
        name = f"soft-sr{a.soft_sr}"
        if a.soft_newton_iters != default.soft_newton_iters:
            name += f"-it{a.soft_newton_iters}"
        if a.soft_local_kernel != default.soft_local_kernel:
            name += f"-k{a.soft_local_kernel}"
        return name + ("-symnorm" if a.soft_sym_norm else "")
    name = f"{a.activation}-a{_format_alpha(a.alpha)}"
    return name if a.learn_alpha == "none" else f"{name}-learn_{a.learn_alpha}"


def register() -> None:
    """Register the schema and the ``run_name`` resolver (idempotent; done on import)."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)


register()


def world_size(trainer: DictConfig) -> int:
    """Number of training processes the trainer config asks for ('auto' devices: all GPUs, else 1 CPU process)."""
    import torch

    devices = trainer.devices
    if devices in ("auto", -1, "-1"):
        on_gpu = trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, str | list) and not str(devices).isdigit():
        devices = len(devices) if isinstance(devices, list) else len(devices.split(","))
    return int(devices) * trainer.num_nodes


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of: {', '.join(map(str, allowed))}")


def augment_for(cfg: DictConfig) -> AugmentConfig:
    """The recipe's per-model-size augmentation (big_vision keys it by variant), falling back to ``default``."""
    table = cfg.recipe.augment
    entry = table.get(cfg.model.name, table.get("default"))
    if entry is None:
        raise ConfigError(f"recipe.augment.{cfg.model.name}",
                          f"recipe {cfg.recipe.name!r} has no augmentation entry for model {cfg.model.name!r} and no "
                          f"'default'; it has: {', '.join(table) or 'none'}")
    return entry


def validate(cfg: DictConfig) -> None:
    """Check every value the run depends on; raise :class:`ConfigError` on the first bad one."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], f"a value is required (add {missing[0]}=...)")
    _choice(cfg, "attention.activation", ATTENTIONS)
    alpha = cfg.attention.alpha
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
        raise ConfigError("attention.alpha", f"{alpha!r} is not a real number >= 0")
    _choice(cfg, "attention.gate_activation", tuple(GATE_ACTIVATIONS))
    _choice(cfg, "attention.gelu_approximate", GELU_APPROXIMATIONS)
    _choice(cfg, "attention.seq_len", SEQ_LEN_MODES)
    _choice(cfg, "attention.impl", IMPLS)
    if cfg.attention.impl == "fused" and cfg.attention.activation not in ("softmax", *FUSED_ACTIVATIONS):
        raise ConfigError("attention.impl", f"'fused' has kernels for {', '.join(FUSED_ACTIVATIONS)} (softmax: "
                                            f"SDPA), not {cfg.attention.activation!r}; use auto or reference")
    _validate_softmax_free(cfg)
    try:
        _, patch = parse_variant(cfg.model.variant)
    except ValueError as e:
        raise ConfigError("model.variant", str(e)) from None
    if cfg.data.img_size % patch:
        raise ConfigError("model.variant", f"patch size {patch} does not divide data.img_size {cfg.data.img_size}")
    _choice(cfg, "model.pool", POOLS)
    _choice(cfg, "recipe.loss", LOSSES)
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
    for key in ("recipe.epochs", "recipe.batch_size", "data.num_classes", "data.img_size", "data.shuffle_buffer"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(key, f"{OmegaConf.select(cfg, key)} is not a positive integer")
    _validate_trainer(cfg)
    micro_batch_size(cfg)
    augment_for(cfg)
    validate_eval(cfg)


def _validate_trainer(cfg: DictConfig) -> None:
    """Accelerator and strategy names against Lightning's registries ("gpu" and "auto" are Lightning's aliases)."""
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    _choice(cfg, "trainer.accelerator", ("auto", "gpu", *AcceleratorRegistry.available_accelerators()))
    _choice(cfg, "trainer.strategy", ("auto", *StrategyRegistry.available_strategies()))


def validate_eval(cfg: DictConfig) -> None:
    """The ``eval`` keys: i1k accuracy of 21k runs and the few-shot probe (reluvit/evaluate)."""
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


def _validate_softmax_free(cfg: DictConfig) -> None:
    """The keys of learned alpha, sigmoid attention and SOFT."""
    a = cfg.attention
    _choice(cfg, "attention.learn_alpha", LEARN_ALPHA)
    if a.learn_alpha != "none" and a.activation not in POINTWISE:
        raise ConfigError("attention.learn_alpha", f"{a.learn_alpha!r} needs a point-wise activation "
                                                   f"({', '.join(POINTWISE)}), not {a.activation!r}")
    if a.learn_alpha != "none" and a.alpha == 0:
        raise ConfigError("attention.alpha", "a learned alpha starts > 0 (alpha = softplus(raw) never reaches 0)")
    if a.sigmoid_bias is not None and not math.isfinite(a.sigmoid_bias):
        raise ConfigError("attention.sigmoid_bias", f"{a.sigmoid_bias!r} is not a finite real (or null: -log L)")
    for key, low in (("soft_sr", 1), ("soft_newton_iters", 0), ("soft_local_kernel", 0)):
        if a[key] < low:
            raise ConfigError(f"attention.{key}", f"{a[key]} is not an integer >= {low}")
    if a.soft_local_kernel % 2 == 0 and a.soft_local_kernel:
        raise ConfigError("attention.soft_local_kernel", f"{a.soft_local_kernel} is not odd (or 0: no local term)")
    if a.activation == "soft" and a.gate:
        raise ConfigError("attention.gate", "SOFT attention has no gate")


def micro_batch_size(cfg: DictConfig) -> tuple[int, int]:
    """(per-device batch, gradient-accumulation steps) that reach the recipe's global batch on this world size."""
    world = world_size(cfg.trainer)
    global_batch = cfg.recipe.batch_size
    if global_batch % world:
        raise ConfigError("recipe.batch_size", f"{global_batch} is not divisible by the device count {world} "
                                               f"(trainer.devices x trainer.num_nodes)")
    per_device = global_batch // world
    micro = cfg.trainer.micro_batch_size or per_device
    if per_device % micro:
        raise ConfigError("trainer.micro_batch_size", f"{micro} does not divide the per-device batch {per_device}")
    return micro, per_device // micro


def compose(overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, outside ``@hydra.main`` (tests, the demo, the
    pre-flight check); Hydra's own errors come back as :class:`ConfigError`."""
    return compose_all([overrides], config_name)[0]


def compose_all(override_lists: list[list[str]], config_name: str = "train") -> list[DictConfig]:
    """:func:`compose` for many override lists under one Hydra initialisation (a sweep's points)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return [hydra_compose(config_name, overrides=list(o)) for o in override_lists]
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        allowed = ", ".join(sorted(e.options or [])) if e.options else "see conf/" + group
        raise ConfigError(group or "config", f"{name!r} is not a known option; allowed: {allowed}") from None
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
        key = getattr(cause, "full_key", None) or "override"
        message = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
        raise ConfigError(key, message) from None


def compose_grid(points: list[list[str]]) -> list[DictConfig]:
    """:func:`compose_all` for a sweep's points, fast: Hydra composes in ~0.15 s, so each combination of
    config-group choices is composed once and the plain keys of every point are then set on a copy (the schema
    still types and checks them)."""
    import yaml

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    split = [([o for o in p if o.split("=")[0] in groups], [o for o in p if o.split("=")[0] not in groups])
             for p in points]
    bases = list(dict.fromkeys(tuple(g) for g, _ in split))
    composed = dict(zip(bases, compose_all([list(b) for b in bases]), strict=True))
    configs = []
    for group_choices, keys in split:
        cfg = composed[tuple(group_choices)].copy()
        for override in keys:
            key, value = override.split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        configs.append(cfg)
    return configs

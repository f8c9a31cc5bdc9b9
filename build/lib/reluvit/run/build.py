"""What a config builds: the model's arguments, the LightningModule, the recipe's augmentation for the model, the
precision, and the split of the global batch over devices and accumulation steps (reluvit.run.memory's plan). Used
to train (reluvit.run.train) and, on the meta device, to validate (reluvit.run.validate). torch (and run.memory) is
imported by the functions that use it: a dry run shown before reads :func:`architecture` without it."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from omegaconf import DictConfig, ListConfig, OmegaConf

from reluvit.run.schema import AugmentConfig, ConfigError

if TYPE_CHECKING:
    from reluvit.run.memory import Plan


def architecture(cfg: DictConfig) -> dict:
    """The arguments of :func:`reluvit.models.create_model`: the ``model`` keys (but its ``name``) and ``attention``."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    del model["name"]
    return {**model, "attention": OmegaConf.to_container(cfg.attention, resolve=True)}


def augment_name(cfg: DictConfig) -> str:
    """The entry of ``recipe.augment`` for the model: its ``model.name`` (big_vision keys it by variant), else
    ``default``."""
    table = cfg.recipe.augment
    for name in (cfg.model.name, "default"):
        if name in table:
            return name
    raise ConfigError(f"recipe.augment.{cfg.model.name}",
                      f"recipe {cfg.recipe.name!r} has no augmentation entry for model {cfg.model.name!r} and no "
                      f"'default'; it has: {', '.join(table) or 'none'}")


def augment_for(cfg: DictConfig) -> AugmentConfig:
    """The recipe's per-model-size augmentation (:func:`augment_name`)."""
    return cfg.recipe.augment[augment_name(cfg)]


def train_augmentation(cfg: DictConfig) -> dict:
    """The augmentation arguments of :class:`reluvit.data.preprocess.TrainTransform`: the model's RandAugment entry
    and the recipe's ``augment_impl`` and ``crop_antialias``."""
    entry = augment_for(cfg)
    return {"randaug_layers": entry.randaug_layers, "randaug_magnitude": entry.randaug_magnitude,
            "augment_impl": cfg.recipe.augment_impl, "crop_antialias": cfg.recipe.crop_antialias}


def build_module(cfg: DictConfig, grad_checkpointing: bool = False):
    """The :class:`reluvit.run.module.ViTClassifier` of a config: its recipe keys are the module's arguments, with
    the model's augmentation and ``trainer.max_steps``; ``grad_checkpointing``: timm's, recomputing each block's
    activations in the backward pass."""
    from reluvit.run.module import ViTClassifier

    recipe = OmegaConf.to_container(cfg.recipe, resolve=True)
    arguments = {k: recipe[k] for k in inspect.signature(ViTClassifier).parameters if k in recipe}
    module = ViTClassifier(architecture(cfg), mixup=augment_for(cfg).mixup, max_steps=cfg.trainer.max_steps,
                           **arguments)
    module.model.set_grad_checkpointing(grad_checkpointing)
    return module


def trains_on_cuda(cfg: DictConfig) -> bool:
    import torch

    return cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()


def resolve_precision(cfg: DictConfig) -> str:
    """``trainer.precision``: auto is bf16-mixed on CUDA, 32-true on CPU."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    return "bf16-mixed" if trains_on_cuda(cfg) else "32-true"


def resolve_compile(cfg: DictConfig) -> bool:
    """``trainer.compile``: auto compiles the runs that train on CUDA."""
    return trains_on_cuda(cfg) if cfg.trainer.compile == "auto" else cfg.trainer.compile


def world_size(trainer: DictConfig) -> int:
    """Number of training processes the trainer config asks for ('auto' devices: all GPUs, else 1 CPU process)."""
    devices = trainer.devices
    if devices in ("auto", -1, "-1"):
        import torch

        on_gpu = trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, list | ListConfig):  # device ids
        devices = len(devices)
    elif isinstance(devices, str) and not devices.strip().isdigit():  # "0,1": device ids
        devices = len([i for i in devices.split(",") if i.strip()])
    return int(devices) * trainer.num_nodes


def micro_batch_size(cfg: DictConfig, budget_bytes: float | None = None) -> Plan:
    """How each device takes its share of the recipe's global batch on this world size: micro-batch, accumulation
    steps and gradient checkpointing (:func:`reluvit.run.memory.plan` of ``trainer.micro_batch_size`` and
    ``trainer.grad_checkpointing``). ``budget_bytes``: the device memory to plan for; None: this process's device's
    (:func:`reluvit.run.memory.device_budget`)."""
    from reluvit.run import memory

    world = world_size(cfg.trainer)
    global_batch = cfg.recipe.batch_size
    if global_batch % world:
        raise ConfigError("recipe.batch_size", f"{global_batch} is not divisible by the device count {world} "
                                               f"(trainer.devices x trainer.num_nodes)")
    device = "cuda" if trains_on_cuda(cfg) else "cpu"
    if budget_bytes is None:
        budget_bytes = memory.device_budget(device, processes_per_host=world // cfg.trainer.num_nodes)
    step = memory.TrainingStep.of(architecture(cfg), resolve_precision(cfg), device, world)
    return memory.plan(step, global_batch // world, budget_bytes, cfg.trainer.micro_batch_size,
                       cfg.trainer.grad_checkpointing)

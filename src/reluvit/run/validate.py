"""Every value a run depends on, checked before anything runs: :func:`validate` raises :class:`ConfigError`, which
the entry points print as one line naming the key (exit status 2). Model, attention and optimiser values are
checked by their constructors, built here on the meta device; this module checks what no constructor sees
(paths, counts, the batch split, Lightning's names): the numbers through the :data:`RANGES` table."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import typing
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from reluvit.cache import environment_digest, read_cached, write_cached
from reluvit.errors import COUNT, ArgumentError, Range, above, at_least, check_choice, check_range
from reluvit.run.compose import ON_DISK, check_data_path, composition_key
from reluvit.run.schema import WANDB_MODES, ConfigError, ModelConfig

# torch, timm and Lightning (~5 s to import) are imported where a check builds something, so that a dry run whose
# sweep passed before (Outcomes) never loads them. check_data_path is composition's: a missing data path is named
# before the values it leaves missing.

SEED = Range(0, 2**32 - 1, integer=True)  # what Lightning's seed_everything and numpy's RNGs accept
NON_NEGATIVE = at_least(0, integer=True)
# The numeric keys that no constructor sees (build_module's constructors check the recipe, model and attention).
RANGES: dict[str, Range] = {
    "seed": SEED,
    "recipe.epochs": COUNT,
    "recipe.batch_size": COUNT,
    "recipe.grad_clip_norm": above(0, null=True),  # null: no clipping
    "data.val_size": at_least(1, integer=True, null=True),  # null: the embedded dataset's fixed split
    "data.num_samples": at_least(1, integer=True, null=True),  # synthetic's training images
    "data.split_seed": SEED,
    "data.num_workers": NON_NEGATIVE,
    "data.shuffle_buffer": COUNT,
    "data.stream_slots": COUNT,
    "data.max_bad_fraction": Range(0, 1, high_open=True),
    "trainer.num_nodes": COUNT,
    # auto: the largest that fits the device (run.memory); null: the per-device batch
    "trainer.micro_batch_size": at_least(1, integer=True, null=True, also=("auto",)),
    "trainer.check_val_every_n_epoch": COUNT,
    "trainer.log_every_n_steps": COUNT,
}
AUGMENT_RANGES = {"randaug_layers": NON_NEGATIVE, "randaug_magnitude": NON_NEGATIVE}  # recipe.augment.<entry>.*
EVAL_RANGES: dict[str, Range] = {
    "eval.fewshot.l2": above(0),
    "eval.fewshot.every_n_steps": NON_NEGATIVE,  # 0: only at the end
    "eval.fewshot.batch_size": COUNT,
    "eval.fewshot.num_workers": NON_NEGATIVE,
}
EVAL_ITEMS: dict[str, Range] = {  # lists: non-empty, each item in range (l2_grid may be null)
    "eval.fewshot.shots": COUNT,
    "eval.fewshot.seeds": SEED,
    "eval.fewshot.l2_grid": above(0),
}
DEVICE_COUNT = at_least(1, integer=True, also=(-1,))  # -1: every GPU (Lightning's)
DEVICES = "auto, -1 (every GPU), a count >= 1, or device ids >= 0 as a list ([0,1]) or a string ('0,1')"


def _check(check, key: str, value, allowed) -> None:
    """``check`` (:func:`check_range` or :func:`check_choice`) on a config value, refusing it as a ConfigError."""
    try:
        check(key, value, allowed)
    except ArgumentError as e:
        raise ConfigError(e.name, e.message) from None


def _check_ranges(cfg: DictConfig, table: dict[str, Range]) -> None:
    for key, allowed in table.items():
        _check(check_range, key, OmegaConf.select(cfg, key), allowed)


def _choice(cfg: DictConfig, key: str, allowed) -> None:
    _check(check_choice, key, OmegaConf.select(cfg, key), allowed)


def validate(cfg: DictConfig, data_path: bool = True) -> None:
    """Check every value the run depends on; raise :class:`ConfigError` on the first bad one. ``data_path=False``
    leaves the data path out (a dry run needs no data)."""
    from reluvit.data import DATASETS
    from reluvit.data.preprocess import TrainTransform
    from reluvit.run.build import augment_name, micro_batch_size, train_augmentation

    _choice(cfg, "data.dataset", DATASETS)
    if data_path:
        check_data_path(cfg)
        _check_tree(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], f"a value is required (add {missing[0]}=...)")
    _check_ranges(cfg, RANGES)
    _check_workers(cfg)
    check_splits(cfg, sized=data_path)
    entry = augment_name(cfg)
    for key, allowed in AUGMENT_RANGES.items():
        _check(check_range, f"recipe.augment.{entry}.{key}", cfg.recipe.augment[entry][key], allowed)
    try:  # the training transform's constructor refuses the rest (augment_impl)
        TrainTransform(8, **train_augmentation(cfg))
    except ArgumentError as e:
        raise ConfigError(f"recipe.{e.name}", e.message) from None
    _validate_loader(cfg)
    _choice(cfg, "logger.wandb_mode", WANDB_MODES)
    if cfg.logger.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger.wandb", "W&B is not installed: pip install 'reluvit[wandb]'")
    _validate_trainer(cfg)
    _check_directories(cfg)
    _build_on_meta(cfg)
    micro_batch_size(cfg, budget_bytes=math.inf)  # the split; what fits is planned on the device (run.train)
    validate_eval(cfg, data=data_path)


class Outcomes:
    """Whether the configs of ``points`` (composed: :func:`reluvit.run.compose.compose_points`) passed
    :func:`validate` before, so that a dry run of a sweep validated once skips its hundreds of checks and model
    builds, and the torch and Lightning imports. Recorded on disk (:func:`reluvit.cache.cache_dir`) per
    composition (:func:`reluvit.run.compose.composition_key`), with what else the checks read
    (:func:`_outcome_key`); only the directories a run would create are checked again. Dry runs only
    (``data_path=False``): a launch checks its data as it is now."""

    def __init__(self, points: list[list[str]], configs: list[DictConfig], data_path: bool = True) -> None:
        self.data_path = data_path
        self.key = None if data_path else _outcome_key(points, configs)
        self.passed = self.key is not None and read_cached("validate", self.key) is not None
        self._writable: set[str] = set()  # directories found writable: a sweep's runs share their runs_dir

    def validate(self, cfg: DictConfig) -> None:
        """:func:`validate` of one of the configs, or of its directories only where they all passed before."""
        if self.passed:
            _check_directories(cfg, self._writable)
        else:
            validate(cfg, data_path=self.data_path)

    def record(self) -> None:
        """Every config passed (:meth:`validate` raised for none)."""
        if self.key is not None and not self.passed:
            write_cached("validate", self.key, True)


# What the dry run's checks read besides the config: files (their state is part of the outcome's key)
NAME_MAX = 255  # bytes of one file or directory name (Linux, macOS; most file systems)
READ_PATHS = ("eval.i1k.path", "eval.real.labels", "eval.v2.path")


def _outcome_key(points: list[list[str]], configs: list[DictConfig]) -> str | None:
    """What a dry run's checks of a composition depend on: the composition, reluvit's code, the installed packages
    and the machine (:func:`reluvit.cache.environment_digest`), and the files the checks read
    (:data:`READ_PATHS`: mode, size and modification time). None where the composition is not cached."""
    composition = composition_key(points)
    if composition is None:
        return None
    paths = sorted({str(path) for cfg in configs for key in READ_PATHS if (path := OmegaConf.select(cfg, key))})
    parts = [composition, environment_digest(), [(path, _file_state(path)) for path in paths]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _file_state(path: str) -> list | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_mode, stat.st_size, stat.st_mtime_ns]


def _build_on_meta(cfg: DictConfig) -> None:
    """Build the LightningModule without memory: its constructors refuse what they cannot build. Points that differ
    only in the attention's value-only options (Figure 2's alphas) build it once; each one's attention options are
    still checked, by building its attention class."""
    import torch

    from reluvit.attention import structure
    from reluvit.models import attention_class
    from reluvit.run.build import architecture, build_module

    model = architecture(cfg)
    arguments = json.dumps([{**model, "attention": structure(model["attention"])}, cfg.model.name,
                            OmegaConf.to_container(cfg.recipe, resolve=True), cfg.trainer.max_steps], sort_keys=True)
    try:
        if arguments in _BUILT:
            try:
                attention_class(model["attention"], model["pool"])
            except ArgumentError as e:
                raise e.within("model") from None  # named as the module names it
            return
        with torch.device("meta"):
            build_module(cfg)
    except ArgumentError as e:
        raise ConfigError(_config_key(e.name, cfg), e.message) from None
    _BUILT.add(arguments)


_BUILT: set[str] = set()  # what _build_on_meta has built without a refusal, less the attention's value options


def _config_key(argument: str, cfg: DictConfig) -> str:
    """The config key of a refused constructor argument (``model.attention.alpha`` -> ``attention.alpha``). A model
    argument that the schema interpolates (``model.img_size: ${data.img_size}``) is named by that key unless the
    model key was set apart from it."""
    if argument.startswith("model.attention."):
        return argument.removeprefix("model.")
    if argument.startswith("model."):
        default = {f.name: f.default for f in dataclasses.fields(ModelConfig)}.get(argument.split(".")[1])
        source = re.fullmatch(r"\$\{([\w.]+)\}", str(default))
        if source and str(OmegaConf.select(cfg, source[1])) == str(OmegaConf.select(cfg, argument)):  # nan too
            return source[1]
        return argument
    if argument == "mixup":
        from reluvit.run.build import augment_name

        return f"recipe.augment.{augment_name(cfg)}.mixup"
    return "trainer.max_steps" if argument == "max_steps" else f"recipe.{argument}"


def _check_tree(cfg: DictConfig) -> None:
    """An ImageFolder tree's classes (:func:`reluvit.data.datamodules.tree_classes`): ``val/`` holds none that
    ``train/`` lacks, and ``train/`` as many as ``data.num_classes``."""
    if cfg.data.dataset == "imagefolder":
        from reluvit.data.datamodules import tree_classes

        _named("data.path", tree_classes, cfg.data.path, cfg.data.num_classes)


def _check_workers(cfg: DictConfig) -> None:
    """Shards: ``data.num_workers`` divides ``data.stream_slots`` (:func:`reluvit.data.stream.check_workers`, the rule
    that the data module applies once the run has started)."""
    if cfg.data.dataset == "shards":
        from reluvit.data.stream import check_workers

        _named("data.num_workers", check_workers, cfg.data.num_workers, cfg.data.stream_slots)


def _named(key: str, check, *arguments) -> None:
    """A data module's own check of config values, its ValueError turned into the one-line error naming ``key``."""
    try:
        check(*arguments)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def check_splits(cfg: DictConfig, sized: bool = True) -> None:
    """``data.train_split`` and ``data.minival_split``: the syntax, the ``train`` split, a slice only on trees and
    shards, and no sample in both. ``sized``: the data is there (:func:`check_data_path`), so the slices are checked
    against the split's size; without it only a whole train split beside a minival is refused."""
    from reluvit.data.splits import overlap, parse_split

    splits = {}
    for key in ("data.train_split", "data.minival_split"):
        text = OmegaConf.select(cfg, key)
        if text is None:
            continue
        try:
            splits[key] = parse_split(text)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
        if splits[key].name != "train":
            raise ConfigError(key, f"{text!r} is a slice of {splits[key].name!r}: only the train split is sliced")
        if cfg.data.dataset not in ON_DISK and (key == "data.minival_split" or not splits[key].whole):
            raise ConfigError(key, f"{text!r}: dataset={cfg.data.dataset} has its own fixed split (only "
                                   "data.train_split=train and data.minival_split=null)")
    train, minival = splits["data.train_split"], splits.get("data.minival_split")
    if cfg.data.dataset not in ON_DISK or train.whole and minival is None:
        return
    from reluvit.data.datamodules import split_size

    size = None
    if sized:  # None still where the data lists no training samples: its data module names what is wrong
        size = split_size("shards", cfg.data.path) if cfg.data.dataset == "shards" else _tree_size(cfg.data.path)
    if size is None:
        if minival and (train.whole or minival.whole):
            raise ConfigError("data.minival_split", f"{minival} overlaps data.train_split={train}")
        return
    for key, split in splits.items():
        try:
            split.bounds(size)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
    if minival and overlap(train, minival, size):
        (lo_train, hi_train), (lo_minival, hi_minival) = train.bounds(size), minival.bounds(size)
        lo, hi = max(lo_train, lo_minival), min(hi_train, hi_minival)
        raise ConfigError("data.minival_split", f"{minival} overlaps data.train_split={train} (samples {lo}..{hi - 1} "
                                                f"of {size})")


@functools.cache  # a sweep validates many points of one tree, and listing ImageNet's takes seconds
def _tree_size(path: str) -> int | None:
    from reluvit.data.datamodules import split_size

    return split_size("imagefolder", path)


def _check_directories(cfg: DictConfig, writable: set[str] | None = None) -> None:
    """The runs directory, and the run directory where it lies elsewhere, can be made (``writable``: directories
    found so, skipped; those found here are added)."""
    _check_writable(cfg, "runs_dir", writable)
    if not Path(cfg.run_dir).absolute().is_relative_to(Path(cfg.runs_dir).absolute()):
        _check_writable(cfg, "run_dir", writable)
    if long := next((part for part in Path(cfg.run_dir).parts if len(part.encode()) > NAME_MAX), None):
        raise ConfigError("run_name", f"{long[:40]}... ({len(long.encode())} bytes) is longer than a file name can "
                                      f"be ({NAME_MAX}); give a shorter run_name=")


def _check_writable(cfg: DictConfig, key: str, writable: set[str] | None = None) -> None:
    """The directory can be made: its nearest existing ancestor is a directory this process can create in."""
    path = Path(OmegaConf.select(cfg, key)).absolute()
    if writable is not None and str(path) in writable:
        return
    existing = next(p for p in (path, *path.parents) if os.path.exists(p))
    if not existing.is_dir():
        raise ConfigError(key, f"cannot create {str(path)!r}: {existing} is not a directory")
    if not (os.access(existing, os.W_OK | os.X_OK) and _can_create_in(existing)):
        raise ConfigError(key, f"cannot create {str(path)!r}: {existing} is not writable")
    if writable is not None:
        writable.add(str(path))


def _can_create_in(directory: Path) -> bool:
    """Whether a directory can be made there (root passes os.access where mkdir fails: /proc, read-only mounts)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".reluvit-check-", dir=directory))
    except OSError:
        return False
    return True


def precisions() -> tuple[str, ...]:
    """``trainer.precision``: ``auto`` (run.train chooses) or a precision that Lightning's Trainer accepts."""
    from pytorch_lightning.trainer.connectors.accelerator_connector import _PRECISION_INPUT

    names = (str(value) for literal in typing.get_args(_PRECISION_INPUT) for value in typing.get_args(literal))
    return ("auto", *dict.fromkeys(names))


def _validate_loader(cfg: DictConfig) -> None:
    """``data.loader``: one of LOADERS, DALI only for shards and where it is installed, and only with big_vision's
    RandAugment (:func:`reluvit.data.dali.dali_randaug_arguments`)."""
    from reluvit.data.dali import LOADERS, dali_randaug_arguments, resolve_loader
    from reluvit.run.build import train_augmentation

    _choice(cfg, "data.loader", LOADERS)
    try:
        loader = resolve_loader(cfg.data.loader, cfg.data.dataset)
    except ValueError as e:
        raise ConfigError("data.loader", str(e)) from None
    if loader == "dali":
        try:
            dali_randaug_arguments(train_augmentation(cfg))
        except ValueError as e:
            raise ConfigError("recipe.augment_impl", str(e)) from None


def _validate_trainer(cfg: DictConfig) -> None:
    """Accelerator and strategy names against Lightning's registries ("gpu" and "auto" are Lightning's aliases),
    its precision names, the devices, compile and gradient checkpointing."""
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    _choice(cfg, "trainer.accelerator", ("auto", "gpu", *AcceleratorRegistry.available_accelerators()))
    _choice(cfg, "trainer.strategy", ("auto", *StrategyRegistry.available_strategies()))
    _choice(cfg, "trainer.precision", precisions())
    _check_devices(cfg.trainer)
    for key in ("trainer.compile", "trainer.grad_checkpointing"):
        value = OmegaConf.select(cfg, key)
        if not (value == "auto" or isinstance(value, bool)):  # a bool, not the 1 or 0 equal to one
            raise ConfigError(key, f"{value!r} is not auto, true or false")


def _check_devices(trainer: DictConfig) -> None:
    """``auto``, a count (``2``, ``'2'``; -1: every GPU) or device ids (``[0, 1]``, ``'0,1'``); a count on CPUs."""
    devices = trainer.devices
    count = int(devices) if isinstance(devices, str) and re.fullmatch(r"\s*-?\d+\s*", devices) else devices
    if isinstance(devices, str | list | ListConfig) and count is devices and devices != "auto":
        ids = [i.strip() for i in devices.split(",") if i.strip()] if isinstance(devices, str) else list(devices)
        ids = [int(i) if isinstance(i, str) and i.isdigit() else i for i in ids]
        good = bool(ids) and all(i in NON_NEGATIVE for i in ids) and len(set(ids)) == len(ids)
    else:
        good = devices == "auto" or count in DEVICE_COUNT
    if not good:
        raise ConfigError("trainer.devices", f"{devices!r} is not {DEVICES}")
    if trainer.accelerator == "cpu" and not (devices == "auto" or count in COUNT):
        raise ConfigError("trainer.devices", f"{devices!r} is not a count >= 1 of CPU processes (or auto), as "
                                             "trainer.accelerator=cpu takes")


def validate_eval(cfg: DictConfig, data: bool = True) -> None:
    """The ``eval`` keys: i1k accuracy of 21k runs, ImageNet-ReaL and -v2, and the few-shot probe
    (reluvit/evaluate). ``data=False``: the run's data is absent, so whether its classes are ImageNet-1k's is
    checked only where that needs no data."""
    from reluvit.data.labels import MISSING_POLICIES, TIMM_LISTS
    from reluvit.evaluate.transfer import NAMES as TRANSFER_SETS

    i1k, fewshot = cfg.eval.i1k, cfg.eval.fewshot
    if i1k.path and not Path(i1k.path).is_dir():
        raise ConfigError("eval.i1k.path", f"{i1k.path!r} is not a directory (ImageNet-1k val: shards or folders)")
    _choice(cfg, "eval.i1k.label_set", (None, *TIMM_LISTS))
    _choice(cfg, "eval.i1k.missing", MISSING_POLICIES)
    _validate_imagenet_evals(cfg, data)
    for name in fewshot.datasets:
        _check(check_choice, "eval.fewshot.datasets", name, TRANSFER_SETS)
    _check_ranges(cfg, EVAL_RANGES)
    for key, allowed in EVAL_ITEMS.items():
        values = OmegaConf.select(cfg, key)
        if values is None and key == "eval.fewshot.l2_grid":
            continue
        if not values or any(v not in allowed for v in values):
            raise ConfigError(key, f"{list(values or [])} is not a non-empty list of values {allowed}")


def _validate_imagenet_evals(cfg: DictConfig, data: bool) -> None:
    """``eval.real.labels`` (a real.json) and ``eval.v2.path`` (class-id folders); a run on a 21k label set scores
    ReaL on ``eval.i1k.path``'s images. Runs without ImageNet-1k classes skip both (as i1k accuracy), so the
    environment variables can be set once for every run."""
    from reluvit.evaluate.i1k import is_21k_label_set, run_wnids
    from reluvit.evaluate.imagenet import read_real_labels, v2_items
    from reluvit.run.callbacks import imagenet_restriction

    checks = {"eval.real.labels": read_real_labels, "eval.v2.path": v2_items}
    used = [key for key in checks if OmegaConf.select(cfg, key)]
    for key in used:
        try:
            checks[key](OmegaConf.select(cfg, key))
        except (OSError, ValueError) as e:
            raise ConfigError(key, str(e) if isinstance(e, ValueError) else f"cannot read it ({e})") from None
    if "eval.real.labels" not in used or not (data or cfg.data.dataset not in ON_DISK or cfg.eval.i1k.label_set):
        return  # no ReaL, or the run's classes are in its absent data
    on_21k = is_21k_label_set(run_wnids(cfg.data.dataset, cfg.data.path, cfg.eval.i1k.label_set))
    if on_21k and imagenet_restriction(cfg) is not None and not cfg.eval.i1k.path:
        raise ConfigError("eval.i1k.path", "ReaL of a run on a 21k label set is scored on the ImageNet-1k "
                                           "validation images there: set it (or RELUVIT_IMAGENET1K)")

"""The typed schema of the Hydra configs in ``conf/``: a misspelt key or a wrongly typed value fails while Hydra
composes. Keys that are constructor arguments carry the constructors' names (``attention.*`` are
:func:`reluvit.attention.attention_layer`'s, ``model.*`` :func:`reluvit.models.create_model`'s); the constructors
check their values (:mod:`reluvit.run.validate` builds them)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from reluvit.search import packaged

CONF_DIR = packaged("conf")  # the config groups the schema types (a user's conf dirs are searched first)


class ConfigError(ValueError):
    """A config value the code cannot run with; ``str()`` is one line naming the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass
class SoftConfig:
    """:class:`reluvit.soft.SoftAttention`'s options (``attention.soft.*``, used by ``activation: soft``), with its
    defaults (tests/test_defaults.py holds them equal)."""

    sr: int = 2
    newton_iters: int = 20
    local_kernel: int = 3
    sym_norm: bool = False


@dataclass
class AttentionConfig:
    """The keyword arguments of :func:`reluvit.attention.attention_layer` (defaults: relu/L with qk-LayerNorm)."""

    # softmax | relu | relu2 | gelu | softplus | identity | relu6 | sigmoid | sigmoid_attn | soft
    activation: str = "relu"
    alpha: float = 1.0  # point-wise weights are L^-alpha h(q.k/sqrt(d)); the initial value when learned
    qk_norm: bool = True  # LayerNorm (no bias, shared scale, eps 1e-6) on q and k over head_dim, as in the paper
    gate: bool = False  # GAU-style gate: proj(g(W_g x) * heads) (Fig 4 ablation)
    gate_activation: str = "none"  # g of the gate: none (the paper's text) | silu (GAU) | sigmoid
    gelu_approximate: str = "none"  # gelu: none (exact erf) | tanh (flax nn.gelu's default)
    seq_len: str = "keys"  # what L counts: keys (all tokens) | patches (not the class token of 'tok' pooling)
    learn_alpha: str = "none"  # none | layer (one learned alpha per layer) | head (one per head)
    sigmoid_bias: float | None = None  # sigmoid_attn's b in sigmoid(s + b); None: -log L
    impl: str = "auto"  # point-wise: auto (fused Triton kernel on CUDA, else reference) | fused | reference
    soft: SoftConfig = field(default_factory=SoftConfig)


@dataclass
class ModelConfig:
    """``name`` labels the option (run names, the recipe's augmentation table), derived from ``variant``; the other
    keys are the arguments of :func:`reluvit.models.create_model` (with ``attention``, the top-level group)."""

    name: str = "${variant_name:${.variant}}"  # "S/16" -> s16: run names, the recipe's augmentation table
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
    grad_clip_norm: float | None = 1.0  # None: no clipping
    loss: str = "sigmoid"
    pool: str = "gap"
    rep_size: bool = False
    head_bias_init: float = 0.0
    augment: dict[str, AugmentConfig] = field(default_factory=dict)
    augment_impl: str = "big_vision"  # whose RandAugment: big_vision (reluvit.data.randaug) | timm
    crop_antialias: bool = False  # the Inception crop's resize: TF's bilinear without antialiasing (big_vision's)


@dataclass
class DataConfig:
    name: str = MISSING
    dataset: str = MISSING
    path: str | None = None
    img_size: int = MISSING
    in_chans: int = MISSING
    num_classes: int = MISSING
    val_size: int | None = None  # embedded datasets: None = their fixed split (data.embedded's ArrayDataset.val_size)
    # training images per epoch: synthetic draws this many; the other datasets count their own, and this is only
    # the cost estimate's (reluvit.sweep.cost) while their data is absent
    num_samples: int | None = None
    # trees and shards: the training samples, ``train`` or a TFDS-style slice of it (train[:99%], reluvit.data.splits)
    train_split: str = "train"
    # held-out training samples (train[99%:]) validated beside val as val/minival_acc, val/minival_loss; None: none
    minival_split: str | None = None
    split_seed: int = 0  # embedded and synthetic: their fixed split; a tree: the order its slices are taken in
    num_workers: int = 0
    # who decodes and augments the shards: auto (DALI where a GPU and the package are present) | reference | dali
    loader: str = "auto"
    # shards: the encoded samples a rank holds to shuffle, across its stream slots (ceil(shuffle_buffer / slots) each)
    shuffle_buffer: int = 2000
    max_bad_fraction: float = 0.01
    # shards: the fixed number of shuffled streams a rank's batches come from (reluvit.data.stream); data.num_workers
    # must divide it, and the batches are the same for every such count
    stream_slots: int = 24


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    micro_batch_size: Any = "auto"  # auto (run.memory: the largest that fits the device) | null (no accumulation) | int
    grad_checkpointing: Any = "auto"  # auto (when the smallest useful micro-batch does not fit) | true | false
    compile: Any = "auto"  # torch.compile the model: auto (on CUDA) | true | false
    deterministic: bool = False
    max_steps: int = -1
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True


WANDB_MODES = ("auto", "online", "offline", "disabled")  # auto: online if logged in, else offline (run.train)


@dataclass
class LoggerConfig:
    wandb: bool = False
    wandb_mode: str = "auto"  # one of WANDB_MODES
    project: str = "reluvit"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # the sweeps (figures) this run belongs to; set by the sweep


@dataclass
class I1kEvalConfig:
    path: str | None = None
    label_set: str | None = None
    missing: str = "wrong"


@dataclass
class RealEvalConfig:
    labels: str | None = None  # ImageNet-ReaL's real.json (reluvit.evaluate.imagenet); None: off


@dataclass
class V2EvalConfig:
    path: str | None = None  # ImageNet-v2's folder of class-index folders 0/ ... 999/; None: off


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
    real: RealEvalConfig = field(default_factory=RealEvalConfig)
    v2: V2EvalConfig = field(default_factory=V2EvalConfig)
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
    run_name: str | None = None  # None: derived from the grid keys and the other training values (run.grid)
    run_dir: str = "${runs_dir}/${run_name}"
    resume: bool = True


@functools.cache
def schema_type(key: str) -> Any:
    """The annotated type of a dotted config key (``attention.qk_norm`` -> ``bool``; an entry of a ``dict`` field
    takes the dict's value type); None when the schema has no such key."""
    node: Any = TrainConfig
    for part in key.split("."):
        if dataclasses.is_dataclass(node):
            node = typing.get_type_hints(node).get(part)
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return None
        if node is None:
            return None
    return node


def is_schema_field(key: str) -> bool:
    """Whether ``key`` is a field of the schema's dataclasses (always present), not an entry of a ``dict`` field."""
    parts = key.split(".")
    parents = [schema_type(".".join(parts[:i])) if i else TrainConfig for i in range(len(parts))]
    return all(dataclasses.is_dataclass(p) for p in parents) and schema_type(key) is not None


def variant_name(variant: str) -> str:
    """A model's name from its variant, the ``variant_name`` resolver: ``S/16`` -> ``s16``, ``micro/4`` ->
    ``micro4`` (each model option is named so)."""
    return variant.lower().replace("/", "")


def register() -> None:
    """Register the schema as ``train_schema``, the first entry of ``conf/train.yaml``'s defaults, and the
    ``variant_name`` resolver (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("variant_name", variant_name, replace=True)

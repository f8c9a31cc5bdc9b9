"""What a run *is*: the one table of grid keys and the one list of keys that do not change training, from which
everything else is derived: the run's readable name, its identity (a digest of every training value), the roll-up's
columns and W&B's config, tags and group.

Works on plain resolved configs (``dict``), so reading summaries never needs Hydra, torch or Lightning.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from reluvit.run.schema import SoftConfig

# Attentions that are not L^-alpha h(s): alpha, learn_alpha and gelu_approximate mean nothing to them.
NOT_POINTWISE = ("softmax", "sigmoid_attn", "soft")
SOFT = SoftConfig()  # SOFT's defaults (the constructor's: tests/test_defaults.py), left out of run names


def _activation(config: dict) -> str:
    return config["attention"]["activation"]


def _pointwise(config: dict) -> bool:
    return _activation(config) not in NOT_POINTWISE


@dataclass(frozen=True)
class GridKey:
    """A config key that places a run in the paper's grid. ``applies``: whether it means anything for this run
    (a softmax run has no alpha): the key is left out of the run's name and tags, and its column is empty."""

    path: str
    applies: Callable[[dict], bool] = lambda config: True
    named: bool = True  # spelled by point_name; else a changed value shows in the run name's suffix


# roll-up column -> grid key. The run name spells the applicable ones (run_name); W&B gets them as top-level config
# and as tags.
GRID: dict[str, GridKey] = {
    "recipe": GridKey("recipe.name"),
    "data": GridKey("data.name"),
    "model": GridKey("model.name"),
    "variant": GridKey("model.variant", named=False),  # the model option's, unless overridden
    "pool": GridKey("model.pool", named=False),  # the recipe's, unless overridden
    "epochs": GridKey("recipe.epochs", named=False),  # the recipe's, unless overridden (the training-length study)
    "activation": GridKey("attention.activation"),
    "alpha": GridKey("attention.alpha", _pointwise),
    "learn_alpha": GridKey("attention.learn_alpha", _pointwise),
    "gelu_approximate": GridKey("attention.gelu_approximate", lambda c: _activation(c) == "gelu"),
    "sigmoid_bias": GridKey("attention.sigmoid_bias", lambda c: _activation(c) == "sigmoid_attn"),
    "seq_len": GridKey("attention.seq_len", lambda c: _activation(c) not in ("softmax", "soft")),
    "qk_norm": GridKey("attention.qk_norm"),
    "gate": GridKey("attention.gate", lambda c: _activation(c) != "soft"),
    "gate_activation": GridKey("attention.gate_activation", lambda c: c["attention"]["gate"]),
    "soft_sr": GridKey("attention.soft.sr", lambda c: _activation(c) == "soft"),
    "soft_newton_iters": GridKey("attention.soft.newton_iters", lambda c: _activation(c) == "soft"),
    "soft_local_kernel": GridKey("attention.soft.local_kernel", lambda c: _activation(c) == "soft"),
    "soft_sym_norm": GridKey("attention.soft.sym_norm", lambda c: _activation(c) == "soft"),
    "seed": GridKey("seed"),
}

# Keys that do not change what a run trains, each with the reason. Everything else in the schema is part of the
# run's identity (tests/test_grid.py walks the schema to hold this).
NOT_TRAINING: dict[str, str] = {
    "eval": "how a run is evaluated: `reluvit evaluate` re-evaluates a finished run",
    "data.minival_split": "held-out training samples that are only validated on: data.train_split says what trains",
    "data.path": "where the data lives: the summary's data_fingerprint says what it is, and a resume checks it",
    "data.num_workers": "decoding processes: every batch's samples and augmentation draws are the same for any count",
    "logger": "where metrics go",
    "trainer.enable_progress_bar": "display",
    "trainer.log_every_n_steps": "logging frequency",
    "trainer.check_val_every_n_epoch": "validation frequency: validation draws no random numbers of training",
    "trainer.accelerator": "hardware layout: the global batch, its order and the schedule do not depend on it",
    "trainer.devices": "hardware layout (gradient accumulation keeps the global batch; EpochSampler the order; the "
                       "shard stream's order changes, and a resume that changes it is recorded in the summary)",
    "trainer.num_nodes": "hardware layout",
    "trainer.strategy": "hardware layout",
    "trainer.micro_batch_size": "hardware layout: gradient accumulation keeps the global batch (the shard stream's "
                                "order changes, as with trainer.devices)",
    "trainer.grad_checkpointing": "recomputation: the same activations, computed again in the backward pass",
    "trainer.compile": "the same function, compiled",
    "trainer.deterministic": "the same algorithms, only their determinism",
    "attention.impl": "the fused kernel and the reference compute the same function",
    "runs_dir": "where runs live",
    "run_name": "the name is derived from the identity, not the reverse",
    "run_dir": "where the run lives",
    "resume": "whether to continue, not what",
}


def lookup(config: dict, path: str):
    """The value at dotted ``path`` (None where the config has no such key)."""
    for part in path.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def leaves(config: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf (lists are values)."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


@functools.cache  # a roll-up asks for the same ~90 keys of every run
def _trains(path: str) -> bool:
    return not any(path == key or path.startswith(f"{key}.") for key in NOT_TRAINING)


@functools.cache
def _schema_defaults() -> dict[str, object]:
    """Dotted key -> default of every plain field of the schema (not required, not interpolated, not a mapping)."""
    from reluvit.run.schema import TrainConfig

    def walk(node, prefix: str):
        for f in dataclasses.fields(node):
            if dataclasses.is_dataclass(f.default_factory):  # a config group
                yield from walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if not (isinstance(value, dict) or value == "???" or isinstance(value, str) and "${" in value):
                yield f"{prefix}{f.name}", value

    return dict(walk(TrainConfig, ""))


def training_values(config: dict) -> dict[str, object]:
    """Every leaf of a resolved config that changes training (dotted keys). A schema key that a recorded config lacks
    was added to reluvit after the run: the run trained as if at its default (a key whose default changes what runs
    did before it existed goes to :data:`LEGACY_RULES` instead)."""
    values = {path: value for path, value in leaves(config).items() if _trains(path)}
    for path, value in _schema_defaults().items():
        if path not in values and _trains(path):
            values[path] = value
    return values


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(config: dict) -> str:
    """Digest of :func:`training_values`: two configs that train differently never share it."""
    return _digest(training_values(config))


# The identity's earlier rules, by version: the keys that were training values then and are not now, and the keys
# that did not exist yet. Summaries and roll-up rows written under them (the committed reference roll-up) keep their
# digests; a config composed now is matched by those too (:func:`identities`), so no run is trained twice.
LEGACY_RULES: dict[str, dict[str, tuple[str, ...]]] = {
    # until data.path and data.num_workers left the identity (and data.stream_slots came)
    "v1": {"were_training": ("data.path", "data.num_workers"), "absent": ("data.stream_slots",)},
}


def identities(config: dict) -> list[str]:
    """The run's identity under the current rules, then under each earlier one (:data:`LEGACY_RULES`)."""
    values, flat = training_values(config), leaves(config)
    found = [_digest(values)]
    for rules in LEGACY_RULES.values():
        then = {key: value for key, value in values.items() if key not in rules["absent"]}
        then.update({key: flat[key] for key in rules["were_training"] if key in flat})
        found.append(_digest(then))
    return found


def differences(recorded: dict, config: dict) -> dict[str, tuple]:
    """Training keys whose values differ: key -> (recorded, now). A key only one side has is a knob that a later
    version of reluvit added (or removed) at its default: it does not make the recorded run a different one."""
    old, new = training_values(recorded), training_values(config)
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys()) if old[key] != new[key]}


def grid_point(config: dict) -> dict[str, object]:
    """The grid keys of a resolved config, by column; None where a key does not apply."""
    return {column: lookup(config, key.path) if key.applies(config) else None for column, key in GRID.items()}


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def attention_name(config: dict) -> str:
    """``softmax``, ``relu-a1``, ``relu2-a0.5-learn_layer-noqkln-gate``, ``sigmoid_attn-blogL``, ``soft-sr2``, ...:
    the applicable attention keys that are not at their defaults."""
    a, point = config["attention"], grid_point(config)
    name = a["activation"]
    if point["alpha"] is not None:
        name += f"-a{_number(a['alpha'])}"
    if point["learn_alpha"] not in (None, "none"):
        name += f"-learn_{a['learn_alpha']}"
    if point["gelu_approximate"] not in (None, "none"):
        name += f"-{a['gelu_approximate']}"
    if a["activation"] == "sigmoid_attn":
        name += "-b" + ("logL" if a["sigmoid_bias"] is None else _number(a["sigmoid_bias"]))
    if a["activation"] == "soft":
        soft = a["soft"]
        name += f"-sr{soft['sr']}"
        name += "" if soft["newton_iters"] == SOFT.newton_iters else f"-it{soft['newton_iters']}"
        name += "" if soft["local_kernel"] == SOFT.local_kernel else f"-k{soft['local_kernel']}"
        name += "-symnorm" if soft["sym_norm"] else ""
    if not a["qk_norm"]:
        name += "-noqkln"
    if point["gate"]:
        name += "-gate" if a["gate_activation"] == "none" else f"-gate_{a['gate_activation']}"
    if point["seq_len"] not in (None, "keys"):
        name += f"-L{a['seq_len']}"
    return name


def group_name(config: dict) -> str:
    """``<recipe>-<data>/<model>``: the runs one panel of a figure compares."""
    return f"{config['recipe']['name']}-{config['data']['name']}/{config['model']['name']}"


def point_name(config: dict) -> str:
    """The readable name of a grid point, e.g. ``smoke-animal_mnist/mini4/relu-a1-s0``."""
    return f"{group_name(config)}/{attention_name(config)}-s{config['seed']}"


MAX_SUFFIX = 120  # characters of spelled-out values; longer: a digest of them (a path part holds 255)


def _spell(value) -> str:
    text = _number(value) if not isinstance(value, list | dict) else json.dumps(value, separators=(",", ":"))
    return text.replace("/", "_")


def run_name(config: dict, overridden: set[str]) -> str:
    """:func:`point_name`, plus ``+key=value,...`` for the training values among ``overridden`` (the keys whose
    values differ from what the same config-group choices compose to) that are not grid keys, in the spirit of
    Hydra's ``override_dirname``: ``smoke-digits/mini2/relu-a1-s0+recipe.lr=0.0003``. Runs that train differently
    never share a name unless a config file itself changed, which the identity check on resume catches."""
    named = {key.path for key in GRID.values() if key.named}
    values = training_values(config)
    changed = {key: values[key] for key in overridden if key in values and key not in named}
    if not changed:
        return point_name(config)
    suffix = ",".join(f"{key}={_spell(value)}" for key, value in sorted(changed.items()))
    if len(suffix) > MAX_SUFFIX:
        suffix = "h" + hashlib.sha256(suffix.encode()).hexdigest()[:10]
    return f"{point_name(config)}+{suffix}"


def wandb_config(config: dict) -> dict:
    """W&B's run config: the resolved config flattened to dotted keys, the grid keys at top level (filter and plot
    by ``activation``, ``alpha``, ...), the identity and the figures the run belongs to."""
    return {**leaves(config), **grid_point(config), "identity": identity(config),
            "figures": list(config["logger"]["figures"])}


def wandb_tags(config: dict) -> list[str]:
    """``key=value`` for each grid key that applies, each figure the run belongs to, the user's tags."""
    point = [f"{column}={value}" for column, value in grid_point(config).items() if value is not None]
    return [*point, *config["logger"]["figures"], *config["logger"]["tags"]]


def wandb_group(config: dict) -> str:
    return config["logger"]["group"] or group_name(config)

"""Hydra composition outside ``@hydra.main``: the configs of many points at once (a sweep's), each resolved and
named (:func:`reluvit.run.grid.run_name`), and Hydra's sweep syntax (``seed=0,1``, ``range``, ``choice``)
expanded into points. Hydra's errors come back as one-line :class:`ConfigError`."""

from __future__ import annotations

import itertools

from omegaconf import DictConfig, OmegaConf

from reluvit.run.grid import leaves, run_name
from reluvit.run.schema import CONF_DIR, ConfigError, TrainConfig, is_schema_field, register, schema_type


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise ConfigError("override", str(e).strip().splitlines()[0]) from None


def expand(overrides: list[str]) -> list[list[str]]:
    """Every point that ``overrides`` describe: Hydra's sweep syntax (``a=1,2``, ``range(0,3)``, ``choice(x,y)``)
    expands into the cartesian product, the first key varying slowest (as Hydra's basic sweeper)."""
    choices = []
    for override in _parse(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            try:
                choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            except Exception as e:  # an interval() sweep has no finite list of values
                raise ConfigError(key, f"cannot expand {override.input_line!r}: {e}") from None
        else:
            choices.append([override.input_line])
    return [list(point) for point in itertools.product(*choices)]


def compose(overrides: list[str] = ()) -> DictConfig:
    """The resolved config of one run; sweep syntax is refused (:func:`expand` it first)."""
    points = expand(overrides)
    if len(points) > 1:
        sweep = next(o.input_line for o in _parse(overrides) if o.is_sweep_override())
        raise ConfigError(sweep.split("=")[0], f"{sweep!r} describes {len(points)} runs; one run takes one value "
                                               "(`reluvit train` and sweeps expand it)")
    return compose_points(points)[0]


def _groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def compose_points(points: list[list[str]]) -> list[DictConfig]:
    """Resolved, named configs of many points, fast: Hydra composes in ~0.1 s, so each combination of config-group
    choices is composed once (it is also the *defaults* that the run name is relative to), then each point's plain
    ``key=value`` overrides are set on a copy, typed and checked by the schema. A point with ``+key``/``~key``
    overrides is composed by Hydra in full."""
    groups = _groups()
    parsed = [_parse(point) for point in points]
    for override in (o for p in parsed for o in p if o.key_or_group not in groups):
        _check_override(override)
    choices = [tuple(o.input_line for o in p if o.key_or_group in groups) for p in parsed]
    plain = [all(o.key_or_group in groups or not (o.is_add() or o.is_delete() or o.is_force_add()) for o in p)
             for p in parsed]
    full = [point for point, fast in zip(points, plain, strict=True) if not fast]
    composed = dict(zip(*_unique([*choices, *map(tuple, full)]), strict=True))
    configs = []
    for point, overrides, choice, fast in zip(points, parsed, choices, plain, strict=True):
        cfg = composed[choice].copy() if fast else composed[tuple(point)].copy()
        for override in overrides if fast else ():
            if override.key_or_group not in groups:
                try:
                    OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
                except Exception as e:  # the schema refuses the key or the value's type
                    raise ConfigError(override.key_or_group, _first_line(e)) from None
        configs.append(_finish(cfg, composed[choice]))
    return configs


def _check_override(override) -> None:
    """What OmegaConf would let through: ``+key`` adds only keys the schema has (``+`` opens the struct: any other
    key would be stored and never read), ``~key`` deletes no schema field, and a boolean takes ``true`` or
    ``false`` only (OmegaConf turns 2, yes, on into True)."""
    key = override.key_or_group
    if key.startswith("hydra.") or override.package:
        return
    if (override.is_add() or override.is_force_add()) and schema_type(key) is None:
        raise ConfigError(key, "no such config key (`+` adds only keys that the schema has; a misspelt key?)")
    if override.is_add() and is_schema_field(key):
        raise ConfigError(key, f"is already a config key: set it without `+` ({key}=...)")
    if override.is_delete() and is_schema_field(key):
        raise ConfigError(key, f"a config key cannot be deleted; set it instead ({key}=...)")
    value = None if override.is_delete() else override.value()
    if schema_type(key) in (bool, bool | None) and not (
            isinstance(value, bool) or (value is None and schema_type(key) is not bool)
            or (isinstance(value, str) and "${" in value)):
        raise ConfigError(key, f"{value!r} is not a boolean (true or false)")


def _unique(override_lists: list[tuple]) -> tuple[list[tuple], list[DictConfig]]:
    keys = list(dict.fromkeys(override_lists))
    return keys, compose_all([list(k) for k in keys])


def _finish(cfg: DictConfig, defaults: DictConfig) -> DictConfig:
    """Resolve every interpolation (the config travels to jobs and summaries as plain values) and name the run."""
    raw, base = (leaves(OmegaConf.to_container(c, resolve=False)) for c in (cfg, defaults))
    missing = sorted(key for key, value in raw.items() if value == "???")
    if missing:
        from reluvit.run.validate import check_data_path

        check_data_path(cfg)  # a bad data.path first: data=shards data.path=/typo also lacks data.num_classes
        raise ConfigError(missing[0], f"a value is required (add {missing[0]}=...)")
    try:
        if cfg.run_name is None:
            overridden = {key for key, value in raw.items() if key not in base or base[key] != value}
            cfg.run_name = run_name(OmegaConf.to_container(cfg, resolve=True), overridden)
        OmegaConf.resolve(cfg)
    except ConfigError:
        raise
    except Exception as e:  # a required value is missing, or an interpolation fails
        raise ConfigError(getattr(e, "full_key", None) or "config", _first_line(e)) from None
    return cfg


def _first_line(error: Exception) -> str:
    return str(getattr(error, "msg", None) or error).strip().splitlines()[0]


def compose_all(override_lists: list[list[str]], config_name: str = "train") -> list[DictConfig]:
    """Hydra's own composition of ``conf/<config_name>.yaml`` for each override list, under one initialisation."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return [hydra_compose(config_name, overrides=list(o)) for o in override_lists]
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        allowed = ", ".join(sorted(e.options or [])) if e.options else "see conf/" + group
        raise ConfigError(group or "config", f"{name!r} is not a known option; allowed: {allowed}") from None
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
        raise ConfigError(getattr(cause, "full_key", None) or "override", _first_line(cause)) from None


def from_container(config: dict) -> DictConfig:
    """A recorded resolved config (a job's, a summary's) as a typed config again."""
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), config)


def eval_config(overrides: list[str] = ()) -> dict:
    """The ``eval`` group with ``overrides`` (``eval=...`` and ``eval.*`` only), unresolved: its ``${data...}``
    resolve against the config of the run it evaluates."""
    bad = [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith("eval")]
    if bad:
        raise ConfigError(bad[0].split("=")[0], "reluvit evaluate takes eval=... and eval.* overrides only")
    return OmegaConf.to_container(compose_all([list(overrides)])[0].eval, resolve=False)

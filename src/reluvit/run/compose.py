"""Hydra composition outside ``@hydra.main``: the configs of many points at once (a sweep's), each resolved and
named (:func:`reluvit.run.grid.run_name`), and Hydra's sweep syntax (``seed=0,1``, ``range``, ``choice``)
expanded into points. Hydra's errors come back as one-line :class:`ConfigError`.

Compositions are cached on disk (:mod:`reluvit.cache`), keyed by everything they depend on
(:func:`composition_key`): a sweep composed before, with nothing that shapes it changed, is read back in a fraction
of a second instead of tens of seconds. A cold composition of many points logs its progress."""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import logging
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import omegaconf
from omegaconf import DictConfig, OmegaConf

from reluvit.cache import files_digest, read_cached, write_cached
from reluvit.run.grid import leaves, run_name
from reluvit.run.schema import CONF_DIR, ConfigError, TrainConfig, is_schema_field, register, schema_type
from reluvit.search import search_path

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # of a cache entry: bumped when its layout changes
ON_DISK = ("imagefolder", "shards")  # the datasets read from data.path, the only ones sliced (data.train_split)
SHAPING = ("compose.py", "schema.py", "grid.py")  # the modules (beside this one) whose code shapes a composition
# OmegaConf's resolvers that read nothing but their arguments and the config, or (oc.env) what the key records
PURE_RESOLVERS = {"oc.env", "oc.create", "oc.decode", "oc.deprecated", "oc.select", "oc.dict.keys", "oc.dict.values",
                  "variant_name"}
_RESOLVER = re.compile(r"\$\{\s*([\w.-]+)\s*:")
_ENV_NAME = re.compile(r"oc\.env\s*:\s*['\"]?([A-Za-z_]\w*)['\"]?\s*(?=[,}])")


class Progress:
    """``<what>: done/total <unit> (elapsed)`` logged by a daemon thread ``first`` seconds into a step and every
    ``every`` seconds after, while it runs (a cold sweep composes and validates for tens of seconds, and imports
    torch on the way): never silent for long, and silent when the step is quick. Off for fewer than ``MANY`` runs
    (``runs``): one run's command stays silent (its errors are one line)."""

    MANY = 10

    def __init__(self, verb: str, runs: int, first: float = 1.0, every: float = 3.0) -> None:
        self.what = f"{verb} {runs} run{'s' * (runs != 1)}"
        self.enabled, self.first, self.every = runs >= self.MANY, first, every
        self.unit, self.done, self.total = "", 0, 0
        self.logged = False
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="reluvit-progress", daemon=True)

    def stage(self, unit: str, total: int) -> None:
        """Count ``total`` of ``unit`` from now on."""
        self.unit, self.done, self.total = unit, 0, total

    def advance(self, count: int = 1) -> None:
        self.done += count

    def _report(self) -> None:
        wait = self.first
        while not self._stop.wait(wait):
            wait = self.every
            log.info("%s: %d/%d %s (%.0f s)", self.what, self.done, self.total, self.unit,
                     time.monotonic() - self._start)
            self.logged = True

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
        if self.logged and exc[0] is None:
            log.info("%s: done in %.0f s", self.what, time.monotonic() - self._start)


def config_dirs() -> list[Path]:
    """The directories Hydra reads the configs from, in order (:func:`reluvit.search.search_path`)."""
    return search_path("conf")


def config_digest(dirs: Sequence[Path] | None = None) -> str | None:
    """Digest of the config directories (default :func:`config_dirs`): each file's path and content, and the
    values of the environment variables that their ``${oc.env:...}`` interpolations read; None where an
    interpolation reads something else that changes (Hydra's ``now``): what they compose to cannot be cached."""
    digest, texts = hashlib.sha256(), []
    for i, directory in enumerate(config_dirs() if dirs is None else dirs):
        directory = Path(directory)
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            data = path.read_bytes()
            digest.update(f"{i}/{path.relative_to(directory).as_posix()}:{len(data)}\n".encode())
            digest.update(data)
            texts.append(data.decode(errors="replace"))
    reads = interpolation_reads(texts)
    if reads is None:
        return None
    digest.update(json.dumps(reads, sort_keys=True).encode())
    return digest.hexdigest()


def interpolation_reads(texts: Iterable[str]) -> dict[str, str | None] | None:
    """What the interpolations in ``texts`` read from outside the configs: each environment variable that
    ``${oc.env:NAME}`` names, with its value (the whole environment where a name is not written out); None where
    a resolver reads anything else (Hydra's ``now`` and ``hydra``, a registered one)."""
    names, every_variable = set(), False
    for text in texts:
        if set(_RESOLVER.findall(text)) - PURE_RESOLVERS:
            return None
        found = _ENV_NAME.findall(text)
        names.update(found)
        every_variable |= text.count("oc.env") > len(found)
    if every_variable:
        return dict(os.environ)
    return {name: os.environ.get(name) for name in names}


def composition_key(points: list[list[str]]) -> str | None:
    """Digest of everything the composition of ``points`` depends on: the config files and the environment they
    read (:func:`config_digest`), the points and the environment variables they read, the code of the modules
    that shape it (:data:`SHAPING`), and the versions of Hydra, OmegaConf and Python. None where it cannot be cached
    (an interpolation reads the time)."""
    from hydra import __version__ as hydra_version

    configs, reads = config_digest(), interpolation_reads(o for point in points for o in point)
    if configs is None or reads is None:
        return None
    here = Path(__file__).parent
    parts = [CACHE_FORMAT, configs, reads, points, files_digest(here / name for name in SHAPING),
             hydra_version, omegaconf.__version__, sys.version]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


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
    return {p.name for d in config_dirs() for p in d.iterdir() if p.is_dir()}


def compose_points(points: list[list[str]]) -> list[DictConfig]:
    """Resolved, named configs of many points (:func:`compose_fresh`), read from the cache where they were composed
    before with nothing that shapes them changed."""
    return _cached_composition(points, "configs")


def compose_containers(points: list[list[str]]) -> list[dict]:
    """:func:`compose_points` as plain resolved containers (``OmegaConf.to_container`` of each), read from the
    cache faster still: for readers that need no DictConfig (which takes ~1 ms a config to read back or convert)."""
    return _cached_composition(points, "containers")


def _cached_composition(points: list[list[str]], part: str) -> list:
    points = [list(point) for point in points]
    key = composition_key(points)
    cached = read_cached("compose", key) if key else None
    if isinstance(cached, dict) and cached.get("points") == points:
        try:
            return _unpickle(cached[part])
        except Exception as e:  # noqa: BLE001 - a corrupt entry is a miss
            log.debug("ignoring the cached composition %s: %s", key, e)
    configs = compose_fresh(points)
    containers = [OmegaConf.to_container(cfg) for cfg in configs]
    if key:
        write_cached("compose", key, {"points": points, "configs": pickle.dumps(configs, pickle.HIGHEST_PROTOCOL),
                                      "containers": pickle.dumps(containers, pickle.HIGHEST_PROTOCOL)})
    return configs if part == "configs" else containers


def _unpickle(data: bytes) -> object:
    """``pickle.loads`` without the cyclic garbage collector, and what it made frozen out of later collections
    (:func:`gc.freeze`): a sweep's configs are ~50 000 OmegaConf nodes (a million objects), all kept; the collections
    their creation sets off took 80 % of the time, and each later one that traversed them (the one at exit too) took
    0.1-0.5 s, half of a warm dry run. The next read unfreezes them and collects the configs dropped since (a long
    process: the tests)."""
    enabled = gc.isenabled()
    gc.disable()
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    try:
        return pickle.loads(data)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def compose_fresh(points: list[list[str]]) -> list[DictConfig]:
    """Resolved, named configs of many points, composed now: Hydra composes in ~0.1 s, so each combination of
    config-group choices is composed once (it is also the *defaults* that the run name is relative to), then each
    point's plain ``key=value`` overrides are set on a copy, typed and checked by the schema. A point with
    ``+key``/``~key`` overrides is composed by Hydra in full."""
    groups = _groups()
    parsed = [_parse(point) for point in points]
    for override in (o for p in parsed for o in p if o.key_or_group not in groups):
        _check_override(override)
    choices = [tuple(o.input_line for o in p if o.key_or_group in groups) for p in parsed]
    plain = [all(o.key_or_group in groups or not (o.is_add() or o.is_delete() or o.is_force_add()) for o in p)
             for p in parsed]
    full = [point for point, fast in zip(points, plain, strict=True) if not fast]
    with Progress("composing", len(points)) as progress:
        keys = list(dict.fromkeys([*choices, *map(tuple, full)]))
        progress.stage("config-group combinations composed by Hydra", len(keys))
        composed = dict(zip(keys, compose_all([list(k) for k in keys], progress=progress), strict=True))
        progress.stage("resolved and named", len(points))
        defaults: dict[tuple, dict] = {}  # the leaves of each combination's config, shared by its points
        configs = []
        for point, overrides, choice, fast in zip(points, parsed, choices, plain, strict=True):
            cfg = composed[choice].copy() if fast else composed[tuple(point)].copy()
            for override in overrides if fast else ():
                if override.key_or_group not in groups:
                    try:
                        OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False)
                    except Exception as e:  # the schema refuses the key or the value's type
                        raise ConfigError(override.key_or_group, _first_line(e)) from None
            if choice not in defaults:
                defaults[choice] = leaves(OmegaConf.to_container(composed[choice], resolve=False))
            configs.append(_finish(cfg, defaults[choice]))
            progress.advance()
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


def _finish(cfg: DictConfig, base: dict) -> DictConfig:
    """Resolve every interpolation (the config travels to jobs and summaries as plain values) and name the run
    (relative to ``base``, the leaves of its config-group combination's defaults)."""
    raw = leaves(OmegaConf.to_container(cfg, resolve=False))
    missing = sorted(key for key, value in raw.items() if value == "???")
    if missing:
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


def check_data_path(cfg: DictConfig) -> None:
    """``data.path`` of the datasets read from disk: required, and a folder of the dataset's layout. A data option
    whose path defaults to an environment variable (``${oc.env:RELUVIT_IMAGENET1K,null}``) names it."""
    dataset = OmegaConf.select(cfg, "data.dataset", throw_on_missing=False)
    if dataset not in ON_DISK:
        return
    path, variable = cfg.data.path, _path_variable(cfg)
    if not path:
        hint = f"set {variable} or data.path=..." if variable else "add data.path=..."
        raise ConfigError("data.path", f"a value is required for dataset={dataset} ({hint})")
    origin = f" (from {variable})" if variable and os.environ.get(variable) == path else ""
    if dataset == "imagefolder" and not all((Path(path) / s).is_dir() for s in ("train", "val")):
        raise ConfigError("data.path", f"{path!r}{origin} is not a folder with train/ and val/ subfolders")
    if dataset == "shards" and not (Path(path) / "_info.json").is_file():
        raise ConfigError("data.path", f"{path!r}{origin} holds no _info.json: write shards with `reluvit shards`")


def _path_variable(cfg: DictConfig) -> str | None:
    """The environment variable that the data option's ``path`` interpolates, read from its file in the config
    directories' ``data/`` (``data.name`` is the option's name; the first directory that has it)."""
    name = f"{OmegaConf.select(cfg, 'data.name', throw_on_missing=False)}.yaml"
    file = next((d / "data" / name for d in config_dirs() if (d / "data" / name).is_file()), None)
    raw = OmegaConf.to_container(OmegaConf.load(file), resolve=False).get("path") if file else None
    variable = re.match(r"\$\{oc\.env:(\w+)", str(raw))
    return variable[1] if variable else None


def _first_line(error: Exception) -> str:
    return str(getattr(error, "msg", None) or error).strip().splitlines()[0]


def compose_all(override_lists: list[list[str]], config_name: str = "train",
                progress: Progress | None = None) -> list[DictConfig]:
    """Hydra's own composition of ``conf/<config_name>.yaml`` for each override list, under one initialisation
    (each one counted by ``progress``). The user's config directories come first in Hydra's search path, the packaged
    one last (:func:`config_dirs`, put there by the search path plugin ``hydra_plugins.reluvit_searchpath``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    register()
    config_dirs()  # a user's config directory that is not there: refused before Hydra starts
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            configs = []
            for overrides in override_lists:
                configs.append(hydra_compose(config_name, overrides=list(overrides)))
                if progress is not None:
                    progress.advance()
            return configs
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

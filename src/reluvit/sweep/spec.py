"""Sweep files: ``sweeps/<name>.yaml`` (found by :mod:`reluvit.search`: the user's sweep directories, then the
packaged one) holds, per scale, the grid as blocks (each the cartesian product of its keys), the paper's claims that
its runs test (:mod:`reluvit.report.claims`) and the keyword arguments of its plot (:mod:`reluvit.report.plots`). The
figures of the paper are sweeps ``fig1`` ... ``fig5``; the demo is the sweep ``demo``. Extra overrides may use
Hydra's sweep syntax (``seed=0,1``): they multiply every point."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from reluvit import search
from reluvit.run.schema import ConfigError

SCALES = ("smoke", "paper")


def names() -> list[str]:
    """The sweeps there are (``sweeps/*.yaml`` of every sweep directory)."""
    return search.names("sweeps")


def _override(key: str, value) -> str:
    text = str(value).lower() if isinstance(value, bool) else "null" if value is None else str(value)
    return f"{key}={text}"


@dataclass
class Block:
    """One cartesian block: ``keys`` maps a Hydra key (config group or dotted key) to its values."""

    keys: dict[str, list]
    requires: str | None = None  # "gpu": left out on a machine without one

    def points(self) -> list[list[str]]:
        """Every point of the block as an override list, the first key varying slowest."""
        return [[_override(k, v) for k, v in zip(self.keys, combo, strict=True)]
                for combo in itertools.product(*self.keys.values())]


@dataclass
class Sweep:
    name: str
    scale: str
    blocks: list[Block]
    plot: dict  # the keyword arguments of its plot function
    figure: str | None = None  # the function of reluvit.report.plots that draws it; None: rolled up only
    claims: list[dict] = field(default_factory=list)  # the paper's claims it tests: reluvit.report.claims.Claim's
    plot_seeds: list[int] | None = None  # the seeds its figure draws (the plot: block's seeds:); None: all

    def runnable(self, gpu: bool) -> list[Block]:
        return [b for b in self.blocks if b.requires is None or (b.requires == "gpu" and gpu)]

    def gpu_only_models(self) -> list[str]:
        """The models only blocks that require a GPU train (the smoke L = 784 column)."""
        models = {m for b in self.blocks if b.requires == "gpu" for m in b.keys.get("model", [])}
        return sorted(models - {m for b in self.runnable(gpu=False) for m in b.keys.get("model", [])})

    def points(self, gpu: bool, extra: list[str] = ()) -> list[list[str]]:
        """The runnable points, each with ``extra`` (sweep syntax in it expanded), in order, without repeats."""
        from reluvit.run.compose import expand

        extras = expand(list(extra))
        unique = dict.fromkeys(tuple([*p, *e]) for b in self.runnable(gpu) for p in b.points() for e in extras)
        return [list(p) for p in unique]


def path(name: str) -> Path:
    """The file of sweep ``name``: the first ``<name>.yaml`` of the sweep directories."""
    found = search.find("sweeps", f"{name}.yaml")
    if found is None:
        raise ConfigError("sweep", f"no sweep {name!r}; known sweeps: {', '.join(names())}")
    return found


def has_scale(name: str, scale: str) -> bool:
    return scale in yaml.safe_load(path(name).read_text())["scales"]


def load_many(chosen: list[str], scale: str, seeds: list[int] | None = None) -> list[Sweep]:
    """The sweeps ``chosen`` (every sweep that has ``scale`` when none is), each :func:`load`-ed."""
    return [load(name, scale, seeds) for name in chosen or names() if chosen or has_scale(name, scale)]


def load(name: str, scale: str, seeds: list[int] | None = None) -> Sweep:
    """Read ``sweeps/<name>.yaml`` at ``scale``; ``seeds`` replaces the seed list of every block."""
    file = path(name)
    spec = yaml.safe_load(file.read_text())
    if scale not in spec["scales"]:
        raise ConfigError("scale", f"{file} has no scale {scale!r}; it has: {', '.join(spec['scales'])}")
    blocks = []
    for raw in spec["scales"][scale]["blocks"]:
        raw = dict(raw)
        requires = raw.pop("requires", None)
        keys = {k: list(v) if isinstance(v, list) else [v] for k, v in raw.items()}
        if seeds is not None:  # first, as in the sweep files: a point's overrides in one order, whatever its block
            keys = {"seed": list(seeds), **{k: v for k, v in keys.items() if k != "seed"}}
        blocks.append(Block(keys, requires))
    scaled = spec["scales"][scale]
    plot = dict(scaled.get("plot") or {})
    plot_seeds = plot.pop("seeds", None)
    return Sweep(name, scale, blocks, plot, spec.get("figure"), scaled.get("claims") or [], plot_seeds)

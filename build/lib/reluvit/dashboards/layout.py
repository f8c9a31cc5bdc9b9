"""What each figure's W&B panels show, derived from the figure's plot arguments in ``sweeps/<name>.yaml`` (the same
ones :mod:`reluvit.report.plots` draws from): one :class:`Panel` per panel of the figure, naming the runs it draws
(grid keys), its axes (roll-up columns) and the grid keys that split its runs into lines."""

from __future__ import annotations

from dataclasses import dataclass

from reluvit.report.plots import metric_of
from reluvit.report.rollup import RESULT_KEYS
from reluvit.run.grid import GRID
from reluvit.sweep.spec import Sweep

TITLES = {
    "fig1": "Figure 1: softmax vs relu/seqlen, accuracy against compute",
    "fig2": "Figure 2: L^-alpha h(q.k/sqrt(d)) against alpha, one line per activation h",
    "fig3": "Figure 3: qk-layernorm ablation",
    "fig4": "Figure 4: gating ablation",
    "fig5": "Figure 5: softmax-free attentions at one model size",
    "train_length": "The smoke recipe's training length",
}
SUMMARY_NAMESPACES = ("val", "train", "fewshot")  # logged as "<namespace>/<name>", rolled up as "<namespace>_<name>"


@dataclass(frozen=True)
class Panel:
    title: str
    where: dict  # roll-up column -> value (or list of values): the runs of this panel
    x: str  # roll-up columns
    y: str
    lines: tuple[str, ...]  # roll-up columns (grid keys) whose values split the runs into lines
    log_x: bool = False

    @property
    def x_name(self) -> str:
        """The x axis's name on a chart: ``core hours`` for ``core_hours``."""
        return self.x.replace("_", " ")


def wandb_key(column: str) -> str:
    """The W&B key of a roll-up column: ``config.<column>`` for a grid key (the run's W&B config has them at top
    level); for a metric, ``summary.<the logged key>``: the roll-up spells ``val/i1k_acc`` as ``val_i1k_acc``, and
    the run's results (``core_hours``, ``train_flops``, ...: the roll-up's RESULT_KEYS) are logged under their own
    names."""
    if column in GRID:
        return f"config.{column}"
    if column in RESULT_KEYS:
        return f"summary.{column}"
    namespace, _, name = column.partition("_")
    return f"summary.{namespace}/{name}" if namespace in SUMMARY_NAMESPACES and name else f"summary.{column}"


def _fig1(models, recipe, metrics, x=("core_hours", "train_flops")) -> list[Panel]:
    xs = [x] if isinstance(x, str) else list(x)
    return [Panel(f"{label} vs {x_column.replace('_', ' ')}", {"recipe": recipe, "model": list(models)}, x_column,
                  metric, ("activation",), log_x=True)
            for x_column in xs for label, metric in metrics.items()]


def _alpha_panels(rows: dict, columns: dict, metric, lines: tuple[str, ...]) -> list[Panel]:
    return [Panel(f"{row_label}, {title}", {"recipe": recipe, "model": model}, "alpha", metric_of(metric, recipe),
                  lines) for row_label, recipe in rows.items() for title, model in columns.items()]


def _fig2(rows, columns, activations, alphas, metric="val_acc") -> list[Panel]:
    return _alpha_panels(rows, columns, metric, ("activation",))


def _fig3(columns, recipe, alphas, metric="val_acc") -> list[Panel]:
    return _alpha_panels({recipe: recipe}, columns, metric, ("activation", "qk_norm"))


def _fig4(columns, recipe, alphas, metric="val_acc") -> list[Panel]:
    return _alpha_panels({recipe: recipe}, columns, metric, ("activation", "gate"))


def _fig5(recipe, model, metric="val_acc", x="core_hours") -> list[Panel]:
    where, lines = {"recipe": recipe, "model": model}, ("activation", "learn_alpha")
    return [Panel(f"{model}: accuracy vs {x.replace('_', ' ')}", where, x, metric, lines, log_x=True),
            Panel(f"{model}: accuracy vs alpha", where, "alpha", metric, lines)]


def _train_length(recipe, model, epochs, metric="val_acc") -> list[Panel]:
    return [Panel(f"{model}, {recipe} recipe: accuracy vs epochs", {"recipe": recipe, "model": model}, "epochs",
                  metric, ("activation", "alpha"))]


LAYOUTS = {"fig1": _fig1, "fig2": _fig2, "fig3": _fig3, "fig4": _fig4, "fig5": _fig5, "train_length": _train_length}


def panels(sweep: Sweep) -> list[Panel]:
    """The panels of the figure ``sweep`` draws, from its plot arguments."""
    return LAYOUTS[sweep.figure](**sweep.plot)


def recipes(sweep: Sweep) -> list[str]:
    """The recipes of the sweep's runs at its scale: with the figure's tag, they select its runs in W&B."""
    return sorted({value for block in sweep.blocks for value in block.keys.get("recipe", [])})

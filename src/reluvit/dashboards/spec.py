"""A figure's W&B dashboards as a plain specification (JSON), and the wandb-workspaces objects built from it.

:func:`dashboards` writes, for one figure at one scale, the specification of a **report** (the figure run's image
and charts, then one panel grid per panel of the figure with the runs it draws, each grid's runs grouped into the
figure's lines) and of a **saved workspace view** (the figure's runs and its figure run, grouped by panel and line,
with the figure, its runs' scatter plots and their training curves). The specification names W&B keys
(``config.alpha``, ``summary.val/acc``) and filter expressions, so it is checked without a network and published
later: :func:`build_report` and :func:`build_workspace` turn it into ``wandb_workspaces`` objects, which
:func:`publish` saves."""

from __future__ import annotations

import json
from pathlib import Path

from reluvit.dashboards.layout import TITLES, Panel, panels, recipes, wandb_key
from reluvit.sweep.spec import Sweep

KINDS = ("report", "workspace")
LINE_SERIES = "wandb/lineseries/v0"  # the Vega chart wandb.plot.line_series logs, and its table's fields
LINE_SERIES_FIELDS = {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"}
HISTORY = ("val/acc", "train/loss")  # training curves in the workspace


def figure_run_name(sweep: Sweep) -> str:
    """The figure run's name and its ``config.figure_run``: ``fig2-smoke``."""
    return f"{sweep.name}-{sweep.scale}"


def chart_key(index: int) -> str:
    """The key the figure run logs the line chart of panel ``index`` (0-based) under."""
    return f"chart/panel{index + 1}"


def _condition(column: str, value) -> str:
    key = wandb_key(column).split(".", 1)[1]
    return f"Config({key!r}) in {list(value)!r}" if isinstance(value, list) else f"Config({key!r}) = {value!r}"


def runs_filter(sweep: Sweep, where: dict | None = None) -> str:
    """W&B filter of the figure's training runs at its scale (its tag and the scale's recipes), narrowed to
    ``where`` (roll-up column -> value or list of values)."""
    conditions = [f"Tags() in [{sweep.name!r}]", _condition("recipe", recipes(sweep))]
    conditions += [_condition(column, value) for column, value in (where or {}).items()]
    return " and ".join(conditions)


def figure_run_filter(sweep: Sweep) -> str:
    return f"Config('figure_run') = {figure_run_name(sweep)!r}"


def _scatter(panel: Panel, title: str | None = None) -> dict:
    return {"type": "scatter", "title": title or panel.title, "x": wandb_key(panel.x), "y": wandb_key(panel.y),
            "log_x": panel.log_x}


def _figure_panels(layout: list[Panel]) -> list[dict]:
    media = {"type": "media", "title": "the figure from the roll-up; reference: the committed one",
             "media_keys": ["figure", "reference"]}
    charts = [{"type": "line_series", "title": panel.title, "table": f"{chart_key(i)}_table",
               "xname": panel.x_name} for i, panel in enumerate(layout)]
    return [media, *charts]


def _groupby(panel: Panel, by_panel: bool = False) -> list[str]:
    keys = [k for k in panel.where if by_panel] + list(panel.lines)
    return [wandb_key(k) for k in dict.fromkeys(keys)]


def report_spec(sweep: Sweep, footnote: str, entity: str | None, project: str, claims: str | None = None) -> dict:
    """The report: what it shows, the figure run's panels, the paper's claims tested on the runs (``claims``: the
    markdown of :func:`reluvit.report.claims.markdown`), then one grid of runs per panel."""
    layout = panels(sweep)
    text = (f"{TITLES[sweep.name]}, at {sweep.scale} scale: the runs of `sweeps/{sweep.name}.yaml` "
            f"(`make {sweep.name.replace('_', '-')} FLAGS='--scale {sweep.scale}' ARGS=logger=wandb`). "
            f"From the roll-up: "
            f"{footnote}. Below the figure, one grid per panel: each point is a run (seeds apart), coloured by "
            f"{' and '.join(layout[0].lines)}.")
    blocks = [{"type": "markdown", "text": text},
              {"type": "panel_grid", "runsets": [{"name": figure_run_name(sweep), "filters": figure_run_filter(sweep),
                                                 "groupby": []}],
               "panels": _figure_panels(layout)}]
    if claims:
        blocks.append({"type": "markdown", "text": f"## The paper's claims, tested on these runs\n\n{claims}"})
    blocks += [{"type": "panel_grid",
                "runsets": [{"name": panel.title, "filters": runs_filter(sweep, panel.where),
                             "groupby": _groupby(panel)}],
                "panels": [_scatter(panel)]} for panel in layout]
    return {"entity": entity, "project": project, "title": f"{TITLES[sweep.name]} ({sweep.scale})",
            "description": footnote, "blocks": blocks}


def workspace_spec(sweep: Sweep, entity: str | None, project: str) -> dict:
    layout = panels(sweep)
    def keys(panel: Panel) -> str:  # the W&B keys without their section: "val/acc vs alpha"
        return f"{wandb_key(panel.y).split('.', 1)[1]} vs {wandb_key(panel.x).split('.', 1)[1]}"

    scatters = list({(p.x, p.y): _scatter(p, keys(p)) for p in layout}.values())  # one per pair of axes
    history = [{"type": "line", "title": key, "x": "Step", "y": [key]} for key in HISTORY]
    return {"entity": entity, "project": project, "name": f"{sweep.name} ({sweep.scale})",
            "filters": f"({runs_filter(sweep)}) or ({figure_run_filter(sweep)})",
            "groupby": _groupby(layout[0], by_panel=True),
            "pinned_columns": [f"config:{key}.value" for key in _pinned(layout)],
            "sections": [{"name": "Figure", "panels": _figure_panels(layout)},
                         {"name": "Runs", "panels": scatters},
                         {"name": "Training curves", "panels": history}]}


def _pinned(layout: list[Panel]) -> list[str]:
    keys = [k for p in layout for k in (*p.where, *p.lines)] + ["seed"]
    return list(dict.fromkeys(keys))


def dashboards(sweep: Sweep, footnote: str, entity: str | None, project: str,
               claims: str | None = None) -> dict[str, dict]:
    """Both specifications of the figure: ``{"report": ..., "workspace": ...}``."""
    return {"report": report_spec(sweep, footnote, entity, project, claims),
            "workspace": workspace_spec(sweep, entity, project)}


def spec_paths(folder: Path, figure: str) -> dict[str, Path]:
    """``<folder>/<figure>.report.json`` and ``.workspace.json``."""
    return {kind: folder / f"{figure}.{kind}.json" for kind in KINDS}


def write(specs: dict[str, dict], paths: dict[str, Path]) -> None:
    for kind, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(specs[kind], indent=1) + "\n")


# --- wandb-workspaces objects ------------------------------------------------------------------------------------
def _axis(key: str):
    import wandb_workspaces.reports.v2 as wr

    section, _, name = key.partition(".")
    return {"config": wr.Config, "summary": wr.SummaryMetric}[section](name)


def build_panel(spec: dict):
    import wandb_workspaces.reports.v2 as wr

    kind = spec["type"]
    if kind == "scatter":
        return wr.ScatterPlot(title=spec["title"], x=_axis(spec["x"]), y=_axis(spec["y"]), log_x=spec["log_x"] or None)
    if kind == "line":
        return wr.LinePlot(title=spec["title"], x=spec["x"], y=list(spec["y"]))
    if kind == "media":
        return wr.MediaBrowser(title=spec["title"], media_keys=list(spec["media_keys"]), mode="gallery",
                               gallery_axis="run")
    if kind == "line_series":
        return wr.CustomChart(query={"summaryTable": {"tableKey": spec["table"]}}, chart_name=LINE_SERIES,
                              chart_fields=dict(LINE_SERIES_FIELDS),
                              chart_strings={"title": spec["title"], "xname": spec["xname"]})
    raise ValueError(f"unknown panel type {kind!r}")


def _entity(spec: dict) -> str:
    if spec["entity"]:
        return spec["entity"]
    import wandb

    return wandb.Api().default_entity


def build_report(spec: dict, entity: str | None = None):
    """The ``wandb_workspaces`` Report of a report specification (``entity``: the one to save under when the
    specification names none; resolving the default needs a login)."""
    import wandb_workspaces.reports.v2 as wr

    entity = entity or _entity(spec)
    blocks = []
    for block in spec["blocks"]:
        if block["type"] == "markdown":
            blocks.append(wr.MarkdownBlock(text=block["text"]))
        else:
            runsets = [wr.Runset(entity=entity, project=spec["project"], name=r["name"], filters=r["filters"],
                                 groupby=list(r["groupby"])) for r in block["runsets"]]
            blocks.append(wr.PanelGrid(runsets=runsets, panels=[build_panel(p) for p in block["panels"]]))
    return wr.Report(entity=entity, project=spec["project"], title=spec["title"], description=spec["description"],
                     blocks=blocks)


def build_workspace(spec: dict, entity: str | None = None):
    """The ``wandb_workspaces`` Workspace (a saved view) of a workspace specification."""
    import wandb_workspaces.workspaces as ws

    groupby = [ws.Config(key.split(".", 1)[1]) for key in spec["groupby"]]
    return ws.Workspace(
        entity=entity or _entity(spec), project=spec["project"], name=spec["name"],
        sections=[ws.Section(name=s["name"], panels=[build_panel(p) for p in s["panels"]], is_open=True)
                  for s in spec["sections"]],
        runset_settings=ws.RunsetSettings(filters=spec["filters"], groupby=groupby,
                                          pinned_columns=list(spec["pinned_columns"])))


def publish(paths: dict[str, Path]) -> list[str]:
    """Save the report and the workspace view whose specifications are at ``paths``; returns their URLs."""
    specs = {kind: json.loads(path.read_text()) for kind, path in paths.items()}
    report = build_report(specs["report"]).save()
    workspace = build_workspace(specs["workspace"]).save_as_new_view()
    return [report.url, workspace.url]

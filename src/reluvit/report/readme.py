"""``results/README.md``, written from the committed smoke reproduction (``results/reference/smoke/``): what was
trained (runs, seeds, core hours, commits), the verdicts of ``claims.csv`` claim by claim, the training-length study
with its intervals, and the disclosures that go with them. Every number in it is computed here from the roll-ups;
``make reference-figures`` rewrites it, and a test fails when the committed file differs from what this writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from reluvit.report.claims import VERDICTS
from reluvit.report.figures import sweep_rows
from reluvit.report.plots import BARS, PAPER, aggregate, matching
from reluvit.run.rundir import Status
from reluvit.sweep.spec import load_many

SCALE = "smoke"
INTRO = """\
# results

Roll-up tables (`*.parquet`, `*.csv`), figures and claims are written here by `make demo`, `make figN`, `make plots`
and `reluvit results`; they are not committed. `reference/smoke/` holds the committed smoke-scale reproduction
(Animal-MNIST and Fashion-MNIST, micro ViTs on a 2-core CPU): the figures, their roll-ups (`runs.csv`,
`train_length_runs.csv`) and the verdicts on the paper's claims (`claims.md`, `claims.csv`). Only the maintainer
targets `make reference-runs` (add completed clean-commit runs) and `make reference-figures` (figures, claims and this
file, from the roll-ups alone) write there.

This file is written by `python -m reluvit.report.readme` (`make reference-figures`): every number and verdict below
is computed from the committed roll-ups; edit the code, not the text.
"""
DISCLOSURES = """\
## How to read the verdicts

- **Each claim is the paper's sentence, stated as data** in its sweep file (`claims:`), and tested on the sweep's
  runs: paired-by-seed differences (the same seed: the same data order and initial weights), two-sided 95 %
  intervals, equivalence by two one-sided tests at the claim's margin, Holm's correction across each figure's
  claims. **agrees**: the test supports the claim; **differs**: the data contradict it; **inconclusive**: neither,
  with the reason (too few seeds, an interval wider than the margin). docs/claims.md has the statistics and the
  power calculation behind the gap row's 40 seeds.
- **The smoke scale is not the paper's scale**: micro ViTs (widths 64-128, 2-6 layers) trained for 16 epochs on
  10 000 28x28 images. A verdict here says what these runs show, not what ImageNet runs would.
- **The training length was chosen after seeing a result.** The first reproduction trained 8 epochs; at 8 epochs
  relu/L trailed softmax, unlike the paper, and the training-length study (below) then chose 16 epochs, on the same
  1 000-image validation set that every figure reports. Nothing was retrained to undo that choice: read the verdicts
  that favour the paper with it in mind.
- **The 10-shot probes**: `fewshot_digits_*` probes a dataset the model never saw (transfer); `fewshot_animal_mnist_*`
  draws its shots from Animal-MNIST's own training split (in-domain, not transfer). Figure 1's transfer claims use the
  digits probe.
- **Core hours** are training wall time times the devices of the run (`core_hours`): runs trained alone used the
  2-core CPU as one device, runs trained as jobs of the local SLURM one core each, two jobs at a time; timing claims
  compare runs that shared the machine with others.
"""


def _seeds(runs: pd.DataFrame) -> str:
    """The seed counts of a sweep's points: "3" or "1-40"."""
    keys = [c for c in runs.columns if c in {"recipe", "data", "model", "activation", "alpha", "qk_norm", "gate",
                                              "learn_alpha", "epochs"}]
    if not len(runs) or not keys:
        return "0"
    counts = runs.groupby(keys, dropna=False)["seed"].nunique()
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}-{high}"


def trained(tables: list[tuple], table: pd.DataFrame) -> str:
    """Per sweep: completed runs, the seeds of its points, core hours; then the whole roll-up by commit."""
    lines = ["## What was trained", "", "| sweep | completed runs | seeds per point | core hours |",
             "|---|---|---|---|"]
    for sweep, runs in tables:
        done = runs[runs["status"] == Status.COMPLETED] if len(runs) else runs
        hours = pd.to_numeric(done.get("core_hours", pd.Series(dtype=float)), errors="coerce").sum()
        lines.append(f"| {sweep.name} | {len(done)} | {_seeds(done)} | {hours:.2f} |")
    revisions = table["git_revision"].fillna("unknown").str[:7]
    hours = pd.to_numeric(table["core_hours"], errors="coerce")
    by_commit = hours.groupby(revisions).agg(["count", "sum"]).sort_values("count", ascending=False)
    dirty = int(table["git_revision"].fillna("").str.endswith("-dirty").sum())
    devices = ", ".join(sorted(table["device"].dropna().astype(str).unique())) if "device" in table else "unknown"
    lines += ["", f"In all {len(table)} runs, {hours.sum():.2f} core hours on {devices}, from {len(by_commit)} "
                  f"commits ({dirty} from a modified checkout).", "Runs shared between sweeps are trained once and "
                  "counted in each sweep above. By commit:", "",
              "| commit | runs | core hours |", "|---|---|---|"]
    lines += [f"| {commit} | {row['count']:.0f} | {row['sum']:.2f} |" for commit, row in by_commit.iterrows()]
    return "\n".join(lines) + "\n"


def verdicts(claims: pd.DataFrame) -> str:
    """Each claim's verdicts over its cells, figure by figure."""
    lines = ["## Verdicts on the paper's claims", "",
             "Claim by claim, the verdicts of its cells (each model, row or activation it is tested in); the effects, "
             "intervals and reasons are in `reference/smoke/claims.md`.", ""]
    for figure, rows in claims.groupby("figure", sort=False):
        lines.append(f"**{figure}**")
        lines.append("")
        for claim, cells in rows.groupby("claim", sort=False):
            counts = cells["verdict"].value_counts()
            tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v, 0))
            lines.append(f"- {claim}: {tally} (of {len(cells)}). Paper: {cells['paper'].iloc[0]}")
        lines.append("")
    return "\n".join(lines)


def relu6_twins(table: pd.DataFrame) -> str:
    """How often relu6 and relu trained the same: the clip at 6 never acts where |q.k|/sqrt(d) stays under 6."""
    keys = ["recipe", "data", "model", "alpha", "seed"]
    done = table[table["status"] == Status.COMPLETED]
    relu, relu6 = (matching(done, {"activation": h, **PAPER})[[*keys, "val_acc"]] for h in ("relu", "relu6"))
    pairs = relu.merge(relu6, on=keys, suffixes=("_relu", "_relu6"))
    same = int((pairs["val_acc_relu"] == pairs["val_acc_relu6"]).sum())
    return (f"- **relu6 and relu**: of the {len(pairs)} relu6 runs with a relu run of the same cell and seed, "
            f"{same} have the same validation accuracy to the last digit: there the clip at 6 never acted (training "
            "is deterministic; runs trained on other core counts differ anyway). Figure 2's best-alpha claim counts "
            "the two as separate curves: where they agree, read their verdicts as one.\n")


def training_length(table: pd.DataFrame) -> str:
    """The training-length study: validation accuracy per length and attention, mean and 95 % interval."""
    if not len(table):
        return ""
    curves = {"softmax": {"activation": "softmax"}, "relu/L": {"activation": "relu", "alpha": 1.0},
              "relu (alpha 0)": {"activation": "relu", "alpha": 0.0}}
    epochs = sorted(pd.to_numeric(table["epochs"], errors="coerce").dropna().astype(int).unique())
    lines = ["## The training-length study (`train_length_runs.csv`)", "",
             f"Figure 2's gap-row cell at L = 49 (micro4, Animal-MNIST), validation accuracy, mean [{BARS['ci95']}]:",
             "", "| epochs | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
    for epoch in epochs:
        cells = []
        for where in curves.values():
            row = aggregate(table, [{"epochs": epoch, **where}]).iloc[0]
            interval = f" [{row['low']:.3f}, {row['high']:.3f}]" if np.isfinite(row["low"]) else ""
            cells.append(f"{row['mean']:.3f}{interval} (n={row['n']})" if row["n"] else "-")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def readme(reference: Path) -> str:
    """The text of ``results/README.md`` from the committed reference folder."""
    from reluvit.report.rollup import read_table

    table = read_table(reference / "runs.csv")
    tables = [(sweep, sweep_rows(sweep, table)) for sweep in load_many([], SCALE) if sweep.name.startswith("fig")]
    claims = pd.read_csv(reference / "claims.csv")
    lengths = read_table(reference / "train_length_runs.csv")
    claims_md = (reference / "claims.md").read_text().replace("\n## ", "\n### ")  # its figures under this heading
    parts = [INTRO, trained(tables, table), verdicts(claims), DISCLOSURES + relu6_twins(table),
             training_length(lengths), "## The claims table\n\n" + claims_md]
    return "\n".join(part for part in parts if part).rstrip() + "\n"


if __name__ == "__main__":  # make reference-figures
    if len(sys.argv) != 3:
        print("usage: python -m reluvit.report.readme REFERENCE_DIR README.md", file=sys.stderr)
        sys.exit(2)
    Path(sys.argv[2]).write_text(readme(Path(sys.argv[1])))

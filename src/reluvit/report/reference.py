"""The committed smoke reproduction's roll-up, ``results/reference/smoke/runs.csv``: the runs of a sweep run in
pieces join it as they complete. Only completed runs trained from a clean commit qualify (their ``git_revision``
names the code that trained them); a run already in it (same identity, under the current or an earlier rule) keeps
its recorded row."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from reluvit.report.rollup import collect, read_table
from reluvit.run.grid import identities
from reluvit.run.rundir import DIRTY, Status, read_summary

log = logging.getLogger(__name__)


def extend(table: str | Path, runs_dir: str | Path) -> pd.DataFrame:
    """Append to ``table`` (a CSV roll-up) the completed, clean-commit runs under ``runs_dir`` it lacks; returns the
    rows added."""
    recorded = read_table(table)
    found = collect(runs_dir)
    if not len(found):
        log.info("no runs under %s", runs_dir)
        return found
    completed = found[found["status"] == Status.COMPLETED]
    dirty = completed["git_revision"].fillna(DIRTY).str.endswith(DIRTY)
    for name in completed.loc[dirty, "run_name"]:
        log.warning("left out (trained from a modified checkout): %s", name)
    known = set(recorded["identity"])  # of any version: a row of the reference keeps the digest it was added with
    recorded_already = completed["run_dir"].map(
        lambda run_dir: bool(known.intersection(identities(read_summary(run_dir)["config"]))))
    new = completed[~dirty & ~recorded_already]
    pd.concat([recorded, new], ignore_index=True).to_csv(table, index=False)
    log.info("%s: %d runs added (%d found, %d completed), %d in all", table, len(new), len(found), len(completed),
             len(recorded) + len(new))
    return new


if __name__ == "__main__":  # make reference-runs
    import sys

    if len(sys.argv) != 3:
        print("usage: python -m reluvit.report.reference TABLE.csv RUNS_DIR", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    extend(*sys.argv[1:])

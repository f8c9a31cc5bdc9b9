"""results/README.md is what reluvit.report.readme writes from the committed roll-ups and claims, and the committed
claims are what the claims code computes from the committed roll-up now: a statement typed by hand, or a verdict
that the data no longer give, fails here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from reluvit.report import claims as cl
from reluvit.report.figures import sweep_rows
from reluvit.report.readme import readme
from reluvit.report.rollup import read_table
from reluvit.sweep.spec import load_many

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference" / "smoke"


def test_the_committed_readme_is_written_from_the_committed_claims():
    assert (REPO / "results" / "README.md").read_text() == readme(REFERENCE), \
        "results/README.md is stale or edited by hand: make reference-figures (from a clean checkout)"


def test_a_changed_verdict_changes_the_readme(tmp_path):
    reference = Path(shutil.copytree(REFERENCE, tmp_path / "smoke"))
    table = pd.read_csv(reference / "claims.csv")
    table.loc[0, "verdict"] = "differs" if table.loc[0, "verdict"] != "differs" else "agrees"
    table.to_csv(reference / "claims.csv", index=False)
    assert readme(reference) != readme(REFERENCE)


@pytest.mark.slow
def test_the_committed_claims_are_what_the_roll_up_gives_now():
    table = read_table(REFERENCE / "runs.csv")
    tested = [cl.of_sweep(sweep, sweep_rows(sweep, table))
              for sweep in load_many([], "smoke") if sweep.claims]
    now = pd.concat(tested, ignore_index=True)
    committed = pd.read_csv(REFERENCE / "claims.csv")
    assert committed["verdict"].tolist() == now["verdict"].tolist()
    pd.testing.assert_series_equal(committed["effect"], now["effect"], check_exact=False, rtol=1e-9)

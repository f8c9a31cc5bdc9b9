"""Claims as data, verdicts as output: synthetic roll-ups with known effects (a true effect found, a null effect shown
equivalent, too few seeds inconclusive, a misplaced best alpha found), the statistics against their textbook formulas
(t quantiles and distribution functions from scipy), Holm's correction against known values, the power calculation
against a simulation, and every sweep file's claims well formed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from reluvit.report import claims as cl
from reluvit.run.schema import ConfigError
from reluvit.sweep import spec as sweeps

PAPER = {"recipe": "smoke", "model": "micro4", "qk_norm": True, "gate": False, "status": "completed"}


def rollup(cells: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    """A roll-up: (activation, alpha) -> val_acc per seed 0, 1, ..."""
    return pd.DataFrame([{**PAPER, "activation": activation, "alpha": alpha, "seed": seed, "val_acc": value}
                         for (activation, alpha), values in cells.items() for seed, value in enumerate(values)])


def claim(**kwargs) -> cl.Claim:
    return cl.Claim(**{"name": "c", "paper": "p", **kwargs})


RELU_VS_SOFTMAX = {"a": {"activation": "relu", "alpha": 1.0}, "b": {"activation": "softmax"}}


def test_a_true_effect_is_found_and_a_null_effect_is_shown_equivalent():
    rng = np.random.default_rng(0)
    base = 0.8 + rng.normal(0, 0.02, 12)  # seed effects shared by both sides: pairing removes them
    shifted = rollup({("softmax", 1.0): base, ("relu", 1.0): base + 0.05 + rng.normal(0, 0.005, 12)})
    same = rollup({("softmax", 1.0): base, ("relu", 1.0): base + rng.normal(0, 0.002, 12)})
    tests = [claim(test="greater", **RELU_VS_SOFTMAX), claim(test="equivalent", margin=0.01, **RELU_VS_SOFTMAX)]
    found = cl.evaluate("fig", tests, shifted)
    assert found["verdict"].tolist() == ["agrees", "differs"]
    assert found["effect"].iloc[0] == pytest.approx(0.05, abs=0.005) and found["seeds"].iloc[0] == "12"
    null = cl.evaluate("fig", tests, same)
    assert null["verdict"].tolist() == ["inconclusive", "agrees"]


def test_too_few_seeds_or_too_much_spread_is_inconclusive():
    one_seed = rollup({("softmax", 1.0): [0.8], ("relu", 1.0): [0.9]})
    row = cl.evaluate("fig", [claim(test="greater", **RELU_VS_SOFTMAX)], one_seed).iloc[0]
    assert row["verdict"] == "inconclusive" and "fewer than 2 seeds" in row["reason"] and row["seeds"] == "1/1"
    rng = np.random.default_rng(1)
    noisy = rollup({("softmax", 1.0): 0.8 + rng.normal(0, 0.03, 3), ("relu", 1.0): 0.8 + rng.normal(0, 0.03, 3)})
    row = cl.evaluate("fig", [claim(test="equivalent", margin=0.01, **RELU_VS_SOFTMAX)], noisy).iloc[0]
    assert row["verdict"] == "inconclusive" and "not within +-1.0" in row["reason"]


def test_the_best_alpha_is_found_where_it_is_and_refuted_where_it_is_not():
    rng = np.random.default_rng(2)
    seeds = rng.normal(0, 0.02, 6)

    def curve(peak: float) -> pd.DataFrame:
        return rollup({("relu", a): 0.85 - 0.1 * abs(a - peak) + seeds + rng.normal(0, 0.003, 6)
                       for a in (0.0, 0.5, 1.0, 1.5, 2.0)})

    best = claim(test="best", over="alpha", expect=1.0, where={"activation": "relu"})
    assert cl.evaluate("fig", [best], curve(1.0)).iloc[0]["verdict"] == "agrees"
    row = cl.evaluate("fig", [best], curve(0.5)).iloc[0]
    assert row["verdict"] == "differs" and row["b"].startswith("alpha 0.5")  # the runner-up that beats it
    assert row["effect"] == pytest.approx(-0.05, abs=0.01)
    flat = rollup({("relu", a): 0.85 + seeds + rng.normal(0, 0.01, 6) for a in (0.0, 1.0, 2.0)})
    assert cl.evaluate("fig", [best], flat).iloc[0]["verdict"] == "inconclusive"


def test_intervals_and_tests_equal_their_formulas():
    a = pd.Series([0.81, 0.84, 0.79, 0.86, 0.83])
    b = pd.Series([0.80, 0.80, 0.80, 0.83, 0.81])
    d = (a - b).to_numpy()
    n, mean, se = len(d), d.mean(), d.std(ddof=1) / math.sqrt(len(d))
    diff = cl.Difference(a, b)
    assert diff.paired and diff.interval() == pytest.approx((mean - stats.t.ppf(0.975, n - 1) * se,
                                                             mean + stats.t.ppf(0.975, n - 1) * se))
    margin = 0.02
    outcome = cl._equivalent(diff, margin)
    tost = max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1))
    assert outcome.p_agree == pytest.approx(tost)
    assert outcome.p_differ == pytest.approx(stats.t.sf((mean - margin) / se, n - 1))
    # seeds that do not pair: Welch's t with the Welch-Satterthwaite degrees of freedom
    other = pd.Series([0.79, 0.81, 0.80], index=[10, 11, 12])
    unpaired = cl.Difference(a, other)
    va, vb = a.var(ddof=1) / 5, other.var(ddof=1) / 3
    assert not unpaired.paired and unpaired.seeds == "5/3"
    welch_se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 2)
    low, high = unpaired.interval()
    assert (high - low) / 2 == pytest.approx(stats.t.ppf(0.975, dof) * welch_se, rel=1e-3)


def test_holm_matches_known_adjusted_values():
    assert cl.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert cl.holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # 2 x 0.5, capped at 1; then monotone
    assert cl.holm([]).tolist() == []


def test_holm_turns_a_marginal_agreement_inconclusive_among_many_claims():
    rng = np.random.default_rng(3)
    base = 0.8 + rng.normal(0, 0.02, 8)
    z = rng.normal(0, 1, 8)
    differences = 0.006 + 0.006 * (z - z.mean()) / z.std(ddof=1)  # t = sqrt(8): p = 0.026
    table = rollup({("softmax", 1.0): base, ("relu", 1.0): base + differences})
    single = cl.evaluate("fig", [claim(test="greater", **RELU_VS_SOFTMAX)], table)
    p = single["p"].iloc[0]
    assert 0.005 < p < 0.05 and single["verdict"].iloc[0] == "agrees"
    many = cl.evaluate("fig", [claim(test="greater", **RELU_VS_SOFTMAX)] * 20, table)
    assert (many["p_holm"] == min(1.0, 20 * p)).all() and set(many["verdict"]) == {"inconclusive"}


def test_the_power_calculation_matches_a_simulation():
    sd, margin = 3.2, 2.0
    n = cl.pairs_for_equivalence(sd, margin, power=0.8)
    rng = np.random.default_rng(4)
    draws = rng.normal(0, sd, (4000, n))
    mean, se = draws.mean(1), draws.std(1, ddof=1) / math.sqrt(n)
    t = stats.t.ppf(0.95, n - 1)
    decided = (mean - t * se > -margin) & (mean + t * se < margin)  # the 90 % interval inside the margin
    assert decided.mean() == pytest.approx(0.8, abs=0.04)
    assert cl.pairs_for_equivalence(sd, margin, power=0.8) > cl.pairs_for_equivalence(sd, 2 * margin, power=0.8)


def test_the_paper_defaults_fill_what_a_side_leaves_out():
    table = rollup({("softmax", 1.0): [0.8, 0.81], ("relu", 1.0): [0.9, 0.91]})
    ablated = table.assign(qk_norm=False, val_acc=0.1)  # a run without qk-layernorm is not "relu"
    row = cl.evaluate("fig", [claim(test="greater", **RELU_VS_SOFTMAX)], pd.concat([table, ablated])).iloc[0]
    assert row["effect"] == pytest.approx(0.1)


def test_a_learned_alpha_is_compared_with_a_number():
    table = pd.DataFrame([{**PAPER, "activation": "relu", "alpha": 0.25, "learn_alpha": "layer", "seed": s,
                           "attn_alpha_mean": v} for s, v in enumerate([0.99, 1.01, 1.0, 1.02])])
    row = cl.evaluate("fig5", [claim(test="equivalent", metric="attn_alpha_mean", margin=0.1,
                                     a={"activation": "relu", "learn_alpha": "layer", "alpha": 0.25}, b=1.0)],
                      table).iloc[0]
    assert row["verdict"] == "agrees" and row["b"] == "1" and row["seeds"] == "4"


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "paper": "p", "test": "matches", "b": 1.0}, "not one of: equivalent, greater, best"),
    ({"name": "x", "paper": "p", "test": "equivalent", "b": 1.0}, "needs a margin"),
    ({"name": "x", "paper": "p", "test": "best", "over": "alpha"}, "best needs over"),
    ({"name": "x", "paper": "p", "test": "greater"}, "b is missing"),
    ({"name": "x", "paper": "p", "test": "greater", "b": 1.0, "per": {"model": "micro4"}}, "non-empty list"),
    ({"name": "x", "paper": "p", "test": "greater", "b": 1.0, "colour": "red"}, "unexpected keyword"),
])
def test_a_malformed_claim_is_a_one_line_error(entry, message):
    with pytest.raises(ConfigError, match=message) as error:
        cl.parse([entry])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sweeps.names())
def test_every_sweep_files_claims_are_well_formed(name):
    for scale in sweeps.SCALES:
        if sweeps.has_scale(name, scale):
            for parsed in cl.parse(sweeps.load(name, scale).claims):
                assert parsed.paper and parsed.cells()


def test_the_markdown_shows_each_claims_rows_in_points():
    rng = np.random.default_rng(0)
    base = 0.8 + rng.normal(0, 0.02, 5)
    table = rollup({("softmax", 1.0): base, ("relu", 1.0): base + 0.05 + rng.normal(0, 0.004, 5)})
    text = cl.markdown(cl.evaluate("fig1", [claim(test="greater", **RELU_VS_SOFTMAX)], table))
    effect = (table["val_acc"].iloc[5:].to_numpy() - base).mean() * 100
    assert "## fig1: 1 agrees, 0 differs, 0 inconclusive" in text and f"| all | {effect:+.1f} |" in text


def test_the_power_table_in_the_docs_is_the_functions():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "claims.md").read_text()
    rows = re.findall(r"^\| (\d+) % \| (\d+) \|$", text, re.MULTILINE)
    assert len(rows) == 3
    for power, pairs in rows:
        assert cl.pairs_for_equivalence(3.2, 1.0, power=int(power) / 100) == int(pairs)

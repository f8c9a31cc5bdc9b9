"""The paper's claims, tested on the roll-up. A sweep file states its figure's claims as data (``claims:`` of a scale,
each the keyword arguments of :class:`Claim`); :func:`evaluate` tests each one on the sweep's runs and returns a table:
the effect with its 95 % confidence interval, the seeds behind it, the p-value (Holm-corrected across the figure's
claims) and a verdict, **agrees**, **differs** or **inconclusive**, with its reason. docs/claims.md explains the
statistics.

Tests (``test:``), each on ``metric`` of the runs ``where`` selects, once per cell of ``per`` (the cartesian product
of its lists):

* ``equivalent``: a matches b within +-``margin``: paired-by-seed differences (Welch's test where the seeds do not
  pair), equivalence by two one-sided tests (TOST) at the margin; it differs where the difference exceeds the margin
  (one-sided test against it). ``b`` may be a number (one-sample: a learned alpha against 1).
* ``greater``: a is above b: a two-sided t-test of the difference; differs where it is significantly below.
* ``best``: ``over`` is best at ``expect``: the expected value against every other value the cell's runs have,
  paired by seed; agrees where it beats each of them, differs where one beats it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import pandas as pd
from scipy import stats

from reluvit.report.plots import matching, paper_default
from reluvit.run.rundir import Status
from reluvit.run.schema import ConfigError

ALPHA = 0.05  # the tests' level: two-sided 95 % intervals, each side of TOST at 5 %
TESTS = ("equivalent", "greater", "best")
VERDICTS = ("agrees", "differs", "inconclusive")
COLUMNS = ["figure", "claim", "cell", "test", "paper", "metric", "a", "b", "seeds", "paired", "effect", "ci_low",
           "ci_high", "margin", "p", "p_holm", "verdict", "reason"]


@dataclass
class Claim:
    """One claim of a figure. ``a``/``b``: the two sides (roll-up columns -> values; the paper's attention defaults,
    qk-layernorm and no gate, fill the keys they leave out); ``where``: keys both sides share; ``per``: key -> values,
    one verdict per combination."""

    name: str
    test: str
    paper: str  # the paper's sentence (or the open question) that the claim encodes
    metric: str = "val_acc"
    a: dict = field(default_factory=dict)
    b: dict | float | None = None
    where: dict = field(default_factory=dict)
    per: dict = field(default_factory=dict)
    margin: float | None = None  # equivalent: in the metric's units (0.01 = 1 point of accuracy)
    over: str | None = None  # best: the key varied (alpha)
    expect: float | str | None = None  # best: where the paper puts the best value

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ConfigError("claims", f"{self.name}: test {self.test!r} is not one of: {', '.join(TESTS)}")
        if self.test == "equivalent" and not (isinstance(self.margin, Real) and self.margin > 0):
            raise ConfigError("claims", f"{self.name}: an equivalence needs a margin > 0 (metric units)")
        if self.test == "best" and (self.over is None or self.expect is None):
            raise ConfigError("claims", f"{self.name}: best needs over: (the key varied) and expect: (its best value)")
        if self.test != "best" and self.b is None:
            raise ConfigError("claims", f"{self.name}: {self.test} compares a with b: b is missing")
        if bad := [key for key, values in self.per.items() if not isinstance(values, list) or not values]:
            raise ConfigError("claims", f"{self.name}: per.{bad[0]} must be a non-empty list")

    def cells(self) -> list[dict]:
        return [dict(zip(self.per, combo, strict=True)) for combo in itertools.product(*self.per.values())]


def parse(entries: list[dict] | None) -> list[Claim]:
    """The claims of a sweep file's scale (one-line ConfigError for a malformed one)."""
    claims = []
    for entry in entries or []:
        try:
            claims.append(Claim(**entry))
        except TypeError as e:  # an unknown or missing key
            raise ConfigError("claims", f"{entry.get('name', entry)}: {e}") from None
    return claims


def _side(runs: pd.DataFrame, keys: dict, metric: str) -> pd.Series:
    """``metric`` of the completed runs ``keys`` selects, one value per seed (the mean where a seed has several)."""
    if "activation" in keys:
        keys = {**paper_default(keys["activation"]), **keys}
    chosen = matching(runs, keys)
    chosen = chosen[chosen["status"] == Status.COMPLETED] if "status" in chosen else chosen.iloc[:0]
    values = pd.to_numeric(chosen[metric], errors="coerce") if metric in chosen else pd.Series(dtype=float)
    seeds = pd.to_numeric(chosen["seed"], errors="coerce") if "seed" in chosen else pd.Series(0, index=chosen.index)
    return values.groupby(seeds).mean().dropna()


@dataclass
class Difference:
    """a - b over seeds: the mean, its 95 % interval, and the t-test machinery for one-sided tests against a shift."""

    a: pd.Series
    b: pd.Series | float

    def __post_init__(self) -> None:
        if isinstance(self.b, Real):
            self.paired, self.values = True, self.a - self.b
        else:
            common = self.a.index.intersection(self.b.index)
            self.paired = len(common) >= 2
            self.values = (self.a[common] - self.b[common]) if self.paired else None

    @property
    def seeds(self) -> str:
        if self.paired:
            return str(len(self.values))
        return f"{len(self.a)}/{len(self.b)}"

    @property
    def testable(self) -> bool:
        return len(self.values) >= 2 if self.paired else len(self.a) >= 2 and len(self.b) >= 2

    def mean(self) -> float:
        if self.paired:
            return float(self.values.mean()) if len(self.values) else math.nan
        return float(self.a.mean() - self.b.mean()) if len(self.a) and len(self.b) else math.nan

    def test(self, shift: float = 0.0, alternative: str = "two-sided"):
        """scipy's t-test of a - b against ``shift`` (paired / one-sample, else Welch's)."""
        if self.paired:
            return stats.ttest_1samp(self.values, shift, alternative=alternative)
        return stats.ttest_ind(self.a - shift, self.b, equal_var=False, alternative=alternative)

    def interval(self) -> tuple[float, float]:
        if not self.testable:
            return math.nan, math.nan
        low, high = self.test().confidence_interval(1 - ALPHA)
        return float(low), float(high)


@dataclass
class Outcome:
    """What one cell's test found; ``p_agree`` and ``p_differ`` are Holm-corrected across the figure later."""

    effect: float
    interval: tuple[float, float]
    seeds: str
    paired: bool
    p_agree: float
    p_differ: float
    note: str = ""  # why it cannot be tested, or which comparison the effect is


def _equivalent(diff: Difference, margin: float) -> Outcome:
    effect = diff.mean()
    if not diff.testable:
        return Outcome(effect, (math.nan, math.nan), diff.seeds, diff.paired, 1.0, 1.0, "fewer than 2 seeds a side")
    # TOST: both one-sided nulls (below -margin, above +margin) rejected
    p_agree = max(diff.test(-margin, "greater").pvalue, diff.test(margin, "less").pvalue)
    # beyond the margin on the side of the estimate
    p_differ = diff.test(margin, "greater").pvalue if effect > 0 else diff.test(-margin, "less").pvalue
    return Outcome(effect, diff.interval(), diff.seeds, diff.paired, float(p_agree), float(p_differ))


def _greater(diff: Difference) -> Outcome:
    effect = diff.mean()
    if not diff.testable:
        return Outcome(effect, (math.nan, math.nan), diff.seeds, diff.paired, 1.0, 1.0, "fewer than 2 seeds a side")
    p = float(diff.test().pvalue)
    return Outcome(effect, diff.interval(), diff.seeds, diff.paired, p if effect > 0 else 1.0,
                   p if effect < 0 else 1.0)


def _best(runs: pd.DataFrame, claim: Claim, keys: dict) -> tuple[Outcome, str]:
    """The expected value of ``over`` against each other value the runs have: agrees when it beats every one
    (the largest p of them), differs when one beats it (the smallest p of those, times their number)."""
    expected = _side(runs, {**keys, claim.over: claim.expect}, claim.metric)
    others = sorted({v for v in pd.to_numeric(matching(runs, keys).get(claim.over, pd.Series(dtype=float)),
                                              errors="coerce").dropna()} - {float(claim.expect)})
    diffs = {value: Difference(expected, _side(runs, {**keys, claim.over: value}, claim.metric))
             for value in others}
    diffs = {value: d for value, d in diffs.items() if len(d.b)}
    if not len(expected) or not diffs:
        return Outcome(math.nan, (math.nan, math.nan), str(len(expected)), False, 1.0, 1.0,
                       f"no runs at {claim.over} {claim.expect}" if not len(expected) else "nothing to compare"), ""
    runner_up = min(diffs, key=lambda value: diffs[value].mean())  # the closest competitor
    outcomes = {value: _greater(d) for value, d in diffs.items()}
    chosen = outcomes[runner_up]
    if not all(diff.testable for diff in diffs.values()):
        chosen.note = "fewer than 2 seeds at some value"
        chosen.p_agree = chosen.p_differ = 1.0
        return chosen, f"{claim.over} {_number(runner_up)} (closest of {len(outcomes)})"
    chosen.p_agree = max(o.p_agree for o in outcomes.values())
    chosen.p_differ = min(1.0, min(o.p_differ for o in outcomes.values()) * len(outcomes))
    return chosen, f"{claim.over} {_number(runner_up)} (closest of {len(outcomes)})"


def holm(p: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error at the level of the raw test)."""
    p = np.asarray(p, float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order]))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def _number(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, Real) else str(value)


def _label(keys: dict | float) -> str:
    if isinstance(keys, Real):
        return _number(keys)
    return ", ".join(f"{key} {_number(value)}" for key, value in keys.items())


def evaluate(figure: str, claims: list[Claim], runs: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and cell (:data:`COLUMNS`), Holm's correction across the figure's rows."""
    rows, outcomes = [], []
    for claim in claims:
        for cell in claim.cells():
            keys = {**claim.where, **cell}
            if claim.test == "best":
                outcome, compared = _best(runs, claim, keys)
                a, b = f"{claim.over} {_number(claim.expect)}", compared
            else:
                side_b = claim.b if isinstance(claim.b, Real) else _side(runs, {**keys, **claim.b}, claim.metric)
                diff = Difference(_side(runs, {**keys, **claim.a}, claim.metric), side_b)
                outcome = _equivalent(diff, claim.margin) if claim.test == "equivalent" else _greater(diff)
                a, b = _label(claim.a), _label(claim.b)
            outcomes.append(outcome)
            rows.append({"figure": figure, "claim": claim.name, "cell": _label(cell) or "all", "test": claim.test,
                         "paper": claim.paper, "metric": claim.metric, "a": a, "b": b, "seeds": outcome.seeds,
                         "paired": outcome.paired, "effect": outcome.effect, "ci_low": outcome.interval[0],
                         "ci_high": outcome.interval[1], "margin": claim.margin})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    agree, differ = holm([o.p_agree for o in outcomes]), holm([o.p_differ for o in outcomes])
    for row, outcome, p_agree, p_differ in zip(rows, outcomes, agree, differ, strict=True):
        row["verdict"], row["reason"] = _verdict(row, outcome, p_agree, p_differ)
        row["p"], row["p_holm"] = (outcome.p_agree, p_agree) if row["verdict"] != "differs" else \
            (outcome.p_differ, p_differ)
    return pd.DataFrame(rows, columns=COLUMNS)


def of_sweep(sweep, runs: pd.DataFrame) -> pd.DataFrame:
    """The claims of a sweep file's scale (:func:`parse`) tested on its runs (:func:`evaluate`)."""
    return evaluate(sweep.name, parse(sweep.claims), runs)


def _verdict(row: dict, outcome: Outcome, p_agree: float, p_differ: float) -> tuple[str, str]:
    if outcome.note and not np.isfinite(outcome.interval[0]):
        return "inconclusive", outcome.note
    interval = f"95 % CI [{_points(row, outcome.interval[0])}, {_points(row, outcome.interval[1])}]"
    if p_agree < ALPHA:
        return "agrees", f"{interval}; Holm p = {p_agree:.3g}"
    if p_differ < ALPHA:
        return "differs", f"{interval}; Holm p = {p_differ:.3g}"
    if outcome.note:
        return "inconclusive", outcome.note
    if row["test"] == "equivalent":
        return "inconclusive", f"{interval} not within +-{_points(row, row['margin'], '')}, nor beyond it"
    return "inconclusive", f"{interval}: neither side significant after Holm"


def is_accuracy(metric: str) -> bool:
    """Accuracies are shown in points (x100)."""
    return metric.endswith("acc") or metric.startswith("fewshot_")


def _points(row: dict, value: float, sign: str = "+") -> str:
    """``value`` in the row's metric, shown in points for accuracies; ``sign`` "" for a magnitude."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value * 100:{sign}.1f}" if is_accuracy(row["metric"]) else f"{value:{sign}.3g}"


def markdown(table: pd.DataFrame) -> str:
    """The claims table as markdown, one section per figure: claim, cell, the paper's sentence, the effect (points
    for accuracies) with its 95 % interval, the seeds, the verdict and its reason."""
    if not len(table):
        return "No claims.\n"
    parts = [f"Tests at {ALPHA:g}: two-sided 95 % intervals; equivalence by two one-sided tests at the claim's "
             "margin; Holm's correction across each figure's claims (docs/claims.md).\n"]
    for figure, rows in table.groupby("figure", sort=False):
        counts = rows["verdict"].value_counts()
        parts.append(f"## {figure}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + "\n")
        for claim, claim_rows in rows.groupby("claim", sort=False):
            first, best = claim_rows.iloc[0], claim_rows.iloc[0]["test"] == "best"
            margin = f", margin +-{_points(first, first['margin'], '')}" if first["test"] == "equivalent" else ""
            compared = f"{first['a']} against every other value" if best else f"{first['a']} vs {first['b']}"
            parts.append(f"**{claim}** ({first['test']}: {compared}, {first['metric']}{margin}). "
                         f"Paper: {first['paper']}\n")
            parts.append(f"| cell |{' closest |' if best else ''} effect | 95 % CI | seeds | verdict | reason |\n"
                         f"|---|{'---|' if best else ''}---|---|---|---|---|")
            for row in claim_rows.to_dict("records"):
                interval = f"[{_points(row, row['ci_low'])}, {_points(row, row['ci_high'])}]"
                closest = f" {row['b']} |" if best else ""
                parts.append(f"| {row['cell']} |{closest} {_points(row, row['effect'])} | {interval} | "
                             f"{row['seeds']} | **{row['verdict']}** | {row['reason']} |")
            parts.append("")
    return "\n".join(parts)


def pairs_for_equivalence(sd: float, margin: float, power: float = 0.8, true_difference: float = 0.0) -> int:
    """The paired seeds a TOST at +-``margin`` needs to decide "equivalent" with probability ``power`` when the true
    difference is ``true_difference`` and the paired differences have standard deviation ``sd`` (the normal
    approximation of the noncentral t, with the t quantile of n - 1 degrees of freedom)."""
    for n in range(2, 100_000):
        se, t = sd / math.sqrt(n), stats.t.ppf(1 - ALPHA, n - 1)
        reach = margin - t * se  # the estimate must lie within +-reach
        achieved = stats.norm.cdf((reach - true_difference) / se) - stats.norm.cdf((-reach - true_difference) / se)
        if reach > 0 and achieved >= power:
            return n
    raise ValueError(f"no n under 100 000 reaches power {power} (sd {sd}, margin {margin})")

"""Statistics of the validation suite: each arm against the baseline, paired over seeds.

Every arm (an improvement such as a supervised probe, calibrated weights or a warm start)
and the baseline run the same searches with the same seeds, so seed ``s`` of an arm and seed
``s`` of the baseline form a pair. Per arm the suite reports mean ± standard deviation over
seeds of the held-out refusal rate, first-token and k-token KL and the capability delta; a
paired t-test and Cohen's d of the refusal rates against the baseline; and a verdict.

The acceptance rule (:class:`AcceptanceRule`): an arm is accepted iff its refusals are
lower than the baseline's with two-sided paired ``p < alpha``, Cohen's d of the paired
differences (baseline minus arm) is above ``min_d``, and its first-token KL is not
significantly worse (one-sided paired test of "arm KL > baseline KL" with ``p >= alpha``).
With one seed no test is possible: p and d are NaN and nothing is accepted.

Rows are plain mappings with ``organism``, ``arm``, ``seed`` and the :data:`METRICS`
(``capability_delta`` may be None when no capability check ran).

Example:
    >>> rows = [{"organism": "m", "arm": "baseline", "seed": 0, "refusal_rate": 0.5, ...}, ...]
    >>> [(c.arm, c.p_refusal, c.accepted) for c in compare(rows)]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitlab.validation.power import PairedTest, paired_test

__all__ = [
    "FRONT_PREFIX",
    "METRICS",
    "AcceptanceRule",
    "Comparison",
    "Spread",
    "cohens_d",
    "compare",
    "paired_p",
    "spread",
    "verdicts",
]

METRICS = ("refusal_rate", "kl_first", "kl_k", "capability_delta")
# Front metrics (see :mod:`circuitlab.validation.power`) are found in the rows by name.
FRONT_PREFIX = ("refusal@", "front_area")
NAN = float("nan")


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``; NaN below two values) of one metric.

    Attributes:
        n: how many values (missing ones are not counted).
        mean, std: over those values (NaN when there are none).
    """

    n: int
    mean: float
    std: float

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def _values(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def spread(values: Sequence[float | None]) -> Spread:
    """Mean ± std of the values that are present (None and NaN are left out)."""
    x = _values(values)
    if not len(x):
        return Spread(0, NAN, NAN)
    return Spread(len(x), float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else NAN)


def _differences(baseline: Sequence[float], arm: Sequence[float]) -> np.ndarray:
    if len(baseline) != len(arm):
        raise ValueError(f"paired samples differ in length: {len(baseline)} vs {len(arm)}")
    # Rates like 7/98 - 5/98 differ from run to run only in their last bits; without
    # rounding, identical differences would have a tiny spurious spread and a huge t.
    return np.round(np.asarray(baseline, float) - np.asarray(arm, float), 12)


def paired_p(
    baseline: Sequence[float], arm: Sequence[float], alternative: str = "two-sided"
) -> float:
    """p-value of ``scipy.stats.ttest_rel(arm, baseline, alternative=...)``.

    Args:
        baseline, arm: paired values (same seeds, same order).
        alternative: ``two-sided``, ``greater`` (arm above baseline) or ``less``.

    Returns:
        The p-value; NaN with fewer than two pairs or when every difference is 0. When every
        difference is the same non-zero value the t statistic is infinite and p is 0.
    """
    from scipy import stats

    diff = _differences(baseline, arm)
    if len(diff) < 2:
        return NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: scipy's inf/nan
        # arm - baseline = -diff; ttest_rel(arm, baseline) is the one-sample test of it.
        result = stats.ttest_1samp(-diff, 0.0, alternative=alternative)
    return float(result.pvalue)


def cohens_d(baseline: Sequence[float], arm: Sequence[float]) -> float:
    """Cohen's d of paired differences ``baseline - arm``: their mean over their sample std.

    Positive when the arm is lower (for refusals: the arm removes more). NaN with fewer than
    two pairs or when every difference is 0; ±inf when all differences are equal and not 0.
    """
    diff = _differences(baseline, arm)
    if len(diff) < 2:
        return NAN
    mean, std = float(diff.mean()), float(diff.std(ddof=1))
    if std == 0.0:
        return NAN if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / std


@dataclass(frozen=True)
class AcceptanceRule:
    """When an arm counts as an improvement over the baseline.

    Attributes:
        alpha: significance level of both tests.
        min_d: Cohen's d of the refusal reduction must exceed this.
    """

    alpha: float = 0.05
    min_d: float = 0.3
    primary: str = "refusal_rate"

    def describe(self) -> str:
        if self.primary == "refusal_rate":
            kl = f" first-token KL is not significantly worse (one-sided paired p >= {self.alpha}),"
        else:  # a front metric already weighs refusals against KL
            kl = ""
        return (
            f"Accepted on an organism iff its {self.primary} is lower than the baseline's with "
            f"paired p < {self.alpha},{kl} and Cohen's d > {self.min_d}; accepted overall iff "
            "accepted on every organism. With one seed no test is possible: p and d are nan "
            "and nothing is accepted."
        )

    def verdict(
        self, p_refusal: float, d_refusal: float, lower: bool, p_kl_worse: float
    ) -> tuple[bool, str]:
        """(accepted, the first failed condition or "all conditions met")."""
        if math.isnan(p_refusal):
            return False, "no test (fewer than two paired seeds, or no difference)"
        if not lower:
            return False, f"{self.primary} not lower than the baseline's"
        if not p_refusal < self.alpha:
            return False, f"{self.primary} p {p_refusal:.3g} >= {self.alpha}"
        # NaN here means identical KLs: not worse.
        if p_kl_worse < self.alpha:
            return False, f"KL significantly worse (p {p_kl_worse:.3g})"
        if not d_refusal > self.min_d:
            return False, f"Cohen's d {d_refusal:.3g} <= {self.min_d}"
        return True, "all conditions met"


@dataclass(frozen=True)
class Comparison:
    """One arm on one organism: spreads over its seeds, and the paired tests.

    Attributes:
        organism, arm: what was compared.
        seeds: the seeds the arm ran (its spreads are over these).
        paired: the seeds shared with the baseline (the tests are over these).
        metrics: a :class:`Spread` per name in :data:`METRICS`.
        p_refusal: two-sided paired t-test of the refusal rates (NaN for the baseline).
        d_refusal: Cohen's d of baseline minus arm refusal rates.
        p_kl_worse: one-sided paired t-test that the arm's first-token KL is higher.
        accepted: the rule's verdict; None for the baseline itself.
        reason: why (the first condition that failed).
        tests: a :class:`PairedTest` (baseline minus arm) per refusal metric: the chosen
            point's ``refusal_rate`` and the front metrics the rows carry.
        primary: the metric the verdict is on.
    """

    organism: str
    arm: str
    seeds: tuple[int, ...]
    paired: tuple[int, ...]
    metrics: dict[str, Spread]
    p_refusal: float = NAN
    d_refusal: float = NAN
    p_kl_worse: float = NAN
    accepted: bool | None = None
    reason: str = "baseline"
    tests: dict[str, PairedTest] = field(default_factory=dict)
    primary: str = "refusal_rate"

    def as_row(self) -> dict[str, Any]:
        """Flat values (one CSV or table row)."""
        row: dict[str, Any] = {"organism": self.organism, "arm": self.arm, "n": len(self.seeds)}
        for name, s in self.metrics.items():
            row[f"{name}_mean"], row[f"{name}_std"] = s.mean, s.std
        row.update(
            n_paired=len(self.paired),
            p_refusal=self.p_refusal,
            d_refusal=self.d_refusal,
            p_kl_worse=self.p_kl_worse,
            accepted=self.accepted,
            reason=self.reason,
        )
        for name, t in self.tests.items():
            row.update({f"{name}_{k}": v for k, v in t.as_dict().items() if k != "n"})
        return row


def _by_seed(rows: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    out: dict[int, Mapping[str, Any]] = {}
    for row in rows:
        if row["seed"] in out:
            raise ValueError(f"two rows for {row['organism']}/{row['arm']} seed {row['seed']}")
        out[row["seed"]] = row
    return out


def front_metrics(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The front metrics the rows carry (``refusal@KL<=b`` and ``front_area``), in order."""
    names = dict.fromkeys(k for r in rows for k in r if k.startswith(FRONT_PREFIX))
    return tuple(names)


def _compare_arm(
    organism: str,
    arm: str,
    mine: dict[int, Mapping[str, Any]],
    base: dict[int, Mapping[str, Any]],
    rule: AcceptanceRule,
    front: tuple[str, ...],
) -> Comparison:
    seeds = tuple(sorted(mine))
    metrics = {m: spread([mine[s].get(m) for s in seeds]) for m in (*METRICS, *front)}
    if mine is base:
        return Comparison(organism, arm, seeds, seeds, metrics, primary=rule.primary)
    paired = tuple(s for s in seeds if s in base)

    def pair(metric: str) -> tuple[list[float], list[float]]:
        return [base[s][metric] for s in paired], [mine[s][metric] for s in paired]

    tests = {m: paired_test(*pair(m), alpha=rule.alpha) for m in ("refusal_rate", *front)}
    refusal_base, refusal_arm = pair("refusal_rate")
    kl_base, kl_arm = pair("kl_first")
    p_refusal = paired_p(refusal_base, refusal_arm)
    d_refusal = cohens_d(refusal_base, refusal_arm)
    p_kl = paired_p(kl_base, kl_arm, alternative="greater")
    primary_base, primary_arm = pair(rule.primary)
    lower = bool(paired) and float(np.mean(primary_arm)) < float(np.mean(primary_base))
    p_primary = paired_p(primary_base, primary_arm)
    d_primary = cohens_d(primary_base, primary_arm)
    # A front metric weighs refusals against KL already: the chosen point's KL is not tested.
    p_kl_rule = p_kl if rule.primary == "refusal_rate" else NAN
    accepted, reason = rule.verdict(p_primary, d_primary, lower, p_kl_rule)
    return Comparison(
        organism, arm, seeds, paired, metrics, p_refusal, d_refusal, p_kl, accepted, reason,
        tests, rule.primary,
    )  # fmt: skip


def compare(
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "baseline",
    rule: AcceptanceRule | None = None,
) -> list[Comparison]:
    """Compare every arm with the baseline of the same organism, pairing rows by seed.

    Args:
        rows: one per organism × arm × seed (see the module docstring).
        baseline: the arm the others are compared with.
        rule: the acceptance rule (default :class:`AcceptanceRule`).

    Returns:
        One :class:`Comparison` per organism × arm, in the order they first appear (each
        organism's baseline first).
    """
    rule = rule or AcceptanceRule()
    front = front_metrics(rows)
    if rule.primary not in ("refusal_rate", *front):
        raise ValueError(f"no metric {rule.primary!r} in the rows (front metrics: {front})")
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["organism"], row["arm"]), []).append(row)
    out = []
    for organism in dict.fromkeys(org for org, _ in groups):
        base = _by_seed(groups.get((organism, baseline), []))
        arms = [arm for org, arm in groups if org == organism]
        for arm in sorted(arms, key=lambda a: a != baseline):
            mine = base if arm == baseline else _by_seed(groups[(organism, arm)])
            out.append(_compare_arm(organism, arm, mine, base, rule, front))
    return out


def _effect(c: Comparison) -> str:
    t = c.tests.get(c.primary)
    if t is None or math.isnan(t.ci_low):
        return f"{c.organism}: no test ({len(c.paired)} paired seed(s))"
    why = "" if c.accepted else f" ({c.reason})"
    return (
        f"{c.organism}: Δ {t.mean:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p {t.p:.2g}, "
        f"MDE {t.mde:.3f}{why}"
    )


def verdicts(comparisons: Sequence[Comparison]) -> dict[str, str]:
    """One line per arm (the baseline left out) over every organism it ran on: accepted on
    all, on which ones, or not, with the primary metric's effect (baseline minus arm, 95 %
    interval) and minimum detectable effect per organism."""
    arms: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.accepted is not None:
            arms.setdefault(c.arm, []).append(c)
    out = {}
    for arm, cs in arms.items():
        won = [c.organism for c in cs if c.accepted]
        effects = "; ".join(_effect(c) for c in cs)
        if won and len(won) == len(cs):
            head = f"accepted on every organism ({', '.join(won)})"
        elif won:
            head = f"wins on {', '.join(won)} only"
        else:
            untested = all(len(c.paired) < 2 for c in cs)
            head = "no test possible" if untested else "not accepted"
        out[arm] = f"{head}: {effects}"
    return out

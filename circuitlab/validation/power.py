"""Front summaries of one run, and paired tests with their minimum detectable effect.

A search ends with a front of trade-offs (refusal rate against first-token KL), and the
chosen point is one of them. Comparing arms by the chosen point alone throws the rest away
and saturates: once the baseline's chosen point reaches 0 % refusals no arm can beat it.
:func:`front_summary` reads the whole test-split front instead:

* ``refusal@KL<=b`` for each KL budget ``b``: the lowest test refusal rate among the front's
  points whose test KL is at most ``b`` (the unedited model, refusal rate ``base`` at KL 0,
  always qualifies, so the value is defined for every run);
* ``front_area``: the mean of that best refusal rate over every budget in ``[0, kl_ref]``,
  i.e. the area under the front's step function divided by ``kl_ref``. It equals
  ``1 - hypervolume / kl_ref`` for the hypervolume of the front with reference point
  (refusal 1, KL ``kl_ref``), so lower is better and 0 means "no refusals at any KL".

:func:`paired_test` compares two paired samples (the same seeds): mean difference with a
95 % t interval, the paired t-test's p, Cohen's d, and the **minimum detectable effect**:
the smallest true mean difference the design would detect with ``power`` (80 %) at
``alpha``, given the number of pairs and the observed standard deviation of the
differences. When an arm is not accepted, an MDE above any plausible effect says the test
could not tell; a small MDE says the arm has no effect at least that large.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "PairedTest",
    "best_under_budget",
    "budget_name",
    "front_area",
    "front_summary",
    "min_detectable_effect",
    "paired_test",
]

NAN = float("nan")


def budget_name(budget: float) -> str:
    """The metric name of a KL budget, e.g. ``refusal@KL<=0.1``."""
    return f"refusal@KL<={budget:g}"


def _points(points: Sequence[tuple[float, float]], base: float) -> list[tuple[float, float]]:
    """(kl, refusal) pairs, the unedited model at KL 0 included, NaNs dropped."""
    out = [(0.0, float(base))]
    out += [(float(k), float(r)) for r, k in points if not (math.isnan(r) or math.isnan(k))]
    return out


def best_under_budget(points: Sequence[tuple[float, float]], base: float, budget: float) -> float:
    """Lowest refusal rate among ``points`` ((refusal, kl) pairs) with KL <= ``budget``; the
    unedited model (``base`` refusals, KL 0) always counts."""
    return min(r for k, r in _points(points, base) if k <= budget)


def front_area(points: Sequence[tuple[float, float]], base: float, kl_ref: float) -> float:
    """Mean over budgets ``b`` uniform in ``[0, kl_ref]`` of :func:`best_under_budget`.

    The best refusal rate is a step function of the budget, falling at each point's KL; its
    integral is a sum of rectangles. Written by hand: in two objectives the hypervolume is
    this sum, and optuna's hypervolume code is private API.
    """
    if not kl_ref > 0:
        raise ValueError(f"kl_ref must be positive, got {kl_ref}")
    steps = sorted(_points(points, base))
    area, best = 0.0, math.inf
    for (kl, refusal), nxt in zip(steps, [*(k for k, _ in steps[1:]), math.inf], strict=True):
        best = min(best, refusal)
        lo, hi = min(kl, kl_ref), min(nxt, kl_ref)
        area += best * (hi - lo)
    return area / kl_ref


def front_summary(
    points: Sequence[tuple[float, float]],
    base: float,
    budgets: Sequence[float],
    kl_ref: float,
) -> dict[str, float]:
    """``refusal@KL<=b`` per budget and ``front_area`` of one run's test-split front.

    Args:
        points: (refusal rate, first-token KL) of each scored trial, on the test split.
        base: the unedited model's test refusal rate.
        budgets: KL budgets in nats.
        kl_ref: the KL end of the area (its reference point).
    """
    out = {budget_name(b): best_under_budget(points, base, b) for b in budgets}
    out["front_area"] = front_area(points, base, kl_ref)
    return out


def min_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired t-test over ``n`` pairs detects with
    probability ``power``, when the differences' standard deviation is ``sd``.

    Solved exactly on the noncentral t distribution (scipy), not by the normal
    approximation, which is far too optimistic at a handful of seeds. NaN below two pairs;
    0 when ``sd`` is 0 (every difference equal: any non-zero effect is certain).
    """
    from scipy import optimize, stats

    if n < 2 or math.isnan(sd):
        return NAN
    if sd == 0:
        return 0.0
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(d: float) -> float:
        nc = d * math.sqrt(n)
        upper = stats.nct.sf(crit, df, nc)
        if math.isnan(upper):  # scipy's nct loses precision far out: use the normal limit
            upper = stats.norm.sf(crit - nc)
        lower = stats.nct.cdf(-crit, df, nc)  # the wrong-sign rejections, tiny
        return upper + (0.0 if math.isnan(lower) else lower) - power

    hi = 1.0
    while shortfall(hi) < 0:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi, xtol=1e-10)) * sd


@dataclass(frozen=True)
class PairedTest:
    """Baseline minus arm, paired by seed (positive: the arm is lower, i.e. better for
    refusal metrics).

    Attributes:
        n: pairs.
        mean: mean difference.
        ci_low, ci_high: its 95 % t interval.
        sd: standard deviation of the differences.
        p: two-sided paired t-test.
        d: Cohen's d (mean / sd).
        mde: minimum detectable effect at the test's alpha and 80 % power.
    """

    n: int
    mean: float
    ci_low: float
    ci_high: float
    sd: float
    p: float
    d: float
    mde: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(
    baseline: Sequence[float], arm: Sequence[float], alpha: float = 0.05, power: float = 0.8
) -> PairedTest:
    """Paired comparison of ``baseline`` and ``arm`` (same seeds, same order): see
    :class:`PairedTest`. With fewer than two pairs everything but ``n`` and ``mean`` is NaN;
    with identical differences the interval is a point and p is 0 (or NaN when all are 0)."""
    from scipy import stats

    diff = np.round(np.asarray(baseline, float) - np.asarray(arm, float), 12)
    if len(diff) != len(arm) or len(baseline) != len(arm):
        raise ValueError(f"paired samples differ in length: {len(baseline)} vs {len(arm)}")
    n = len(diff)
    mean = float(diff.mean()) if n else NAN
    if n < 2:
        return PairedTest(n, mean, NAN, NAN, NAN, NAN, NAN, NAN)
    sd = float(diff.std(ddof=1))
    if sd == 0:
        p = NAN if mean == 0 else 0.0
        d = NAN if mean == 0 else math.copysign(math.inf, mean)
        return PairedTest(n, mean, mean, mean, 0.0, p, d, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(diff, 0.0)
    ci = result.confidence_interval(0.95)
    mde = min_detectable_effect(n, sd, alpha, power)
    return PairedTest(
        n, mean, float(ci.low), float(ci.high), sd, float(result.pvalue), mean / sd, mde
    )

"""Small statistics: proportions with Wilson intervals, binary precision/recall/F1,
confusion matrices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Proportion", "wilson_interval", "BinaryMetrics", "binary_metrics", "confusion_matrix"]

# Two-sided 95 %: the 0.975 quantile of the standard normal.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at 0
    or n successes, which is where refusal rates of good and bad edits live.

    Args:
        successes: number of successes, 0 <= successes <= n.
        n: number of trials.
        z: normal quantile (default: 95 % two-sided).

    Returns:
        ``(low, high)``; ``(0.0, 1.0)`` when ``n == 0``.

    Example:
        >>> [round(x, 4) for x in wilson_interval(5, 10)]
        [0.2366, 0.7634]
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # In exact arithmetic 0 of n gives low = 0 and n of n gives high = 1; pin them so float
    # noise cannot leave 0.9999999999999999.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


class _Counts(NamedTuple):
    k: int
    n: int


class Proportion(_Counts):
    """``k`` of ``n`` (refused prompts, correct answers), with its rate and Wilson interval.

    A tuple underneath, so ``k, n = p`` unpacks it and JSON writes it as ``[k, n]``; every
    report formats its counts through this one value.

    Example:
        >>> p = Proportion(5, 10)
        >>> p.rate, str(p), p.describe()
        (0.5, '5/10', '5/10 [24%, 76%]')
    """

    __slots__ = ()

    def __new__(cls, k: int, n: int) -> Proportion:
        if not 0 <= k <= n:
            raise ValueError(f"need 0 <= k <= n, got {k} of {n}")
        return super().__new__(cls, int(k), int(n))

    @property
    def rate(self) -> float:
        """k / n; 0.0 when n is 0."""
        return self.k / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % Wilson interval of the rate (see :func:`wilson_interval`)."""
        return wilson_interval(self.k, self.n)

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def describe(self, digits: int = 0) -> str:
        """``"k/n [low, high]"`` with the interval in percent to ``digits`` decimals."""
        low, high = self.interval
        return f"{self} [{low:.{digits}%}, {high:.{digits}%}]"


@dataclass(frozen=True)
class BinaryMetrics:
    """Precision, recall and F1 of a binary decision, with the counts behind them."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0


def binary_metrics(truth: Sequence[bool], predicted: Sequence[bool]) -> BinaryMetrics:
    """Counts of a binary prediction against the truth (positive = True).

    Args:
        truth: the true classes.
        predicted: the predicted classes, same order.

    Returns:
        The confusion counts, from which precision, recall and F1 follow.
    """
    pairs = list(zip(truth, predicted, strict=True))
    return BinaryMetrics(
        tp=sum(t and p for t, p in pairs),
        fp=sum(p and not t for t, p in pairs),
        fn=sum(t and not p for t, p in pairs),
        tn=sum(not t and not p for t, p in pairs),
    )


def confusion_matrix(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> list[list[int]]:
    """Counts ``m[i][j]`` of items whose true label is ``labels[i]`` and predicted ``labels[j]``.

    Args:
        truth: true labels.
        predicted: predicted labels, same order.
        labels: the row and column order; a label outside it raises ValueError.

    Returns:
        A square list of lists of ints.
    """
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(truth, predicted, strict=True):
        if t not in index or p not in index:
            raise ValueError(f"label {t!r} or {p!r} is not one of {list(labels)}")
        matrix[index[t]][index[p]] += 1
    return matrix

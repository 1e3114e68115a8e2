"""The Pareto front of a study, the choice of one trial, and its test-split evaluation.

The default rule (:func:`choose`) looks at the whole front under the KL budget
``kl_target`` (the whole front if nothing is under it): it finds the fewest refusals there,
then takes the *least KL* among the points within ``margin`` of them. "Fewest refusals"
alone picks the extreme point, which on a 30-prompt search split often buys one refusal
fewer (a difference well inside the split's noise) with twice the KL; a literal "lowest
KL" or "KL < 0.1" rule picked useless edits in our first experiment. With
``refusal_target`` the rule is the user's: the least KL whose refusal rate is at most the
target.

The front's *knee* (:func:`knee`) is reported beside the choice: the point farthest from
the chord between the front's two ends, in coordinates scaled to the front's ranges (the
"kneedle" idea of Satopää et al., 2011) -- where trading more KL stops buying refusals.

The chosen trial is then scored on the test split, which the search never read: refusal
rate with a Wilson interval, over-refusals, and KL against the base on harmless test
prompts. Numbers from the search split are optimistic by construction (they were tuned on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import Judge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.scorecard import Scorecard, score_model
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionRef, Intervention, from_dict
from circuitlab.progress import note
from circuitlab.search.storage import SearchError, stored_copy

__all__ = [
    "FrontPoint",
    "SearchResult",
    "choose",
    "evaluate_choice",
    "knee",
    "rule_name",
    "pareto_front",
    "rank_key",
    "trial_interventions",
]

log = logging.getLogger(__name__)

DEFAULT_KL_TARGET = 0.2
# One refusal in the default 30 search prompts is 0.033: the margin tolerates one more
# refusal than the best point, not two.
DEFAULT_MARGIN = 0.05


def trial_interventions(
    trial: optuna.trial.FrozenTrial, cache_dir: str | Path | None = None
) -> tuple[Intervention, ...]:
    """The interventions a trial applied, rebuilt from its user attributes.

    A trial run on another host refers to that host's copy of the study's directions; with
    ``cache_dir``, such references point to this host's copy instead (same hash), when the
    recorded folder is not here.
    """
    found = tuple(from_dict(data) for data in trial.user_attrs["interventions"])
    return found if cache_dir is None else tuple(_local(iv, cache_dir) for iv in found)


def _local(obj: Any, cache_dir: str | Path) -> Any:
    if isinstance(obj, DirectionRef):
        if obj.folder is None or obj.hash is None or Path(obj.folder).exists():
            return obj
        copy = stored_copy(cache_dir, obj.hash)
        return replace(obj, folder=str(copy.resolve())) if copy.exists() else obj
    if is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _local(getattr(obj, f.name), cache_dir) for f in fields(obj)}
        return replace(obj, **changes)
    return obj


@dataclass(frozen=True)
class FrontPoint:
    """One complete trial: its objectives, parameters and edit.

    Attributes:
        number: the trial number.
        refusal_rate: judged refusals on the search split.
        kl: first-token KL on the harmless search prompts.
        params: the suggested parameters.
        interventions: the edit, as applied.
        score: the stored trial score (k-token KL, refusal mass, tokens, seconds).
    """

    number: int
    refusal_rate: float
    kl: float
    params: dict[str, Any]
    interventions: tuple[Intervention, ...] = field(repr=False)
    score: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_trial(
        cls, trial: optuna.trial.FrozenTrial, cache_dir: str | Path | None = None
    ) -> FrontPoint:
        return cls(
            trial.number,
            trial.values[0],
            trial.values[1],
            dict(trial.params),
            trial_interventions(trial, cache_dir),
            dict(trial.user_attrs.get("score", {})),
        )

    @property
    def foldable(self) -> bool:
        return all(iv.foldable for iv in self.interventions)


def pareto_front(study: optuna.Study, cache_dir: str | Path | None = None) -> list[FrontPoint]:
    """The non-dominated complete trials, fewest refusals first (``cache_dir``: see
    :func:`trial_interventions`)."""
    points = [FrontPoint.from_trial(t, cache_dir) for t in study.best_trials]
    return sorted(points, key=lambda p: (p.refusal_rate, p.kl, p.number))


def rank_key(refusal_rate: float, kl: float, kl_target: float) -> tuple[bool, float, float]:
    """Sort key of the default rule: under the KL target first, then refusals, then KL."""
    return (kl > kl_target, refusal_rate, kl)


Rule = Callable[[Sequence[FrontPoint]], FrontPoint]


def choose(
    front: Sequence[FrontPoint],
    kl_target: float = DEFAULT_KL_TARGET,
    rule: Rule | None = None,
    trial: int | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
    refusal_target: float | None = None,
) -> FrontPoint:
    """Pick one point of the front.

    Args:
        front: from :func:`pareto_front` (any list of points works).
        kl_target: the KL budget of the default rule.
        rule: a function of the front that returns the point to use, replacing the default.
        trial: take this trial number (it must be on the front).
        margin: the default rule takes the least KL among points whose refusal rate is at
            most the fewest refusals (under the budget) plus this.
        refusal_target: instead, the least KL whose refusal rate is at most this (if no
            point reaches it: the fewest refusals, then the least KL).

    Returns:
        The chosen point.
    """
    if not front:
        raise SearchError("the Pareto front is empty: no trial completed (all pruned or failed?)")
    if trial is not None:
        matches = [p for p in front if p.number == trial]
        if not matches:
            raise SearchError(f"trial {trial} is not on the front {[p.number for p in front]}")
        return matches[0]
    if rule is not None:
        return rule(front)
    if refusal_target is not None:
        reached = [p for p in front if p.refusal_rate <= refusal_target + 1e-9]
        if reached:
            return min(reached, key=lambda p: (p.kl, p.refusal_rate, p.number))
        return min(front, key=lambda p: (p.refusal_rate, p.kl, p.number))
    budget = [p for p in front if p.kl <= kl_target] or list(front)
    best = min(p.refusal_rate for p in budget)
    near = [p for p in budget if p.refusal_rate <= best + margin + 1e-9]
    return min(near, key=lambda p: (p.kl, p.refusal_rate, p.number))


def rule_name(kl_target: float, margin: float = DEFAULT_MARGIN, refusal_target=None) -> str:
    """How :func:`choose` chose, in words (the report and the manifest say it)."""
    if refusal_target is not None:
        return f"least KL with refusals <= {refusal_target:g}"
    return f"least KL within {margin:g} of the fewest refusals with KL <= {kl_target:g}"


def knee(front: Sequence[FrontPoint]) -> FrontPoint | None:
    """The front's knee: the point farthest below the chord joining its two ends, with
    both objectives scaled to the front's ranges; None with fewer than three points."""
    points = sorted(front, key=lambda p: (p.kl, p.refusal_rate))
    if len(points) < 3:
        return None
    first, last = points[0], points[-1]  # least KL (most refusals) .. most KL (fewest)
    span_kl = (last.kl - first.kl) or 1.0
    span_rate = (first.refusal_rate - last.refusal_rate) or 1.0

    def below(p: FrontPoint) -> float:
        x = (p.kl - first.kl) / span_kl
        y = (first.refusal_rate - p.refusal_rate) / span_rate
        return y - x  # how far the point lies above the chord y = x (refusals removed)

    inner = points[1:-1]
    best = max(inner, key=below)
    return best if below(best) > 0 else None


@dataclass(frozen=True)
class SearchResult:
    """The chosen edit and what it did on the test split.

    Attributes:
        study: the study name.
        rule: how the point was chosen.
        chosen: the chosen front point.
        front: the whole front.
        base, edited: test-split scorecards of the base model and of the edit.
        knee: the front's knee (:func:`knee`) when it is another point than the chosen one.
        knee_card: the knee's test-split scorecard (same base, prompts and KL baseline).
    """

    study: str
    rule: str
    chosen: FrontPoint
    front: tuple[FrontPoint, ...]
    base: Scorecard
    edited: Scorecard
    knee: FrontPoint | None = None
    knee_card: Scorecard | None = None

    @property
    def refusal_rate(self) -> float:
        return self.edited.refusal_rate

    @property
    def refusal_ci(self) -> tuple[float, float]:
        return self.edited.refusal_ci

    @property
    def kl(self) -> float | None:
        return self.edited.kl_first

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what the export manifest records as its scorecard)."""

        def point(p: FrontPoint) -> dict[str, Any]:
            return {"trial": p.number, "refusal_rate": p.refusal_rate, "kl": p.kl}

        data = {
            "study": self.study,
            "rule": self.rule,
            "chosen": {**point(self.chosen), "params": self.chosen.params},
            "front": [point(p) for p in self.front],
            "test": {
                "base": json.loads(self.base.to_json()),
                "edited": json.loads(self.edited.to_json()),
            },
        }
        if self.knee is not None:
            data["knee"] = {**point(self.knee), "params": self.knee.params}
            if self.knee_card is not None:
                data["test"]["knee"] = json.loads(self.knee_card.to_json())
        return data


def evaluate_choice(
    model: HookedModel,
    chosen: FrontPoint,
    harmful_test: Sequence[str],
    harmless_test: Sequence[str],
    judge: Judge,
    *,
    max_new_tokens: int = 100,
    batch_size: int = 16,
    kl_k: int = 4,
    questions: Sequence[Any] = (),
    also: Sequence[FrontPoint] = (),
    progress: bool = False,
) -> tuple[Scorecard, ...]:
    """Score the base model and the chosen edit on the test split.

    Args:
        harmful_test: harmful prompts the search never saw.
        harmless_test: harmless prompts for over-refusals and KL (also unseen).
        questions: capability questions (``circuitlab.evaluate.load_mmlu``); empty: skip.
        also: more front points (e.g. the knee) scored the same way, against the same base.

    Returns:
        ``(base, edited, *also)`` scorecards; the edits' KL is against the base on these
        prompts.
    """
    if not harmful_test or not harmless_test:
        raise ValueError("the test evaluation needs harmful and harmless test prompts")
    note(f"test split: the base model's KL baseline on {len(harmless_test)} prompts", progress)
    baseline = KLBaseline.compute(model, list(harmless_test), kl_k, batch_size)
    options = {
        "harmful": list(harmful_test),
        "harmless": list(harmless_test),
        "judge": judge,
        "split": "test",
        "kl_baseline": baseline,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "questions": tuple(questions),
        "progress": progress,
    }
    note(
        f"test split: scoring the base model ({len(harmful_test)} + {len(harmless_test)})", progress
    )
    base, _ = score_model(model, "base", **options)
    cards = [base]
    for point in (chosen, *also):
        note(f"test split: scoring trial {point.number}", progress)
        with apply(model, *point.interventions):
            card, _ = score_model(model, f"trial {point.number}", base=base, **options)
        cards.append(card)
    return tuple(cards)


def completed(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

"""The scorecard: what an edit did, as plain values, and the code that measures it.

A :class:`Scorecard` holds counts and numbers only (rates and intervals are derived), round
trips through JSON, and is displayed by :func:`scorecard_table`, which puts the base model
and any number of edited ones side by side.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from rich.table import Table

from circuitlab._resources import json_hash
from circuitlab.engine import HookedModel
from circuitlab.evaluate.agreement import describe_judge
from circuitlab.evaluate.capability import CapabilityResult, Question, capability
from circuitlab.evaluate.judges import Judge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.refusals import refusal_counts
from circuitlab.evaluate.stats import Proportion
from circuitlab.progress import note

__all__ = ["Scorecard", "score_model", "scorecard_rows", "scorecard_table", "prompt_groups_hash"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorecard:
    """One model's (or one edit's) scores.

    Attributes:
        model: what was scored (a name, path, or "base + intervention").
        judge: the judge's name, and its agreement with human labels where measured.
        split: name of the harmful prompt split the refusal rate is on.
        refusals, n_harmful: refused harmful prompts, of how many.
        over_refusals, n_harmless: refused harmless prompts, of how many.
        kl_first: first-token KL(base ‖ this) on the harmless KL prompts.
        kl_k: KL along the base's first ``kl_k_tokens`` greedy tokens.
        kl_k_tokens: k of ``kl_k``.
        capability_correct, capability_n: capability questions answered correctly, of how
            many.
        capability_delta: this accuracy minus the base's (None for the base itself).
        prompts_hash: hash of every prompt and question used (scorecards compare only when
            it matches).
        tokens_saved: generation tokens early stopping saved (at most).
        degenerate: answers (harmful and harmless together) judged degenerate: an edit that
            "removes refusals" by breaking the model shows here.
        capability_source: where the capability questions came from.
    """

    model: str
    judge: str
    split: str
    refusals: int
    n_harmful: int
    over_refusals: int
    n_harmless: int
    kl_first: float | None
    kl_k: float | None
    kl_k_tokens: int
    capability_correct: int | None
    capability_n: int | None
    capability_delta: float | None
    prompts_hash: str
    tokens_saved: int = 0
    degenerate: int = 0
    capability_source: str = "MMLU"

    @property
    def refused(self) -> Proportion:
        """Refused harmful prompts, of how many."""
        return Proportion(self.refusals, self.n_harmful)

    @property
    def over_refused(self) -> Proportion:
        """Refused harmless prompts, of how many."""
        return Proportion(self.over_refusals, self.n_harmless)

    @property
    def capable(self) -> Proportion | None:
        """Capability questions answered correctly, of how many (None when not measured)."""
        if not self.capability_n:
            return None
        return Proportion(self.capability_correct, self.capability_n)

    @property
    def refusal_rate(self) -> float:
        return self.refused.rate

    @property
    def refusal_ci(self) -> tuple[float, float]:
        return self.refused.interval

    @property
    def over_refusal_rate(self) -> float:
        return self.over_refused.rate

    @property
    def over_refusal_ci(self) -> tuple[float, float]:
        return self.over_refused.interval

    @property
    def capability_accuracy(self) -> float | None:
        return None if self.capable is None else self.capable.rate

    @property
    def capability_ci(self) -> tuple[float, float] | None:
        return None if self.capable is None else self.capable.interval

    def to_json(self) -> str:
        """JSON with the stored values plus the derived rates and intervals (for readers;
        :meth:`from_json` ignores them)."""
        data = asdict(self)
        data["derived"] = {
            "refusal_rate": self.refusal_rate,
            "refusal_ci": self.refusal_ci,
            "over_refusal_rate": self.over_refusal_rate,
            "over_refusal_ci": self.over_refusal_ci,
            "capability_accuracy": self.capability_accuracy,
            "capability_ci": self.capability_ci,
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Scorecard:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def prompt_groups_hash(*groups: Sequence[str]) -> str:
    """One hash over several prompt lists (order matters, group boundaries too)."""
    return json_hash([list(g) for g in groups])


# Capability questions per forward pass on a CPU (measured fastest among 2-32 on MMLU).
CPU_CAPABILITY_BATCH = 8


def score_model(
    model: HookedModel,
    name: str,
    harmful: Sequence[str],
    harmless: Sequence[str],
    judge: Judge,
    split: str = "",
    kl_baseline: KLBaseline | None = None,
    questions: Sequence[Question] = (),
    base: Scorecard | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    chat: bool = True,
    capability_source: str = "MMLU",
    progress: bool = False,
) -> tuple[Scorecard, CapabilityResult | None]:
    """Measure one model (or the base under an edit's hooks: call inside ``apply``).

    Args:
        model: the model to score.
        name: what to call it on the scorecard.
        harmful: prompts whose refusal rate is reported (use a held-out split).
        harmless: prompts whose refusal rate is the over-refusal rate.
        judge: the judge (early stopping is used when it has a ``decided`` method).
        split: the harmful split's name, recorded on the card.
        kl_baseline: the base model's cached log-probs (scoring the base against its own
            baseline gives 0 and checks the set-up); None records no KL.
        questions: capability questions (empty: skip the capability check).
        base: the base model's card, for the capability delta.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per batch.
        chat: chat-format prompts.
        capability_source: the questions' source, as the card names it.
        progress: a bar for the generations and a line for each other step (stderr).

    Returns:
        The scorecard, and the capability result (per-question choices) if measured.
    """
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "chat": chat}
    sets = {"harmful": harmful, "harmless": harmless}
    judged = refusal_counts(model, sets, judge, **gen, progress=progress)
    bad, good = judged["harmful"], judged["harmless"]
    if kl_baseline is not None:
        note(f"{name}: KL on {len(kl_baseline.prompts)} harmless prompts", progress)
    kl = kl_baseline.score(model, batch_size=batch_size) if kl_baseline is not None else None
    if questions:
        note(f"{name}: {len(questions)} {capability_source} questions", progress)
    cap = None
    if questions:
        # Long prompts: on a CPU the forward is compute-bound, and small chunks of similar
        # length pad least; an accelerator pays little for padding and gains from width.
        size = max(1, batch_size // 2)
        size = size if model.on_accelerator else min(size, CPU_CAPABILITY_BATCH)
        cap = capability(model, questions, batch_size=size, progress=progress)
    delta = None
    if cap is not None and base is not None and base.capability_accuracy is not None:
        delta = cap.accuracy - base.capability_accuracy
    kl_prompts = kl_baseline.prompts if kl_baseline is not None else ()
    card = Scorecard(
        model=name,
        judge=describe_judge(judge),
        split=split,
        refusals=bad.refusals,
        n_harmful=len(harmful),
        over_refusals=good.refusals,
        n_harmless=len(harmless),
        kl_first=kl.first_token if kl else None,
        kl_k=kl.k_token if kl else None,
        kl_k_tokens=kl.k if kl else 0,
        capability_correct=cap.correct if cap else None,
        capability_n=cap.n if cap else None,
        capability_delta=delta,
        prompts_hash=prompt_groups_hash(
            harmful, harmless, kl_prompts, [q.prompt() for q in questions]
        ),
        tokens_saved=bad.tokens_saved + good.tokens_saved,
        degenerate=bad.judgements.labels.count("degenerate")
        + good.judgements.labels.count("degenerate"),
        capability_source=capability_source,
    )
    return card, cap


def _pct(rate: float, ci: tuple[float, float] | None) -> str:
    if ci is None:
        return f"{100 * rate:.1f}%"
    return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def scorecard_rows(*cards: Scorecard) -> dict[str, list[str]]:
    """The scorecards as text, one row per figure and one column per card (base first).

    Rates carry their 95 % Wilson intervals; :func:`scorecard_table` and the HTML run
    report both show these rows.
    """
    return {
        f"refusals ({cards[0].split or 'harmful'})": [
            f"{_pct(c.refusal_rate, c.refusal_ci)} of {c.n_harmful}" for c in cards
        ],
        "over-refusals (harmless)": [
            f"{_pct(c.over_refusal_rate, c.over_refusal_ci)} of {c.n_harmless}" for c in cards
        ],
        "KL first token": [_num(c.kl_first) for c in cards],
        f"KL {cards[0].kl_k_tokens} tokens": [_num(c.kl_k) for c in cards],
        "degenerate answers": [f"{c.degenerate} of {c.n_harmful + c.n_harmless}" for c in cards],
        f"capability ({cards[0].capability_source})": [
            "–"
            if c.capability_accuracy is None
            else f"{_pct(c.capability_accuracy, c.capability_ci)} of {c.capability_n}"
            for c in cards
        ],
        "capability Δ": [_num(c.capability_delta, signed=True) for c in cards],
        "judge": [c.judge for c in cards],
        "prompts hash": [c.prompts_hash for c in cards],
        "tokens saved (early stop)": [str(c.tokens_saved) for c in cards],
    }


def scorecard_table(*cards: Scorecard, title: str = "scorecard"):
    """A rich table with one column per scorecard (base first, then the edits).

    Returns:
        ``rich.table.Table``; print it with a rich console.
    """
    table = Table(title=title, caption="rates with 95% Wilson intervals; KL in nats")
    table.add_column("", style="bold")
    for card in cards:
        table.add_column(card.model, justify="right")
    for label, values in scorecard_rows(*cards).items():
        table.add_row(label, *values)
    return table

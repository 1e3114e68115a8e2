"""Generate and judge, stopping each generation as soon as the judge has decided.

A refusal is usually clear after one or two sentences ("I can't help with that. It's
dangerous."); generating 100 tokens of it wastes most of a search trial. A judge with a
``decided(partial_responses)`` method (the marker judge, or a combined judge led by markers)
ends those rows early; compliance needs the judge's full span, up to ``max_new_tokens``.
The judge's labels are the same as with full-length generation (tests/test_judges.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import Judge, Judgements
from circuitlab.evaluate.stats import Proportion

__all__ = ["JudgedGenerations", "judged_generate", "refusal_counts", "stop_when_decided"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgedGenerations:
    """Responses, their judgements and what early stopping saved.

    Attributes:
        prompts: the prompts, in order.
        responses: the (possibly early-stopped) completions.
        judgements: the judge's verdict on them.
        tokens: tokens in each completion (re-tokenised text, special tokens excluded).
        stopped_early: rows the judge ended before ``max_new_tokens``.
        max_new_tokens: the generation budget per prompt.
    """

    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    judgements: Judgements
    tokens: tuple[int, ...]
    stopped_early: tuple[bool, ...]
    max_new_tokens: int

    @property
    def budget(self) -> int:
        return self.max_new_tokens * len(self.prompts)

    @property
    def tokens_saved(self) -> int:
        """Tokens not generated because the judge had decided (an upper bound: a row that
        would have hit end-of-turn soon after saved less)."""
        return sum(
            self.max_new_tokens - n
            for n, s in zip(self.tokens, self.stopped_early, strict=True)
            if s
        )

    @property
    def refusals(self) -> int:
        return sum(self.judgements.is_refusal)

    @property
    def refused(self) -> Proportion:
        """Refused prompts of all prompts, with the rate's Wilson interval."""
        return Proportion(self.refusals, len(self.prompts))


def stop_when_decided(
    decided: Callable[[Sequence[str]], Sequence[bool]], tokenizer, min_new_tokens: int = 0
) -> Callable[[list[str]], list[bool]]:
    """A ``stop`` callback for :meth:`HookedModel.generate` from a judge's ``decided``.

    Args:
        decided: the judge's decider.
        tokenizer: the model's tokenizer (to count tokens of the partial text).
        min_new_tokens: never stop a row before this many tokens.
    """

    def stop(texts: list[str]) -> list[bool]:
        verdict = decided(texts)
        if min_new_tokens <= 0:
            return list(verdict)
        return [
            bool(v) and len(tokenizer(t, add_special_tokens=False).input_ids) >= min_new_tokens
            for v, t in zip(verdict, texts, strict=True)
        ]

    return stop


def judged_generate(
    model: HookedModel,
    prompts: Sequence[str],
    judge: Judge,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    batch_size: int = 16,
    check_every: int = 4,
    early_stop: bool = True,
    chat: bool = True,
    progress: bool = False,
) -> JudgedGenerations:
    """Generate greedily under any active hooks, stopping rows the judge has decided.

    Args:
        model: the (possibly hooked) model.
        prompts: the prompts.
        judge: any judge; early stopping needs a ``decided`` method (others run to the end).
        max_new_tokens: the budget per prompt.
        min_new_tokens: no row stops before this many tokens.
        batch_size: prompts per generation batch.
        check_every: tokens between calls to the decider.
        early_stop: set False to generate the full budget (for comparison).
        chat: chat-format the prompts.
        progress: draw a progress bar.

    Returns:
        Responses, judgements and the early-stopping accounting.
    """
    decided = getattr(judge, "decided", None) if early_stop else None
    stop = stop_when_decided(decided, model.tokenizer, min_new_tokens) if decided else None
    responses = model.generate(
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=stop,
        stop_check_every=check_every,
        chat=chat,
        progress=progress,
    )
    tokens = tuple(len(model.tokenizer(r, add_special_tokens=False).input_ids) for r in responses)
    if stop is not None:
        final = stop(responses)
        stopped = tuple(bool(f) and n < max_new_tokens for f, n in zip(final, tokens, strict=True))
    else:
        stopped = (False,) * len(responses)
    verdict = judge.judge(list(prompts), responses)
    result = JudgedGenerations(
        tuple(prompts), tuple(responses), verdict, tokens, stopped, max_new_tokens
    )
    log.info(
        "%d/%d refusals; early stopping saved up to %d of %d tokens",
        result.refusals,
        len(prompts),
        result.tokens_saved,
        result.budget,
    )
    return result


def refusal_counts(
    model: HookedModel,
    sets: Mapping[str, Sequence[str]],
    judge: Judge,
    max_new_tokens: int = 64,
    *,
    batch_size: int = 16,
    chat: bool = True,
    progress: bool = False,
) -> dict[str, JudgedGenerations]:
    """Generate on each named prompt set under any active hooks, judge, and count refusals.

    Generation stops per prompt once the judge has decided (see :func:`judged_generate`).

    Args:
        model: the (possibly hooked) model.
        sets: prompt sets by name, e.g. ``{"JailbreakBench": ..., "harmless test": ...}``.
        judge: any judge.
        max_new_tokens, batch_size, chat, progress: as for :func:`judged_generate`.

    Returns:
        The judged generations per set, in the order given; ``[name].refused`` is the
        :class:`~circuitlab.evaluate.stats.Proportion` of refused prompts.
    """
    return {
        name: judged_generate(
            model,
            list(prompts),
            judge,
            max_new_tokens,
            batch_size=batch_size,
            chat=chat,
            progress=progress,
        )  # fmt: skip
        for name, prompts in sets.items()
    }

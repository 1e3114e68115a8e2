"""A preflight before a search: is there a refusal to remove, and can the judge see it?

A search optimises refusals on the harmful search prompts. When the base model already
refuses almost none of them, or its answers never finish (a reasoning block still open
when the token budget runs out), every trial scores about the same and the search
optimises nothing -- silently, for hours. The preflight generates the base model's answers
once, first fixes what it can (``response_prefix = "auto"``: prefill a closed reasoning
block when the model opens one), then measures, and stops with the likely cause and the
setting to change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from circuitlab.engine import HookedModel
from circuitlab.errors import CircuitlabError
from circuitlab.evaluate.judges import Judge
from circuitlab.evaluate.reasoning import detect_response_prefix, open_block_in_prompt

__all__ = ["PreflightError", "PreflightResult", "preflight"]

log = logging.getLogger(__name__)

MIN_REFUSAL = 0.05  # below this share of refusals there is nothing for a search to remove
MAX_UNFINISHED = 0.5  # above this share of unfinished answers the judge sees no answers


class PreflightError(CircuitlabError):
    """The base model gives the search nothing to optimise (the message says why)."""


@dataclass(frozen=True)
class PreflightResult:
    """What the preflight measured on the base model.

    Attributes:
        n: prompts generated.
        refusals, unfinished, degenerate: how many answers the judge labelled so.
        response_prefix: the prefill in force after the preflight ("" for none).
        prompts, responses: what was generated (the responses as the judge read them).
    """

    n: int
    refusals: int
    unfinished: int
    degenerate: int
    response_prefix: str
    prompts: tuple[str, ...] = ()
    responses: tuple[str, ...] = ()

    @property
    def refusal_rate(self) -> float:
        return self.refusals / self.n if self.n else 0.0

    def summary(self) -> str:
        prefix = f", prefill {self.response_prefix!r}" if self.response_prefix else ""
        return (
            f"base model: {self.refusals}/{self.n} refusals, {self.unfinished} unfinished, "
            f"{self.degenerate} degenerate{prefix}"
        )


def _as_judged(model: HookedModel, responses) -> list[str]:
    # A template that opens the block itself leaves the opening tag out of the responses.
    opener = open_block_in_prompt(model)
    return [opener + r for r in responses] if opener else list(responses)


def preflight(
    model: HookedModel,
    prompts: Sequence[str],
    judge: Judge,
    *,
    max_new_tokens: int,
    response_prefix: str | None = "auto",
    batch_size: int = 16,
    n: int = 32,
    min_refusal: float = MIN_REFUSAL,
    max_unfinished: float = MAX_UNFINISHED,
    progress: bool = False,
) -> PreflightResult:
    """Measure the base model on (up to ``n`` of) the harmful search prompts, or stop.

    Args:
        model: the base model (no hooks active); its ``response_prefix`` is set here.
        prompts: the harmful search prompts.
        judge: the search's judge.
        max_new_tokens: the search's generation budget.
        response_prefix: ``auto`` (prefill a closed reasoning block when the model opens
            one), a fixed text, or None / "" for none.

    Raises:
        PreflightError: most answers unfinished, or refusals below ``min_refusal``.
    """
    prompts = list(prompts)[:n]
    if response_prefix != "auto":
        model.response_prefix = response_prefix or ""
    responses = model.generate(
        prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    if response_prefix == "auto" and not model.response_prefix:
        prefill = detect_response_prefix(model, responses)
        if prefill:
            log.warning("the model opens a reasoning block: prefilling %r", prefill)
            model.response_prefix = prefill
            responses = model.generate(
                prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
            )
    texts = _as_judged(model, responses)
    verdict = judge.judge(prompts, texts)
    result = PreflightResult(
        len(prompts),
        sum(verdict.is_refusal),
        verdict.labels.count("unfinished"),
        verdict.labels.count("degenerate"),
        model.response_prefix,
        tuple(prompts),
        tuple(texts),
    )
    log.info("preflight: %s", result.summary())
    _check(result, max_new_tokens, min_refusal, max_unfinished)
    return result


def _check(result: PreflightResult, max_new_tokens: int, min_refusal, max_unfinished) -> None:
    if not result.n:
        return
    if result.unfinished > max_unfinished * result.n:
        raise PreflightError(
            f"{result.unfinished}/{result.n} of the base model's answers are still inside a "
            f"reasoning block after max_new_tokens={max_new_tokens}: the judge sees no answer "
            "to score. Set chat_template_kwargs='{\"enable_thinking\": false}', "
            "response_prefix=auto (prefill a closed block), or raise max_new_tokens"
        )
    if result.refusal_rate < min_refusal:
        broken = result.degenerate > max_unfinished * result.n
        cause = (
            f"{result.degenerate}/{result.n} answers are degenerate (too few tokens, or a "
            "broken model or chat template: check chat_template / max_new_tokens)"
            if broken
            else "a model that does not refuse these prompts, or a judge that misses its "
            "refusals (try --judge combined, or other harmful prompts)"
        )
        raise PreflightError(
            f"the base model refuses only {result.refusals}/{result.n} harmful search prompts: "
            f"nothing for a search to remove. Likely cause: {cause}. Set preflight=false to "
            "search anyway"
        )

"""Which layer's direction to ablate: a cheap score for every layer, generation for the best.

Generating answers for every candidate layer took minutes in our first experiment. The first
generated token already tells most of the story: a refusing model puts its mass on refusal
openings ("I", "Sorry", "That's"). So every candidate is scored by

* **refusal score**: mean over harmful validation prompts of log Σ p(refusal-opening tokens)
  at the first generated position, with the layer's direction ablated everywhere;
* **KL**: first-token KL(base ‖ ablated) on harmless validation prompts;

and only the few layers with the lowest refusal score are checked by short generation and a
judge. The choice is the fewest judged refusals (within ``refusal_tolerance``), then the
lowest KL: a literal "KL < 0.1" filter picked a useless layer in that experiment. The
openings and their score are the search's and circuit discovery's too
(:mod:`circuitlab.evaluate.openings`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from circuitlab.directions.base import DirectionSet
from circuitlab.engine import HookedModel
from circuitlab.evaluate.kl import kl_divergence
from circuitlab.evaluate.openings import opening_token_ids, refusal_log_mass
from circuitlab.evaluate.refusals import judged_generate
from circuitlab.hooks import apply
from circuitlab.interventions import DirectionalAblation, DirectionRef
from circuitlab.progress import progress_bar

__all__ = ["LayerScore", "LayerSelection", "select_layer", "layer_ablation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerScore:
    layer: int
    refusal_score: float
    kl: float
    refusal_rate: float | None = None  # judged, for the layers that were generated


@dataclass(frozen=True)
class LayerSelection:
    layer: int
    base_refusal_score: float
    base_refusal_rate: float | None
    scores: tuple[LayerScore, ...]

    def table(self) -> list[dict[str, float | int | None]]:
        return [vars(s) for s in self.scores]


def layer_ablation(directions: DirectionSet, layer: int):
    """Project layer ``layer``'s direction out of every writer at full weight."""
    return DirectionalAblation(DirectionRef.inline(directions), index=float(layer))


def _judged_rate(model, prompts, judge, max_new_tokens, batch_size) -> float:
    return judged_generate(
        model, prompts, judge, max_new_tokens, batch_size=batch_size
    ).refused.rate


def select_layer(
    model: HookedModel,
    directions: DirectionSet,
    harmful_val: Sequence[str],
    harmless_val: Sequence[str],
    judge,
    candidates: Sequence[int] | None = None,
    verify_top: int = 3,
    verify_tokens: int = 24,
    refusal_tolerance: float = 0.05,
    max_kl: float | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> LayerSelection:
    """Score every candidate layer's direction and pick one.

    Args:
        directions: one direction per layer (component 0 is used).
        harmful_val, harmless_val: validation prompts (never the test split).
        judge: has ``judge(prompts, responses).is_refusal`` and ``decided(partials)``.
        candidates: layers to try (default: every non-degenerate layer).
        verify_top: how many of the lowest-refusal-score layers to check by generation.
        refusal_tolerance: judged rates within this of the best count as tied; KL decides.
        max_kl: leave out layers whose ablation costs more harmless first-token KL than this
            (Arditi et al. 2024 filter candidates the same way); when none is left, all
            are kept, with a warning.

    Returns:
        The chosen layer and the per-layer table.
    """
    harmful_val, harmless_val = list(harmful_val), list(harmless_val)
    degenerate = set(directions.metadata.get("degenerate_layers", []))
    candidates = [
        layer
        for layer in (candidates if candidates is not None else range(directions.n_layers))
        if layer not in degenerate
    ]
    tokens = opening_token_ids(model.tokenizer)
    base_harmless = model.next_token_logprobs(harmless_val, batch_size)
    base_score = refusal_log_mass(model.next_token_logprobs(harmful_val, batch_size), tokens)
    cheap: list[LayerScore] = []
    with progress_bar(len(candidates), "scoring layers", progress) as advance:
        for layer in candidates:
            with apply(model, layer_ablation(directions, layer)):
                harmful = model.next_token_logprobs(harmful_val, batch_size)
                harmless = model.next_token_logprobs(harmless_val, batch_size)
            score = refusal_log_mass(harmful, tokens).mean().item()
            kl = kl_divergence(base_harmless, harmless).mean().item()
            cheap.append(LayerScore(layer, score, kl))
            advance(1)
    allowed = cheap if max_kl is None else [s for s in cheap if s.kl <= max_kl]
    if not allowed:
        lowest = min(s.kl for s in cheap)
        log.warning("no layer keeps KL <= %g (lowest %.3f): choosing among all", max_kl, lowest)
        allowed = cheap
    best = sorted(allowed, key=lambda s: s.refusal_score)[:verify_top]
    base_rate = _judged_rate(model, harmful_val, judge, verify_tokens, batch_size)
    verified = {}
    for s in best:
        with apply(model, layer_ablation(directions, s.layer)):
            rate = _judged_rate(model, harmful_val, judge, verify_tokens, batch_size)
        verified[s.layer] = LayerScore(s.layer, s.refusal_score, s.kl, rate)
    floor = min(v.refusal_rate for v in verified.values())
    tied = [v for v in verified.values() if v.refusal_rate <= floor + refusal_tolerance]
    chosen = min(tied, key=lambda v: v.kl)
    log.info(
        "chose layer %d: judged refusals %.2f, KL %.3f",
        chosen.layer,
        chosen.refusal_rate,
        chosen.kl,
    )
    scores = tuple(verified.get(s.layer, s) for s in cheap)
    return LayerSelection(chosen.layer, base_score.mean().item(), base_rate, scores)

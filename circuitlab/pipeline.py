"""The classic refusal-direction result, end to end, as one function.

difference of means at every layer (train split) → layer chosen on the validation split →
direction projected out of every writer to the residual stream through hooks → refusals
judged on held-out sets the choice never saw, harmless KL → the same direction *added* on
harmless prompts, to show it is causal in both directions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from circuitlab.directions import DirectionSet, extract_diff_means
from circuitlab.directions.select import LayerSelection, layer_ablation, select_layer
from circuitlab.engine import HookedModel
from circuitlab.prompts import PromptSet

__all__ = ["ClassicResult", "classic_ablation"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassicResult:
    layer: int
    selection: LayerSelection
    refusal_before: dict[str, tuple[int, int]]  # set name -> (refused, n)
    refusal_after: dict[str, tuple[int, int]]
    kl_first_token: float
    kl_k_token: float
    addition_strength: float
    harmless_refused_with_addition: tuple[int, int]
    samples: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def rate(self, which: str, name: str) -> float:
        refused, n = getattr(self, f"refusal_{which}")[name]
        return refused / n

    def as_dict(self) -> dict:
        data = asdict(self)
        data["selection"] = {"layer": self.selection.layer, "table": self.selection.table()}
        return data


def _refusals(model, sets, judge, max_new_tokens, batch_size) -> tuple[dict, dict]:
    from circuitlab.evaluate.refusals import judged_generate

    counts, texts = {}, {}
    for name, prompts in sets.items():
        judged = judged_generate(model, list(prompts), judge, max_new_tokens, batch_size=batch_size)
        counts[name] = (judged.refusals, len(prompts))
        texts[name] = list(judged.responses)
    return counts, texts


def classic_ablation(
    model: HookedModel,
    train: tuple[PromptSet, PromptSet],
    val: tuple[PromptSet, PromptSet],
    test_sets: dict[str, PromptSet],
    harmless_test: PromptSet,
    judge,
    candidates: Sequence[int] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    cache_dir="cache",
    progress: bool = False,
) -> tuple[ClassicResult, DirectionSet]:
    """Run the classic experiment.

    Args:
        train: (harmful, harmless) prompts for the difference of means.
        val: (harmful, harmless) prompts for the layer choice.
        test_sets: held-out sets whose refusals are reported (include harmless ones to
            report over-refusal).
        harmless_test: prompts for KL and for the activation-addition check.
        judge: a refusal judge with ``judge`` and ``decided``.

    Returns:
        The figures and the direction set.
    """
    from circuitlab.activations import collect_activations, select_position
    from circuitlab.evaluate.kl import KLBaseline
    from circuitlab.hooks import apply
    from circuitlab.interventions import ActivationAddition, DirectionRef

    clock = {"start": time.perf_counter()}
    harmful, harmless = (
        select_position(collect_activations(model, p, cache_dir=cache_dir, progress=progress))
        for p in train
    )
    directions = extract_diff_means(harmful, harmless)
    clock["extract"] = time.perf_counter()
    selection = select_layer(
        model,
        directions,
        val[0],
        val[1],
        judge,
        candidates,
        batch_size=batch_size,
        progress=progress,
    )
    layer = selection.layer
    clock["select"] = time.perf_counter()
    ablation = layer_ablation(directions, layer)
    before, texts_before = _refusals(model, test_sets, judge, max_new_tokens, batch_size)
    baseline = KLBaseline.compute(model, list(harmless_test), batch_size=batch_size)
    with apply(model, ablation):
        after, texts_after = _refusals(model, test_sets, judge, max_new_tokens, batch_size)
        kl = baseline.score(model, batch_size)
    clock["evaluate"] = time.perf_counter()
    strength = float(directions.scores[layer, 0])  # the norm of the mean difference
    addition = ActivationAddition(DirectionRef.inline(directions), strength, (layer,), index=layer)
    with apply(model, addition):
        added, _ = _refusals(model, {"harmless": harmless_test}, judge, 32, batch_size)
    clock["addition"] = time.perf_counter()
    samples = {
        name: list(
            zip(list(prompts)[:3], texts_before[name][:3], texts_after[name][:3], strict=True)
        )
        for name, prompts in test_sets.items()
    }
    stages = list(clock)
    seconds = {b: round(clock[b] - clock[a], 1) for a, b in zip(stages, stages[1:], strict=False)}
    result = ClassicResult(
        layer, selection, before, after, kl.first_token, kl.k_token, strength,
        added["harmless"], samples, seconds,
    )  # fmt: skip
    return result, directions

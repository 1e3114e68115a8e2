"""The classic refusal-direction result end to end as one function, and the demo's pieces.

difference of means at every layer (train split) → layer chosen on the validation split →
direction projected out of every writer to the residual stream through hooks → refusals
judged on held-out sets the choice never saw, harmless KL → the same direction *added* on
harmless prompts, to show it is causal in both directions.

The demo (``circuitlab demo``) abliterates the organism and then measures a second held-out
set before and after (:func:`before_after`, JailbreakBench by default), recorded in its run
report by :func:`report_before_after`; its study is named by :func:`demo_study`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from circuitlab._resources import json_hash
from circuitlab.activations import (
    collect_activations,
    massive_directions,
    model_fingerprint,
    select_position,
)
from circuitlab.directions import DirectionSet, extract_diff_means, without_massive
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.layers import LayerSelection, layer_ablation, select_layer
from circuitlab.evaluate.refusals import JudgedGenerations, judged_generate, refusal_counts
from circuitlab.evaluate.stats import Proportion
from circuitlab.hooks import apply
from circuitlab.interventions import ActivationAddition, DirectionRef, Intervention
from circuitlab.progress import note
from circuitlab.prompts import PromptSet, load_prompts
from circuitlab.report import Report
from circuitlab.search.assets import SearchPrompts
from circuitlab.testbed import testbed_data

__all__ = [
    "BeforeAfter",
    "ClassicResult",
    "before_after",
    "classic_ablation",
    "demo_study",
    "organism_classic",
    "report_before_after",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassicResult:
    layer: int
    selection: LayerSelection
    refusal_before: dict[str, Proportion]  # set name -> refused of n
    refusal_after: dict[str, Proportion]
    kl_first_token: float
    kl_k_token: float
    addition_strength: float
    harmless_refused_with_addition: Proportion
    samples: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def rate(self, which: str, name: str) -> float:
        return getattr(self, f"refusal_{which}")[name].rate

    def as_dict(self) -> dict:
        data = asdict(self)
        data["selection"] = {"layer": self.selection.layer, "table": self.selection.table()}
        return data


def _refusals(model, sets, judge, max_new_tokens, batch_size, progress, stage) -> tuple[dict, dict]:
    judged = {}
    for name, prompts in sets.items():
        # The generation bars all read "generating": say which stage and set runs.
        note(f"{stage}: {name}, {len(prompts)} prompts", progress)
        judged |= refusal_counts(
            model, {name: prompts}, judge, max_new_tokens, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
    counts = {name: j.refused for name, j in judged.items()}
    return counts, {name: list(j.responses) for name, j in judged.items()}


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
    remove_massive: bool = True,
    max_kl: float | None = None,
) -> tuple[ClassicResult, DirectionSet]:
    """Run the classic experiment.

    Args:
        train: (harmful, harmless) prompts for the difference of means.
        val: (harmful, harmless) prompts for the layer choice.
        test_sets: held-out sets whose refusals are reported (include harmless ones to
            report over-refusal).
        harmless_test: prompts for KL and for the activation-addition check.
        judge: a refusal judge with ``judge`` and ``decided``.
        remove_massive: take the attention sinks' massive-activation direction out of the
            directions first (:func:`circuitlab.directions.without_massive`; 8 harmless
            train prompts find it). Without it, projecting the organism's layer-21
            direction out of every position costs 4.1 nats of harmless KL instead of 0.1.
        max_kl: the layer choice's KL filter on the validation prompts (``select_layer``).

    Returns:
        The figures and the direction set.
    """
    clock = {"start": time.perf_counter()}
    harmful, harmless = (
        select_position(collect_activations(model, p, cache_dir=cache_dir, progress=progress))
        for p in train
    )
    directions = extract_diff_means(harmful, harmless)
    if remove_massive:
        found = massive_directions(model, list(train[1]), batch_size=batch_size)
        directions = without_massive(directions, found)
    clock["extract"] = time.perf_counter()
    selection = select_layer(
        model,
        directions,
        val[0],
        val[1],
        judge,
        candidates,
        max_kl=max_kl,
        batch_size=batch_size,
        progress=progress,
    )
    layer = selection.layer
    clock["select"] = time.perf_counter()
    ablation = layer_ablation(directions, layer)
    generation = (judge, max_new_tokens, batch_size, progress)
    before, texts_before = _refusals(model, test_sets, *generation, "unedited")
    note(f"harmless KL baseline on {len(harmless_test)} prompts", progress)
    baseline = KLBaseline.compute(model, list(harmless_test), batch_size=batch_size)
    with apply(model, ablation):
        after, texts_after = _refusals(model, test_sets, *generation, f"layer {layer} ablated")
        note("harmless KL with the ablation", progress)
        kl = baseline.score(model, batch_size)
    clock["evaluate"] = time.perf_counter()
    strength = float(directions.scores[layer, 0])  # the norm of the mean difference
    addition = ActivationAddition(DirectionRef.inline(directions), strength, (layer,), index=layer)
    with apply(model, addition):
        added, _ = _refusals(
            model, {"harmless": harmless_test}, judge, 32, batch_size, progress, "direction added"
        )
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


def organism_classic(
    model: HookedModel,
    *,
    remove_massive: bool = True,
    n_test: int = 50,
    cache_dir="cache",
    progress: bool = False,
) -> tuple[ClassicResult, DirectionSet]:
    """The classic experiment on the refusal organism, with the prompts its slow test and
    ``circuitlab testbed classic`` use: directions from 96 + 96 train prompts, the layer
    chosen among the middle-to-upper ones (12-25 of 30) on 32 + 32 validation prompts,
    refusals on ``n_test`` JailbreakBench
    prompts and 40 held-out harmless ones, KL and the addition check on 32 harmless test
    prompts; marker judge. The layer is the one whose ablation removes the most validation
    refusals among those that keep validation KL <= 0.2 (the issue's budget), as Arditi et
    al. filter theirs."""
    data = testbed_data()
    return classic_ablation(
        model,
        train=(data.harmful_train.take(96), data.harmless_train.take(96)),
        val=(data.harmful_val.take(32), data.harmless_val.take(32)),
        test_sets={
            "jailbreakbench": data.jailbreakbench.take(n_test),
            "harmless": data.harmless_test.take(40),
        },
        harmless_test=data.harmless_test.take(32),
        judge=MarkerJudge(),
        # Layers 40-85 % of the way up (12-25 of SmolLM2's 30): where refusal is read out.
        candidates=range(round(0.4 * model.n_layers), round(0.867 * model.n_layers)),
        cache_dir=cache_dir,
        progress=progress,
        remove_massive=remove_massive,
        max_kl=0.2,
    )


# ----------------------------------------------------------------------------- the demo
def demo_study(
    model_slug: str, model: HookedModel, prompts: SearchPrompts, seed: int, own_prompts: bool
) -> str:
    """The demo's study name: ``demo-MODEL-WEIGHTS[-prompts-DIGEST]-seedN``.

    The weights' fingerprint is in it, so a rebuilt organism starts its own study instead
    of failing on the old one's (a study refuses other weights); prompts other than the
    defaults (``own_prompts``) get a study of their own by the digest of the splits the
    search reads (a study refuses other prompts; the sealed test split is not read).
    """
    own = f"-prompts-{json_hash(prompts.search_hashes(), 8)}" if own_prompts else ""
    return f"demo-{model_slug}-{model_fingerprint(model)[:8]}{own}-seed{seed}"


@dataclass(frozen=True)
class BeforeAfter:
    """Refusals on one held-out prompt set without and with an edit."""

    name: str
    label: str  # what the edit is, in the row of its refusals ("after (trial 3)")
    before: JudgedGenerations
    after: JudgedGenerations

    def rows(self) -> list[tuple[str, str, str]]:
        """``(which, refused of n, 95 % Wilson interval)`` for before and after."""
        out = []
        for which, judged in (("before", self.before), (self.label, self.after)):
            low, high = judged.refused.interval
            out.append((which, str(judged.refused), f"[{low:.0%}, {high:.0%}]"))
        return out

    def samples(self, n: int = 4) -> list[tuple[str, str, str]]:
        """The first ``n`` ``(prompt, before, after)`` completions."""
        pairs = zip(self.before.prompts, self.before.responses, self.after.responses, strict=True)
        return list(pairs)[:n]


def before_after(
    model: HookedModel,
    interventions: Sequence[Intervention],
    judge,
    *,
    n: int,
    source: str = "jailbreakbench",
    label: str = "after",
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = False,
) -> BeforeAfter:
    """Judged refusals on the first ``n`` prompts of ``source`` (a set the search never
    saw) from the base model and under ``interventions``, each side announced by a line
    and followed by a generation bar when ``progress``."""
    prompts = list(load_prompts(source).take(n))
    name = "JailbreakBench" if source == "jailbreakbench" else source
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "progress": progress}
    note(f"{name}: {n} prompts, the base model", progress)
    before = judged_generate(model, prompts, judge, **gen)
    note(f"{name}: {n} prompts, with the edit", progress)
    with apply(model, *interventions):
        after = judged_generate(model, prompts, judge, **gen)
    return BeforeAfter(name, label, before, after)


def report_before_after(report: Report, measured: BeforeAfter, judge_name: str) -> Report:
    """A section of the run report with the refusals before and after, and samples."""
    report.section(f"{measured.name} (never searched, never trained on)")
    columns = ["", "refused", "95 % Wilson interval"]
    report.table(columns, measured.rows(), caption=judge_name)
    return report.samples(f"{measured.name}: before / after", measured.samples())

"""How far an estimate of patching (attribution, integrated gradients) can be trusted, and
how to make the part that matters exact.

:func:`check_agreement` patches a sample of sites exactly and compares, so a user sees when
the linear approximation is poor; :func:`refine` patches an estimate's leading candidates
exactly, so the ranking that matters is exact at a fraction of exact patching's cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from circuitlab.circuits.metrics import Metric
from circuitlab.circuits.patching import activation_patching
from circuitlab.circuits.scores import BLOCK_KINDS, HeadScores, RankAgreement, site_agreement
from circuitlab.circuits.sources import Counterfactual, Site

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = ["AgreementCheck", "check_agreement", "refine"]


@dataclass(frozen=True)
class AgreementCheck:
    """How an estimate (attribution) agreed with exact patching on a sample of sites.

    Attributes:
        sites: the sites patched exactly (as strings): the estimate's leaders first, then
            the random others.
        agreement: on the estimate's leaders only, Spearman of the two orderings, overlap
            of their top halves and top-1 match (the order a circuit is read for).
        missed: random others whose exact importance is larger than the smallest exact
            importance among the leaders (heads the estimate should have ranked higher).
        exact: the exact scores (zero outside the sample).
        seconds: wall time of the exact patching.
        kind: what was sampled: ``heads`` (query heads), ``mlp`` or ``attn``.
    """

    sites: tuple[str, ...]
    agreement: RankAgreement
    missed: int
    exact: HeadScores
    seconds: float
    kind: str = "heads"

    def to_dict(self) -> dict[str, Any]:
        a = self.agreement
        return {
            "kind": self.kind,
            "sites": list(self.sites),
            "spearman": a.spearman,
            "missed": self.missed,
            "p_value": a.p_value,
            "overlap_top_half": a.overlap,
            "top1_match": a.top1_match,
            "seconds": round(self.seconds, 2),
        }


def _ranked_sites(estimate: HeadScores, kind: str) -> list[Site]:
    """The estimate's query heads (``heads``), MLPs (``mlp``) or attention blocks (``attn``),
    largest absolute importance first."""
    if kind == "heads":
        return [h for h, _ in estimate.ranked("abs")]
    if kind not in BLOCK_KINDS:
        raise ValueError(f"kind must be 'heads', 'attn' or 'mlp', got {kind!r}")
    if estimate.block_effect is None:
        raise ValueError(f"kind={kind!r} needs an estimate scored with blocks=True")
    sites = [site for site, _ in estimate.ranked_blocks() if site.kind == kind]
    return sorted(sites, key=lambda site: -abs(estimate.importance_of(site)))


def check_agreement(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    estimate: HeadScores,
    *,
    sample: int = 16,
    seed: int = 0,
    kind: Literal["heads", "attn", "mlp"] = "heads",
    **options: Any,
) -> AgreementCheck:
    """Patch a sample of query heads (or MLPs, or attention blocks) exactly and compare
    with ``estimate`` on them.

    The sample is the estimate's top ``sample // 2`` sites by absolute importance (where a
    wrong ranking matters) plus as many others drawn at random (``seed``), so a poor linear
    approximation shows both as misordered leaders (Spearman over the leaders alone: over
    the whole sample, the gap between leaders and near-zero others would hide it) and as
    missed sites.

    Args:
        model, harmful, counterfactual, metric: as given to the estimate.
        estimate: the attribution scores to check.
        sample: sites patched exactly (at least 6, at most all of that kind).
        seed: the random draw of the other half.
        kind: ``heads`` (query heads), ``mlp`` or ``attn`` (one whole sublayer output per
            layer; the estimate must have been scored with ``blocks=True``).
        **options: ``positions``, ``batch_size``, ``chat``, ``progress`` as for the estimate.

    Returns:
        The agreement on the sample.
    """
    ranked = _ranked_sites(estimate, kind)
    sample = max(min(6, len(ranked)), min(sample, len(ranked)))
    top = ranked[: max(3, sample // 2)]  # >= 3 leaders for a rank correlation
    picked = top + random.Random(seed).sample(ranked[sample // 2 :], sample - len(top))
    start = time.perf_counter()
    exact = activation_patching(
        model, harmful, counterfactual, metric, kv=False, sites=picked, **options
    )
    seconds = time.perf_counter() - start
    agreement = site_agreement(exact, estimate, top)
    floor = min(abs(exact.importance_of(h)) for h in top)
    missed = sum(abs(exact.importance_of(h)) > floor for h in picked[len(top) :])
    sites = tuple(str(h) for h in picked)
    return AgreementCheck(sites, agreement, missed, exact, seconds, kind)


def refine(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    estimate: HeadScores,
    *,
    top: int = 40,
    screens: Sequence[HeadScores] = (),
    **options: Any,
) -> HeadScores:
    """The estimate with its ``top`` query heads (by absolute importance) patched exactly.

    Attribution screens every head in one pass; exact patching then re-scores only the
    candidates, whose order is what a circuit is read for. Heads outside the candidates
    keep their estimated values (the same units: mean change of the metric).

    Args:
        model, harmful, counterfactual, metric: as given to the estimate.
        estimate: the screening scores.
        top: candidates patched exactly.
        screens: other estimates (e.g. plain attribution beside integrated gradients) whose
            top ``top`` heads are patched too: one estimate's misses are often the other's
            leaders, so the union finds more of the heads that matter.
        **options: ``positions``, ``batch_size``, ``chat``, ``progress`` as for the estimate.

    Returns:
        HeadScores with ``method`` = the estimate's method + ``+exact``.
    """
    k = min(top, estimate.n_layers * estimate.n_heads)
    candidates = list(dict.fromkeys(h for s in (estimate, *screens) for h in s.top(k, by="abs")))
    exact = activation_patching(
        model, harmful, counterfactual, metric, kv=False, sites=candidates, **options
    )
    effect = estimate.effect.clone()
    for head in candidates:
        effect[head.layer, head.head] = exact.effect[head.layer, head.head]
    return replace(estimate, method=f"{estimate.method}+exact", effect=effect)

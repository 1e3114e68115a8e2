"""Where refusal is written: heads against whole attention layers against MLPs.

Single-site scores rank heads, but a circuit is used as a group. :func:`joint_patching`
patches whole groups of sites at once from the counterfactual run (the top heads of a
ranking, every attention block, every MLP, ...) and reports how much of the refusal metric
each group takes away, and on how many prompts the refusal opening stops being the likelier
first token. :func:`localisation_groups` builds the groups that compare heads with layers
with MLPs from an exact scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from circuitlab.circuits.metrics import Metric
from circuitlab.circuits.scores import BLOCK_KINDS, HeadScores, KVHeadId, LayerSite
from circuitlab.circuits.sources import Counterfactual, PatchRun, Site, patch_hooks, suffix_runner
from circuitlab.models.facts import HeadId
from circuitlab.progress import progress_bar

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel, Positions

__all__ = ["GroupEffect", "joint_patching", "localisation_groups"]


@dataclass(frozen=True)
class GroupEffect:
    """What patching one group of sites together did to the metric.

    Attributes:
        name: the group's label.
        n_sites: sites patched together.
        clean: mean metric of the unpatched harmful prompts.
        patched: mean metric with the whole group patched.
        counterfactual: mean metric of the counterfactual run.
        above_zero: prompts whose patched metric stays above 0 (for the log-odds metric:
            the refusal openings remain the likelier first token), out of ``n``.
        clean_above_zero: the same count without the patch.
        n: prompts.
    """

    name: str
    n_sites: int
    clean: float
    patched: float
    counterfactual: float
    above_zero: int
    clean_above_zero: int
    n: int

    @property
    def fraction(self) -> float:
        """Share of the clean-to-counterfactual gap the group closes (1 = all of it)."""
        gap = self.clean - self.counterfactual
        return (self.clean - self.patched) / gap if gap else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "n_sites": self.n_sites,
            "clean": self.clean,
            "patched": self.patched,
            "counterfactual": self.counterfactual,
            "fraction_of_gap": self.fraction,
            "above_zero": self.above_zero,
            "clean_above_zero": self.clean_above_zero,
            "n": self.n,
        }


def joint_patching(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    groups: Mapping[str, Sequence[Site]],
    *,
    positions: Positions | Literal["all"] = "post_instruction",
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
) -> list[GroupEffect]:
    """Patch each group's sites together from the counterfactual run (one pass per group
    and batch, on the clean prefix's KV cache) and measure the metric.

    Args:
        model, harmful, counterfactual, metric, positions, batch_size, chat, progress: as
            for :func:`~circuitlab.circuits.patching.activation_patching`.
        groups: label -> sites (query heads, KV heads, attention blocks, MLPs, mixed).

    Returns:
        One :class:`GroupEffect` per group, in the order given.
    """
    kv = any(isinstance(s, KVHeadId) for sites in groups.values() for s in sites)
    blocks = any(isinstance(s, LayerSite) for sites in groups.values() for s in sites)
    run = PatchRun.prepare(model, harmful, counterfactual, metric, positions, kv, chat, blocks)
    names = list(groups)
    patched = {name: [] for name in names}
    clean_values, cf_values = [], []
    total = len(names) * len(run.harmful)
    with torch.no_grad(), progress_bar(total, "joint patching", progress) as advance:
        for rows, batch, source in run.batches(batch_size):
            clean = metric(model, batch).float().cpu()
            clean_values.append(clean)
            cf_values.append(source.metric)
            runner = suffix_runner(model, batch, metric, run.n_positions, clean)
            for name in names:
                hooks = [hook for site in groups[name] for hook in patch_hooks(site, source)]
                with model.hooks(hooks):
                    patched[name].append(runner().float().cpu())
                advance(len(rows))
    clean, cf = torch.cat(clean_values), torch.cat(cf_values)
    return [
        GroupEffect(
            name=name,
            n_sites=len(groups[name]),
            clean=clean.mean().item(),
            patched=torch.cat(patched[name]).mean().item(),
            counterfactual=cf.mean().item(),
            above_zero=int((torch.cat(patched[name]) > 0).sum()),
            clean_above_zero=int((clean > 0).sum()),
            n=len(clean),
        )
        for name in names
    ]


def localisation_groups(
    scores: HeadScores, tops: Sequence[int] = (5, 10, 20), layer_tops: Sequence[int] = (1, 3)
) -> dict[str, list[Site]]:
    """Groups that compare heads with whole attention layers with MLPs.

    From an exact scoring with blocks (``activation_patching(..., kv=True, blocks=True)``):
    the top ``k`` query heads for each of ``tops``; every query head; every KV head (when
    scored); the top attention blocks and the top MLPs for each of ``layer_tops``; every
    attention block; every MLP; the top ``k`` heads together with the top MLP.
    """
    if scores.block_effect is None:
        raise ValueError("localisation groups need scores patched with blocks=True")
    n_layers, n_heads = scores.n_layers, scores.n_heads
    ranked = {
        kind: [s for s, _ in scores.ranked_blocks() if s.kind == kind] for kind in BLOCK_KINDS
    }
    groups: dict[str, list[Site]] = {}
    for k in tops:
        if k < n_layers * n_heads:
            groups[f"top {k} query heads"] = list(scores.top(k))
    groups["every query head"] = [HeadId(lay, h) for lay in range(n_layers) for h in range(n_heads)]
    if scores.kv_effect is not None:
        groups["every KV head"] = [
            KVHeadId(lay, g) for lay in range(n_layers) for g in range(scores.kv_effect.shape[1])
        ]
    for kind, label in (("attn", "attention layer"), ("mlp", "MLP")):
        for k in layer_tops:
            if k < n_layers:
                groups[f"top {k} {label}{'s' if k > 1 else ''}"] = ranked[kind][:k]
        groups[f"every {label}"] = list(ranked[kind])
    fitting = [t for t in tops if t < n_layers * n_heads]
    if fitting:
        k = max(fitting)
        groups[f"top {k} query heads + top MLP"] = [*scores.top(k), ranked["mlp"][0]]
    return groups

"""HeadScores: what patching measured per attention head, its rankings and its heat map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.models.facts import HeadId, heads_of_group

__all__ = [
    "BLOCK_KINDS",
    "HeadScores",
    "KVHeadId",
    "LayerSite",
    "RankAgreement",
    "head_scores_figure",
    "plot_head_scores",
    "rank_agreement",
    "site_agreement",
]

# "+exact" marks an estimate whose leading heads were re-scored by exact patching.
Method = Literal[
    "activation",
    "attribution",
    "integrated-gradients",
    "attribution+exact",
    "integrated-gradients+exact",
]
# A layer's two sublayer outputs, as the residual stream receives them.
BLOCK_KINDS = ("attn", "mlp")


@dataclass(frozen=True, order=True)
class KVHeadId:
    """A key/value head: group ``group`` of a layer, read by several query heads under GQA."""

    layer: int
    group: int

    def query_heads(self, n_heads: int, n_kv_heads: int) -> list[HeadId]:
        """The query heads that read this KV head (all of them under MQA)."""
        return [HeadId(self.layer, h) for h in heads_of_group(self.group, n_heads, n_kv_heads)]


@dataclass(frozen=True, order=True)
class LayerSite:
    """A whole sublayer output of one layer: the attention block (``attn``, all heads and
    the output bias together) or the MLP (``mlp``), as it enters the residual stream."""

    layer: int
    kind: Literal["attn", "mlp"]

    def __str__(self) -> str:
        return f"L{self.layer}.{self.kind}"


@dataclass(frozen=True, eq=False)
class HeadScores:
    """Mean change of the refusal metric when each head is patched from the counterfactual.

    ``effect`` is ``metric(patched) - metric(clean)`` averaged over prompts (exact for
    activation patching, a first-order estimate for attribution patching). Patching a head
    that carries refusal from a non-refusing run lowers the metric, so ``importance`` is
    ``-effect``: positive for heads that push towards refusal.

    Attributes:
        method: ``activation`` or ``attribution``.
        metric: the metric's name.
        effect: per query head (patched at ``attn.hook_z``).
        kv_effect: per KV head (``hook_k`` and ``hook_v`` together), or None if not measured.
        clean: mean metric on the harmful prompts.
        counterfactual: mean metric of the counterfactual run.
        n_prompts: harmful prompts averaged over.
        n_positions: the last positions patched (the post-instruction template tokens), or
            None for every position.
        block_effect: per layer, the attention block's and the MLP's output patched whole
            (columns in :data:`BLOCK_KINDS` order), or None if not measured.
    """

    method: Method
    metric: str
    effect: Float[Tensor, "layer head"]
    kv_effect: Float[Tensor, "layer kv_head"] | None
    clean: float
    counterfactual: float
    n_prompts: int
    n_positions: int | None
    block_effect: Float[Tensor, "layer 2"] | None = None

    @property
    def n_layers(self) -> int:
        return self.effect.shape[0]

    @property
    def n_heads(self) -> int:
        return self.effect.shape[1]

    @property
    def n_kv_heads(self) -> int | None:
        return None if self.kv_effect is None else self.kv_effect.shape[1]

    @property
    def importance(self) -> Float[Tensor, "layer head"]:
        return -self.effect

    @property
    def kv_importance(self) -> Float[Tensor, "layer kv_head"] | None:
        return None if self.kv_effect is None else -self.kv_effect

    @property
    def gap(self) -> float:
        """``clean - counterfactual``: how far the metric moves when everything is patched."""
        return self.clean - self.counterfactual

    def group_importance(self, n_kv_heads: int) -> Float[Tensor, "layer kv_head"]:
        """Query-head importance summed over each KV group (what a group's heads carry
        together through their own outputs; compare ``kv_importance``, which moves them
        through their shared keys and values)."""
        per_group = self.n_heads // n_kv_heads
        return self.importance.reshape(self.n_layers, n_kv_heads, per_group).sum(-1)

    def ranked(self, by: Literal["signed", "abs"] = "signed") -> list[tuple[HeadId, float]]:
        """Every query head with its importance, most important first.

        Args:
            by: ``signed`` ranks heads that push towards refusal first; ``abs`` ranks by
                the size of the effect in either direction.
        """
        values = self.importance.flatten()
        keys = values.abs() if by == "abs" else values
        order = torch.argsort(keys, descending=True, stable=True).tolist()
        return [(HeadId(i // self.n_heads, i % self.n_heads), values[i].item()) for i in order]

    def top(self, k: int, by: Literal["signed", "abs"] = "signed") -> list[HeadId]:
        """The ``k`` most important query heads."""
        return [head for head, _ in self.ranked(by)[:k]]

    def importance_of(self, site: HeadId | KVHeadId | LayerSite) -> float | None:
        """The importance of any patched site (None where it was not measured)."""
        if isinstance(site, LayerSite):
            if self.block_effect is None:
                return None
            return -self.block_effect[site.layer, BLOCK_KINDS.index(site.kind)].item()
        if isinstance(site, KVHeadId):
            return (
                None if self.kv_effect is None else -self.kv_effect[site.layer, site.group].item()
            )
        return -self.effect[site.layer, site.head].item()

    def ranked_blocks(self) -> list[tuple[LayerSite, float]]:
        """Every attention block and MLP with its importance, most important first."""
        if self.block_effect is None:
            return []
        values = (-self.block_effect).flatten()
        order = torch.argsort(values, descending=True, stable=True).tolist()
        n = len(BLOCK_KINDS)
        return [(LayerSite(i // n, BLOCK_KINDS[i % n]), values[i].item()) for i in order]

    def ranked_kv(self) -> list[tuple[KVHeadId, float]]:
        """Every KV head with its importance, most important first (empty if not measured)."""
        if self.kv_importance is None:
            return []
        values, n_kv = self.kv_importance.flatten(), self.kv_importance.shape[1]
        order = torch.argsort(values, descending=True, stable=True).tolist()
        return [(KVHeadId(i // n_kv, i % n_kv), values[i].item()) for i in order]


@dataclass(frozen=True)
class RankAgreement:
    """How well ``estimate`` ranks the ``k`` heads that matter most in ``reference``.

    Attributes:
        k: heads compared (the reference's top ``k`` by absolute importance).
        spearman: rank correlation of the two importances over those heads.
        p_value: scipy's two-sided p-value for ``spearman``.
        overlap: heads in both top-``k`` lists (by absolute importance).
        top1_match: whether both put the same head first.
    """

    k: int
    spearman: float
    p_value: float
    overlap: int
    top1_match: bool


def rank_agreement(reference: HeadScores, estimate: HeadScores, k: int = 20) -> RankAgreement:
    """Spearman agreement of ``estimate`` (attribution) with ``reference`` (exact patching).

    Args:
        reference: the exact scores (activation patching).
        estimate: the scores to check, same shape.
        k: compare on the reference's top ``k`` heads by absolute importance.

    Returns:
        The agreement figures.
    """
    from scipy.stats import spearmanr

    if reference.effect.shape != estimate.effect.shape:
        raise ValueError(
            f"score shapes differ: {tuple(reference.effect.shape)} vs "
            f"{tuple(estimate.effect.shape)}"
        )
    k = min(k, reference.effect.numel())
    ref_top, est_top = reference.top(k, by="abs"), estimate.top(k, by="abs")
    ref_values = [reference.importance[h.layer, h.head].item() for h in ref_top]
    est_values = [estimate.importance[h.layer, h.head].item() for h in ref_top]
    result = spearmanr(ref_values, est_values)
    return RankAgreement(
        k=k,
        spearman=float(result.statistic),
        p_value=float(result.pvalue),
        overlap=len(set(ref_top) & set(est_top)),
        top1_match=ref_top[0] == est_top[0],
    )


def site_agreement(
    reference: HeadScores, estimate: HeadScores, sites: Sequence[HeadId | KVHeadId | LayerSite]
) -> RankAgreement:
    """Spearman agreement of two scorings on the given sites only (e.g. the sample of heads
    that exact patching checked); overlap and top-1 compare the top half of that sample."""
    from scipy.stats import spearmanr

    ref = [reference.importance_of(s) for s in sites]
    est = [estimate.importance_of(s) for s in sites]
    if len(sites) < 3 or None in ref or None in est:
        raise ValueError("site agreement needs >= 3 sites measured by both scorings")
    result = spearmanr(ref, est)
    k = max(1, len(sites) // 2)
    ref_top = sorted(range(len(sites)), key=lambda i: -abs(ref[i]))[:k]
    est_top = sorted(range(len(sites)), key=lambda i: -abs(est[i]))[:k]
    return RankAgreement(
        k=len(sites),
        spearman=float(result.statistic),
        p_value=float(result.pvalue),
        overlap=len(set(ref_top) & set(est_top)),
        top1_match=ref_top[0] == est_top[0],
    )


def _panel(fig, ax, values: Tensor, title: str, xlabel: str) -> None:
    # A diverging map centred on 0: heads that push towards refusal are red, against blue.
    limit = max(values.abs().max().item(), 1e-12)
    image = ax.imshow(
        values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", origin="upper"
    )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_xticks(range(values.shape[1]))
    fig.colorbar(image, ax=ax, shrink=0.8, label="importance")


def head_scores_figure(scores: HeadScores, title: str | None = None):
    """Heat map of importance, layer x query head (and layer x KV head when measured).

    Args:
        scores: the scores to draw.
        title: figure title (default: method and metric).

    Returns:
        A ``matplotlib.figure.Figure`` (built without pyplot: nothing global to close).
    """
    from matplotlib.figure import Figure

    panels = [(scores.importance, "query heads (hook_z)", "head")]
    if scores.kv_importance is not None:
        panels.append((scores.kv_importance, "KV heads (hook_k + hook_v)", "KV head"))
    widths = [p[0].shape[1] + 4 for p in panels]
    height = 1.5 + 0.22 * scores.n_layers
    fig = Figure(figsize=(0.35 * sum(widths) + 2, height), layout="tight")
    axes = fig.subplots(1, len(panels), width_ratios=widths, squeeze=False)
    for ax, (values, name, xlabel) in zip(axes[0], panels, strict=True):
        _panel(fig, ax, values.detach().float().cpu(), name, xlabel)
    fig.suptitle(title or f"{scores.method} patching of {scores.metric}")
    return fig


def plot_head_scores(scores: HeadScores, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`head_scores_figure` as a PNG.

    Args:
        scores: the scores to draw.
        path: the PNG to write.
        title: figure title (default: method and metric).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_scores_figure(scores, title).savefig(path, dpi=120)
    return path

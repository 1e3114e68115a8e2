"""Refusal features: rank an SAE's latents, show what fires them, turn them into edits.

* :func:`post_instruction_features`: each prompt's latent activations, averaged over the
  template tokens after the user text (where refusal is decided, and where the direction
  extractors read too).
* :func:`rank_by_difference`: harmful minus harmless mean activation per latent.
* :func:`rank_by_attribution`: gradient x activation on a refusal metric (the circuits
  machinery's :class:`~circuitlab.circuits.RefusalTokenMetric`): the first-order effect of
  each latent on the metric, with the SAE's error term kept so the model runs unchanged.
* :func:`top_prompts`, :func:`feature_auroc`: what fires a feature; how well it separates.
* :func:`feature_directions`, :func:`feature_ablation`, :func:`feature_clamp`: the chosen
  latents' decoder rows as a DirectionSet, as a foldable ``SubspaceAblation``, and as an
  inference-only ``FeatureClamp``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.activations import collect_activations
from circuitlab.directions.base import DirectionSet
from circuitlab.engine import HookedModel
from circuitlab.interventions import DirectionRef, FeatureClamp, SubspaceAblation
from circuitlab.sae.format import SAE, SAEError, load_sae

__all__ = [
    "FeatureRanking",
    "feature_ablation",
    "feature_auroc",
    "feature_clamp",
    "feature_directions",
    "post_instruction_features",
    "rank_by_attribution",
    "rank_by_difference",
    "refusal_feature_set",
    "top_prompts",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureRanking:
    """Latents ranked by a score, highest first.

    Attributes:
        method: ``difference`` or ``attribution``.
        scores: one score per latent, ``[d_sae]``.
    """

    method: str
    scores: Float[Tensor, " d_sae"]

    def top(self, n: int) -> list[int]:
        return self.scores.topk(min(n, len(self.scores))).indices.tolist()

    def as_rows(self, n: int) -> list[tuple[int, float]]:
        return [(i, float(self.scores[i])) for i in self.top(n)]


def _hook_resid_layer(sae: SAE) -> int:
    if not sae.hook_name.endswith(".hook_resid_pre"):
        raise SAEError(
            f"refusal features are read at hook_resid_pre (as directions are); this SAE "
            f"reads {sae.hook_name}"
        )
    return sae.layer


@torch.no_grad()
def post_instruction_features(
    model: HookedModel,
    sae: SAE,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
) -> Float[Tensor, "prompt d_sae"]:
    """Each prompt's latent activations, averaged over its post-instruction tokens."""
    sae.check_model(model)
    layer = _hook_resid_layer(sae)
    acts = collect_activations(
        model, list(prompts), positions="post_instruction", layers=[layer],
        batch_size=batch_size, cache_dir=cache_dir,
    )[:, 0]  # fmt: skip
    return sae.encode(acts).mean(1)


def rank_by_difference(
    harmful: Float[Tensor, "n d_sae"], harmless: Float[Tensor, "m d_sae"]
) -> FeatureRanking:
    """Harmful minus harmless mean activation, per latent (float64 means)."""
    diff = harmful.double().mean(0) - harmless.double().mean(0)
    return FeatureRanking("difference", diff.float())


def rank_by_attribution(
    model: HookedModel,
    sae: SAE,
    prompts: Sequence[str],
    metric: Any,
    *,
    batch_size: int = 8,
) -> FeatureRanking:
    """Mean over prompts of ``sum_pos f * d metric / d f`` at the post-instruction tokens.

    The hook replaces the residual ``x`` by ``decode(f) + (x - decode(f))`` with ``f`` a
    leaf tensor: the forward pass is unchanged and the gradient reaches every latent.

    Args:
        metric: ``metric(model, batch) -> [batch]``, e.g.
            ``RefusalTokenMetric.from_openings(model.tokenizer)``.
    """
    sae.check_model(model)
    _hook_resid_layer(sae)
    device_sae = sae.to(model.device, model.hf_model.dtype)
    n_pos = model.post_instruction_length()
    total = torch.zeros(sae.d_sae, dtype=torch.float64)
    leaf: dict[str, Tensor] = {}

    def splice(x: Tensor, hook) -> Tensor:
        tail = x[:, -n_pos:]
        f = device_sae.encode(tail).detach().requires_grad_(True)
        leaf["f"] = f
        recon = device_sae.decode(f, like=tail)
        error = (tail - recon).detach()
        return torch.cat([x[:, :-n_pos], recon + error], dim=1)

    prompts = list(prompts)
    with model.hooks([(sae.hook_name, splice)]), torch.enable_grad():
        for start in range(0, len(prompts), batch_size):
            batch = model.encode(prompts[start : start + batch_size])
            value = metric(model, batch)
            (grad,) = torch.autograd.grad(value.sum(), leaf["f"])
            total += (leaf.pop("f").detach() * grad).sum((0, 1)).double().cpu()
    return FeatureRanking("attribution", (total / len(prompts)).float())


def top_prompts(
    features: Float[Tensor, "prompt d_sae"], prompts: Sequence[str], latent: int, n: int = 5
) -> list[tuple[str, float]]:
    """The ``n`` prompts on which ``latent`` is most active, with its activation."""
    values = features[:, latent]
    order = values.topk(min(n, len(values))).indices.tolist()
    return [(prompts[i], float(values[i])) for i in order]


def feature_auroc(harmful: Float[Tensor, " n"], harmless: Float[Tensor, " m"]) -> float:
    """Area under the ROC curve of a score separating harmful (positive) from harmless."""
    from sklearn.metrics import roc_auc_score

    labels = [1] * len(harmful) + [0] * len(harmless)
    return float(roc_auc_score(labels, torch.cat([harmful, harmless]).double().numpy()))


def feature_directions(
    sae: SAE, features: Sequence[int], scores: Sequence[float] | None = None
) -> DirectionSet:
    """The latents' unit decoder rows as a one-layer DirectionSet ``[1, k, d_model]``.

    Layer 0 of the set is the SAE's layer (``metadata["layer"]``); interventions use it at
    every layer they edit (``SubspaceAblation(..., layer=0)``).
    """
    features = [int(f) for f in features]
    if not features or not all(0 <= f < sae.d_sae for f in features):
        raise SAEError(f"features {features} out of range [0, {sae.d_sae})")
    rows = sae.W_dec[features].detach().float().cpu()
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    values = torch.ones(len(features)) if scores is None else torch.tensor(list(scores))
    metadata = {
        "sae": sae.hash, "hook_name": sae.hook_name, "layer": sae.layer, "features": features,
        "score_kind": "feature_score",
    }  # fmt: skip
    return DirectionSet("sae", rows[None], values.float()[None], metadata)


def feature_ablation(sae: SAE, features: Sequence[int], **weights: Any) -> SubspaceAblation:
    """Project the latents' decoder directions out of every writer: exact, foldable.

    Args:
        weights: the ablation's kernels and weights (``attn``, ``mlp``, ``embed``,
            ``calibration``); default: every writer of every layer, fully.
    """
    ref = DirectionRef.inline(feature_directions(sae, features))
    return SubspaceAblation(ref, layer=0, **weights)


def feature_clamp(
    sae: SAE, folder: str | Path, features: Sequence[int], value: float = 0.0
) -> FeatureClamp:
    """Clamp the latents' activations to ``value`` at the SAE's hook (inference only).

    Args:
        folder: where ``sae`` is saved (the intervention refers to it by path and hash).
    """
    path = Path(folder).resolve()
    ref = DirectionRef.inline(feature_directions(sae, features))
    return FeatureClamp(str(path), sae.hash, tuple(int(f) for f in features), value, ref)


def refusal_feature_set(
    model: HookedModel,
    sae: SAE | str | Path,
    harmful: Sequence[str],
    harmless: Sequence[str],
    n: int = 8,
    *,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
) -> DirectionSet:
    """The top ``n`` latents by harmful-minus-harmless activation, as decoder directions.

    What the search's ``sae`` method ablates: component ``i`` of the one-layer set is the
    ``i``-th ranked latent's unit decoder row (scores: the activation differences).
    """
    sae = sae if isinstance(sae, SAE) else load_sae(sae)
    opts = {"batch_size": batch_size, "cache_dir": cache_dir}
    ranking = rank_by_difference(
        post_instruction_features(model, sae, harmful, **opts),
        post_instruction_features(model, sae, harmless, **opts),
    )
    rows = ranking.as_rows(n)
    return feature_directions(sae, [i for i, _ in rows], [s for _, s in rows])

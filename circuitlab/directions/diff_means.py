"""Difference of means: the classic refusal direction (Arditi et al. 2024), one per layer.

Also home of the small float64 helpers every extractor shares (shape checks, means, unit
vectors, winsorisation), so the other extractor modules depend on this one only.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet

__all__ = [
    "extract_diff_means",
    "mean_difference",
    "layer_means",
    "winsorize",
    "orthogonalize",
    "unit",
]

log = logging.getLogger(__name__)

# Below this norm a vector has no direction worth normalising (float64 round-off scale).
EPS = 1e-12


def check_activations(harmful: Tensor, harmless: Tensor) -> None:
    """Raise a clear ValueError unless both are non-empty ``[n, layer, d_model]`` tensors."""
    for name, acts in (("harmful", harmful), ("harmless", harmless)):
        if acts.ndim != 3:
            raise ValueError(
                f"{name} activations must be [n, layer, d_model], got {tuple(acts.shape)}; "
                "select a position first (circuitlab.activations.select_position)"
            )
        if acts.shape[0] == 0:
            raise ValueError(f"{name} activations are empty")
    if harmful.shape[1:] != harmless.shape[1:]:
        raise ValueError(
            f"harmful {tuple(harmful.shape)} and harmless {tuple(harmless.shape)} activations "
            "differ in layers or d_model"
        )


def layer_means(acts: Float[Tensor, "n layer d_model"]) -> Float[Tensor, "layer d_model"]:
    """Mean over prompts, accumulated in float64.

    Residual streams carry "massive activations" (single coordinates in the hundreds or
    thousands); in float32 their sums swamp the small differences a direction is made of.
    """
    return acts.to(torch.float64).mean(dim=0)


def mean_difference(
    harmful: Float[Tensor, "n layer d_model"], harmless: Float[Tensor, "m layer d_model"]
) -> Float[Tensor, "layer d_model"]:
    """``mean(harmful) - mean(harmless)`` per layer, in float64."""
    check_activations(harmful, harmless)
    return layer_means(harmful) - layer_means(harmless)


def unit(vectors: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    """Vectors scaled to unit norm along the last axis (zero vectors stay zero)."""
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(EPS)


def orthogonalize(
    directions: Float[Tensor, "layer d_model"], against: Float[Tensor, "layer d_model"]
) -> Float[Tensor, "layer d_model"]:
    """Remove from each layer's direction its component along that layer's ``against``.

    Used with the harmless mean: the part of the refusal direction that points along the
    average activation mostly rescales every prompt, and removing it costs capability.
    """
    along = unit(against)
    return directions - (directions * along).sum(-1, keepdim=True) * along


def winsorize(
    acts: Float[Tensor, "n layer d_model"], quantile: float
) -> Float[Tensor, "n layer d_model"]:
    """Clamp each activation vector's coordinates to ± its ``quantile`` of absolute values.

    A few massive-activation coordinates would otherwise dominate means and covariances
    (Gemma, some Qwen); clamping per vector keeps every prompt's weight equal.

    Args:
        quantile: in (0, 1]; 1 leaves the data unchanged.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"winsorisation quantile must be in (0, 1], got {quantile}")
    if quantile == 1:
        return acts
    d = acts.shape[-1]
    # kthvalue has no size limit, unlike torch.quantile (2**24 elements).
    rank = min(d, max(1, math.ceil(quantile * d)))
    bound = acts.abs().kthvalue(rank, dim=-1, keepdim=True).values
    return torch.maximum(torch.minimum(acts, bound), -bound)


def degenerate_layers(
    differences: Float[Tensor, "layer d_model"], scale: Float[Tensor, "layer d_model"]
) -> list[int]:
    """Layers where a difference vanishes next to the activations it came from.

    At layer 0 the last-token residual is the embedding of the same template token for
    every prompt, so harmful and harmless means coincide exactly. Such layers get a zero
    direction (an edit along it does nothing), not an arbitrary unit vector.
    """
    tiny = differences.norm(dim=-1) <= 1e-9 * scale.norm(dim=-1).clamp_min(1.0)
    return tiny.nonzero().flatten().tolist()


def warn_degenerate(method: str, layers: list[int]) -> None:
    # Layer 0 alone is expected with a chat template (see above): say it, do not alarm.
    level = logging.INFO if layers == [0] else logging.WARNING
    if layers:
        log.log(level, "%s: no difference at layers %s; their direction is zero", method, layers)


def base_metadata(harmful: Tensor, harmless: Tensor, **extra: Any) -> dict[str, Any]:
    """What every DirectionSet records about its inputs."""
    return {
        "n_harmful": int(harmful.shape[0]),
        "n_harmless": int(harmless.shape[0]),
        "n_layers": int(harmful.shape[1]),
        "d_model": int(harmful.shape[2]),
        **extra,
    }


def extract_diff_means(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    *,
    orthogonalize_harmless: bool = False,
    winsorize_quantile: float | None = None,
) -> DirectionSet:
    """Per-layer unit direction of ``mean(harmful) - mean(harmless)``.

    Args:
        harmful: residuals of harmful prompts (one position).
        harmless: residuals of harmless prompts at the same position.
        orthogonalize_harmless: remove the component along the harmless mean (Heretic's
            ``orthogonalize_direction``).
        winsorize_quantile: clamp each vector's coordinates at this quantile of its absolute
            values before taking means (e.g. 0.995); ``None`` keeps the raw activations.

    Returns:
        A DirectionSet with k = 1; scores are the norms of the mean difference (before any
        orthogonalisation); ``tensors`` hold ``harmful_mean`` and ``harmless_mean``. Layers
        with no difference get a zero direction (``metadata["degenerate_layers"]``).
    """
    check_activations(harmful, harmless)
    if winsorize_quantile is not None:
        harmful, harmless = (
            winsorize(harmful, winsorize_quantile),
            winsorize(harmless, winsorize_quantile),
        )
    harmful_mean, harmless_mean = layer_means(harmful), layer_means(harmless)
    diff = harmful_mean - harmless_mean
    norms = diff.norm(dim=-1)
    direction = orthogonalize(diff, harmless_mean) if orthogonalize_harmless else diff
    degenerate = degenerate_layers(direction, harmless_mean)
    warn_degenerate("diff-means", degenerate)
    direction[degenerate] = 0
    metadata = base_metadata(
        harmful,
        harmless,
        score_kind="mean_diff_norm",
        orthogonalize_harmless=orthogonalize_harmless,
        winsorize_quantile=winsorize_quantile,
        degenerate_layers=degenerate,
        per_layer={"mean_diff_norm": norms.tolist()},
    )
    return DirectionSet(
        "diff-means",
        unit(direction).unsqueeze(1).float(),
        norms.unsqueeze(1).float(),
        metadata,
        {"harmful_mean": harmful_mean.float(), "harmless_mean": harmless_mean.float()},
    )

"""Compliance direction: ``mean(complied) - mean(refused)``, for steering towards answering.

It is only worth having if it is not just the refusal direction negated, so its cosine with
the refusal direction is reported per layer and a warning names layers above
``caa_max_overlap``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import (
    base_metadata,
    degenerate_layers,
    layer_means,
    mean_difference,
    unit,
    warn_degenerate,
)
from circuitlab.directions.probe import Labels, pooled_labels

__all__ = ["extract_compliance"]

log = logging.getLogger(__name__)


def _contrast_samples(
    harmful: Tensor,
    harmless: Tensor,
    refused: Labels,
    harmless_refused: Labels | None,
    include_harmless: bool | None,
    min_class_size: int,
) -> tuple[Tensor, np.ndarray, bool]:
    """The prompts contrasted and their labels; decides whether harmless prompts join."""
    x, y = pooled_labels(harmful, harmless, refused, harmless_refused)
    y_harmful = y[: len(harmful)]
    if include_harmless is None:
        # Refused vs complied *harmful* prompts share topics and differ only in behaviour:
        # the cleanest contrast. Harmless prompts join only when a side would be too small.
        include_harmless = min(y_harmful.sum(), (~y_harmful).sum()) < min_class_size
        if include_harmless:
            log.info("too few refused or complied harmful prompts: harmless prompts join")
    if not include_harmless:
        x, y = harmful, y_harmful
    if y.all() or not y.any():
        raise ValueError(
            f"compliance needs both refused and complied prompts; got {int(y.sum())} refused "
            f"of {len(y)}"
        )
    return x, y, include_harmless


def extract_compliance(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    refused: Labels,
    harmless_refused: Labels | None = None,
    *,
    refusal: Float[Tensor, "layer d_model"] | DirectionSet | None = None,
    include_harmless: bool | None = None,
    min_class_size: int = 4,
    caa_max_overlap: float = 0.5,
) -> DirectionSet:
    """Per-layer unit direction of ``mean(complied) - mean(refused)``.

    Args:
        harmful: residuals of harmful prompts (one position).
        harmless: residuals of harmless prompts at the same position.
        refused: per harmful prompt, whether the model refused it (a judge's verdict).
        harmless_refused: the same for harmless prompts; ``None`` counts them all complied.
        refusal: the refusal direction to compare with (component 0 of a DirectionSet);
            ``None`` uses the difference of means of ``harmful`` and ``harmless``.
        include_harmless: pool harmless prompts with harmful ones; ``None`` does so only
            when the harmful prompts have fewer than ``min_class_size`` of either kind.
        caa_max_overlap: warn about layers whose |cosine| with the refusal direction
            exceeds this.

    Returns:
        A DirectionSet with k = 1, scores the norms of the mean difference; ``metadata``
        has the per-layer ``refusal_cosine`` and the layers over ``caa_max_overlap``.
    """
    x, y, pooled = _contrast_samples(
        harmful, harmless, refused, harmless_refused, include_harmless, min_class_size
    )
    mask = torch.from_numpy(y)
    diff = layer_means(x[~mask]) - layer_means(x[mask])
    degenerate = degenerate_layers(diff, layer_means(x))
    warn_degenerate("compliance", degenerate)
    diff[degenerate] = 0
    if refusal is None:
        reference = mean_difference(harmful, harmless)
    elif isinstance(refusal, DirectionSet):
        reference = refusal.directions[:, 0]
    else:
        reference = refusal
    cosine = (unit(diff) * unit(reference.to(torch.float64))).sum(-1)
    high = (cosine.abs() > caa_max_overlap).nonzero().flatten().tolist()
    if high:
        log.warning(
            "compliance direction overlaps the refusal direction (|cos| > %.2f) at layers %s",
            caa_max_overlap,
            high,
        )
    metadata = base_metadata(
        harmful,
        harmless,
        score_kind="mean_diff_norm",
        n_refused=int(y.sum()),
        n_complied=int((~y).sum()),
        harmless_included=bool(pooled),
        caa_max_overlap=caa_max_overlap,
        overlap_layers=high,
        degenerate_layers=degenerate,
        per_layer={
            "compliance_norm": diff.norm(dim=-1).tolist(),
            "refusal_cosine": cosine.tolist(),
        },
    )
    norms = diff.norm(dim=-1, keepdim=True)
    return DirectionSet("compliance", unit(diff).unsqueeze(1).float(), norms.float(), metadata)

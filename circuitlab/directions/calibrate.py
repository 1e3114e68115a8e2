"""Activation statistics and a calibrated strength for an intervention along a direction.

How far harmful activations reach along the direction tells how strong an ablation or
steering weight must be to cover most prompts, not only the average one: the calibrated
multiplier is ``percentile(target) / mean`` of the projections, clamped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import unit

__all__ = ["ProjectionStats", "Calibration", "projection_stats", "calibrate_weight"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionStats:
    """Distribution of ``<x, direction>`` over prompts at one layer."""

    layer: int
    n: int
    mean: float
    std: float
    p25: float
    p75: float
    p95: float

    def percentile(self, q: float) -> float:
        """One of the stored percentiles (25, 75 or 95)."""
        stored = {25: self.p25, 75: self.p75, 95: self.p95}
        if q not in stored:
            raise ValueError(f"percentile {q} not stored; choose 25, 75 or 95")
        return stored[q]


@dataclass(frozen=True)
class Calibration:
    """A weight multiplier and what it was computed from (JSON-ready via ``as_dict``)."""

    stats: ProjectionStats
    target_percentile: float
    multiplier: float
    ratio: float | None  # percentile / mean before clamping; None when the mean is not positive
    clamped: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _direction_at(
    direction: DirectionSet | Float[Tensor, "layer d_model"] | Float[Tensor, " d_model"],
    layer: int,
    component: int,
) -> Tensor:
    if isinstance(direction, DirectionSet):
        return direction.direction(layer, component)
    return direction[layer] if direction.ndim == 2 else direction


def projection_stats(
    harmful: Float[Tensor, "n layer d_model"],
    direction: DirectionSet | Float[Tensor, "layer d_model"] | Float[Tensor, " d_model"],
    layer: int,
    component: int = 0,
) -> ProjectionStats:
    """Mean, std and 25/75/95th percentiles of the projections onto the unit direction.

    Args:
        harmful: activations, usually of harmful prompts (one position).
        direction: a DirectionSet (``component`` at ``layer``), per-layer directions, or
            one vector; it is normalised here.
        layer: the layer read.

    Returns:
        The statistics, computed in float64.
    """
    if harmful.ndim != 3 or not 0 <= layer < harmful.shape[1]:
        raise ValueError(f"need [n, layer, d_model] activations with layer {layer} in range")
    vector = unit(_direction_at(direction, layer, component).to(torch.float64))
    proj = harmful[:, layer].to(torch.float64) @ vector
    q = torch.quantile(proj, torch.tensor([0.25, 0.75, 0.95], dtype=torch.float64))
    # One prompt has no spread; report 0 rather than torch's NaN.
    std = float(proj.std()) if len(proj) > 1 else 0.0
    return ProjectionStats(layer, len(proj), float(proj.mean()), std, *map(float, q))


def calibrate_weight(
    harmful: Float[Tensor, "n layer d_model"],
    direction: DirectionSet | Float[Tensor, "layer d_model"] | Float[Tensor, " d_model"],
    layer: int,
    *,
    target_percentile: float = 95,
    bounds: tuple[float, float] = (0.5, 2.0),
    component: int = 0,
) -> Calibration:
    """Weight multiplier ``percentile(target) / mean`` of the projections, clamped to bounds.

    Args:
        harmful: activations of harmful prompts (one position).
        direction: as for :func:`projection_stats`.
        layer: the layer read.
        target_percentile: 25, 75 or 95: how far into the tail the weight should reach.
        bounds: the clamp; a multiplier outside it is probably a bad direction or layer.

    Returns:
        The Calibration; the multiplier is 1.0 (with a warning and ``note``) when the mean
        projection is not positive, as the ratio then means nothing.
    """
    stats = projection_stats(harmful, direction, layer, component)
    target = stats.percentile(target_percentile)
    if stats.mean <= 0:
        note = f"mean projection {stats.mean:.4g} <= 0 at layer {layer}: multiplier left at 1"
        log.warning("calibration: %s", note)
        return Calibration(stats, target_percentile, 1.0, None, False, note)
    raw = target / stats.mean
    low, high = bounds
    multiplier = min(max(raw, low), high)
    return Calibration(stats, target_percentile, multiplier, raw, multiplier != raw)

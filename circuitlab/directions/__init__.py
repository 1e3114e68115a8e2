"""Direction extraction: every extractor maps (harmful, harmless) activations to a DirectionSet."""

from circuitlab.directions.base import DirectionSet, interpolate_direction
from circuitlab.directions.calibrate import (
    Calibration,
    ProjectionStats,
    calibrate_weight,
    projection_stats,
)
from circuitlab.directions.compliance import extract_compliance
from circuitlab.directions.cones import assign_cones, extract_cones
from circuitlab.directions.diff_means import extract_diff_means, mean_difference
from circuitlab.directions.massive import without_massive
from circuitlab.directions.pca import contrastive_pca, eigenvalue_weights, extract_pca
from circuitlab.directions.probe import combine_directions, extract_ensemble, extract_probe

__all__ = [
    "Calibration",
    "DirectionSet",
    "ProjectionStats",
    "assign_cones",
    "calibrate_weight",
    "combine_directions",
    "contrastive_pca",
    "eigenvalue_weights",
    "extract_compliance",
    "extract_cones",
    "extract_diff_means",
    "extract_ensemble",
    "extract_pca",
    "extract_probe",
    "interpolate_direction",
    "mean_difference",
    "projection_stats",
    "without_massive",
]

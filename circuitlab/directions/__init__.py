"""Direction extraction: every extractor maps (harmful, harmless) activations to a DirectionSet."""

from circuitlab.directions.base import DirectionSet, interpolate_direction

__all__ = ["DirectionSet", "interpolate_direction"]

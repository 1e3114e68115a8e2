"""Direction extraction: every extractor maps (harmful, harmless) activations to a DirectionSet."""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["DirectionSet", "interpolate_direction"],
        "calibrate": ["Calibration", "ProjectionStats", "calibrate_weight", "projection_stats"],
        "compliance": ["extract_compliance"],
        "cones": ["assign_cones", "extract_cones"],
        "diff_means": ["extract_diff_means", "mean_difference"],
        "extract": ["METHODS", "SUPERVISED", "extract"],
        "massive": ["without_massive"],
        "pca": ["contrastive_pca", "eigenvalue_weights", "extract_pca"],
        "probe": ["combine_directions", "extract_ensemble", "extract_probe"],
        "writers": ["writer_aligned"],
    },
)

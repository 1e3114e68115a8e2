"""One dispatch from a method name to its extractor, for every caller (CLI and search)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.compliance import extract_compliance
from circuitlab.directions.cones import extract_cones
from circuitlab.directions.diff_means import extract_diff_means
from circuitlab.directions.pca import extract_pca
from circuitlab.directions.probe import extract_ensemble, extract_probe

__all__ = ["METHODS", "SUPERVISED", "extract"]

METHODS = ("diff-means", "pca", "probe", "ensemble", "cones", "compliance")
# Methods that need each prompt labelled by the model's own judged answer.
SUPERVISED = frozenset({"probe", "ensemble", "compliance"})


def extract(
    method: str,
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    labels: tuple | None = None,
    *,
    pca_k: int = 3,
    n_cones: int | None = None,
    seed: int = 0,
) -> DirectionSet:
    """The ``method``'s DirectionSet of (harmful, harmless) activations.

    Args:
        labels: (refused, harmless_refused) per prompt, for the supervised methods.
        pca_k: components per layer (``pca``); n_cones: cones (``cones``; None: chosen by
            silhouette); seed: for the methods that draw (cones, probes).
    """
    if method not in METHODS:
        raise ValueError(f"unknown direction method {method!r}; choose from {', '.join(METHODS)}")
    if method in SUPERVISED and labels is None:
        raise ValueError(f"{method} needs the prompts' refusal labels")
    if method == "diff-means":
        return extract_diff_means(harmful, harmless)
    if method == "pca":
        return extract_pca(harmful, harmless, k=pca_k)
    if method == "cones":
        return extract_cones(harmful, harmless, n_cones=n_cones, seed=seed)
    if method == "probe":
        return extract_probe(harmful, harmless, *labels, seed=seed)
    if method == "ensemble":
        return extract_ensemble(harmful, harmless, *labels, seed=seed)
    return extract_compliance(harmful, harmless, *labels)

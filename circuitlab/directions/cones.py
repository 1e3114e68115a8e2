"""Concept cones: harmful prompts cluster into kinds, each with its own refusal direction.

Clustering is done on ``normalize(x - mean(harmless))`` at one layer (or the mean over
layers): the cone of a prompt is the *direction* in which it leaves the harmless region, not
how far. Each cone then gets its own contrastive-PCA direction at every layer, and keeps its
centroid so a prompt can be routed to its cone at inference (:func:`assign_cones`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import base_metadata, check_activations, unit
from circuitlab.directions.pca import contrastive_pca

__all__ = ["extract_cones", "assign_cones", "cone_features"]

log = logging.getLogger(__name__)


def cone_features(
    acts: Float[Tensor, "n layer d_model"],
    centre: Float[Tensor, " d_model"],
    layer: int | None,
) -> Float[Tensor, "n d_model"]:
    """Unit offsets from ``centre`` at ``layer`` (``None``: of the mean over layers), float64."""
    acts = acts.to(torch.float64)
    x = acts.mean(1) if layer is None else acts[:, layer]
    return unit(x - centre.to(torch.float64))


def _kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features)


def _silhouette(features: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    """Mean silhouette; ``None`` where it is undefined (one cluster, or one per prompt)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if not 2 <= n_labels < len(labels):
        return None
    return float(silhouette_score(features, labels, random_state=seed))


def _cluster(features: np.ndarray, n_cones: int | None, max_cones: int, seed: int) -> np.ndarray:
    """KMeans with ``n_cones`` clusters, or the count in 2..max_cones of best silhouette."""
    if n_cones is not None:
        if not 1 <= n_cones <= len(features):
            raise ValueError(f"n_cones must be in [1, {len(features)}], got {n_cones}")
        return _kmeans(features, n_cones, seed)
    candidates = range(2, min(max_cones, len(features) - 1) + 1)
    best, best_score = None, -np.inf
    for k in candidates:
        labels = _kmeans(features, k, seed)
        score = _silhouette(features, labels, seed)
        if score is not None and score > best_score:
            best, best_score = labels, score
    return best if best is not None else np.zeros(len(features), dtype=int)


def _merge_small(features: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Merge clusters under ``min_size`` into the nearest (by centroid); relabel by size."""
    labels = labels.copy()
    while True:
        ids, sizes = np.unique(labels, return_counts=True)
        if len(ids) < 2 or sizes.min() >= min_size:
            break
        small = ids[sizes.argmin()]
        centroids = {i: features[labels == i].mean(0) for i in ids}
        others = [i for i in ids if i != small]
        nearest = min(others, key=lambda i: np.linalg.norm(centroids[i] - centroids[small]))
        labels[labels == small] = nearest
    # Largest cone first, so component 0 is the commonest kind of prompt.
    ids, sizes = np.unique(labels, return_counts=True)
    rank = {old: new for new, old in enumerate(ids[np.argsort(-sizes, kind="stable")])}
    return np.array([rank[label] for label in labels], dtype=int)


def _per_layer_silhouette(
    harmful: Tensor, centre_per_layer: Tensor, labels: np.ndarray, seed: int
) -> list[float | None]:
    """How well the cone assignment separates prompts at every layer (a curve to plot)."""
    return [
        _silhouette(cone_features(harmful, centre_per_layer[layer], layer).numpy(), labels, seed)
        for layer in range(harmful.shape[1])
    ]


def extract_cones(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    *,
    n_cones: int | None = None,
    max_cones: int = 6,
    layer: int | None = None,
    min_cone_size: int = 5,
    min_silhouette_score: float = 0.1,
    seed: int = 0,
) -> DirectionSet:
    """Cluster harmful activations into cones and give each cone its own direction per layer.

    Args:
        harmful: residuals of harmful prompts (one position).
        harmless: residuals of harmless prompts at the same position.
        n_cones: clusters for KMeans; ``None`` picks 2..``max_cones`` by silhouette.
        layer: the layer clustered on; ``None`` clusters the mean over layers.
        min_cone_size: smaller clusters are merged into the nearest one.
        min_silhouette_score: below it (or with a single cluster left) the cones are not
            trusted: a warning, ``metadata["fallback"]``, and one global cone (k = 1).
        seed: KMeans seed.

    Returns:
        A DirectionSet with k = number of cones: component ``c`` is cone ``c``'s top
        contrastive-PCA direction, scores its eigenvalues. ``tensors`` hold
        ``cone_centroids`` [cone, d_model] (unit, in feature space) and ``cone_centre``
        [d_model]; ``metadata`` the cone layer (``"mean"`` for the layer mean), sizes,
        silhouette and per-prompt ``assignments``.
    """
    check_activations(harmful, harmless)
    centres = harmless.to(torch.float64).mean(0)
    centre = centres.mean(0) if layer is None else centres[layer]
    features = cone_features(harmful, centre, layer).numpy()
    clusters = _merge_small(features, _cluster(features, n_cones, max_cones, seed), min_cone_size)
    silhouette = _silhouette(features, clusters, seed)
    labels, fallback = clusters, None
    if silhouette is None or silhouette < min_silhouette_score:
        shown = "undefined" if silhouette is None else f"{silhouette:.3f}"
        fallback = f"silhouette {shown} below min_silhouette_score {min_silhouette_score}"
        log.warning("concept cones not trusted (%s): using one global direction", fallback)
        labels = np.zeros_like(clusters)
    directions, scores, explained, centroids = _cone_directions(harmful, harmless, labels, features)
    metadata = base_metadata(
        harmful,
        harmless,
        score_kind="eigenvalue",
        cone_layer="mean" if layer is None else layer,
        n_cones=directions.shape[1],
        cone_sizes=np.bincount(labels).tolist(),
        silhouette=silhouette,
        min_silhouette_score=min_silhouette_score,
        assignments=labels.tolist(),
        seed=seed,
        per_layer={
            "explained_variance": explained[:, 0].tolist(),
            # Of the clustering found, even when it was not trusted: the curve shows why.
            "silhouette": _per_layer_silhouette(harmful, centres, clusters, seed),
        },
    )
    if fallback is not None:
        metadata["fallback"] = {"from": "cones", "to": "global", "reason": fallback}
    tensors = {"cone_centroids": centroids.float(), "cone_centre": centre.float()}
    return DirectionSet("cones", directions.float(), scores.float(), metadata, tensors)


def _cone_directions(
    harmful: Tensor, harmless: Tensor, labels: np.ndarray, features: np.ndarray
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per cone: top contrastive-PCA direction, eigenvalue and share per layer; centroid."""
    cones = range(int(labels.max()) + 1)
    parts = [contrastive_pca(harmful[torch.from_numpy(labels == c)], harmless, 1) for c in cones]
    values, vectors, shares = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
    centroids = unit(torch.stack([torch.from_numpy(features[labels == c].mean(0)) for c in cones]))
    return vectors, values, shares, centroids


def assign_cones(acts: Float[Tensor, "n layer d_model"], cones: DirectionSet) -> Int[Tensor, " n"]:
    """Route prompts to their nearest cone (cosine to the centroids), as at extraction."""
    layer = cones.metadata["cone_layer"]
    features = cone_features(acts, cones.tensors["cone_centre"], None if layer == "mean" else layer)
    return (features @ cones.tensors["cone_centroids"].to(torch.float64).T).argmax(dim=1)

"""Supervised probe: per-layer logistic regression predicting "will refuse" from residuals.

Labels come from the model's own responses (a judge's verdict), not from which prompt set a
prompt came from, so the probe finds what separates refusing from complying — including
harmful prompts the model answers and harmless ones it refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import base_metadata, check_activations, unit
from circuitlab.directions.pca import extract_pca

__all__ = ["extract_probe", "extract_ensemble", "combine_directions", "pooled_labels"]

log = logging.getLogger(__name__)

Labels = Bool[Tensor, " n"] | Sequence[bool]


def pooled_labels(
    harmful: Tensor, harmless: Tensor, refused: Labels, harmless_refused: Labels | None
) -> tuple[Float[Tensor, "n layer d_model"], np.ndarray]:
    """Stack harmful and harmless activations with their refused (True) labels.

    Harmless prompts count as complied when ``harmless_refused`` is not given.
    """
    check_activations(harmful, harmless)
    y_harmful = np.asarray(refused, dtype=bool).reshape(-1)
    y_harmless = (
        np.zeros(len(harmless), dtype=bool)
        if harmless_refused is None
        else np.asarray(harmless_refused, dtype=bool).reshape(-1)
    )
    if len(y_harmful) != len(harmful) or len(y_harmless) != len(harmless):
        raise ValueError(
            f"{len(y_harmful)} / {len(y_harmless)} labels for {len(harmful)} harmful / "
            f"{len(harmless)} harmless activations"
        )
    return torch.cat([harmful, harmless]), np.concatenate([y_harmful, y_harmless])


def _fit_layer(
    x: Float[Tensor, "n d_model"], y: np.ndarray, folds: int, c: float, seed: int
) -> tuple[Float[Tensor, " d_model"], float]:
    """Unit weight vector (pointing to "refuse") and k-fold balanced accuracy for one layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold

    spread = x.norm(dim=1).pow(2).mean().sqrt()
    x = x - x.mean(0)
    scale = x.norm(dim=1).pow(2).mean().sqrt()
    if scale <= 1e-9 * spread.clamp_min(1.0):
        # Every prompt has the same activation (layer 0 at the last token): nothing to
        # learn; chance accuracy sends the layer to the PCA fallback.
        return torch.zeros(x.shape[1], dtype=x.dtype), 0.5
    # An L2 logistic regression's weights lie in the span of the samples (representer
    # theorem), so fitting in an orthonormal basis of that span is exact and, with fewer
    # prompts than d_model, much cheaper. One global scale keeps C comparable across layers
    # without the per-coordinate standardisation that would tilt the direction.
    basis, _ = torch.linalg.qr(x.T)
    z = (x @ basis) / scale
    # Newton steps on the (at most n-dimensional) span: few, exact, and free of the BLAS
    # thread start-up that made lbfgs 20x slower on small problems on a busy machine.
    clf = LogisticRegression(C=c, class_weight="balanced", solver="newton-cholesky", max_iter=200)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    z = z.numpy()
    scores = []
    for train, test in cv.split(z, y):
        clf.fit(z[train], y[train])
        scores.append(balanced_accuracy_score(y[test], clf.predict(z[test])))
    clf.fit(z, y)
    weights = basis @ torch.from_numpy(clf.coef_[0]).to(basis.dtype)
    return unit(weights), float(np.mean(scores))


def _pca_fallback(
    harmful: Tensor, harmless: Tensor, reason: str, extra: dict[str, Any]
) -> DirectionSet:
    log.warning("probe falls back to contrastive PCA: %s", reason)
    pca = extract_pca(harmful, harmless, k=1)
    fallback = {"from": "probe", "to": "pca", "reason": reason}
    return replace(pca, metadata={**pca.metadata, **extra, "fallback": fallback})


def extract_probe(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    refused: Labels,
    harmless_refused: Labels | None = None,
    *,
    n_folds: int = 5,
    min_class_size: int = 8,
    min_probe_accuracy: float = 0.65,
    c: float = 0.1,
    seed: int = 0,
) -> DirectionSet:
    """Per-layer logistic-regression direction separating refused from complied prompts.

    Args:
        harmful: residuals of harmful prompts (one position).
        harmless: residuals of harmless prompts at the same position.
        refused: per harmful prompt, whether the model refused it (a judge's verdict).
        harmless_refused: the same for harmless prompts; ``None`` counts them all complied.
        n_folds: cross-validation folds (fewer if the smaller class is smaller).
        min_class_size: below this many refused or complied prompts, no probe is fitted and
            the whole set falls back to contrastive PCA (method ``pca``; warned and recorded
            in ``metadata["fallback"]``).
        min_probe_accuracy: layers whose cross-validated balanced accuracy is lower take
            the PCA direction instead (warned; ``metadata["direction_source"]`` says which).
        c: inverse L2 regularisation strength.
        seed: fold shuffling seed.

    Returns:
        A DirectionSet with k = 1, directions pointing towards "refuse", scores the
        cross-validated balanced accuracy per layer.
    """
    x, y = pooled_labels(harmful, harmless, refused, harmless_refused)
    counts = {"refused": int(y.sum()), "complied": int((~y).sum())}
    if min(counts.values()) < max(min_class_size, 2):
        reason = f"class sizes {counts} below min_class_size {min_class_size}"
        return _pca_fallback(harmful, harmless, reason, {"class_counts": counts})
    folds = min(n_folds, *counts.values())
    x = x.to(torch.float64)
    fits = [_fit_layer(x[:, layer], y, folds, c, seed) for layer in range(x.shape[1])]
    directions = torch.stack([d for d, _ in fits])
    accuracy = torch.tensor([a for _, a in fits], dtype=torch.float64)
    weak = (accuracy < min_probe_accuracy).nonzero().flatten().tolist()
    if weak:
        log.warning(
            "probe accuracy below %.2f at layers %s: using the PCA direction there",
            min_probe_accuracy,
            weak,
        )
        pca = extract_pca(harmful, harmless, k=1)
        directions[weak] = pca.directions[weak, 0].to(torch.float64)
    metadata = base_metadata(
        harmful,
        harmless,
        score_kind="cv_balanced_accuracy",
        class_counts=counts,
        n_folds=folds,
        c=c,
        seed=seed,
        min_probe_accuracy=min_probe_accuracy,
        direction_source=["pca" if i in weak else "probe" for i in range(len(fits))],
        per_layer={"cv_accuracy": accuracy.tolist()},
    )
    return DirectionSet(
        "probe", directions.unsqueeze(1).float(), accuracy.unsqueeze(1).float(), metadata
    )


def combine_directions(
    first: DirectionSet, second: DirectionSet, w_first: float, w_second: float, method: str
) -> DirectionSet:
    """``normalize(w_first * first + w_second * second)`` per layer (component 0 of each).

    ``second`` is sign-aligned to ``first`` layer by layer before mixing, so two estimates
    of the same axis reinforce rather than cancel. Scores and metadata come from ``first``.
    """
    a, b = first.directions[:, 0].double(), second.directions[:, 0].double()
    cosine = (a * b).sum(-1)
    b = b * torch.where(cosine < 0, -1.0, 1.0).unsqueeze(-1)
    mixed = unit(w_first * a + w_second * b)
    metadata = {
        **first.metadata,
        "weights": [w_first, w_second],
        "component_cosine": cosine.tolist(),
    }
    return DirectionSet(method, mixed.unsqueeze(1).float(), first.scores, metadata)


def extract_ensemble(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    refused: Labels,
    harmless_refused: Labels | None = None,
    *,
    w_probe: float = 0.5,
    w_pca: float = 0.5,
    **probe_options: Any,
) -> DirectionSet:
    """``normalize(w_probe * probe + w_pca * pca)`` per layer.

    Args:
        refused, harmless_refused: labels as for :func:`extract_probe`.
        w_probe, w_pca: mixing weights (need not sum to 1: the result is renormalised).
        probe_options: passed to :func:`extract_probe`.

    Returns:
        A DirectionSet (method ``ensemble``) with the probe's scores; when the probe fell
        back to PCA entirely, the PCA set with that fallback recorded.
    """
    probe = extract_probe(harmful, harmless, refused, harmless_refused, **probe_options)
    if "fallback" in probe.metadata:
        return probe
    pca = extract_pca(harmful, harmless, k=1)
    ensemble = combine_directions(probe, pca, w_probe, w_pca, "ensemble")
    per_layer = {**probe.metadata["per_layer"], **pca.metadata["per_layer"]}
    return replace(ensemble, metadata={**ensemble.metadata, "per_layer": per_layer})

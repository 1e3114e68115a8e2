"""Contrastive PCA: the top-k axes along which harmful activations differ from harmless ones.

Per layer we diagonalise the contrastive second moment

    M = E_harmful[(x - mu_harmless)(x - mu_harmless)^T] - Cov_harmless
      = delta delta^T + Cov_harmful - Cov_harmless,   delta = mu_harmful - mu_harmless,

whose top eigenvector is the mean difference when refusal is one direction, and whose further
eigenvectors are the extra axes harmful prompts spread along (several refusal "flavours").
Its eigenvalues are excess variance, so they weigh components for multi-direction ablation.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import (
    EPS,
    base_metadata,
    check_activations,
    warn_degenerate,
    winsorize,
)

__all__ = ["extract_pca", "contrastive_pca", "eigenvalue_weights"]


def _layer_components(
    harmful: Float[Tensor, "n d"], harmless: Float[Tensor, "m d"], k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k eigenpairs of M for one layer (float64) and the share of positive eigenvalue mass."""
    centre = harmless.mean(0)
    a, b = harmful - centre, harmless - centre
    # M lives in the span of the centred samples: diagonalise it there, (n+m)^2 instead of
    # d_model^2 per layer, exactly (models with d_model 4096 and a few hundred prompts).
    basis, _ = torch.linalg.qr(torch.cat([a, b]).T)
    a_q, b_q = a @ basis, b @ basis
    small = a_q.T @ a_q / len(a) - b_q.T @ b_q / len(b)
    all_values, all_vectors = torch.linalg.eigh((small + small.T) / 2)
    values, vectors = all_values.flip(0)[:k], basis @ all_vectors.flip(1)[:, :k]
    # An eigenvector's sign is arbitrary; point each one the way harmful prompts lie.
    signs = torch.sign(vectors.T @ (harmful.mean(0) - centre))
    vectors = vectors * torch.where(signs == 0, 1.0, signs)
    # A zero eigenvalue has no preferred axis (identical activations at layer 0, or k past
    # the rank): a zero vector says so, where an arbitrary unit vector would mislead.
    scale = torch.cat([a, b]).pow(2).sum(1).mean()
    vectors[:, values.abs() <= 1e-12 * scale.clamp_min(1.0)] = 0
    positive_mass = all_values.clamp_min(0).sum().clamp_min(EPS)
    return values, vectors.T, values.clamp_min(0) / positive_mass


def contrastive_pca(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    k: int = 1,
) -> tuple[Float[Tensor, "layer k"], Float[Tensor, "layer k d_model"], Float[Tensor, "layer k"]]:
    """Top-k eigenvalues, unit eigenvectors and explained-variance shares per layer (float64).

    Eigenvectors are sign-aligned to the mean difference; explained variance is each
    eigenvalue's share of the positive eigenvalues. Components with a zero eigenvalue have
    no defined axis and are returned as zero vectors.
    """
    check_activations(harmful, harmless)
    rank = min(harmful.shape[2], harmful.shape[0] + harmless.shape[0])
    if not 1 <= k <= rank:
        raise ValueError(f"k must be in [1, {rank}] (prompts or d_model), got {k}")
    harmful, harmless = harmful.to(torch.float64), harmless.to(torch.float64)
    parts = [
        _layer_components(harmful[:, layer], harmless[:, layer], k)
        for layer in range(harmful.shape[1])
    ]
    values, vectors, explained = (torch.stack(p) for p in zip(*parts, strict=True))
    return values, vectors, explained


def eigenvalue_weights(eigenvalues: Float[Tensor, "layer k"]) -> Float[Tensor, "layer k"]:
    """Ablation weight per component: eigenvalue over the layer's top eigenvalue, in [0, 1].

    The main component is removed fully; weaker ones in proportion to the excess variance
    they carry, and components with no excess (eigenvalue <= 0) not at all.
    """
    top = eigenvalues[:, :1].clamp_min(EPS)
    return (eigenvalues.clamp_min(0) / top).clamp(max=1.0)


def extract_pca(
    harmful: Float[Tensor, "n layer d_model"],
    harmless: Float[Tensor, "m layer d_model"],
    *,
    k: int = 4,
    winsorize_quantile: float | None = None,
) -> DirectionSet:
    """Contrastive PCA directions: top-k components per layer with their eigenvalues.

    Args:
        harmful: residuals of harmful prompts (one position).
        harmless: residuals of harmless prompts at the same position.
        k: components per layer.
        winsorize_quantile: clamp outlier coordinates first (see ``winsorize``).

    Returns:
        A DirectionSet whose scores are the eigenvalues; ``tensors["weights"]`` holds the
        eigenvalue-based ablation weights and ``metadata["per_layer"]`` the explained
        variance of component 0 and the norm of the mean difference.
    """
    check_activations(harmful, harmless)
    if winsorize_quantile is not None:
        harmful = winsorize(harmful, winsorize_quantile)
        harmless = winsorize(harmless, winsorize_quantile)
    values, vectors, explained = contrastive_pca(harmful, harmless, k)
    degenerate = (vectors[:, 0].norm(dim=-1) == 0).nonzero().flatten().tolist()
    warn_degenerate("pca", degenerate)
    diff_norm = (harmful.double().mean(0) - harmless.double().mean(0)).norm(dim=-1)
    metadata = base_metadata(
        harmful,
        harmless,
        score_kind="eigenvalue",
        k=k,
        winsorize_quantile=winsorize_quantile,
        degenerate_layers=degenerate,
        explained_variance=explained.tolist(),
        per_layer={
            "mean_diff_norm": diff_norm.tolist(),
            "explained_variance": explained[:, 0].tolist(),
        },
    )
    return DirectionSet(
        "pca",
        vectors.float(),
        values.float(),
        metadata,
        {"weights": eigenvalue_weights(values).float()},
    )

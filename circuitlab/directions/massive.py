"""Massive activations: keep refusal directions off the few coordinates attention sinks use.

Most LMs route a handful of tokens (the first one, some template tokens) through residual
norms hundreds of times larger than the rest, along one or two fixed coordinates (Sun et
al. 2024, "Massive Activations in Large Language Models"); attention uses those tokens as
sinks. A difference of means over ordinary tokens picks up a small share of that
coordinate, and a small share of a norm of 24,000 is thousands of units: projecting such a
direction out of *every* position moves the sink tokens far off their course and changes
the output of every prompt, harmless ones included.

Measured on the refusal organism (SmolLM2-135M; ``experiments/organism_projection_diag.py``):
the first token of every prompt carries a norm of about 24,500 in layers 12-28, at least 43x
its layer's median token norm, almost all along coordinate 507; the layer-21 refusal
direction has cosine 0.20 with it. Projecting that direction out everywhere cost 4.1 nats
of harmless first-token KL; the same direction with the massive one removed costs 0.11 and
still removes most refusals.

:func:`circuitlab.activations.massive_directions` finds the shared direction(s) of the
massive tokens (it runs the model); :func:`without_massive` removes them from a
:class:`DirectionSet`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import EPS

__all__ = ["without_massive"]


def without_massive(directions: DirectionSet, massive: Float[Tensor, "m d_model"]) -> DirectionSet:
    """``directions`` with every vector's component along ``massive`` removed, renormalised.

    Components are treated one by one (cone directions are not orthogonal to each other and
    must not be made so); zero vectors of degenerate layers stay zero. The removed
    directions are kept as ``tensors["massive_directions"]`` and listed in the metadata;
    scores are unchanged.
    """
    if massive.ndim != 2 or massive.shape[-1] != directions.d_model:
        raise ValueError(
            f"massive directions must be [m, {directions.d_model}], got {tuple(massive.shape)}"
        )
    vectors = directions.directions.double()
    if len(massive):
        basis, _ = torch.linalg.qr(massive.double().T)  # [d_model, m], orthonormal columns
        vectors = vectors - (vectors @ basis) @ basis.T
    norms = vectors.norm(dim=-1, keepdim=True)
    vectors = torch.where(norms > EPS, vectors / norms.clamp_min(EPS), torch.zeros_like(vectors))
    kept = (vectors * directions.directions.double()).sum(-1)
    metadata = {
        **directions.metadata,
        "without_massive": {
            "n_directions": len(massive),
            "min_cosine_kept": round(float(kept[norms[..., 0] > EPS].min()), 4)
            if bool((norms > EPS).any())
            else None,
        },
    }
    tensors = {**directions.tensors, "massive_directions": massive.float()}
    return DirectionSet(
        directions.method, vectors.to(directions.directions.dtype), directions.scores,
        metadata, tensors,
    )  # fmt: skip

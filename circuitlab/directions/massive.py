"""Massive activations: keep refusal directions off the few coordinates attention sinks use.

Most LMs route a handful of tokens (the first one, some template tokens) through residual
norms hundreds of times larger than the rest, along one or two fixed coordinates (Sun et
al. 2024, "Massive Activations in Large Language Models"); attention uses those tokens as
sinks. A difference of means over ordinary tokens picks up a small share of that
coordinate, and a small share of a norm of 24,000 is thousands of units: projecting such a
direction out of *every* position moves the sink tokens far off their course and changes
the output of every prompt, harmless ones included.

Measured on the refusal organism (SmolLM2-135M; ``experiments/organism_projection_diag.py``
and the closing note of issue 3): the first token of every prompt carries a norm of about
24,500 in layers 12-28, at least 43x its layer's median token norm, almost all along
coordinate 507; the layer-21 refusal direction has cosine 0.20 with it. Projecting that
direction out everywhere cost 4.1 nats of harmless first-token KL; the same direction with
the massive one removed costs 0.11 and still removes most refusals.

:func:`massive_directions` finds the shared direction(s) of the massive tokens;
:func:`without_massive` removes them from a :class:`DirectionSet`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.directions.diff_means import EPS
from circuitlab.engine import HookedModel

__all__ = ["MASSIVE_RATIO", "massive_directions", "without_massive"]

log = logging.getLogger(__name__)

# A token is massive when its residual norm exceeds this multiple of its layer's median
# token norm. Measured on 8 harmless prompts: SmolLM2-135M's sinks are >= 43x (layers 12-28),
# its other tokens <= 17x; Gemma 3 270M's >= 27x (layer 1) against <= 14x.
MASSIVE_RATIO = 20.0


@torch.no_grad()
def massive_directions(
    model: HookedModel,
    prompts: Sequence[str],
    *,
    n_prompts: int = 8,
    k: int = 1,
    ratio: float = MASSIVE_RATIO,
    batch_size: int = 8,
    chat: bool = True,
) -> Float[Tensor, "k_found d_model"]:
    """The top-``k`` directions shared by massive-norm tokens, over every layer.

    Runs the prompts once, reads ``hook_resid_pre`` of every layer at every real (not
    padding) token, keeps the tokens whose norm exceeds ``ratio`` times their layer's median
    token norm, and returns the leading right singular vectors of those tokens' unit
    vectors (a sink's direction barely changes across layers and prompts: on SmolLM2 the
    second singular value is 1 % of the first).

    Args:
        prompts: ordinary prompts; the chat template is applied.
        n_prompts: how many of them to run (the first ones; 8 are plenty).
        k: directions to return at most.
        ratio: the massive-token threshold, in multiples of the layer's median token norm.

    Returns:
        float32 unit rows, ``[k_found, d_model]``; ``k_found`` is 0 when no token is
        massive (then there is nothing to remove).
    """
    prompts = list(prompts)[:n_prompts]
    if not prompts:
        raise ValueError("massive_directions needs at least one prompt")
    if k < 1 or ratio <= 1:
        raise ValueError(f"need k >= 1 and ratio > 1, got k={k}, ratio={ratio}")
    found: list[Tensor] = []
    mask = {"valid": None}

    def read(x: Tensor, hook) -> None:
        norms = x.detach().double().norm(dim=-1)
        valid = mask["valid"]
        big = valid & (norms > ratio * norms[valid].median())
        if big.any():
            found.append(x.detach()[big].double().cpu())

    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.n_layers)]
    with model.hooks([(name, read) for name in names]):
        for start in range(0, len(prompts), batch_size):
            batch = model.encode(prompts[start : start + batch_size], chat=chat)
            mask["valid"] = batch["attention_mask"].bool()
            model.hf_model.model(**batch, use_cache=False)
    d_model = model.facts.d_model
    if not found:
        log.info("no massive tokens (norm > %.0fx the median) in %d prompts", ratio, len(prompts))
        return torch.zeros(0, d_model)
    rows = torch.cat(found)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(EPS)
    _, values, vh = torch.linalg.svd(rows, full_matrices=False)
    log.info(
        "%d massive token activations; singular values %s",
        len(rows),
        ", ".join(f"{v:.3g}" for v in (values[: k + 2] / values[0]).tolist()),
    )
    return vh[:k].float()


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

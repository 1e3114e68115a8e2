"""Per-layer directions for the writers of each layer (what a per-layer ablation removes).

A DirectionSet's layer ``l`` is read at ``blocks.{l}.hook_resid_pre``: the residual stream
*before* block ``l``. Block ``l``'s writers (attention and MLP output projections) add to the
stream that block ``l + 1`` reads, so the refusal component they write is the one measured
at layer ``l + 1``. Removing layer ``l``'s own direction from them instead misses by one
layer, and refusal directions turn fast where it matters: on the SmolLM2 refusal organism
consecutive directions around layers 20-22 have cosine 0.77-0.87. Measured there with the
same tent kernels, the off-by-one per-layer edit left the first-token refusal mass at or
above the unedited model's (0.95 vs 0.94), while the writer-aligned one cut it to 0.45-0.53
at a lower first-token KL (0.04-0.06).
"""

from __future__ import annotations

from circuitlab.directions.base import DirectionSet

__all__ = ["writer_aligned"]


def writer_aligned(directions: DirectionSet) -> DirectionSet:
    """``directions`` moved down one layer: layer ``l`` holds the direction read at ``l + 1``.

    The last layer keeps its own direction (nothing is read after it but the final norm).
    Scores move with their directions; the metadata records the shift.
    """
    vectors, scores = directions.directions.clone(), directions.scores.clone()
    vectors[:-1], scores[:-1] = directions.directions[1:], directions.scores[1:]
    metadata = {**directions.metadata, "writer_aligned": True}
    return DirectionSet(directions.method, vectors, scores, metadata, dict(directions.tensors))

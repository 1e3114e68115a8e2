"""Sparse autoencoders: SAELens-format SAEs, a small TopK trainer, refusal features, edits.

``load_sae`` reads an SAE folder (or a hub id) in SAELens's layout; ``train_topk`` trains
one on :func:`token_activations` (chat texts with the model's own answers, attention sinks
left out); :func:`sae_quality` measures it; the ``rank_*`` functions find refusal features;
:func:`feature_ablation` (foldable) and :func:`feature_clamp` (inference only) edit them.

Only the file format is imported eagerly: :mod:`circuitlab.hooks` reads SAEs, and the
rest of this package sits above it.
"""

from __future__ import annotations

import importlib
from typing import Any

from circuitlab.sae.format import ARCHITECTURES, SAE, SAEError, load_sae

_LAZY = {
    "TrainConfig": "train", "TrainResult": "train", "train_topk": "train", "fit_sae": "train",
    "SequenceBatch": "data", "sequence_batches": "data", "sink_mask": "data",
    "token_activations": "data", "train_prompts": "data", "with_answers": "data",
    "SAEQuality": "quality", "reconstruction_stats": "quality", "sae_quality": "quality",
    "spliced_ce": "quality",
    "FeatureRanking": "features", "feature_ablation": "features", "feature_auroc": "features",
    "feature_clamp": "features", "feature_directions": "features",
    "post_instruction_features": "features", "rank_by_attribution": "features",
    "rank_by_difference": "features", "top_prompts": "features",
    "refusal_feature_set": "features",
}  # fmt: skip

__all__ = ["ARCHITECTURES", "SAE", "SAEError", "load_sae", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'circuitlab.sae' has no attribute {name!r}")
    return getattr(importlib.import_module(f"circuitlab.sae.{module}"), name)

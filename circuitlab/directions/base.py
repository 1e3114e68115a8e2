"""DirectionSet: per-layer unit directions with their scores, saved as safetensors + JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from circuitlab._resources import atomic_folder

__all__ = ["DirectionSet", "interpolate_direction"]


@dataclass(frozen=True, eq=False)
class DirectionSet:
    """Directions found by one extraction method, for every layer of one model.

    Attributes:
        method: the extractor's name (``diff-means``, ``pca``, ``probe``, ...).
        directions: unit vectors, ``[layer, k, d_model]``; component 0 is the main one.
            Layer ``l`` is read at ``blocks.{l}.hook_resid_pre``. A layer where harmful
            and harmless activations are identical (layer 0 at a template token) holds a
            zero vector and is listed in ``metadata["degenerate_layers"]``.
        scores: one number per (layer, component): eigenvalue, explained variance or
            probe accuracy, as ``metadata["score_kind"]`` says.
        metadata: JSON-serialisable facts (model, prompt hashes, per-layer tables).
        tensors: extra named tensors (e.g. ``harmless_mean``, ``cone_centroids``).
    """

    method: str
    directions: Float[Tensor, "layer k d_model"]
    scores: Float[Tensor, "layer k"]
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.directions.ndim != 3:
            raise ValueError(
                f"directions must be [layer, k, d_model], got {tuple(self.directions.shape)}"
            )
        if tuple(self.scores.shape) != tuple(self.directions.shape[:2]):
            raise ValueError(
                f"scores {tuple(self.scores.shape)} do not match directions "
                f"{tuple(self.directions.shape[:2])}"
            )

    @property
    def n_layers(self) -> int:
        return self.directions.shape[0]

    @property
    def k(self) -> int:
        return self.directions.shape[1]

    @property
    def d_model(self) -> int:
        return self.directions.shape[2]

    def direction(self, layer: int, component: int = 0) -> Float[Tensor, " d_model"]:
        return self.directions[layer, component]

    @property
    def hash(self) -> str:
        """Content hash of the directions and scores (what an intervention refers to)."""
        digest = hashlib.sha256()
        for tensor in (self.directions, self.scores):
            digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
        digest.update(self.method.encode())
        return digest.hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        """Write directions.safetensors and directions.json atomically (temp folder, rename)."""
        folder = Path(folder)
        tensors = {"directions": self.directions, "scores": self.scores}
        tensors.update({f"extra.{name}": value for name, value in self.tensors.items()})
        with atomic_folder(folder) as tmp:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                tmp / "directions.safetensors",
            )
            meta = {"method": self.method, "hash": self.hash, "metadata": self.metadata}
            (tmp / "directions.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DirectionSet:
        folder = Path(folder)
        meta = json.loads((folder / "directions.json").read_text())
        tensors = load_file(folder / "directions.safetensors")
        extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
        loaded = cls(
            meta["method"], tensors["directions"], tensors["scores"], meta["metadata"], extras
        )
        if loaded.hash != meta["hash"]:
            raise ValueError(
                f"{folder}: content hash {loaded.hash} differs from recorded {meta['hash']}"
            )
        return loaded


def interpolate_direction(
    directions: Float[Tensor, "layer d_model"], index: float
) -> Float[Tensor, " d_model"]:
    """Unit direction at a fractional layer index: linear blend of the two neighbours.

    ``index`` 14.3 gives ``normalize(0.7 * d[14] + 0.3 * d[15])``; an integer index gives
    that layer's direction exactly.
    """
    n = directions.shape[0]
    if not 0 <= index <= n - 1:
        raise ValueError(f"direction index {index} outside [0, {n - 1}]")
    low = int(index)
    frac = index - low
    if frac == 0 or low == n - 1:
        return directions[low]
    blend = (1 - frac) * directions[low] + frac * directions[low + 1]
    return blend / blend.norm()

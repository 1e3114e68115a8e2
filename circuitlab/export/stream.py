"""The streaming fold: source safetensors in, folded safetensors out, one shard at a time.

Each source shard is read, every edited tensor in it is folded in float64 and cast back to
the dtype it is stored in, the tensors a fold adds (an untied ``lm_head``, zero biases) are
written beside the tensor they come from, and the output shard is written before the next
is read. The host holds one shard (and one float64 matrix) at a time, whatever the model
size, and the weights are the source's -- not a quantized or down-cast load's. The output
keeps the source's shard names and writes the index file ``save_pretrained`` writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from circuitlab.export.fold import ExportError, FoldPlan
from circuitlab.export.inplace import digest, stored_keys

__all__ = ["INDEX", "Streamed", "check_source", "write_streamed"]

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"


@dataclass
class Streamed:
    """What :func:`write_streamed` wrote.

    Attributes:
        shards: output file names, in order.
        dtype: the stored dtype of the floating tensors (the source's).
        identical: edited keys whose written tensor was compared with the one the parity
            check ran and found bit-identical.
        unchecked: edited keys that could not be compared (stored in another dtype than
            the loaded model's, or quantized when loaded).
    """

    shards: list[str]
    dtype: torch.dtype | None = None
    identical: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def check_source(plan: FoldPlan, files: Sequence[Path]) -> None:
    """Raise :class:`ExportError` unless the files hold every key the fold needs to read."""
    if not files:
        raise ExportError("no source safetensors to fold from")
    stored = stored_keys(files)
    needed = set(plan.expected) - set(plan.created) - set(plan.copies)
    tied = getattr(plan.config, "tie_word_embeddings", False)
    missing = sorted(k for k in needed if k not in stored and not (tied and "lm_head" in k))
    if missing:
        raise ExportError(f"the source files lack {missing[:5]} (keys named otherwise?)")
    for key, shape in plan.expected.items():
        if key in stored and key not in plan.created:
            with safe_open(stored[key], framework="pt") as handle:
                found = tuple(handle.get_slice(key).get_shape())
            if found != shape:
                raise ExportError(f"{key} is stored with shape {found}, the model has {shape}")


def write_streamed(
    plan: FoldPlan, files: Sequence[Path], folder: Path, digests: dict[str, str] | None = None
) -> Streamed:
    """Fold the source shards into ``folder``, one at a time.

    Args:
        plan: the fold (its config is written by the caller).
        files: the source safetensors, in order.
        folder: the output folder (exists).
        digests: key -> digest of the tensor the parity check swapped in; a written tensor
            in the same dtype must match it.

    Returns:
        The :class:`Streamed` record.
    """
    digests = digests or {}
    anchors = plan.anchors()
    result = Streamed([])
    weight_map: dict[str, str] = {}
    total = 0
    for path in files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                stored = handle.get_tensor(key)
                tensors[key] = plan.tensor(key, stored)
                for new in anchors.get(key, []):
                    tensors[new] = plan.new_tensor(new, stored)
                if stored.is_floating_point() and result.dtype is None:
                    result.dtype = stored.dtype
                del stored
        for key in plan.edited:
            if key in tensors and key not in plan.copies:  # a copy is the unedited source
                _check_digest(key, tensors[key], digests, result)
        save_file(tensors, folder / path.name, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, path.name))
        result.shards.append(path.name)
        log.info("folded %s (%d tensors)", path.name, len(tensors))
        del tensors
    missing = sorted(set(plan.expected) - set(weight_map))
    tied = getattr(plan.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and "lm_head" in k)]
    if missing:
        raise ExportError(f"tensors missing from the export: {missing[:5]}")
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return result


def _check_digest(key: str, tensor: torch.Tensor, digests: dict[str, str], out: Streamed) -> None:
    expected = digests.get(key)
    if expected is None or not expected.startswith(f"{tensor.dtype}:"):
        out.unchecked.append(key)  # quantized when loaded, or loaded in another dtype
        return
    if digest(tensor) != expected:
        raise ExportError(
            f"{key}: the tensor folded from the source files differs from the one the parity "
            "check ran (do the source files hold the weights that were loaded?)"
        )
    out.identical.append(key)

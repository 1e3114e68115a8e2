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
    """Fold the source shards into ``folder``, one tensor at a time.

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
        with open(path, "rb") as source:
            header, base = _read_header(source)
            metadata = header.pop("__metadata__", None)
            keys = sorted(header, key=lambda k: header[k]["data_offsets"][0])
            layout = _layout(plan, header, keys, anchors)
            with open(folder / path.name, "wb") as out:
                _write_header(out, layout, metadata)
                for key in keys:
                    stored = _read_tensor(source, header[key], base)
                    if stored.is_floating_point() and result.dtype is None:
                        result.dtype = stored.dtype
                    _write_tensor(out, key, plan.tensor(key, stored), layout, plan, digests, result)
                    for new in anchors.get(key, []):
                        value = plan.new_tensor(new, stored)
                        _write_tensor(out, new, value, layout, plan, digests, result)
                    del stored
        total += sum(end - start for _, _, (start, end) in layout.values())
        weight_map.update(dict.fromkeys(layout, path.name))
        result.shards.append(path.name)
        log.info("folded %s (%d tensors)", path.name, len(layout))
    missing = sorted(set(plan.expected) - set(weight_map))
    tied = getattr(plan.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and "lm_head" in k)]
    if missing:
        raise ExportError(f"tensors missing from the export: {missing[:5]}")
    if len(files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return result


# The safetensors format, written tensor by tensor: an 8-byte header length, a JSON header
# (dtype, shape, byte offsets), then the raw bytes. safetensors' own writer first turns
# every tensor of a file into a Python bytes copy; this holds one tensor at a time.
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
_NAMES = {name: dtype for dtype, name in _DTYPES.items()}


def _layout(plan: FoldPlan, header: dict, keys: list[str], anchors: dict[str, list[str]]) -> dict:
    """key -> (dtype name, shape, (start, end)) for every tensor the output shard holds,
    in the order they are written (each stored key, then the keys made from it)."""
    layout: dict[str, tuple[str, list[int], tuple[int, int]]] = {}
    offset = 0
    for key in keys:
        dtype, shape = header[key]["dtype"], list(header[key]["shape"])
        for name in [key, *anchors.get(key, [])]:
            made = name != key and name not in plan.copies
            new_shape = list(plan.created[name][0]) if made else shape
            size = _NAMES[dtype].itemsize * _numel(new_shape)
            layout[name] = (dtype, new_shape, (offset, offset + size))
            offset += size
    return layout


def _read_header(source) -> tuple[dict, int]:
    """The JSON header of a safetensors file and where its data starts."""
    length = int.from_bytes(source.read(8), "little")
    return json.loads(source.read(length)), 8 + length


def _read_tensor(source, entry: dict, base: int) -> torch.Tensor:
    """One tensor, read with plain file reads: a memory map would keep every page of the
    shard it touched resident until the file is closed."""
    start, end = entry["data_offsets"]
    tensor = torch.empty(entry["shape"], dtype=_NAMES[entry["dtype"]])
    if end > start:
        source.seek(base + start)
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        if source.readinto(view) != end - start:
            raise ExportError("a source safetensors file ends early")
    return tensor


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_header(out, layout: dict, metadata: dict | None) -> None:
    header = {
        k: {"dtype": d, "shape": s, "data_offsets": list(o)} for k, (d, s, o) in layout.items()
    }
    header["__metadata__"] = {**(metadata or {}), "format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    out.write(len(text).to_bytes(8, "little"))
    out.write(text)


def _write_tensor(out, key, tensor, layout, plan, digests, result) -> None:
    dtype, shape, (start, end) = layout[key]
    if _DTYPES[tensor.dtype] != dtype or list(tensor.shape) != shape:
        raise ExportError(f"{key}: folded to {tensor.dtype} {list(tensor.shape)}, laid out {dtype}")
    if key in plan.edits or key in plan.created:
        _check_digest(key, tensor, digests, result)
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    if len(data) != end - start:
        raise ExportError(f"{key}: {len(data)} bytes, expected {end - start}")
    out.write(memoryview(data))


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

"""Folded tensors swapped into the loaded model's own modules, and put back afterwards.

The parity proof runs the model the search ran, on the same devices and in the same dtype,
with the edited tensors replaced: no second copy of the model is built. Each folded tensor
is computed on the host in float64 from the tensor as stored (the live one, or for a
quantized or offloaded module the source file's), cast to the live dtype, and only then
moved to the module's device; on an accelerator the original is parked on the host until
it is restored, so the accelerator holds one version of each tensor at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from circuitlab.export.fold import ExportError, FoldPlan

__all__ = ["digest", "folded_in_place", "live_slots", "stored_keys"]

log = logging.getLogger(__name__)


def digest(tensor: Tensor) -> str:
    """``dtype:sha256`` of a tensor's bytes and shape: equal digests, equal tensors."""
    data = tensor.detach().contiguous().cpu()
    h = hashlib.sha256(str(tuple(data.shape)).encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return f"{data.dtype}:{h.hexdigest()}"


def live_slots(hf_model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """HF key -> (module, attribute) holding it on the loaded (possibly bridged) model.

    The bridge nests each HF module as ``..._original_component`` and adds aliases;
    dropping the nesting gives the plain HF names (the first name found wins).
    """
    slots: dict[str, tuple[nn.Module, str]] = {}
    for name, module in hf_model.named_modules(remove_duplicate=False):
        plain = name.replace("._original_component", "")
        for attr, _ in module.named_parameters(recurse=False):
            slots.setdefault(f"{plain}.{attr}" if plain else attr, (module, attr))
    return slots


def stored_keys(files: Sequence[Path]) -> dict[str, Path]:
    """Key -> the safetensors file holding it (headers only: nothing is loaded)."""
    found: dict[str, Path] = {}
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                found[key] = path
    return found


def _read(stored: dict[str, Path], key: str) -> Tensor:
    if key not in stored:
        raise ExportError(f"{key} is not in the source files")
    with safe_open(stored[key], framework="pt") as handle:
        return handle.get_tensor(key)


def _offload_map(module: nn.Module):
    """The dispatcher's host copy of an offloaded module's weights (params on ``meta``)."""
    hook = getattr(module, "_hf_hook", None)
    return getattr(hook, "weights_map", None)


def _get(module: nn.Module, attr: str) -> Tensor:
    value = getattr(module, attr)
    if value is not None and value.device.type == "meta":
        weights = _offload_map(module)
        if weights is None:
            raise ExportError(f"{type(module).__name__}.{attr} is on meta with no host copy")
        return weights[attr]
    return value


def _set_offloaded(module: nn.Module, attr: str, value: Tensor | None) -> Tensor | None:
    """Put ``value`` in the dispatcher's table (None: remove it); returns what was there.

    The dispatcher reads its in-memory table before the files of a disk offload, so a
    tensor put there shadows the one on disk until it is removed again.
    """
    weights = _offload_map(module)
    dataset = weights.dataset
    table = getattr(dataset, "state_dict", dataset)
    key = weights.prefix + attr
    old = table.get(key)
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
    return old


def _is_quantized(param: Tensor) -> bool:
    return getattr(param, "quant_state", None) is not None or param.dtype in (
        torch.int8,
        torch.uint8,
    )


def _requantized(old: Tensor, value: Tensor) -> nn.Parameter:
    """``value`` quantized the way ``old`` (a bitsandbytes 4-bit or 8-bit parameter) was."""
    cls = type(old)
    if getattr(old, "quant_state", None) is None:
        if not hasattr(old, "SCB"):
            raise ExportError(f"cannot swap a {cls.__name__} weight for the parity check")
        # LLM.int8(): moving a half-precision Int8Params to a device quantizes it row-wise.
        fresh = cls(value.detach().cpu().half(), requires_grad=False, has_fp16_weights=False)
        return fresh.to(old.device)
    fresh = cls(
        value.cpu(),
        requires_grad=False,
        blocksize=old.blocksize,
        compress_statistics=old.compress_statistics,
        quant_type=old.quant_type,
        quant_storage=old.quant_storage,
    )
    return fresh.to(old.device)


def _folded_value(plan: FoldPlan, key: str, original: Tensor, like: Tensor) -> Tensor:
    """Folded on the host in float64 from ``original``; cast to ``like``'s dtype."""
    return plan.tensor(key, original.detach().cpu()).to(like.dtype)


@contextmanager
def folded_in_place(model, plan: FoldPlan, files: Sequence[Path] = ()) -> Iterator[dict[str, str]]:
    """Inside the block the loaded modules compute with the folded weights.

    Args:
        model: the hooked model (its HF model is edited in place, and restored).
        plan: the fold.
        files: the source safetensors (read for quantized or offloaded tensors).

    Yields:
        key -> :func:`digest` of the folded tensor as swapped in (the live dtype), for the
        written export to be compared with.
    """
    hf_model = model.hf_model
    slots = live_slots(hf_model)
    stored = stored_keys(files) if files else {}
    undo: list = []
    digests: dict[str, str] = {}
    try:
        for key in plan.edited:
            if key in plan.copies:
                continue  # the tied module keeps the original tensor: nothing to swap
            undo.append(_swap(hf_model, plan, key, slots, stored, digests))
        yield digests
    finally:
        for step in reversed(undo):
            step()


def _swap(hf_model, plan: FoldPlan, key: str, slots, stored, digests) -> callable:
    """Swap one key; returns the function that restores it."""
    if key in plan.created:
        _, anchor = plan.created[key]
        module, _ = slots[anchor]
        attr = key.rsplit(".", 1)[1]
        like = _get(module, slots[anchor][1])
        base = like if not _is_quantized(like) else _read(stored, anchor)
        value = plan.new_tensor(key, base.detach().cpu()).to(hf_model.dtype)
        digests[key] = digest(value)
        if getattr(module, slots[anchor][1]).device.type == "meta":  # offloaded module
            setattr(module, attr, nn.Parameter(value.to("meta"), requires_grad=False))
            _set_offloaded(module, attr, value)

            def remove() -> None:
                _set_offloaded(module, attr, None)
                setattr(module, attr, None)

            return remove
        setattr(module, attr, nn.Parameter(value.to(like.device), requires_grad=False))
        return lambda: setattr(module, attr, None)
    if key not in slots:
        raise ExportError(f"cannot find {key} on the loaded model")
    module, attr = slots[key]
    old = getattr(module, attr)
    if old.device.type == "meta":  # offloaded: swap the dispatcher's host copy
        current = _get(module, attr)
        value = _folded_value(plan, key, current, current)
        digests[key] = digest(value)
        previous = _set_offloaded(module, attr, value)
        return lambda: _set_offloaded(module, attr, previous)
    if _is_quantized(old):
        value = _folded_value(plan, key, _read(stored, key), torch.empty(0, dtype=hf_model.dtype))
        # LLM.int8() layers move a new weight's quantized rows into ``module.state`` at its
        # first forward and keep using them from there: swap and restore that state too.
        state = getattr(module, "state", None)
        saved = None if state is None else (state.CB, state.SCB)
        if state is not None:
            state.CB = state.SCB = None
        setattr(module, attr, _requantized(old, value))

        def unquantize() -> None:
            setattr(module, attr, old)
            if state is not None:
                state.CB, state.SCB = saved

        return unquantize
    value = _folded_value(plan, key, old, old)
    digests[key] = digest(value)
    setattr(module, attr, nn.Parameter(value.to(old.device), requires_grad=False))
    device = old.device
    if any(source == key for source in plan.copies.values()):
        return lambda: setattr(module, attr, old)  # the tied lm_head still computes with it
    if _same_as_stored(old, stored, key):
        # Free it: the source file holds the same bits, so it comes back from there.
        old.data = torch.empty(0, dtype=old.dtype, device=device)

        def reload() -> None:
            old.data = _read(stored, key).to(device)
            setattr(module, attr, old)

        return reload
    if device.type != "cpu":
        old.data = old.data.cpu()  # park: one version of the tensor on the accelerator

    def restore() -> None:
        if old.device != device:
            old.data = old.data.to(device)
        setattr(module, attr, old)

    return restore


def _same_as_stored(live: Tensor, stored: dict[str, Path], key: str) -> bool:
    """The source file holds exactly this tensor (same dtype, shape and bits)."""
    if key not in stored:
        return False
    with safe_open(stored[key], framework="pt") as handle:
        view = handle.get_slice(key)
        if tuple(view.get_shape()) != tuple(live.shape) or str(live.dtype) != _TORCH.get(
            view.get_dtype()
        ):
            return False
    return torch.equal(_read(stored, key).to(live.device), live.detach())


_TORCH = {"F32": "torch.float32", "BF16": "torch.bfloat16", "F16": "torch.float16"}

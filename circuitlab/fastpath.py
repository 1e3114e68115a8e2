"""The fast path: a plain HF view of a bridged model, and linear edits as torch hooks on it.

Booting the TransformerLens bridge wraps every HF submodule in hook points and forces eager
attention; both cost speed (greedy generation through the bridge ran at ~0.8x plain HF
here). The decoder (:mod:`circuitlab.decoding`) runs on the plain view whenever no TL hook
is attached, and :func:`module_hooks` applies linear edits (projections of what the
embedding, ``o_proj`` and ``down_proj`` write, head edits) as ordinary torch forward hooks
on those modules. The modules are shared by both paths, so an edit holds on every forward,
through the bridge (collection, patching, attribution) or not.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = [
    "Finite",
    "ModuleHook",
    "Placed",
    "Runner",
    "edits_apply_at_writers",
    "module_hooks",
    "plain_view",
    "runner",
    "writer_module",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runner:
    """What runs a forward pass: a causal LM module, where its inputs go, its pad id."""

    net: nn.Module
    device: torch.device
    pad_id: int
    share_prefix: bool = True


def _bridged(module: nn.Module) -> bool:
    return hasattr(module, "_original_component") or type(module).__name__ == "HookPoint"


def plain_view(hf_model: nn.Module) -> nn.Module | None:
    """A plain HF model of the same class built around the bridged model's own leaf modules.

    Booting the bridge wraps every HF submodule in hook points and forces eager attention;
    both cost speed (the bridge ran at ~0.8x plain HF here). The view is a fresh skeleton
    (on the meta device: no memory) whose parameter-holding modules -- embeddings, linear
    layers, norms, rotary embeddings -- *are* the bridged model's, so weights are shared,
    in-place weight swaps are seen, and torch hooks on those modules fire on both paths.

    Returns:
        The view with SDPA attention, or None where it cannot be built exactly (a model
        split over devices, or a module the bridge left no plain original of).
    """
    device_map = getattr(hf_model, "hf_device_map", None)
    if device_map and len({str(v) for v in device_map.values()}) > 1:
        return None  # the dispatcher's per-layer device moves live on the bridged containers
    originals: dict[str, nn.Module] = {}
    for name, module in hf_model.named_modules():
        if not _bridged(module):
            # named_modules lists parents first: the innermost original wins.
            originals[
                name.replace("._original_component", "").replace("_original_component.", "")
            ] = module
    config = copy.deepcopy(hf_model.config)
    try:
        with torch.device("meta"):
            view = type(hf_model)._from_config(config, attn_implementation="sdpa")
    except Exception as exc:  # an architecture without SDPA or a meta-unsafe init
        log.info("no plain view of %s: %s", type(hf_model).__name__, exc)
        return None
    for name, module in list(view.named_modules()):
        owns = (
            next(module.parameters(recurse=False), None) is not None
            or next(module.buffers(recurse=False), None) is not None
        )
        if not name or not owns:
            continue
        original = originals.get(name)
        if original is None or type(original) is not type(module):
            return None
        if any(_bridged(m) for m in original.modules()):
            return None
        view.set_submodule(name, original)
    if any(t.is_meta for t in [*view.parameters(), *view.buffers()]):
        return None
    view.generation_config = copy.deepcopy(hf_model.generation_config)
    return view.eval()


def runner(model: HookedModel) -> Runner:
    """The fastest exact forward for ``model`` now: its plain view when no TransformerLens
    hook is attached (torch writer hooks fire there too), the bridge otherwise.

    A pre-hook on the bridged decoder (per-prompt routing, position-dependent additions)
    must see each whole prompt in one pass, left-padded as ``generate`` would give it: there
    the prompts' shared prefix is not split off.
    """
    pad = model.tokenizer.pad_token_id
    if model.n_tl_hooks() == 0:
        view = model.plain
        if view is not None:
            return Runner(view, model.device, pad)
    getter = getattr(model.hf_model, "get_decoder", None)
    decoder = getter() if getter is not None else model.hf_model.model
    return Runner(model.hf_model, model.device, pad, share_prefix=not decoder._forward_pre_hooks)


def edits_apply_at_writers(model: HookedModel) -> bool:
    """Whether writer-module hooks reach every forward of ``model``: with per-head results
    on (``use_attn_result``) the bridge sums the heads itself and never calls ``o_proj``, and
    a mixture-of-experts block has no single MLP output module (its experts write the sum)."""
    if getattr(model.bridge.cfg, "use_attn_result", False):
        return False
    try:
        for block in model.bridge.blocks:
            block.mlp.out.original_component  # noqa: B018 - only whether it exists
    except AttributeError:
        return False
    return True


def writer_module(model: HookedModel, writer: str, layer: int) -> nn.Module:
    """The HF module whose output is ``writer``'s (embed, attn, mlp) at ``layer``."""
    if writer == "embed":
        return model.bridge.embed.original_component
    block = model.bridge.blocks[layer]
    return (block.attn.o if writer == "attn" else block.mlp.out).original_component


class Placed:
    """Tensors copied once per (device, dtype) of the activations they meet."""

    def __init__(self, *tensors: Tensor):
        self.tensors, self.copies = tensors, {}

    def on(self, x: Tensor) -> tuple[Tensor, ...]:
        key = (x.device, x.dtype)
        if key not in self.copies:
            self.copies[key] = tuple(t.to(device=x.device, dtype=x.dtype) for t in self.tensors)
        return self.copies[key]


@dataclass
class Finite:
    """Whether every edited activation stayed finite (a flag per device, no host sync)."""

    bad: dict[torch.device, Tensor] = field(default_factory=dict)

    def wrap(self, hook: Callable) -> Callable:
        def checked(mod, args, out):
            result = hook(mod, args, out)
            flag = ~torch.isfinite(result).all()
            known = self.bad.get(result.device)
            self.bad[result.device] = flag if known is None else known | flag
            return result

        return checked

    def ok(self) -> bool:
        return not any(bool(flag) for flag in self.bad.values())


# A torch hook on one writer module: (module, is_pre_hook, fn).
ModuleHook = tuple[nn.Module, bool, Callable]


@contextmanager
def module_hooks(model: HookedModel, hooks: Sequence[ModuleHook]) -> Iterator[Finite]:
    """Attach torch hooks to writer modules (:func:`writer_module`) for the block.

    The writer modules are shared by the bridge and its plain view, so the edits hold on
    every forward path (collection and patching through the bridge included). All hooks
    are registered or none; all are removed on exit. :mod:`circuitlab.hooks` builds them
    from planned edits.

    Yields:
        A handle whose ``ok()`` says whether every edited activation stayed finite.
    """
    finite = Finite()
    handles = []
    try:
        for module, pre, fn in hooks:
            if pre:
                handles.append(module.register_forward_pre_hook(fn))
            else:
                handles.append(module.register_forward_hook(finite.wrap(fn)))
        model._writer_hooks += len(handles)
        try:
            yield finite
        finally:
            model._writer_hooks -= len(handles)
    finally:
        for handle in handles:
            handle.remove()

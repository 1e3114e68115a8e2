"""What patching runs on: the counterfactual activations, the hooks that patch them in, and
the batches (clean prompts with their counterfactual) that both patching methods share.

Prompts differ in length, so we patch only the last ``n`` positions: with left padding those
are the post-instruction template tokens (ChatML ``<|im_end|>\\n<|im_start|>assistant\\n``),
the same tokens in every prompt, and where the model decides to refuse.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.circuits.metrics import Batch, Metric
from circuitlab.circuits.scores import BLOCK_KINDS, KVHeadId, LayerSite
from circuitlab.hooks import apply
from circuitlab.interventions import Intervention
from circuitlab.models.facts import HeadId

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel, HookFn, Positions

__all__ = [
    "Counterfactual",
    "PatchSource",
    "patch_hooks",
    "patched_positions",
    "record_source",
    "suffix_runner",
]

log = logging.getLogger(__name__)

# Paired harmless prompts, or interventions under which the harmful prompts are re-run.
Counterfactual = Sequence[str] | Intervention | Sequence[Intervention]
Site = HeadId | KVHeadId | LayerSite
Hooks = list[tuple[str, "HookFn"]]


def patched_positions(model: HookedModel, positions: Positions | Literal["all"]) -> int | None:
    """How many final positions are patched: 1 for ``last``, the template's tokens after the
    user text for ``post_instruction``, the given number, or None (every position) for
    ``all``, which only makes sense when both runs see the same tokens."""
    if positions == "all":
        return None
    if positions == "last":
        return 1
    if positions == "post_instruction":
        return model.post_instruction_length()
    if isinstance(positions, int) and positions >= 1:
        return positions
    raise ValueError(
        f"positions must be 'last', 'post_instruction', 'all' or an int >= 1: {positions!r}"
    )


def tail(x: Tensor, n: int | None) -> Tensor:
    """The last ``n`` positions of ``[batch, pos, ...]`` (all of them for None)."""
    return x if n is None else x[:, -n:]


@dataclass(frozen=True, eq=False)
class PatchSource:
    """Counterfactual activations of one batch at the patched (last ``n_positions``) tokens.

    Attributes:
        z: per layer, ``attn.hook_z`` ``[batch, n_positions, n_heads, d_head]``.
        k, v: per layer, ``attn.hook_k`` / ``hook_v`` ``[batch, n_positions, n_kv_heads,
            d_head]`` (empty when KV heads are not patched).
        metric: the counterfactual run's metric per prompt.
        n_positions: positions recorded (None: all of them).
        blocks: per ``(kind, layer)`` with kind ``attn`` or ``mlp``, the whole attention
            block's (``hook_attn_out``) or MLP's (``hook_mlp_out``) output ``[batch,
            n_positions, d_model]`` (empty when blocks are not patched).

    A layer the metric never reached (a direction metric read early) has no entry; patching
    its heads changes nothing.
    """

    z: dict[int, Float[Tensor, "batch pos head d_head"]]
    k: dict[int, Float[Tensor, "batch pos kv_head d_head"]]
    v: dict[int, Float[Tensor, "batch pos kv_head d_head"]]
    metric: Float[Tensor, " batch"]
    n_positions: int | None
    blocks: dict[tuple[str, int], Float[Tensor, "batch pos d_model"]] = field(default_factory=dict)

    def activation(self, kind: str, layer: int) -> Tensor | None:
        """The recorded activation of ``kind`` (``z``, ``k``, ``v``, ``attn``, ``mlp``) at
        ``layer``, or None where it was not recorded."""
        if kind in ("attn", "mlp"):
            return self.blocks.get((kind, layer))
        return {"z": self.z, "k": self.k, "v": self.v}[kind].get(layer)


def _split(counterfactual: Counterfactual, n: int) -> tuple[list[str] | None, tuple]:
    """(paired prompts, ()) or (None, interventions) from what the caller passed."""
    if isinstance(counterfactual, str):
        raise TypeError("counterfactual must be a list of prompts or intervention(s), not a str")
    items = list(counterfactual) if isinstance(counterfactual, list | tuple) else [counterfactual]
    if items and all(isinstance(x, str) for x in items):
        if len(items) != n:
            raise ValueError(f"{n} harmful prompts need {n} paired counterfactual prompts")
        return items, ()
    return None, tuple(items)


def record_source(
    model: HookedModel,
    batch: Batch,
    metric: Metric,
    n_positions: int | None,
    interventions: Sequence[Intervention] = (),
    kv: bool = True,
    blocks: bool = False,
) -> PatchSource:
    """Run the counterfactual batch (under ``interventions``) and keep what patching needs
    (with ``blocks``, also every layer's attention-block and MLP outputs)."""
    z: dict[int, Tensor] = {}
    k: dict[int, Tensor] = {}
    v: dict[int, Tensor] = {}
    outputs: dict[tuple[str, int], Tensor] = {}

    def keep(store: dict, key) -> HookFn:
        def fn(x: Tensor, hook: Any) -> None:
            store[key] = tail(x, n_positions).detach().clone()

        return fn

    hooks = []
    for layer in range(model.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", keep(z, layer)))
        if kv:
            hooks.append((f"blocks.{layer}.attn.hook_k", keep(k, layer)))
            hooks.append((f"blocks.{layer}.attn.hook_v", keep(v, layer)))
        if blocks:
            for kind in BLOCK_KINDS:
                hooks.append((block_hook(kind, layer), keep(outputs, (kind, layer))))
    edit = apply(model, *interventions) if interventions else nullcontext()
    with torch.no_grad(), edit, model.hooks(hooks):
        value = metric(model, batch).detach().float().cpu()
    return PatchSource(z, k, v, value, n_positions, outputs)


def block_hook(kind: str, layer: int) -> str:
    """The hook of a layer's attention-block (``attn``) or MLP (``mlp``) output; on
    sandwich-norm models (Gemma 2/3) it fires after the sublayer's post-norm, so a patch
    replaces exactly what the residual stream receives."""
    return f"blocks.{layer}.hook_{kind}_out"


def _replace(source: Tensor, index: int | None) -> HookFn:
    def patch(x: Tensor, hook: Any) -> Tensor:
        x = x.clone()  # never in place: other holders of this tensor must not see the patch
        n = source.shape[1]
        if index is None:
            x[:, -n:] = source.to(device=x.device, dtype=x.dtype)
        else:
            x[:, -n:, index] = source[:, :, index].to(device=x.device, dtype=x.dtype)
        return x

    return patch


def patch_hooks(site: Site, source: PatchSource) -> Hooks:
    """Hooks that patch one head's counterfactual activation into the running batch.

    Args:
        site: a query head (``HeadId``: its ``attn.hook_z`` slice), a KV head
            (``KVHeadId``: its ``hook_k`` and ``hook_v`` slices, i.e. the whole group), or a
            whole sublayer output (``LayerSite``).
        source: the counterfactual activations of the same batch rows.

    Returns:
        ``(hook name, fn)`` pairs for :meth:`HookedModel.hooks` (empty for a layer the
        counterfactual run never reached).
    """
    if isinstance(site, LayerSite):
        recorded = source.activation(site.kind, site.layer)
        return (
            []
            if recorded is None
            else [(block_hook(site.kind, site.layer), _replace(recorded, None))]
        )
    prefix = f"blocks.{site.layer}.attn"
    if isinstance(site, KVHeadId):
        if site.layer not in source.k:
            return []
        return [
            (f"{prefix}.hook_k", _replace(source.k[site.layer], site.group)),
            (f"{prefix}.hook_v", _replace(source.v[site.layer], site.group)),
        ]
    if site.layer not in source.z:
        return []
    return [(f"{prefix}.hook_z", _replace(source.z[site.layer], site.head))]


def all_sites(model: HookedModel, kv: bool, blocks: bool = False) -> list[Site]:
    """Every query head, then (with ``kv``) every KV head, then (with ``blocks``) every
    attention block and MLP, layer by layer."""
    f = model.facts
    sites: list[Site] = [HeadId(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]
    if kv:
        sites += [KVHeadId(layer, g) for layer in range(f.n_layers) for g in range(f.n_kv_heads)]
    if blocks:
        sites += [LayerSite(layer, kind) for layer in range(f.n_layers) for kind in BLOCK_KINDS]
    return sites


def suffix_runner(
    model: HookedModel, batch: Batch, metric: Metric, n_positions: int | None, clean: Tensor
) -> Callable[[], Tensor]:
    """``metric(model, batch)`` under the active hooks, re-running only the patched positions.

    A patch at the last ``n`` positions cannot change the positions before them (causal
    attention), so their keys and values are computed once, clean, and each patched pass
    runs ``n`` tokens on a copy of that cache instead of the whole prompt (2-4x less work
    on SmolLM2). The shortcut is checked once against ``clean`` (the full clean pass); where
    it disagrees (a model or metric that ignores the cache) every pass runs in full.

    Returns:
        A function of no arguments giving the metric per prompt.
    """

    def full() -> Tensor:
        return metric(model, batch)

    ids, mask = batch["input_ids"], batch["attention_mask"]
    if n_positions is None or n_positions >= ids.shape[1]:
        return full
    with torch.no_grad():
        prefix = model.hf_model.model(
            input_ids=ids[:, :-n_positions], attention_mask=mask[:, :-n_positions], use_cache=True
        ).past_key_values

    def suffix() -> Tensor:
        # A fresh copy each pass: the forward appends the suffix's keys and values to it.
        tokens = {"input_ids": ids[:, -n_positions:], "attention_mask": mask}
        return metric(model, {**tokens, "past_key_values": copy.deepcopy(prefix)})

    if prefix is None or not torch.allclose(suffix().float().cpu(), clean, rtol=1e-4, atol=1e-4):
        log.warning("re-running only the patched positions changed the metric; using full passes")
        return full
    return suffix


@dataclass
class PatchRun:
    """What one patching call shares across its batches (built by :meth:`prepare`)."""

    model: HookedModel
    harmful: list[str]
    paired: list[str] | None
    interventions: tuple
    metric: Metric
    n_positions: int | None
    kv: bool
    chat: bool
    blocks: bool = False

    @classmethod
    def prepare(
        cls,
        model: HookedModel,
        harmful: Sequence[str],
        counterfactual: Counterfactual,
        metric: Metric,
        positions: Positions | Literal["all"],
        kv: bool,
        chat: bool,
        blocks: bool = False,
    ) -> PatchRun:
        """Check the arguments of a patching call and resolve its positions."""
        harmful = list(harmful)
        if not harmful:
            raise ValueError("no harmful prompts to patch")
        paired, interventions = _split(counterfactual, len(harmful))
        n = patched_positions(model, positions)
        if n is None and paired is not None:
            raise ValueError(
                "positions='all' needs the same tokens in both runs: paired prompts differ in "
                "length, so patch the last positions or use an intervention as counterfactual"
            )
        return cls(model, harmful, paired, interventions, metric, n, kv, chat, blocks)

    def batches(self, batch_size: int) -> Iterator[tuple[range, Batch, PatchSource]]:
        """Per batch of rows: the encoded harmful batch and its counterfactual source."""
        for start in range(0, len(self.harmful), batch_size):
            rows = range(start, min(start + batch_size, len(self.harmful)))
            batch = self.model.encode([self.harmful[i] for i in rows], chat=self.chat)
            cf_batch = batch
            if self.paired is not None:
                cf_batch = self.model.encode([self.paired[i] for i in rows], chat=self.chat)
            source = record_source(
                self.model,
                cf_batch,
                self.metric,
                self.n_positions,
                self.interventions,
                self.kv,
                self.blocks,
            )
            yield rows, batch, source

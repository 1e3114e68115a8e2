"""Activation and attribution patching per attention head, GQA-aware.

Both compare a *clean* run on harmful prompts with a *counterfactual* run that does not
refuse: paired harmless prompts (harmful[i] with harmless[i]), or the harmful prompts
themselves with the refusal direction ablated; only the last positions are patched (see
:mod:`circuitlab.circuits.sources`).

* Activation patching (exact): one patched pass per head and batch. A query head is
  patched at ``attn.hook_z`` (its slice of the o_proj input); a KV head at ``attn.hook_k``
  and ``attn.hook_v`` together, which moves every query head of its group and no other.
  Positions before the patched ones cannot change (causal attention), so each pass re-runs
  only the patched positions on the clean prefix's KV cache.
* Attribution patching (first order): ``grad_metric(a) . (a_cf - a_clean)`` for every head
  at once, from one forward and one backward pass per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from circuitlab.circuits.metrics import Metric
from circuitlab.circuits.scores import HeadScores, KVHeadId
from circuitlab.circuits.sources import (
    Counterfactual,
    Hooks,
    PatchRun,
    PatchSource,
    all_sites,
    patch_hooks,
    suffix_runner,
    tail,
)
from circuitlab.progress import progress_bar

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel, HookFn, Positions

__all__ = ["activation_patching", "attribution_patching"]

log = logging.getLogger(__name__)


def _scores(method, run: PatchRun, effect: Tensor, kv_effect: Tensor | None, sums: list[float]):
    n = len(run.harmful)
    clean, counterfactual = sums[0] / n, sums[1] / n
    log.info(
        "%s patching of %d prompts: metric %.4f clean, %.4f counterfactual",
        method,
        n,
        clean,
        counterfactual,
    )
    return HeadScores(
        method=method,
        metric=run.metric.name,
        effect=(effect / n).float(),
        kv_effect=None if kv_effect is None else (kv_effect / n).float(),
        clean=clean,
        counterfactual=counterfactual,
        n_prompts=n,
        n_positions=run.n_positions,
    )


def activation_patching(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    *,
    positions: Positions | Literal["all"] = "post_instruction",
    kv: bool = True,
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
    reuse_prefix: bool = True,
) -> HeadScores:
    """Exact effect on ``metric`` of patching each head from the counterfactual run.

    Args:
        model: the hooked model.
        harmful: the clean prompts.
        counterfactual: harmless prompts paired one-to-one with ``harmful``, or an
            intervention (or several) under which the harmful prompts are re-run, e.g. a
            ``DirectionalAblation`` of the refusal direction.
        metric: a :class:`~circuitlab.circuits.metrics.Metric`.
        positions: the last positions patched: ``post_instruction`` (default: the template
            tokens after the user text, identical across prompts), ``last``, a number, or
            ``all`` (only with an intervention counterfactual, where the tokens are the same).
        kv: also patch every KV head (``hook_k`` + ``hook_v``).
        batch_size: prompts per forward pass.
        chat: chat-format the prompts.
        progress: draw a progress bar.
        reuse_prefix: run each patched pass on the clean prefix's KV cache (see
            :func:`~circuitlab.circuits.sources.suffix_runner`); False runs every pass in full.

    Returns:
        HeadScores with ``method="activation"``.
    """
    run = PatchRun.prepare(model, harmful, counterfactual, metric, positions, kv, chat)
    f = model.facts
    effect = torch.zeros(f.n_layers, f.n_heads, dtype=torch.float64)
    kv_effect = torch.zeros(f.n_layers, f.n_kv_heads, dtype=torch.float64) if kv else None
    sites, sums = all_sites(model, kv), [0.0, 0.0]
    total = len(sites) * len(run.harmful)
    with torch.no_grad(), progress_bar(total, "activation patching", progress) as advance:
        for rows, batch, source in run.batches(batch_size):
            clean = metric(model, batch).float().cpu()
            sums[0] += clean.sum().item()
            sums[1] += source.metric.sum().item()
            n = run.n_positions if reuse_prefix else None
            patched = suffix_runner(model, batch, metric, n, clean)
            for site in sites:
                hooks = patch_hooks(site, source)
                if hooks:
                    with model.hooks(hooks):
                        delta = (patched().float().cpu() - clean).sum().item()
                    if isinstance(site, KVHeadId):
                        kv_effect[site.layer, site.group] += delta
                    else:
                        effect[site.layer, site.head] += delta
                advance(len(rows))
    return _scores("activation", run, effect, kv_effect, sums)


def _attribution_hooks(run: PatchRun, clean: dict, deltas: dict) -> Hooks:
    """Read each head activation and add a zero leaf to it, whose gradient is the metric's
    gradient at that activation (the activation itself is not a leaf: the bridge reshapes
    it, and detaching it would cut the paths through later layers)."""
    n = run.n_positions

    def make(key: tuple[str, int]) -> HookFn:
        def fn(x: Tensor, hook: Any) -> Tensor:
            clean[key] = tail(x, n).detach().float()
            zero = torch.zeros_like(clean[key], dtype=x.dtype, requires_grad=True)
            deltas[key] = zero
            pad = x.new_zeros((x.shape[0], x.shape[1] - zero.shape[1], *x.shape[2:]))
            return x + torch.cat([pad, zero], dim=1)

        return fn

    kinds = ("z", "k", "v") if run.kv else ("z",)
    return [
        (f"blocks.{layer}.attn.hook_{kind}", make((kind, layer)))
        for layer in range(run.model.n_layers)
        for kind in kinds
    ]


def _attribute(
    kind: str, source: PatchSource, clean: dict, deltas: dict, layer: int
) -> Tensor | None:
    """``sum over batch, positions, d_head of grad * (cf - clean)`` per head of one layer."""
    key = (kind, layer)
    store = {"z": source.z, "k": source.k, "v": source.v}[kind]
    if key not in deltas or deltas[key].grad is None or layer not in store:
        return None  # the metric was read before this layer
    diff = store[layer].to(clean[key].device).float() - clean[key]
    return (deltas[key].grad.float() * diff).sum(dim=(0, 1, 3)).double().cpu()


def attribution_patching(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    *,
    positions: Positions | Literal["all"] = "post_instruction",
    kv: bool = True,
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
) -> HeadScores:
    """First-order estimate of :func:`activation_patching` for every head at once.

    For each head, ``(a_cf - a_clean) . d metric / d a`` summed over the patched positions
    and ``d_head`` (for a KV head, the ``k`` and ``v`` terms added), averaged over prompts.
    One forward and one backward pass per batch; model weights stay frozen (gradients flow
    to zero-valued leaves added at each hooked activation). Arguments as for
    :func:`activation_patching`.

    Returns:
        HeadScores with ``method="attribution"``.
    """
    run = PatchRun.prepare(model, harmful, counterfactual, metric, positions, kv, chat)
    f = model.facts
    effect = torch.zeros(f.n_layers, f.n_heads, dtype=torch.float64)
    kv_effect = torch.zeros(f.n_layers, f.n_kv_heads, dtype=torch.float64) if kv else None
    sums = [0.0, 0.0]
    with progress_bar(len(run.harmful), "attribution patching", progress) as advance:
        for rows, batch, source in run.batches(batch_size):
            clean: dict[tuple[str, int], Tensor] = {}
            deltas: dict[tuple[str, int], Tensor] = {}
            with torch.enable_grad(), model.hooks(_attribution_hooks(run, clean, deltas)):
                value = metric(model, batch)
                if value.requires_grad:  # not when the metric is read before any head
                    value.sum().backward()  # rows are independent: the sum keeps per-row grads
            sums[0] += value.detach().sum().item()
            sums[1] += source.metric.sum().item()
            _accumulate(run, source, clean, deltas, effect, kv_effect)
            advance(len(rows))
    return _scores("attribution", run, effect, kv_effect, sums)


def _accumulate(run: PatchRun, source, clean, deltas, effect: Tensor, kv_effect) -> None:
    for layer in range(run.model.n_layers):
        z = _attribute("z", source, clean, deltas, layer)
        if z is not None:
            effect[layer] += z
        if kv_effect is not None:
            for kind in ("k", "v"):
                part = _attribute(kind, source, clean, deltas, layer)
                if part is not None:
                    kv_effect[layer] += part

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
* Integrated gradients (``ig_steps > 0``, in the style of EAP-IG): the same product with the
  gradient averaged over points on the straight path from the clean run towards the
  counterfactual one: every site is set to ``a_clean + alpha (a_cf - a_clean)`` (so the path
  ends at the counterfactual run), and the gradient is the total derivative through the
  recomputed network. It costs ``ig_steps`` forward and backward passes per batch and
  follows the metric where it bends (saturation, sign changes along the path), which a
  gradient at the clean point alone cannot see.

With ``blocks=True`` every layer's whole attention-block output and MLP output are scored
too (``HeadScores.block_effect``): refusal on the SmolLM2 organism is written mostly by the
MLPs, which head scores cannot show.

:func:`~circuitlab.circuits.agreement.check_agreement` measures, on a sample of sites, how
well an estimate agrees with exact patching, so a user sees when the linear approximation is
poor; :func:`~circuitlab.circuits.agreement.refine` patches an estimate's leading candidates
exactly, so the ranking that matters is exact at a fraction of exact patching's cost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from circuitlab.circuits.metrics import Metric
from circuitlab.circuits.scores import (
    BLOCK_KINDS,
    HeadScores,
    KVHeadId,
    LayerSite,
)
from circuitlab.circuits.sources import (
    Counterfactual,
    Hooks,
    PatchRun,
    PatchSource,
    Site,
    all_sites,
    block_hook,
    patch_hooks,
    suffix_runner,
    tail,
)
from circuitlab.models.facts import HeadId
from circuitlab.progress import progress_bar

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel, HookFn, Positions

__all__ = ["activation_patching", "attribution_patching"]

log = logging.getLogger(__name__)


class _Effects:
    """Per-site sums of metric changes over the prompts of a patching call."""

    def __init__(self, run: PatchRun) -> None:
        f = run.model.facts
        self.heads = torch.zeros(f.n_layers, f.n_heads, dtype=torch.float64)
        self.kv = torch.zeros(f.n_layers, f.n_kv_heads, dtype=torch.float64) if run.kv else None
        self.blocks = (
            torch.zeros(f.n_layers, len(BLOCK_KINDS), dtype=torch.float64) if run.blocks else None
        )
        self.sums = [0.0, 0.0]

    def add(self, site: Site, delta: float) -> None:
        if isinstance(site, LayerSite):
            self.blocks[site.layer, BLOCK_KINDS.index(site.kind)] += delta
        elif isinstance(site, KVHeadId):
            self.kv[site.layer, site.group] += delta
        else:
            self.heads[site.layer, site.head] += delta

    def scores(self, method: str, run: PatchRun) -> HeadScores:
        n = len(run.harmful)
        clean, counterfactual = self.sums[0] / n, self.sums[1] / n
        log.info(
            "%s patching of %d prompts: metric %.4f clean, %.4f counterfactual",
            method,
            n,
            clean,
            counterfactual,
        )

        def mean(t: Tensor | None) -> Tensor | None:
            return None if t is None else (t / n).float()

        return HeadScores(
            method=method,
            metric=run.metric.name,
            effect=mean(self.heads),
            kv_effect=mean(self.kv),
            clean=clean,
            counterfactual=counterfactual,
            n_prompts=n,
            n_positions=run.n_positions,
            block_effect=mean(self.blocks),
        )


def activation_patching(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    *,
    positions: Positions | Literal["all"] = "post_instruction",
    kv: bool = True,
    blocks: bool = False,
    sites: Sequence[Site] | None = None,
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
        blocks: also patch every layer's attention-block and MLP output whole.
        sites: patch only these sites (the others score 0); default every site.
        batch_size: prompts per forward pass.
        chat: chat-format the prompts.
        progress: draw a progress bar.
        reuse_prefix: run each patched pass on the clean prefix's KV cache (see
            :func:`~circuitlab.circuits.sources.suffix_runner`); False runs every pass in full.

    Returns:
        HeadScores with ``method="activation"``.
    """
    if sites is not None:
        kv = kv or any(isinstance(s, KVHeadId) for s in sites)
        blocks = blocks or any(isinstance(s, LayerSite) for s in sites)
    run = PatchRun.prepare(model, harmful, counterfactual, metric, positions, kv, chat, blocks)
    sites = all_sites(model, kv, blocks) if sites is None else list(sites)
    effects = _Effects(run)
    total = len(sites) * len(run.harmful)
    with torch.no_grad(), progress_bar(total, "activation patching", progress) as advance:
        for rows, batch, source in run.batches(batch_size):
            clean = metric(model, batch).float().cpu()
            effects.sums[0] += clean.sum().item()
            effects.sums[1] += source.metric.sum().item()
            n = run.n_positions if reuse_prefix else None
            patched = suffix_runner(model, batch, metric, n, clean)
            for site in sites:
                hooks = patch_hooks(site, source)
                if hooks:
                    with model.hooks(hooks):
                        effects.add(site, (patched().float().cpu() - clean).sum().item())
                advance(len(rows))
    return effects.scores("activation", run)


def _site_hooks(run: PatchRun) -> list[tuple[str, str, int]]:
    """``(hook name, kind, layer)`` of every site attribution scores."""
    kinds = ("z", "k", "v") if run.kv else ("z",)
    hooks = [
        (f"blocks.{layer}.attn.hook_{kind}", kind, layer)
        for layer in range(run.model.n_layers)
        for kind in kinds
    ]
    if run.blocks:
        hooks += [
            (block_hook(kind, layer), kind, layer)
            for layer in range(run.model.n_layers)
            for kind in BLOCK_KINDS
        ]
    return hooks


def _attribution_hooks(
    run: PatchRun, clean: dict, deltas: dict, targets: dict | None = None
) -> Hooks:
    """Read each site's activation and add a zero leaf to it, whose gradient is the metric's
    gradient at that activation (the activation itself is not a leaf: the bridge reshapes
    it, and detaching it would cut the paths through later layers).

    With ``targets`` (one tensor per site), each site's patched positions are *set* to its
    target, a point on the integrated-gradients path: the forward pass sees exactly the
    interpolated activations (adding a shift instead would count every upstream site's
    shift twice, once through the recomputed activation and once in its own shift), while
    the gradient still flows through the recomputed value, so it is the total derivative
    that patching one site measures."""
    n = run.n_positions

    def make(key: tuple[str, int]) -> HookFn:
        def fn(x: Tensor, hook: Any) -> Tensor:
            current = tail(x, n)
            if targets is None:
                clean[key] = current.detach().float()
            leaf = torch.zeros(current.shape, dtype=x.dtype, device=x.device, requires_grad=True)
            deltas[key] = leaf
            moved = current + leaf
            if targets is not None:
                target = targets[key].to(x.device, x.dtype)
                moved = moved + (target - current).detach()
            return torch.cat([x[:, : x.shape[1] - current.shape[1]], moved], dim=1)

        return fn

    keys = [(name, (kind, layer)) for name, kind, layer in _site_hooks(run)]
    if targets is not None:
        keys = [(name, key) for name, key in keys if key in targets]
    return [(name, make(key)) for name, key in keys]


def _grads(model, metric, batch, hooks: Hooks) -> Tensor:
    """One forward and backward pass of ``metric`` under ``hooks``; returns the metric."""
    with torch.enable_grad(), model.hooks(hooks):
        value = metric(model, batch)
        if value.requires_grad:  # not when the metric is read before any site
            value.sum().backward()  # rows are independent: the sum keeps per-row grads
    return value.detach()


def attribution_patching(
    model: HookedModel,
    harmful: Sequence[str],
    counterfactual: Counterfactual,
    metric: Metric,
    *,
    positions: Positions | Literal["all"] = "post_instruction",
    kv: bool = True,
    blocks: bool = False,
    ig_steps: int = 0,
    batch_size: int = 8,
    chat: bool = True,
    progress: bool = False,
) -> HeadScores:
    """First-order estimate of :func:`activation_patching` for every site at once.

    For each head, ``(a_cf - a_clean) . d metric / d a`` summed over the patched positions
    and ``d_head`` (for a KV head, the ``k`` and ``v`` terms added), averaged over prompts.
    One forward and one backward pass per batch; model weights stay frozen (gradients flow
    to zero-valued leaves added at each hooked activation). With ``ig_steps`` > 0 the
    gradient is averaged over that many midpoints of the path from the clean run towards
    the counterfactual one (integrated gradients; see the module docstring). Other
    arguments as for :func:`activation_patching`.

    Returns:
        HeadScores with ``method="attribution"`` (``"integrated-gradients"`` with steps).
    """
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0, got {ig_steps}")
    run = PatchRun.prepare(model, harmful, counterfactual, metric, positions, kv, chat, blocks)
    effects = _Effects(run)
    label = "integrated gradients" if ig_steps else "attribution patching"
    with progress_bar(len(run.harmful) * max(ig_steps, 1), label, progress) as advance:
        for rows, batch, source in run.batches(batch_size):
            clean: dict[tuple[str, int], Tensor] = {}
            deltas: dict[tuple[str, int], Tensor] = {}
            value = _grads(model, metric, batch, _attribution_hooks(run, clean, deltas))
            grads = {key: leaf.grad for key, leaf in deltas.items() if leaf.grad is not None}
            diffs = _differences(source, clean)
            if ig_steps:
                grads = _integrated(
                    model, metric, batch, run, clean, diffs, ig_steps, advance, rows
                )
            else:
                advance(len(rows))
            effects.sums[0] += value.sum().item()
            effects.sums[1] += source.metric.sum().item()
            _accumulate(effects, grads, diffs)
    return effects.scores("integrated-gradients" if ig_steps else "attribution", run)


def _differences(source: PatchSource, clean: dict) -> dict[tuple[str, int], Tensor]:
    """``a_cf - a_clean`` for every site the counterfactual run recorded."""
    diffs = {}
    for (kind, layer), value in clean.items():
        recorded = source.activation(kind, layer)
        if recorded is not None:  # the metric was read before this layer
            diffs[(kind, layer)] = recorded.to(value.device).float() - value
    return diffs


def _integrated(model, metric, batch, run, clean, diffs, steps, advance, rows) -> dict:
    """Mean gradient at each site over ``steps`` midpoints of the straight path from the
    clean activations to the counterfactual ones, every site on the path together."""
    total: dict[tuple[str, int], Tensor] = {}
    for j in range(steps):
        alpha = (j + 0.5) / steps
        targets = {key: clean[key] + alpha * diff for key, diff in diffs.items()}
        deltas: dict[tuple[str, int], Tensor] = {}
        _grads(model, metric, batch, _attribution_hooks(run, {}, deltas, targets))
        for key, leaf in deltas.items():
            if leaf.grad is not None:
                total[key] = total.get(key, 0) + leaf.grad.float() / steps
        advance(len(rows))
    return total


def _accumulate(effects: _Effects, grads: dict, diffs: dict) -> None:
    """Add ``grad . diff`` per site: summed over batch, positions and the head dimension."""
    for (kind, layer), diff in diffs.items():
        grad = grads.get((kind, layer))
        if grad is None:
            continue
        product = grad.float() * diff
        if kind in BLOCK_KINDS:
            effects.add(LayerSite(layer, kind), product.sum().item())
            continue
        per_head = product.sum(dim=(0, 1, 3)).double().cpu()
        for index, delta in enumerate(per_head.tolist()):
            site = HeadId(layer, index) if kind == "z" else KVHeadId(layer, index)
            effects.add(site, delta)

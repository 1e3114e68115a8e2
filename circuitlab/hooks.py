"""Live interventions: ``apply(model, *interventions)`` turns intervention data into TL hooks.

Every intervention with a plan (:func:`circuitlab.plan.plan`) becomes hooks through its
typed edits, one hook recipe per edit type; the exporter folds the very same edits, so this
module knows no foldable intervention class. The inference-only types (cone routing, dynamic
strength, SAE feature clamps) have their own builders here: they decide per prompt on a
clean pass over the prompt (before any edit) and keep that decision for the KV-cached decode
steps, or act nonlinearly on each token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitlab.decoding import read_until
from circuitlab.engine import HookedModel, HookFn
from circuitlab.fastpath import (
    Finite,
    ModuleHook,
    Placed,
    edits_apply_at_writers,
    module_hooks,
    writer_module,
)
from circuitlab.interventions import (
    ConeRouting,
    DynamicStrength,
    FeatureClamp,
    Intervention,
    InterventionError,
)
from circuitlab.models.facts import o_proj_columns
from circuitlab.models.loading import dense_weight
from circuitlab.plan import (
    Edit,
    HeadProjection,
    HeadZero,
    ResidualAddition,
    WriterProjection,
    check_set,
    layer_vectors,
    plan,
    writer_edits,
)
from circuitlab.sae.data import sink_mask
from circuitlab.sae.format import load_sae

__all__ = ["Applied", "NonFiniteError", "apply"]

log = logging.getLogger(__name__)

Hooks = list[tuple[str, HookFn]]


# -------------------------------------------------------------------------------- hook state
@dataclass
class _State:
    """Shared by the hooks of one ``apply`` block; decisions are per batch row."""

    clean: bool = False  # inside the clean routing pass: every edit passes through
    prefill: bool = True
    reads: dict[int, Tensor] = field(default_factory=dict)
    decisions: dict[int, Tensor] = field(default_factory=dict)


@dataclass
class _Router:
    key: int  # position of the intervention in apply()'s arguments
    layers: list[int]
    decide: Callable[[dict[int, Tensor]], Tensor]


@dataclass
class _Built:
    hooks: Hooks
    router: _Router | None = None
    needs_phase: bool = False


class _Placed:
    """Tensors a hook needs, copied once per (device, dtype) of the activations they meet:
    on a model split over devices each layer's hook finds them where its layer runs."""

    def __init__(self, *tensors: Tensor):
        self.tensors = tensors
        self.copies: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    def on(self, x: Tensor) -> tuple[Tensor, ...]:
        key = (x.device, x.dtype)
        found = self.copies.get(key)
        if found is None:
            found = tuple(t.to(device=x.device, dtype=x.dtype) for t in self.tensors)
            self.copies[key] = found
        return found


def _row_state(state: _State, key: int, x: Tensor) -> Tensor:
    rows = state.decisions.get(key)
    if rows is None or rows.shape[0] != x.shape[0]:
        raise InterventionError(
            f"no per-prompt decision for a batch of {x.shape[0]}: run the prompt (prefill) "
            "through the model inside the same apply() block first"
        )
    return rows


def _projection_hook(edit: WriterProjection, state: _State) -> HookFn:
    placed = _Placed(edit.basis, edit.basis * edit.weights[:, None])

    def project(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        basis, scaled = placed.on(x)
        return x - (x @ basis.T) @ scaled

    return project


def _zero_hook(edit: HeadZero, state: _State) -> HookFn:
    def zero(z: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        z = z.clone()
        z[:, :, edit.head] = 0
        return z

    return zero


def _head_projection_hooks(model: HookedModel, edit: HeadProjection, state: _State) -> Hooks:
    """Project a direction out of one head's share of the attention output.

    The head's share along ``u`` is ``z_h . (W_O_h^T u)``: read at ``hook_z`` and removed
    at the attention writer's output, exactly what editing o_proj's head columns does.
    """
    h = edit.head
    o_proj = dense_weight(model.bridge.blocks[edit.layer].attn.o.original_component)
    columns = o_proj[:, o_proj_columns(h, model.facts.d_head)].detach().double().cpu()
    readout = _Placed(edit.basis.double() @ columns)  # [m, d_head]
    scaled = _Placed(edit.basis * edit.weights[:, None])
    share: dict[str, Tensor] = {}

    def read(z: Tensor, hook: Any) -> None:
        if not state.clean:
            share["coef"] = z[:, :, h] @ readout.on(z)[0].T

    def remove(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        return x - share.pop("coef").to(x.device) @ scaled.on(x)[0]

    return [(f"blocks.{edit.layer}.attn.hook_z", read), (edit.hook, remove)]


def _addition_hook(edit: ResidualAddition, state: _State) -> HookFn:
    placed = _Placed(edit.vector)

    def add(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        (vector,) = placed.on(x)
        if edit.positions == "all" or (edit.positions == "generated" and not state.prefill):
            return x + vector
        if not state.prefill:  # 'last': nothing to steer while decoding
            return None
        x = x.clone()
        x[:, -1] += vector  # left padding: every prompt ends at the last position
        return x

    return add


def _edit_hooks(model: HookedModel, edit: Edit, state: _State) -> Hooks:
    """The hooks of one planned edit (one recipe per edit type)."""
    if isinstance(edit, WriterProjection):
        return [(edit.hook, _projection_hook(edit, state))]
    if isinstance(edit, HeadProjection):
        return _head_projection_hooks(model, edit, state)
    if isinstance(edit, HeadZero):
        return [(edit.hook, _zero_hook(edit, state))]
    if isinstance(edit, ResidualAddition):
        return [(edit.hook, _addition_hook(edit, state))]
    raise InterventionError(f"no hooks for an edit of type {type(edit).__name__}")


def _build_planned(model: HookedModel, iv: Intervention, state: _State, key: int) -> _Built:
    edits = plan(model, iv)
    hooks = [hook for edit in edits for hook in _edit_hooks(model, edit, state)]
    # Additions at some positions only need to know prefill from decode.
    phase = any(isinstance(e, ResidualAddition) and e.positions != "all" for e in edits)
    return _Built(hooks, needs_phase=phase)


def _per_row_hook(bases: Tensor, weights: Tensor, state: _State, key: int, routed: bool) -> HookFn:
    """Projection chosen per batch row: ``bases`` [option, m, d] by the row's decision
    (``routed``), or one basis [1, m, d] with weights scaled by the row's strength."""
    placed = _Placed(bases, bases * weights[..., None])

    def project(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        bases, scaled = placed.on(x)
        rows = _row_state(state, key, x).to(x.device)
        if routed:
            basis, row_scaled = bases[rows], scaled[rows]
        else:
            basis = bases.expand(x.shape[0], -1, -1)
            row_scaled = scaled * rows.to(x.dtype)[:, None, None]
        coef = torch.einsum("bpd,bmd->bpm", x, basis)
        return x - torch.einsum("bpm,bmd->bpd", coef, row_scaled)

    return project


def _check_layer(model: HookedModel, layer: int, what: str) -> int:
    if not 0 <= int(layer) < model.n_layers:
        raise InterventionError(f"{what} {layer} out of range [0, {model.n_layers})")
    return int(layer)


def _build_cones(model: HookedModel, iv: ConeRouting, state: _State, key: int) -> _Built:
    ds, n, d = iv.directions.load(), model.n_layers, model.facts.d_model
    check_set(ds, model, iv.direction_layer is None, 0)
    centroids = ds.tensors.get("cone_centroids")
    if centroids is None or tuple(centroids.shape) != (ds.k, d):
        raise InterventionError(f"ConeRouting needs tensors['cone_centroids'] [{ds.k}, {d}]")
    centre = ds.tensors.get("cone_centre", torch.zeros(d)).double()
    layer = iv.layer if iv.layer is not None else ds.metadata.get("cone_layer")
    if layer is None:
        raise InterventionError("ConeRouting needs a layer (or a set with a cone_layer)")
    layers = list(range(n)) if layer == "mean" else [_check_layer(model, layer, "cone layer")]
    per_cone = []
    for cone in range(ds.k):
        vectors = ds.directions[:, cone].double()
        if iv.direction_layer is not None:
            vectors = vectors[_check_layer(model, iv.direction_layer, "layer")].expand(n, -1)
        vectors = vectors / vectors.norm(dim=-1, keepdim=True)
        per_cone.append(writer_edits(model, iv, vectors[:, None], torch.ones(n, 1).double()))
    hooks: Hooks = []
    for edits in zip(*per_cone, strict=True):  # the same sites for every cone
        bases = torch.stack([e.basis for e in edits])
        weights = torch.stack([e.weights for e in edits])
        hooks.append((edits[0].hook, _per_row_hook(bases, weights, state, key, routed=True)))
    unit_centroids = centroids.double() / centroids.double().norm(dim=-1, keepdim=True)

    def decide(reads: dict[int, Tensor]) -> Tensor:
        # As directions.assign_cones: cosine of the centred residual with each centroid.
        x = torch.stack([reads[layer] for layer in layers]).mean(0) - centre
        return (x @ unit_centroids.T).argmax(dim=-1).to(model.device)

    return _Built(hooks, _Router(key, layers, decide), needs_phase=True)


def _build_dynamic(model: HookedModel, iv: DynamicStrength, state: _State, key: int) -> _Built:
    layer = _check_layer(model, iv.layer, "DynamicStrength layer")
    hooks: Hooks = []
    for edit in plan(model, iv.ablation):
        basis, weights = edit.basis[None], edit.weights[None]
        hooks.append((edit.hook, _per_row_hook(basis, weights, state, key, routed=False)))
    ablation = iv.ablation
    ds = ablation.directions.load()
    direction = layer_vectors(ds, ablation.index, ablation.component, model.n_layers)[layer]

    def decide(reads: dict[int, Tensor]) -> Tensor:
        strength = (reads[layer] @ direction - iv.zero_at) / (iv.one_at - iv.zero_at)
        return strength.clamp(iv.min_strength, iv.max_strength).to(model.device)

    return _Built(hooks, _Router(key, [layer], decide), needs_phase=True)


# -------------------------------------------------------------- writer edits as torch hooks
def _torch_hook(model: HookedModel, edit: Edit) -> ModuleHook:
    """One writer edit as a torch hook on its HF module: the TransformerLens hooks'
    arithmetic at the same activations, so both paths give the same numbers."""
    if isinstance(edit, WriterProjection):
        module = writer_module(model, edit.writer, edit.layer)
        placed = Placed(edit.basis, edit.basis * edit.weights[:, None])

        def project(mod, args, out):
            basis, scaled = placed.on(out)
            return out - (out @ basis.T) @ scaled

        return module, False, project
    module = writer_module(model, "attn", edit.layer)
    columns = o_proj_columns(edit.head, model.facts.d_head)
    if isinstance(edit, HeadZero):

        def zero(mod, args):
            z = args[0].clone()
            z[..., columns] = 0
            return (z, *args[1:])

        return module, True, zero
    if not isinstance(edit, HeadProjection):
        raise InterventionError(f"{type(edit).__name__} is not an edit of a writer's output")
    # The head's share is read through the columns as loaded, as the TL hook reads it.
    weight = dense_weight(module).detach().double().cpu()[:, columns]
    readout = Placed(edit.basis.double() @ weight)  # [m, d_head]
    scaled = Placed(edit.basis * edit.weights[:, None])

    def head_share(mod, args, out):
        coef = args[0][..., columns] @ readout.on(out)[0].T
        return out - coef @ scaled.on(out)[0]

    return module, False, head_share


@contextmanager
def writer_hooks(model: HookedModel, edits: Sequence[Edit]) -> Iterator[Finite]:
    """Apply writer edits (projections, head edits) as torch hooks on the writer modules,
    all or none, for the block; yields a handle whose ``ok()`` says all stayed finite."""
    hooks = [_torch_hook(model, edit) for edit in edits]  # a bad edit raises before any
    with module_hooks(model, hooks) as finite:
        yield finite


def _writer_edits(model: HookedModel, interventions: Sequence[Intervention]) -> list[Edit] | None:
    """The planned edits when every one is a writer edit the fast path can hold, else None
    (additions and inference-only interventions keep the TransformerLens hooks)."""
    if not interventions or not edits_apply_at_writers(model):
        return None
    if any(type(iv) in _INFERENCE_ONLY for iv in interventions):
        return None
    edits = [edit for iv in interventions for edit in plan(model, iv)]
    writer_types = (WriterProjection, HeadProjection, HeadZero)
    return edits if all(isinstance(e, writer_types) for e in edits) else None


# ----------------------------------------------------------------------- per-prompt routing
def _routing_reads(
    routers: list[_Router], state: _State
) -> list[tuple[str, Callable[[Tensor], None]]]:
    """Last-token residual reads for the clean pass, which stops after the deepest one."""
    layers = sorted({layer for router in routers for layer in router.layers})

    def make(layer: int) -> Callable[[Tensor], None]:
        def read(x: Tensor) -> None:
            state.reads[layer] = x[:, -1].detach().double().cpu()

        return read

    return [(f"blocks.{layer}.hook_resid_pre", make(layer)) for layer in layers]


def _is_prefill(args: tuple, kwargs: dict[str, Any]) -> bool:
    # A decode step has a non-empty KV cache; a single-token prompt still counts as prefill,
    # which is why the input length alone (pos == 1) cannot tell.
    cache = kwargs.get("past_key_values")
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


def _phase_hook(model: HookedModel, state: _State, routers: list[_Router]) -> Callable[..., None]:
    """Decoder pre-forward hook: marks prefill vs decode, and on prefill runs a clean pass
    (every edit off) up to the deepest routing layer, then stores each router's decision."""
    skip = {"past_key_values", "use_cache", "cache_position"}
    reads = _routing_reads(routers, state) if routers else []

    def before_forward(decoder: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if state.clean:  # the clean pass re-enters the decoder
            return
        state.prefill = _is_prefill(args, kwargs)
        if not (state.prefill and routers):
            return
        state.reads.clear()
        state.clean = True
        clean = {k: v for k, v in kwargs.items() if k not in skip}
        try:
            with torch.no_grad():
                read_until(model, reads, lambda: decoder(*args, use_cache=False, **clean))
        finally:
            state.clean = False
        for router in routers:
            state.decisions[router.key] = router.decide(state.reads)

    return before_forward


def _decoder(model: HookedModel) -> torch.nn.Module:
    getter = getattr(model.hf_model, "get_decoder", None)
    return getter() if getter is not None else model.hf_model.model


class NonFiniteError(InterventionError):
    """An edit produced NaN or infinite activations."""


def _finite_output(fn: HookFn, bad: dict[torch.device, Tensor]) -> HookFn:
    """``fn``, recording (per device, without a host sync) whether its edited activation
    was ever non-finite: a NaN there turns every later token into padding, and generation
    would "succeed" with empty answers. :func:`apply` raises at the end of its block."""

    def checked(x: Tensor, hook: Any) -> Tensor | None:
        result = fn(x, hook)
        if result is not None:
            flag = ~torch.isfinite(result).all()
            if result.device in bad:
                bad[result.device] |= flag
            else:
                bad[result.device] = flag
        return result

    return checked


class Applied:
    """Yielded by :func:`apply`: the per-prompt decisions of the last prompt batch."""

    def __init__(self, state: _State, n: int):
        self._state, self._n = state, n

    def decisions(self) -> list[Tensor | None]:
        """Per intervention, in order: the cone chosen for each batch row (ConeRouting),
        the strength of each row (DynamicStrength), or None (decided nothing)."""
        return [self._state.decisions.get(key) for key in range(self._n)]


@contextmanager
def apply(model: HookedModel, *interventions: Intervention) -> Iterator[Applied]:
    """Apply interventions live, in order, as TL hooks, for the duration of the block.

    Hooks are built first (directions loaded and checked) and registered all at once, so a
    bad intervention leaves nothing behind; everything is removed on exit, exception or not.
    Composition is sequential: at a shared hook, the first intervention edits first. On
    sandwich-norm models two ablations of orthogonal directions are not orthogonal before
    the post-norm (``u = normalize(g * r)``): ablate them together as a SubspaceAblation.
    Pass routed and dynamic interventions in one call: their clean pass reads the model
    with every edit of *this* block off, but an enclosing block's edits stay on.

    Args:
        model: the hooked model; forward passes and ``generate`` both see the edits.
        interventions: any number of intervention objects.

    Returns:
        A context manager yielding an :class:`Applied` handle.

    Example:
        >>> with apply(model, DirectionalAblation(DirectionRef.from_folder(path), index=22.0)):
        ...     completions = model.generate(prompts)
    """
    state = _State()
    edits = _writer_edits(model, interventions)
    if edits is not None:
        # Linear writer edits become torch hooks on the writer modules: the decoder can
        # then generate on the plain HF view (SDPA, no hook points) instead of the bridge.
        with writer_hooks(model, edits) as finite:
            yield Applied(state, len(interventions))
        if not finite.ok():
            raise NonFiniteError(
                f"the edit ({', '.join(type(iv).__name__ for iv in interventions)}) produced "
                "non-finite activations (NaN or inf); check its strengths and directions"
            )
        return
    built = []
    for key, iv in enumerate(interventions):
        builder = _INFERENCE_ONLY.get(type(iv), _build_planned)
        built.append(builder(model, iv, state, key))
    routers = [b.router for b in built if b.router is not None]
    hooks = [h for b in built for h in b.hooks]
    bad: dict[torch.device, Tensor] = {}
    hooks = [(name, _finite_output(fn, bad)) for name, fn in hooks]
    log.debug("applying %d intervention(s) as %d hooks", len(interventions), len(hooks))
    handle = None
    try:
        if any(b.needs_phase for b in built):
            handle = _decoder(model).register_forward_pre_hook(
                _phase_hook(model, state, routers), with_kwargs=True
            )
        with model.hooks(hooks):
            yield Applied(state, len(interventions))
        if any(bool(flag) for flag in bad.values()):
            raise NonFiniteError(
                f"the edit ({', '.join(type(iv).__name__ for iv in interventions)}) produced "
                "non-finite activations (NaN or inf); check its strengths and directions"
            )
    finally:
        if handle is not None:
            handle.remove()


# --------------------------------------------------------------------- SAE feature clamp


def _build_clamp(model: HookedModel, iv: FeatureClamp, state: _State, key: int) -> _Built:
    """Set chosen latents to ``iv.value`` at the SAE's hook, keeping its error term; tokens
    with massive norms (attention sinks, which SAEs are trained without) pass unchanged."""
    sae = load_sae(iv.sae)
    if sae.hash != iv.sae_hash:
        raise InterventionError(
            f"{iv.sae} holds SAE {sae.hash}, the clamp was made with {iv.sae_hash}"
        )
    sae.check_model(model)
    if not all(0 <= f < sae.d_sae for f in iv.features):
        raise InterventionError(f"features {iv.features} out of range [0, {sae.d_sae})")
    sae = sae.to(model.device, model.hf_model.dtype)
    features = list(iv.features)
    rows = sae.W_dec[features]

    def clamp(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        acts = sae.encode(x)[..., features]
        keep = sink_mask(x, torch.ones(x.shape[:-1], dtype=torch.bool)).to(x.device)
        delta = ((iv.value - acts) * keep[..., None]) @ rows
        return x + delta.to(x.dtype)

    return _Built([(sae.hook_name, clamp)])


# Interventions without a plan (decided per prompt, or nonlinear): their own hooks.
_INFERENCE_ONLY: dict[type, Callable[..., _Built]] = {
    ConeRouting: _build_cones,
    DynamicStrength: _build_dynamic,
    FeatureClamp: _build_clamp,
}

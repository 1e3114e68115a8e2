"""Live interventions: ``apply(model, *interventions)`` turns intervention data into TL hooks.

Ablations edit what each *writer* adds to the residual stream -- the embedding
(``hook_embed``), every attention output and every MLP output -- so that the residual itself
is orthogonal to the direction, and so that the same edit folds exactly into
``embed_tokens``, ``o_proj`` and ``down_proj``. On pre-norm models the writer's output is
``hook_attn_out`` / ``hook_mlp_out``. On sandwich-norm models (Gemma 2/3) a second RMSNorm
follows each sublayer, so the edit goes *before* it (``ln1_post.hook_in`` /
``ln2_post.hook_in``) along ``u = normalize(g * r)``, ``g`` the norm's per-coordinate gain
(``1 + weight`` for Gemma): ``RMSNorm(x) . r`` is proportional to ``x . u``.

:func:`plan` gives those per-writer edits as :class:`SiteEdit` values; the exporter folds the
same list into weights. Routed and dynamic interventions decide per prompt on a clean pass
over the prompt (before any edit) and keep that decision for the KV-cached decode steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet, interpolate_direction
from circuitlab.engine import HookedModel, HookFn
from circuitlab.errors import UnsupportedArchitectureError
from circuitlab.fastpath import edits_apply_at_writers, writer_hooks
from circuitlab.interventions import (
    ActivationAddition,
    ConeRouting,
    DirectionalAblation,
    DynamicStrength,
    HeadAblation,
    Intervention,
    InterventionError,
    SubspaceAblation,
    _Weighted,
)
from circuitlab.models.loading import dense_weight, module_device

__all__ = ["Applied", "NonFiniteError", "SiteEdit", "apply", "plan", "writer_hook", "layer_vectors"]

log = logging.getLogger(__name__)

Writer = Literal["embed", "attn", "mlp"]
Hooks = list[tuple[str, HookFn]]
# Relative norm below which a vector adds no new dimension to a basis (float64 round-off).
RANK_TOL = 1e-8


@dataclass(frozen=True, eq=False)
class SiteEdit:
    """One linear edit of one writer to the residual stream, as hooked and as folded.

    The writer's output ``x`` (seen at ``hook``) becomes ``x - sum_i w_i (x . u_i) u_i``
    (``basis`` rows ``u_i`` orthonormal). For a head edit (``head`` set) only that query
    head's share of the attention output is projected, or removed when ``zero``. Folding:
    ``W <- W - U^T diag(w) U W`` for the matrix writing ``x`` (o_proj, down_proj, or its
    columns ``head*d_head:(head+1)*d_head``); embedding rows ``E <- E - E U^T diag(w) U``.
    """

    writer: Writer
    layer: int
    hook: str
    basis: Float[Tensor, "m d_model"]
    weights: Float[Tensor, " m"]
    head: int | None = None
    zero: bool = False


def writer_hook(model: HookedModel, writer: Writer, layer: int) -> str:
    """TL hook where ``writer`` of ``layer`` hands its output to the residual stream."""
    if writer == "embed":
        return "hook_embed"
    if model.facts.norm_placement == "sandwich":
        return f"blocks.{layer}.{'ln1_post' if writer == 'attn' else 'ln2_post'}.hook_in"
    return f"blocks.{layer}.hook_{writer}_out"


def _post_norm_gain(model: HookedModel, writer: Writer, layer: int) -> Tensor | None:
    """Per-coordinate gain of the norm after a sublayer (sandwich only), float64."""
    if writer == "embed" or model.facts.norm_placement != "sandwich":
        return None
    block = model.bridge.blocks[layer]
    norm = (block.ln1_post if writer == "attn" else block.ln2_post).original_component
    # An RMSNorm maps the all-ones vector to its gain (up to 1/sqrt(1 + eps)); a norm that
    # centres (LayerNorm) maps it to 0 and would need an affine, non-foldable treatment.
    with torch.no_grad():
        ones = torch.ones(1, model.facts.d_model, device=module_device(norm), dtype=torch.float32)
        gain = norm(ones)[0].double().cpu()
    if not torch.isfinite(gain).all() or gain.abs().max() == 0:
        raise UnsupportedArchitectureError(f"{type(norm).__name__} is not an RMS-style norm")
    return gain


def _orthonormal(vectors: Tensor) -> tuple[Tensor, list[int]]:
    """Gram-Schmidt (twice, for stability) in order; drops vectors already in the span."""
    basis, keep = [], []
    for i, v in enumerate(vectors.double()):
        w = v.clone()
        for _ in range(2):
            for b in basis:
                w = w - (w @ b) * b
        if w.norm() > RANK_TOL * max(v.norm().item(), 1e-30):
            basis.append(w / w.norm())
            keep.append(i)
    if len(keep) < len(vectors):
        log.warning("dropped %d linearly dependent direction(s)", len(vectors) - len(keep))
    return torch.stack(basis), keep


# --------------------------------------------------------------------------------- directions
def _check_set(ds: DirectionSet, model: HookedModel, per_layer: bool, component: int) -> None:
    if ds.d_model != model.facts.d_model:
        raise InterventionError(
            f"directions have d_model {ds.d_model}, model {model.facts.d_model}"
        )
    if per_layer and ds.n_layers != model.n_layers:
        raise InterventionError(
            f"per-layer directions need {model.n_layers} layers, the set has {ds.n_layers}; "
            "give a fractional index instead"
        )
    if not 0 <= component < ds.k:
        raise InterventionError(f"component {component} out of range: the set has k={ds.k}")


def layer_vectors(
    ds: DirectionSet, index: float | None, component: int, n_layers: int
) -> Float[Tensor, "layer d_model"]:
    """Unit direction used at each layer (float64): per layer, or one interpolated one."""
    directions = ds.directions[:, component].double()
    if index is None:
        vectors = directions
    else:
        try:
            vectors = interpolate_direction(directions, index).expand(n_layers, -1)
        except ValueError as exc:
            raise InterventionError(str(exc)) from None
    return vectors / vectors.norm(dim=-1, keepdim=True)


def _subspace(ds: DirectionSet, iv: SubspaceAblation, n_layers: int) -> tuple[Tensor, Tensor]:
    """Per-layer vectors [layer, m, d] and component weights [layer, m] of a subspace."""
    comps = list(iv.components) if iv.components is not None else list(range(ds.k))
    if not all(0 <= c < ds.k for c in comps):
        raise InterventionError(f"components {comps} out of range: the set has k={ds.k}")
    scores = ds.scores.double()
    if iv.weighting == "eigenvalue":
        # As circuitlab.directions.eigenvalue_weights: relative to the layer's top eigenvalue.
        weights = (scores.clamp_min(0) / scores[:, :1].clamp_min(1e-12)).clamp(max=1.0)
    else:
        weights = torch.ones_like(scores)
    vectors, weights = ds.directions[:, comps].double(), weights[:, comps]
    if iv.layer is not None:
        if not 0 <= iv.layer < ds.n_layers:
            raise InterventionError(f"layer {iv.layer} out of range: the set has {ds.n_layers}")
        vectors = vectors[iv.layer].expand(n_layers, -1, -1)
        weights = weights[iv.layer].expand(n_layers, -1)
    return vectors, weights


# -------------------------------------------------------------------------------------- plans
def _sites(model: HookedModel) -> list[tuple[Writer, int]]:
    return [("embed", 0)] + [(w, i) for i in range(model.n_layers) for w in ("attn", "mlp")]


def _plan_weighted(
    model: HookedModel, weighted: _Weighted, vectors: Tensor, comp_weights: Tensor
) -> list[SiteEdit]:
    """Edits of every writer with a non-zero weight; ``vectors`` [layer, m, d] residual-space."""
    edits = []
    for writer, layer in _sites(model):
        weight = weighted.site_weight(writer, layer)
        if weight == 0:
            continue
        gain = _post_norm_gain(model, writer, layer)
        rows = vectors[layer] if gain is None else vectors[layer] * gain
        basis, keep = _orthonormal(rows)
        hook = writer_hook(model, writer, layer)
        edits.append(SiteEdit(writer, layer, hook, basis, comp_weights[layer, keep] * weight))
    return edits


def _plan_heads(model: HookedModel, iv: HeadAblation) -> list[SiteEdit]:
    facts = model.facts
    for head in iv.heads:
        if not (0 <= head.layer < facts.n_layers and 0 <= head.head < facts.n_heads):
            raise InterventionError(f"{head} out of range ({facts.n_layers} x {facts.n_heads})")
    vectors = None
    if iv.mode == "project":
        ds = iv.directions.load()
        _check_set(ds, model, iv.index is None, iv.component)
        vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers)
    edits = []
    for head in iv.heads:
        hook = writer_hook(model, "attn", head.layer)
        if vectors is None:
            empty = torch.zeros(0, facts.d_model, dtype=torch.float64)
            edits.append(SiteEdit("attn", head.layer, hook, empty, empty[:, 0], head.head, True))
            continue
        gain = _post_norm_gain(model, "attn", head.layer)
        u = vectors[head.layer] if gain is None else vectors[head.layer] * gain
        weights = torch.tensor([iv.weight], dtype=torch.float64)
        edits.append(SiteEdit("attn", head.layer, hook, (u / u.norm())[None], weights, head.head))
    return edits


def plan(model: HookedModel, intervention: Intervention) -> list[SiteEdit]:
    """The exact per-writer edits of a foldable intervention (what hooks and export apply).

    Args:
        model: the model the edits are for (norm placement, post-norm gains, sizes).
        intervention: a DirectionalAblation, SubspaceAblation or HeadAblation.

    Returns:
        One :class:`SiteEdit` per edited writer (writers of weight 0 are left out), float64.

    Raises:
        InterventionError: for interventions that cannot be folded (with the reason).
    """
    iv = intervention
    if isinstance(iv, DirectionalAblation):
        ds = iv.directions.load()
        _check_set(ds, model, iv.index is None, iv.component)
        vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers)[:, None]
        return _plan_weighted(model, iv, vectors, torch.ones(model.n_layers, 1).double())
    if isinstance(iv, SubspaceAblation):
        ds = iv.directions.load()
        _check_set(ds, model, iv.layer is None, 0)
        return _plan_weighted(model, iv, *_subspace(ds, iv, model.n_layers))
    if isinstance(iv, HeadAblation):
        return _plan_heads(model, iv)
    raise InterventionError(f"{type(iv).__name__} cannot be folded: {iv.fold_note}")


# -------------------------------------------------------------------------------- hook state
class _RoutingDone(Exception):
    """Raised by the last routing read: the clean pass needs no further layers."""


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


def _static_hook(model: HookedModel, edit: SiteEdit, state: _State) -> HookFn:
    placed = _Placed(edit.basis, edit.basis * edit.weights[:, None])

    def project(x: Tensor, hook: Any) -> Tensor | None:
        if state.clean:
            return None
        basis, scaled = placed.on(x)
        return x - (x @ basis.T) @ scaled

    return project


def _head_hooks(model: HookedModel, edit: SiteEdit, state: _State) -> Hooks:
    """Zero a head at ``hook_z``, or project a direction out of its share of the output.

    The head's share along ``u`` is ``z_h . (W_O_h^T u)``: read at ``hook_z`` and removed
    at the attention writer's output, exactly what editing o_proj's head columns does.
    """
    h, d_head = edit.head, model.facts.d_head
    z_hook = f"blocks.{edit.layer}.attn.hook_z"
    if edit.zero:

        def zero(z: Tensor, hook: Any) -> Tensor | None:
            if state.clean:
                return None
            z = z.clone()
            z[:, :, h] = 0
            return z

        return [(z_hook, zero)]
    o_proj = dense_weight(model.bridge.blocks[edit.layer].attn.o.original_component)
    columns = o_proj[:, h * d_head : (h + 1) * d_head].detach().double().cpu()
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

    return [(z_hook, read), (edit.hook, remove)]


def _build_foldable(model: HookedModel, iv: Intervention, state: _State, key: int) -> _Built:
    hooks: Hooks = []
    for edit in plan(model, iv):
        if edit.head is None:
            hooks.append((edit.hook, _static_hook(model, edit, state)))
        else:
            hooks.extend(_head_hooks(model, edit, state))
    return _Built(hooks)


def _build_addition(model: HookedModel, iv: ActivationAddition, state: _State, key: int) -> _Built:
    ds = iv.directions.load()
    _check_set(ds, model, iv.index is None, iv.component)
    if not all(0 <= layer < model.n_layers for layer in iv.layers):
        raise InterventionError(f"layers {iv.layers} out of range [0, {model.n_layers})")
    vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers) * iv.strength
    hooks: Hooks = []
    for layer in iv.layers:
        placed = _Placed(vectors[layer])

        def add(x: Tensor, hook: Any, placed: _Placed = placed) -> Tensor | None:
            if state.clean:
                return None
            (vector,) = placed.on(x)
            if iv.positions == "all" or (iv.positions == "generated" and not state.prefill):
                return x + vector
            if not state.prefill:  # 'last': nothing to steer while decoding
                return None
            x = x.clone()
            x[:, -1] += vector  # left padding: every prompt ends at the last position
            return x

        hooks.append((f"blocks.{layer}.hook_resid_pre", add))
    return _Built(hooks, needs_phase=iv.positions != "all")


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
    _check_set(ds, model, iv.direction_layer is None, 0)
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
        per_cone.append(_plan_weighted(model, iv, vectors[:, None], torch.ones(n, 1).double()))
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


# Applied as fastpath.writer_hooks (the plan's static edits on the writer modules).
_WRITER_EDITS = (DirectionalAblation, SubspaceAblation, HeadAblation)

_BUILDERS: dict[type, Callable[..., _Built]] = {
    DirectionalAblation: _build_foldable,
    SubspaceAblation: _build_foldable,
    HeadAblation: _build_foldable,
    ActivationAddition: _build_addition,
    ConeRouting: _build_cones,
    DynamicStrength: _build_dynamic,
}


# ----------------------------------------------------------------------- per-prompt routing
def _read_hooks(routers: list[_Router], state: _State) -> Hooks:
    """Last-token residual reads for the clean pass; the deepest one ends that pass."""
    layers = sorted({layer for router in routers for layer in router.layers})

    def make(layer: int) -> HookFn:
        def read(x: Tensor, hook: Any) -> None:
            if state.clean:
                state.reads[layer] = x[:, -1].detach().double().cpu()
                if layer == layers[-1]:
                    raise _RoutingDone

        return read

    return [(f"blocks.{layer}.hook_resid_pre", make(layer)) for layer in layers]


def _is_prefill(args: tuple, kwargs: dict[str, Any]) -> bool:
    # A decode step has a non-empty KV cache; a single-token prompt still counts as prefill,
    # which is why the input length alone (pos == 1) cannot tell.
    cache = kwargs.get("past_key_values")
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


def _phase_hook(state: _State, routers: list[_Router]) -> Callable[..., None]:
    """Decoder pre-forward hook: marks prefill vs decode, and on prefill runs a clean pass
    (every edit off) up to the deepest routing layer, then stores each router's decision."""
    skip = {"past_key_values", "use_cache", "cache_position"}

    def before_forward(decoder: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if state.clean:  # the clean pass re-enters the decoder
            return
        state.prefill = _is_prefill(args, kwargs)
        if not (state.prefill and routers):
            return
        state.reads.clear()
        state.clean = True
        try:
            with torch.no_grad():
                decoder(
                    *args, use_cache=False, **{k: v for k, v in kwargs.items() if k not in skip}
                )
        except _RoutingDone:
            pass
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
    if (
        interventions
        and all(type(iv) in _WRITER_EDITS for iv in interventions)
        and edits_apply_at_writers(model)
    ):
        # Linear writer edits become torch hooks on the writer modules: the decoder can
        # then generate on the plain HF view (SDPA, no hook points) instead of the bridge.
        edits = [edit for iv in interventions for edit in plan(model, iv)]
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
        builder = _BUILDERS.get(type(iv))
        if builder is None:
            raise InterventionError(f"not an intervention: {type(iv).__name__}")
        built.append(builder(model, iv, state, key))
    routers = [b.router for b in built if b.router is not None]
    hooks = (_read_hooks(routers, state) if routers else []) + [h for b in built for h in b.hooks]
    bad: dict[torch.device, Tensor] = {}
    hooks = [(name, _finite_output(fn, bad)) for name, fn in hooks]
    log.debug("applying %d intervention(s) as %d hooks", len(interventions), len(hooks))
    handle = None
    try:
        if any(b.needs_phase for b in built):
            handle = _decoder(model).register_forward_pre_hook(
                _phase_hook(state, routers), with_kwargs=True
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
from circuitlab.interventions import FeatureClamp  # noqa: E402
from circuitlab.sae.data import sink_mask  # noqa: E402
from circuitlab.sae.format import load_sae  # noqa: E402


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


_BUILDERS[FeatureClamp] = _build_clamp

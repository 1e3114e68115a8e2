"""One plan for every linear edit: ``plan(model, intervention)`` gives typed, frozen edits.

The live hooks (:mod:`circuitlab.hooks`) and the weight fold (:mod:`circuitlab.export.fold`)
both consume these edits and nothing else, so an edit validated with hooks is the edit that
is exported. There is one edit type per kind of linear change (tensors float64):

- :class:`WriterProjection`: ``x <- x - U^T diag(w) U x`` on what one writer (the embedding,
  an attention block, an MLP) adds to the residual stream;
- :class:`HeadProjection`: the same, on one query head's share of the attention output;
- :class:`HeadZero`: one query head's output removed;
- :class:`ResidualAddition`: a constant added to a layer's residual input.

Ablations edit the *writers* so the residual itself is orthogonal to the direction and the
edit folds into ``embed_tokens``, ``o_proj`` and ``down_proj``. On pre-norm models a writer's
output is ``hook_attn_out`` / ``hook_mlp_out``. On sandwich-norm models (Gemma 2/3) a second
RMSNorm follows each sublayer, so the edit goes *before* it (``ln1_post.hook_in`` /
``ln2_post.hook_in``) along ``u = normalize(g * r)``, ``g`` the norm's per-coordinate gain:
``RMSNorm(x) . r`` is proportional to ``x . u``.

A new intervention type needs one plan function registered with :func:`planner`; neither
the hooks nor the fold change. Inference-only types (chosen per prompt or nonlinear) have
no plan function: :func:`plan` refuses them with their ``fold_note``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet, interpolate_direction
from circuitlab.errors import UnsupportedArchitectureError
from circuitlab.interventions import (
    ActivationAddition,
    DirectionalAblation,
    HeadAblation,
    InterventionError,
    SubspaceAblation,
    _Weighted,
)
from circuitlab.models.loading import module_device

if TYPE_CHECKING:
    from circuitlab.engine import HookedModel

__all__ = [
    "Edit",
    "HeadProjection",
    "HeadZero",
    "ResidualAddition",
    "WriterProjection",
    "check_set",
    "edits_bytes",
    "layer_vectors",
    "load_edits",
    "plan",
    "planner",
    "writer_edits",
    "writer_hook",
]

log = logging.getLogger(__name__)

Writer = Literal["embed", "attn", "mlp"]
Positions = Literal["all", "last", "generated"]
# Relative norm below which a vector adds no new dimension to a basis (float64 round-off).
RANK_TOL = 1e-8
EDITS_FORMAT = 1


# ------------------------------------------------------------------------------- edit types
@dataclass(frozen=True, eq=False)
class WriterProjection:
    """``x <- x - sum_i w_i (x . u_i) u_i`` on writer output ``x`` (seen at ``hook``).

    ``basis`` rows ``u_i`` are orthonormal. Folds as ``W <- W - U^T diag(w) U W`` for the
    matrix (and bias) writing ``x`` (o_proj, down_proj) and ``E <- E - E U^T diag(w) U``
    for embedding rows.
    """

    writer: Writer
    layer: int
    hook: str
    basis: Float[Tensor, "m d_model"]
    weights: Float[Tensor, " m"]

    foldable = True


@dataclass(frozen=True, eq=False)
class HeadProjection:
    """The projection of :class:`WriterProjection` on query head ``head``'s share only.

    The share along ``u`` is ``z_h . (W_O_h^T u)`` with ``W_O_h`` the head's o_proj columns
    as loaded; it is removed at the attention writer's output (``hook``). Folds into those
    columns: ``W_O_h <- W_O_h - U^T diag(w) U W_O_h``.
    """

    layer: int
    head: int
    hook: str
    basis: Float[Tensor, "m d_model"]
    weights: Float[Tensor, " m"]

    writer = "attn"
    foldable = True


@dataclass(frozen=True, eq=False)
class HeadZero:
    """Query head ``head``'s output removed (``hook_z`` zeroed; o_proj columns zeroed)."""

    layer: int
    head: int

    writer = "attn"
    foldable = True

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"


@dataclass(frozen=True, eq=False)
class ResidualAddition:
    """``vector`` added to the residual input of ``layer`` (``hook_resid_pre``).

    ``positions``: ``all`` (a weight edit: embedding rows at layer 0, the last writer's bias
    otherwise), or inference-only ``last`` (the prompt's last token) and ``generated`` (the
    prompt's last token and every generated one).
    """

    layer: int
    vector: Float[Tensor, " d_model"]
    positions: Positions = "all"

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    @property
    def foldable(self) -> bool:
        return self.positions == "all"


Edit = WriterProjection | HeadProjection | HeadZero | ResidualAddition
EDIT_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (WriterProjection, HeadProjection, HeadZero, ResidualAddition)
}


# ---------------------------------------------------------------------------- registration
Planner = Callable[["HookedModel", Any], Sequence[Edit]]
_PLANNERS: dict[type, Planner] = {}
P = TypeVar("P", bound=Planner)


def planner(intervention_type: type) -> Callable[[P], P]:
    """Register the plan function of an intervention type (a decorator).

    Example:
        >>> @planner(MyEdit)
        ... def _plan_my_edit(model, iv: MyEdit) -> list[Edit]:
        ...     return [ResidualAddition(0, iv.vector)]
    """

    def register(fn: P) -> P:
        _PLANNERS[intervention_type] = fn
        return fn

    return register


def plan(model: HookedModel, intervention: Any) -> tuple[Edit, ...]:
    """The exact edits of an intervention, as the hooks apply them and the fold folds them.

    Args:
        model: the model the edits are for (norm placement, post-norm gains, sizes).
        intervention: any intervention with a plan function (every foldable type, and
            activation additions at some positions, whose edits say ``foldable=False``).

    Returns:
        The edits in the order the hooks apply them (writers of weight 0 left out), float64.

    Raises:
        InterventionError: for an inference-only intervention (with the reason), or one
            that does not fit the model.
    """
    fn = _PLANNERS.get(type(intervention))
    if fn is None:
        note = getattr(intervention, "fold_note", None)
        if note is None:
            raise InterventionError(f"not an intervention: {type(intervention).__name__}")
        raise InterventionError(f"{type(intervention).__name__} cannot be folded: {note}")
    return tuple(fn(model, intervention))


# ----------------------------------------------------------------------------- geometry
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


def check_set(ds: DirectionSet, model: HookedModel, per_layer: bool, component: int) -> None:
    """A direction set fits the model: width, layer count where per layer, component."""
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


def _sites(model: HookedModel) -> list[tuple[Writer, int]]:
    return [("embed", 0)] + [(w, i) for i in range(model.n_layers) for w in ("attn", "mlp")]


def writer_edits(
    model: HookedModel,
    weighted: _Weighted,
    vectors: Float[Tensor, "layer m d_model"],
    comp_weights: Float[Tensor, "layer m"],
) -> list[WriterProjection]:
    """Projections of every writer ``weighted`` gives a non-zero weight; ``vectors`` are
    residual-space directions per layer (the embedding uses layer 0's)."""
    edits = []
    for writer, layer in _sites(model):
        weight = weighted.site_weight(writer, layer)
        if weight == 0:
            continue
        gain = _post_norm_gain(model, writer, layer)
        rows = vectors[layer] if gain is None else vectors[layer] * gain
        basis, keep = _orthonormal(rows)
        hook = writer_hook(model, writer, layer)
        edits.append(
            WriterProjection(writer, layer, hook, basis, comp_weights[layer, keep] * weight)
        )
    return edits


# -------------------------------------------------------------------- the plan functions
@planner(DirectionalAblation)
def _plan_directional(model: HookedModel, iv: DirectionalAblation) -> list[Edit]:
    ds = iv.directions.load()
    check_set(ds, model, iv.index is None, iv.component)
    vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers)[:, None]
    return writer_edits(model, iv, vectors, torch.ones(model.n_layers, 1).double())


@planner(SubspaceAblation)
def _plan_subspace(model: HookedModel, iv: SubspaceAblation) -> list[Edit]:
    ds = iv.directions.load()
    check_set(ds, model, iv.layer is None, 0)
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
    n = model.n_layers
    if iv.layer is not None:
        if not 0 <= iv.layer < ds.n_layers:
            raise InterventionError(f"layer {iv.layer} out of range: the set has {ds.n_layers}")
        vectors, weights = vectors[iv.layer].expand(n, -1, -1), weights[iv.layer].expand(n, -1)
    return writer_edits(model, iv, vectors, weights)


@planner(HeadAblation)
def _plan_heads(model: HookedModel, iv: HeadAblation) -> list[Edit]:
    facts = model.facts
    for head in iv.heads:
        if not (0 <= head.layer < facts.n_layers and 0 <= head.head < facts.n_heads):
            raise InterventionError(f"{head} out of range ({facts.n_layers} x {facts.n_heads})")
    if iv.mode == "zero":
        return [HeadZero(head.layer, head.head) for head in iv.heads]
    ds = iv.directions.load()
    check_set(ds, model, iv.index is None, iv.component)
    vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers)
    edits: list[Edit] = []
    for head in iv.heads:
        gain = _post_norm_gain(model, "attn", head.layer)
        u = vectors[head.layer] if gain is None else vectors[head.layer] * gain
        weights = torch.tensor([iv.weight], dtype=torch.float64)
        hook = writer_hook(model, "attn", head.layer)
        edits.append(HeadProjection(head.layer, head.head, hook, (u / u.norm())[None], weights))
    return edits


@planner(ActivationAddition)
def _plan_addition(model: HookedModel, iv: ActivationAddition) -> list[Edit]:
    ds = iv.directions.load()
    check_set(ds, model, iv.index is None, iv.component)
    if not all(0 <= layer < model.n_layers for layer in iv.layers):
        raise InterventionError(f"layers {iv.layers} out of range [0, {model.n_layers})")
    vectors = layer_vectors(ds, iv.index, iv.component, model.n_layers) * iv.strength
    return [ResidualAddition(layer, vectors[layer], iv.positions) for layer in iv.layers]


# ---------------------------------------------------------------------------- on disk
def _edit_tensors(edits: Sequence[Edit]) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    tensors: dict[str, Tensor] = {}
    records = []
    for i, edit in enumerate(edits):
        record: dict[str, Any] = {"type": type(edit).__name__}
        for f in fields(edit):
            value = getattr(edit, f.name)
            if isinstance(value, Tensor):
                key = f"{i}.{f.name}"
                tensors[key] = value.detach().to(torch.float64).cpu().contiguous()
                record[f.name] = {"tensor": key}
            else:
                record[f.name] = value
        records.append(record)
    return tensors, records


def edits_bytes(edits: Sequence[Edit]) -> bytes:
    """The edits as one safetensors file (float64 tensors; the records in its metadata):
    what an export carries so that anyone can reproduce it without the direction files."""
    from safetensors.torch import save

    tensors, records = _edit_tensors(edits)
    # One metadata entry: safetensors keeps metadata in a hash map, whose order (and so the
    # file's bytes and hash) could differ between two writes if there were several.
    meta = {"circuitlab_edits": json.dumps({"format": EDITS_FORMAT, "edits": records})}
    return save(tensors, metadata=meta)


def load_edits(path: str | Path) -> tuple[Edit, ...]:
    """Read edits written as :func:`edits_bytes` (an export's ``circuitlab_edits.safetensors``).

    Raises:
        InterventionError: not an edits file of this format.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("circuitlab_edits", "{}"))
        if meta.get("format") != EDITS_FORMAT:
            raise InterventionError(
                f"{path} is not a circuitlab edits file (format {EDITS_FORMAT})"
            )
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    edits = []
    for record in meta["edits"]:
        cls = EDIT_TYPES.get(record.pop("type", None))
        if cls is None:
            raise InterventionError(f"{path}: unknown edit type in {record}")
        names = {f.name for f in fields(cls)}
        values = {
            k: tensors[v["tensor"]] if isinstance(v, dict) else v
            for k, v in record.items()
            if k in names
        }
        edits.append(cls(**values))
    return tuple(edits)

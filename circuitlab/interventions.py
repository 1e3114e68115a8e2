"""Interventions as plain data: frozen dataclasses with a lossless JSON round trip.

One object is applied live as hooks (:func:`circuitlab.hooks.apply`), stored in the search's
trial record and the export manifest, and folded into weights by the exporter. Directions are
held by reference (a saved :class:`DirectionSet` folder plus its content hash) or inline
(nested tuples of floats, exact: float32 values survive JSON's float repr unchanged).

Every intervention says whether it can be folded into weights exactly (``foldable``), why
not (``fold_note``) and what the nearest exact alternative is (``foldable_alternative()``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.errors import CircuitlabError
from circuitlab.models.facts import HeadId, ModelFacts, o_proj_columns

__all__ = [
    "ActivationAddition",
    "ConeRouting",
    "DirectionRef",
    "DirectionalAblation",
    "DynamicStrength",
    "HeadAblation",
    "Intervention",
    "InterventionError",
    "LayerKernel",
    "SubspaceAblation",
    "from_dict",
    "from_json",
    "load_intervention",
    "load_interventions",
    "save_intervention",
    "save_interventions",
    "check_fits",
    "to_dict",
    "to_json",
    "with_strength",
]

FORMAT_VERSION = 1
Nested = tuple  # nested tuples of floats: [layer][k][d_model] and the like


class InterventionError(CircuitlabError):
    """An intervention that is malformed or does not fit the model it is applied to."""


def _tuples(value: Any) -> Any:
    """Lists (from users or JSON) become tuples, so frozen objects compare and hash by value."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _nested(tensor: Tensor) -> Nested:
    return _tuples(tensor.detach().to(torch.float32).cpu().tolist())


# ----------------------------------------------------------------------------- building blocks
@dataclass(frozen=True)
class LayerKernel:
    """Per-layer weight: a tent over layers (heretic's kernel), or one weight everywhere.

    Layer ``l`` at distance ``d = |l - max_weight_position|`` gets
    ``max_weight + (d / min_weight_distance) * (min_weight - max_weight)`` while
    ``d <= min_weight_distance`` and 0 beyond. With ``min_weight_distance=None`` every layer
    gets ``max_weight`` (the default: weight 1 everywhere, the classic full ablation).
    """

    max_weight: float = 1.0
    max_weight_position: float = 0.0
    min_weight: float = 1.0
    min_weight_distance: float | None = None

    def __post_init__(self) -> None:
        if self.min_weight_distance is not None and self.min_weight_distance <= 0:
            raise InterventionError(
                f"min_weight_distance must be > 0 or None, got {self.min_weight_distance}"
            )

    @classmethod
    def off(cls) -> LayerKernel:
        return cls(max_weight=0.0)

    @classmethod
    def only(cls, layer: int, weight: float = 1.0) -> LayerKernel:
        """Weight at one layer, 0 at every other."""
        return cls(weight, float(layer), 0.0, 1.0)

    def weight(self, layer: int) -> float:
        if self.min_weight_distance is None:
            return self.max_weight
        distance = abs(layer - self.max_weight_position)
        if distance > self.min_weight_distance:
            return 0.0
        slope = (self.min_weight - self.max_weight) / self.min_weight_distance
        return self.max_weight + distance * slope


@dataclass(frozen=True)
class DirectionRef:
    """Directions by reference (``folder`` + ``hash`` of a saved DirectionSet) or inline.

    Build with :meth:`from_folder` or :meth:`inline`; :meth:`load` gives the DirectionSet
    (checking the hash). Inline sets keep their named extra tensors (cone centroids) and
    the cone layer, which is all the hooks read from metadata.
    """

    folder: str | None = None
    hash: str | None = None
    method: str = "inline"
    directions: Nested | None = None
    scores: Nested | None = None
    tensors: tuple[tuple[str, Nested], ...] = ()
    cone_layer: int | str | None = None

    def __post_init__(self) -> None:
        for name in ("directions", "scores", "tensors"):
            object.__setattr__(self, name, _tuples(getattr(self, name)))
        if (self.folder is None) == (self.directions is None):
            raise InterventionError("a DirectionRef needs exactly one of folder or directions")

    @classmethod
    def from_folder(cls, folder: str | Path) -> DirectionRef:
        """Refer to a saved DirectionSet folder (absolute path) and pin its content hash."""
        path = Path(folder).resolve()
        return cls(folder=str(path), hash=DirectionSet.load(path).hash)

    @classmethod
    def inline(
        cls, source: DirectionSet | Float[Tensor, "*layer_k d_model"], method: str = "inline"
    ) -> DirectionRef:
        """Inline directions: a DirectionSet, one vector [d], or [layer, k, d].

        A 2-D tensor is refused: [k, d] (components) and [layer, d] (per-layer directions)
        look alike, so say which with ``t[None]`` or ``t[:, None]``.
        """
        if isinstance(source, DirectionSet):
            return cls(
                method=source.method,
                directions=_nested(source.directions),
                scores=_nested(source.scores),
                tensors=tuple((k, _nested(v)) for k, v in sorted(source.tensors.items())),
                cone_layer=source.metadata.get("cone_layer"),
            )
        if source.ndim not in (1, 3):
            raise InterventionError(
                f"inline directions must be [d] or [layer, k, d], got {tuple(source.shape)}"
            )
        vectors = source[None, None] if source.ndim == 1 else source
        return cls(method=method, directions=_nested(vectors))

    def load(self) -> DirectionSet:
        """The DirectionSet referred to; raises InterventionError on a hash mismatch."""
        if self.folder is not None:
            loaded, digest = _load_folder(self.folder)
            if self.hash is not None and digest != self.hash:
                raise InterventionError(
                    f"{self.folder} holds directions {digest}, the intervention was made "
                    f"with {self.hash}"
                )
            return loaded
        directions = torch.tensor(self.directions, dtype=torch.float32)
        scores = (
            torch.tensor(self.scores, dtype=torch.float32)
            if self.scores is not None
            else torch.ones(directions.shape[:2])
        )
        extra = {k: torch.tensor(v, dtype=torch.float32) for k, v in self.tensors}
        meta = {} if self.cone_layer is None else {"cone_layer": self.cone_layer}
        return DirectionSet(self.method, directions, scores, meta, extra)


# Loaded sets by folder and file identity (size, mtime): every apply() and plan() of a
# search trial loads the same folder, and re-reading and re-hashing it each time is waste.
# A rewritten folder has new file identities, so it is read (and its hash checked) afresh.
_LOADED: dict[tuple, tuple[DirectionSet, str]] = {}
_LOADED_MAX = 32


def _load_folder(folder: str) -> tuple[DirectionSet, str]:
    """A saved DirectionSet (read-only: it is shared) and its content hash, or
    InterventionError saying what is wrong with the folder."""
    from safetensors import SafetensorError

    path = Path(folder)
    files = (path / "directions.json", path / "directions.safetensors")
    if not all(f.is_file() for f in files):
        raise InterventionError(f"directions folder {folder} not found (or not a saved set)")
    stats = [f.stat() for f in files]
    key = (str(path.resolve()), *((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats))
    found = _LOADED.get(key)
    if found is not None:
        return found
    try:
        loaded = DirectionSet.load(path)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise InterventionError(f"directions folder {folder} is unreadable: {exc}") from None
    if not torch.isfinite(loaded.directions).all():
        raise InterventionError(f"directions in {folder} are not all finite numbers")
    if len(_LOADED) >= _LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = (loaded, loaded.hash)
    return _LOADED[key]


@dataclass(frozen=True, kw_only=True)
class _Weighted:
    """Where an ablation acts: a kernel per writer (attention, MLP) and the embedding weight.

    ``embed`` is the weight at layer 0's input (the embedding stream); ``calibration``
    multiplies every weight (a calibrated multiplier, or the chat command's ``/strength``).
    """

    attn: LayerKernel = field(default_factory=LayerKernel)
    mlp: LayerKernel = field(default_factory=LayerKernel)
    embed: float = 1.0
    calibration: float = 1.0

    def site_weight(self, writer: str, layer: int) -> float:
        """Weight of one writer: ``embed`` (layer ignored), ``attn`` or ``mlp`` at ``layer``."""
        if writer == "embed":
            return self.embed * self.calibration
        return getattr(self, writer).weight(layer) * self.calibration


# ------------------------------------------------------------------------------ interventions
@dataclass(frozen=True)
class DirectionalAblation(_Weighted):
    """Project one direction out of every writer to the residual stream, weighted per layer.

    Args:
        directions: the DirectionSet.
        index: fractional layer index of the direction (``14.3`` blends layers 14 and 15);
            ``None`` uses each layer's own direction at that layer (layer 0's for the
            embedding).
        component: which of the set's k components.
    """

    directions: DirectionRef
    index: float | None = None
    component: int = 0

    foldable = True
    per_prompt = False

    fold_note = (
        "exact: W <- W - w u u^T W for embed_tokens rows, o_proj and down_proj (lm_head untied)"
    )

    def foldable_alternative(self) -> DirectionalAblation:
        return self


@dataclass(frozen=True)
class SubspaceAblation(_Weighted):
    """Remove a k-dimensional subspace (orthonormalised first) from every writer.

    Args:
        layer: whose components to use at every layer; ``None`` uses each layer's own.
        components: which components (``None``: all k, e.g. every concept-cone direction).
        weighting: ``uniform`` removes each basis vector fully; ``eigenvalue`` weights
            component i by ``score_i / score_0`` clamped to [0, 1] (PCA eigenvalues).
    """

    directions: DirectionRef
    layer: int | None = None
    components: tuple[int, ...] | None = None
    weighting: Literal["uniform", "eigenvalue"] = "uniform"

    foldable = True
    per_prompt = False

    fold_note = "exact: W <- W - U^T diag(w) U W for embed_tokens rows, o_proj and down_proj"

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", _tuples(self.components))
        if self.weighting not in ("uniform", "eigenvalue"):
            raise InterventionError(f"weighting must be uniform or eigenvalue: {self.weighting}")

    def foldable_alternative(self) -> SubspaceAblation:
        return self


@dataclass(frozen=True)
class ActivationAddition:
    """Add ``strength * direction`` to the residual stream (``hook_resid_pre``) of layers.

    Args:
        layers: the layers whose input is steered.
        index: fractional layer index of the direction; ``None``: each layer's own.
        positions: ``all`` positions; ``last``: the prompt's last token only; ``generated``:
            the prompt's last token and every generated token (what CAA steers).
    """

    directions: DirectionRef
    strength: float
    layers: tuple[int, ...]
    index: float | None = None
    component: int = 0
    positions: Literal["all", "last", "generated"] = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _tuples(self.layers))
        if self.positions not in ("all", "last", "generated"):
            raise InterventionError(f"positions must be all, last or generated: {self.positions}")

    @property
    def foldable(self) -> bool:
        """Only an addition at every position is a weight edit (whether the architecture has
        the bias it needs is checked by the exporter, which says so if not)."""
        return self.positions == "all"

    @property
    def per_prompt(self) -> bool:
        """Whether the edit depends on where each prompt ends (its last token)."""
        return self.positions != "all"

    @property
    def fold_note(self) -> str:
        if self.foldable:
            return (
                "at layer 0: added to every embedding row; at layer L: the down_proj bias of "
                "layer L-1 (enabled through the config's bias flag where the family has one)"
            )
        return (
            f"positions={self.positions!r} steers only some positions and a weight acts on "
            "every position; no exact weight edit exists (the nearest foldable edit is the "
            "same addition with positions='all': validate it with hooks first)"
        )

    def foldable_alternative(self) -> ActivationAddition | None:
        return self if self.foldable else None


@dataclass(frozen=True)
class ConeRouting(_Weighted):
    """Per prompt, route to the nearest concept cone and ablate that cone's direction.

    The prompt's last-token residual at the cone layer (``layer``, default the set's
    ``cone_layer``; ``"mean"`` averages all layers) is centred on ``cone_centre`` (if the
    set has one), normalised, and compared by cosine with ``cone_centroids`` [cone, d_model]
    -- as ``circuitlab.directions.assign_cones`` does. Cone c is component c of the set.

    Args:
        direction_layer: use this layer's cone directions everywhere; ``None``: per layer.
    """

    directions: DirectionRef
    layer: int | None = None
    direction_layer: int | None = None

    foldable = False
    per_prompt = True

    fold_note = (
        "the cone is chosen per prompt at inference; the exact foldable alternative ablates "
        "every cone direction at once (SubspaceAblation)"
    )

    def foldable_alternative(self) -> SubspaceAblation:
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(_Weighted)}
        return SubspaceAblation(self.directions, layer=self.direction_layer, **weights)


@dataclass(frozen=True)
class DynamicStrength:
    """Scale an ablation per prompt by how far the prompt reaches along its direction.

    Strength = ``(p - zero_at) / (one_at - zero_at)`` clamped to
    ``[min_strength, max_strength]``, where ``p`` is the prompt's last-token projection onto
    the ablation's direction at ``layer`` (read before any edit), ``zero_at`` typically the
    harmless mean projection and ``one_at`` the harmful mean (see :meth:`from_stats`).
    """

    ablation: DirectionalAblation
    layer: int
    zero_at: float
    one_at: float
    min_strength: float = 0.0
    max_strength: float = 1.0

    foldable = False
    per_prompt = True

    fold_note = (
        "the strength depends on the prompt; the exact foldable alternative is the wrapped "
        "ablation at a fixed strength"
    )

    def __post_init__(self) -> None:
        if self.one_at == self.zero_at:
            raise InterventionError("DynamicStrength needs one_at != zero_at")

    @classmethod
    def from_stats(
        cls, ablation: DirectionalAblation, harmful: Any, harmless: Any | None = None, **kw: Any
    ) -> DynamicStrength:
        """From projection statistics (anything with ``.layer`` and ``.mean``, such as
        :class:`circuitlab.directions.ProjectionStats`); without harmless stats 0 is zero."""
        zero = 0.0 if harmless is None else float(harmless.mean)
        return cls(ablation, int(harmful.layer), zero, float(harmful.mean), **kw)

    def foldable_alternative(self) -> DirectionalAblation:
        return self.ablation


@dataclass(frozen=True)
class HeadAblation:
    """Edit chosen query heads' outputs only: project a direction out of them, or zero them.

    A query head's output is ``o_proj.weight[:, h*d_head:(h+1)*d_head] @ z_h``; both modes
    fold into exactly those columns. K/V are never touched, so the other heads of the same
    KV group are unaffected (``kv_groups`` gives the bookkeeping).

    Args:
        heads: the (layer, query head) pairs.
        mode: ``project`` removes ``weight`` times the direction; ``zero`` removes the head.
        directions, index, component: the direction (``project`` only); ``index=None`` uses
            each head's layer's own direction.
    """

    heads: tuple[HeadId, ...]
    mode: Literal["project", "zero"] = "project"
    directions: DirectionRef | None = None
    index: float | None = None
    component: int = 0
    weight: float = 1.0

    foldable = True
    per_prompt = False

    fold_note = "exact: edits o_proj columns h*d_head:(h+1)*d_head of each chosen head"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(sorted(set(_tuples(self.heads)))))
        if self.mode not in ("project", "zero"):
            raise InterventionError(f"mode must be project or zero, got {self.mode}")
        if self.mode == "project" and self.directions is None:
            raise InterventionError("HeadAblation(mode='project') needs directions")

    def kv_groups(self, facts: ModelFacts) -> dict[HeadId, int]:
        """KV group each chosen head reads (shared with ``facts.heads_of_group(g)``)."""
        return {h: h.kv_group(facts.n_heads, facts.n_kv_heads) for h in self.heads}

    def o_proj_columns(self, facts: ModelFacts) -> dict[HeadId, slice]:
        """The o_proj weight columns the exporter edits for each head."""
        return {h: o_proj_columns(h.head, facts.d_head) for h in self.heads}

    def foldable_alternative(self) -> HeadAblation:
        return self


Intervention = (
    DirectionalAblation
    | SubspaceAblation
    | ActivationAddition
    | ConeRouting
    | DynamicStrength
    | HeadAblation
)


def with_strength(intervention: Intervention, strength: float) -> Intervention:
    """A copy at another strength: ``calibration`` of ablations, ``strength`` of additions,
    ``weight`` of head edits (the chat command's ``/strength``)."""
    if isinstance(intervention, ActivationAddition):
        return dataclasses.replace(intervention, strength=strength)
    if isinstance(intervention, HeadAblation):
        return dataclasses.replace(intervention, weight=strength)
    if isinstance(intervention, DynamicStrength):
        return dataclasses.replace(
            intervention, ablation=with_strength(intervention.ablation, strength)
        )
    return dataclasses.replace(intervention, calibration=strength)


# ------------------------------------------------------------------------------- validation
def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON-decoded value (lists already tuples) fits a field's annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(args) == len(value) and all(map(_matches, value, args)))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _check_types(cls: type, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name, Any)
        if not _matches(value, hint):
            expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise InterventionError(
                f"{cls.__name__}.{name} must be {expected}, got {json.dumps(to_dict(value))}"
            )


def _check_finite(value: Any, where: str) -> None:
    """Every number in ``value`` (nested lists and dicts too) is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InterventionError(f"{where} is {value}: interventions take finite numbers only")
    if isinstance(value, list | tuple):
        for item in value:
            _check_finite(item, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}" if where else str(key))


def _in_range(what: str, value: int | float, high: int | None) -> None:
    if high is not None and not 0 <= value < high:
        raise InterventionError(f"{what} {value} out of range [0, {high})")


def _fits(obj: Any, n_layers: int | None, d_model: int | None, n_heads: int | None) -> None:
    name = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, DirectionRef):
            ds = value.load()
            if d_model is not None and ds.d_model != d_model:
                raise InterventionError(
                    f"{name}: directions have d_model {ds.d_model}, the model {d_model}"
                )
            if getattr(obj, "index", None) is not None and not 0 <= obj.index <= ds.n_layers - 1:
                raise InterventionError(
                    f"{name}.index {obj.index} outside the set's layers [0, {ds.n_layers - 1}]"
                )
            _in_range(f"{name}.component", getattr(obj, "component", 0), ds.k)
            per_layer = {"index": None, "layer": None, "direction_layer": None}
            # Each layer's own direction is used where the selecting field is None.
            selector = next((k for k in per_layer if hasattr(obj, k)), None)
            if (
                selector is not None
                and getattr(obj, selector) is None
                and n_layers is not None
                and ds.n_layers != n_layers
            ):
                raise InterventionError(
                    f"{name}: per-layer directions need {n_layers} layers, the set has "
                    f"{ds.n_layers}; give {selector} to use one layer's direction everywhere"
                )
        elif isinstance(value, HeadId):
            _in_range(f"{name} head layer", value.layer, n_layers)
            _in_range(f"{name} head", value.head, n_heads)
        elif dataclasses.is_dataclass(value):
            _fits(value, n_layers, d_model, n_heads)
        elif f.name in ("layer", "direction_layer", "max_weight_position") and isinstance(
            value, int
        ):
            _in_range(f"{name}.{f.name}", value, n_layers)
        elif f.name in ("layers", "heads") and isinstance(value, tuple):
            for item in value:
                if isinstance(item, HeadId):
                    _in_range(f"{name} head layer", item.layer, n_layers)
                    _in_range(f"{name} head", item.head, n_heads)
                else:
                    _in_range(f"{name}.{f.name}", item, n_layers)


def check_fits(
    interventions: Sequence[Intervention],
    n_layers: int | None = None,
    d_model: int | None = None,
    n_heads: int | None = None,
) -> None:
    """Check interventions against a model's sizes before it loads: referenced direction
    folders present (and unchanged), of width ``d_model``, layers and heads in range,
    indices inside their sets. Sizes left None are not checked.

    Raises:
        InterventionError: naming the first problem.
    """
    for iv in interventions:
        _fits(iv, n_layers, d_model, n_heads)


# -------------------------------------------------------------------------------------- JSON
_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        DirectionalAblation,
        SubspaceAblation,
        ActivationAddition,
        ConeRouting,
        DynamicStrength,
        HeadAblation,
        LayerKernel,
        DirectionRef,
        HeadId,
    )
}


def to_dict(obj: Any) -> Any:
    """JSON-ready form: every dataclass becomes ``{"type": name, field: value, ...}``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"type": type(obj).__name__}
        out.update({f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
        return out
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(data: Any) -> Any:
    """Inverse of :func:`to_dict` (lists come back as tuples)."""
    if isinstance(data, list):
        return tuple(from_dict(v) for v in data)
    if not isinstance(data, dict):
        return data
    name = data.get("type")
    cls = _TYPES.get(name)
    if cls is None:
        raise InterventionError(f"unknown intervention type {name!r}; known: {sorted(_TYPES)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"type"})
    if unknown:
        raise InterventionError(f"{name} has no field(s) {unknown}")
    _check_finite({k: v for k, v in data.items() if k != "type"}, name)
    values = {k: from_dict(v) for k, v in data.items() if k != "type"}
    _check_types(cls, values)
    try:
        return cls(**values)
    except TypeError as exc:  # a required field left out
        raise InterventionError(f"{name}: {exc}") from None


def to_json(intervention: Intervention) -> str:
    return json.dumps({"format": FORMAT_VERSION, "intervention": to_dict(intervention)})


def from_json(text: str) -> Intervention:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise InterventionError(f"not a circuitlab intervention (format {FORMAT_VERSION})")
    return from_dict(data["intervention"])


def save_intervention(intervention: Intervention, path: str | Path) -> Path:
    """Write the intervention as JSON (indented: it is read by people and diffed)."""
    path = Path(path)
    data = {"format": FORMAT_VERSION, "intervention": to_dict(intervention)}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def save_interventions(interventions: Sequence[Intervention], path: str | Path) -> Path:
    """Write several interventions, applied in order, to one JSON file (a search's choice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT_VERSION, "interventions": [to_dict(iv) for iv in interventions]}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load_intervention(path: str | Path) -> Intervention:
    """Read an intervention written by :func:`save_intervention`."""
    found = load_interventions(path)
    if len(found) != 1:
        raise InterventionError(f"{path} holds {len(found)} interventions; use load_interventions")
    return found[0]


def load_interventions(path: str | Path) -> tuple[Intervention, ...]:
    """Read a file of :func:`save_intervention` (one) or :func:`save_interventions` (several)."""
    path = Path(path)
    if not path.is_file():
        raise InterventionError(f"intervention file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise InterventionError(f"not a circuitlab intervention file (format {FORMAT_VERSION})")
        items = data["interventions"] if "interventions" in data else [data["intervention"]]
        if not isinstance(items, list):
            raise InterventionError("'interventions' must be a list")
        found = tuple(from_dict(item) for item in items)
        for item in found:
            if not hasattr(item, "foldable"):  # a building block or a bare value
                raise InterventionError(f"not an intervention: {json.dumps(to_dict(item))[:80]}")
    except UnicodeDecodeError:
        raise InterventionError(f"{path} is not UTF-8 text") from None
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
        raise InterventionError(f"{path} is not a valid intervention: {exc}") from None
    except InterventionError as exc:
        raise InterventionError(f"{path}: {exc}") from None
    if not found:
        raise InterventionError(f"{path} holds no intervention")
    return found


# ------------------------------------------------------------------------- SAE feature clamp
@dataclass(frozen=True)
class FeatureClamp:
    """Clamp chosen SAE latents' activations to ``value`` at the SAE's hook point.

    At every non-sink token the hook adds ``sum_f (value - a_f(x)) * W_dec[f]`` to the
    activation ``x``, where ``a_f(x)`` is latent ``f``'s activation: the reconstruction
    error stays, only the chosen latents change. ``a_f`` is a nonlinear function of the
    input (a ReLU, a threshold or a top-k), so no weight edit reproduces it.

    Args:
        sae: folder of the SAE (SAELens layout, :func:`circuitlab.sae.load_sae`).
        sae_hash: its content hash (checked when the hooks are built).
        features: the latents.
        value: what their activations are set to (0: switched off).
        decoder: the latents' unit decoder rows (a one-layer set), for the foldable
            alternative.
    """

    sae: str
    sae_hash: str
    features: tuple[int, ...]
    value: float
    decoder: DirectionRef

    foldable = False
    per_prompt = False

    fold_note = (
        "the latents' activations depend nonlinearly on each token's input; the exact "
        "foldable alternative ablates their decoder directions (SubspaceAblation)"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", _tuples(self.features))
        if not self.features:
            raise InterventionError("FeatureClamp needs at least one feature")

    def foldable_alternative(self) -> SubspaceAblation:
        return SubspaceAblation(self.decoder, layer=0)


Intervention = Intervention | FeatureClamp
_TYPES[FeatureClamp.__name__] = FeatureClamp
__all__ += ["FeatureClamp"]

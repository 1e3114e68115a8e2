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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.directions.base import DirectionSet
from circuitlab.errors import CircuitlabError
from circuitlab.models.facts import HeadId, ModelFacts

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
            loaded = DirectionSet.load(self.folder)
            if self.hash is not None and loaded.hash != self.hash:
                raise InterventionError(
                    f"{self.folder} holds directions {loaded.hash}, the intervention was made "
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
    def fold_note(self) -> str:
        if self.foldable:
            return (
                "at layer 0: added to every embedding row; at layer L: the down_proj bias of "
                "layer L-1 (enabled through the config's bias flag where the family has one)"
            )
        return (
            f"positions={self.positions!r} steers only some positions and a weight acts on "
            "every position; no exact weight edit exists"
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
        d = facts.d_head
        return {h: slice(h.head * d, (h.head + 1) * d) for h in self.heads}

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
    return cls(**{k: from_dict(v) for k, v in data.items() if k != "type"})


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
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise InterventionError(
                f"{path} is not a circuitlab intervention file (format {FORMAT_VERSION})"
            )
        if "interventions" in data:
            found = tuple(from_dict(item) for item in data["interventions"])
        else:
            found = (from_dict(data["intervention"]),)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InterventionError(f"{path} is not a valid intervention: {exc}") from None
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

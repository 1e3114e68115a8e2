"""The search space: every parameter suggested on every trial, in model-independent units.

Positions and distances are fractions of depth (``0`` = the first layer, ``1`` = the last),
so a profile learned on one model of a family transfers to another with more layers. No
parameter is conditional: TPE models the joint density of all of them, and a parameter
that does not apply to a trial (the PCA component of a diff-means trial, the strength of an
addition that is off) is suggested and ignored. Conditional gaps would split the history
into groups TPE models separately, which wastes the few trials a search has.

A trial's parameters become interventions (:func:`build_interventions`): one ablation
(``DirectionalAblation``, or ``SubspaceAblation`` of every cone direction for ``cones``, or
of the decoder directions of the SAE's top ``sae_features`` refusal features for ``sae``),
a ``HeadAblation`` of the trial's direction from chosen heads when the space names heads,
plus an ``ActivationAddition`` when the addition strength is above zero.

The head-level edit's ``head_weight`` exists only in spaces with heads, and is then
suggested on every trial like everything else; a space without heads suggests exactly the
parameters it always did, so older studies resume unchanged. ``sae_features`` likewise
exists only in spaces whose methods include ``sae``, and ``per_layer`` only in spaces with
``per_layer`` on.

**Per-layer directions.** Arditi et al. (2024) read one refusal direction at one layer and
remove it everywhere; the direction is not the same vector at every depth, though, and a
direction read at layer 22 is partly noise at layer 10 and at layer 28. With ``per_layer``
a trial may instead let each layer's writers remove their own layer's direction, weighted by
the same tents, from the study's ``per-layer`` set: diff-means orthogonal to the harmless
mean, without the attention sinks' massive direction, and aligned with the writers (block
``l``'s writers remove the direction read after them, at layer ``l + 1``;
:func:`circuitlab.directions.writer_aligned`). Each of the three mattered on the SmolLM2
refusal organism: per-layer edits without them raised the first-token refusal mass or cost
ten times the KL. Whatever the trial's method, a per-layer trial ablates that set; the
fractional ``direction`` still matters there: the head-level edit and the addition read it,
and a per-layer trial with a tent peaking where the global direction would be read is the
nearest neighbour of the global trial, which keeps the two halves of the history
informative for TPE. Calibration measures one direction at one layer, so a per-layer
trial ignores ``calibrate`` (a multiplier of 1).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from circuitlab.interventions import (
    ActivationAddition,
    DirectionalAblation,
    HeadAblation,
    Intervention,
    LayerKernel,
    SubspaceAblation,
)
from circuitlab.models.facts import HeadId

if TYPE_CHECKING:
    import optuna

    from circuitlab.search.assets import StudyAssets

__all__ = ["SearchSpace", "suggest", "build_interventions", "clamp_params", "KERNEL_PARAMS"]

log = logging.getLogger(__name__)

Range = tuple[float, float]
# Per writer (attn, mlp): the four numbers of Heretic's tent kernel, in depth fractions.
KERNEL_PARAMS = ("max_weight", "max_position", "min_weight", "min_distance")
# Fraction of the direction removed from the chosen heads' outputs (1 = all of it).
HEAD_WEIGHT: Range = (0.0, 1.0)


@dataclass(frozen=True)
class SearchSpace:
    """Ranges of every parameter (fractions of depth for positions and distances).

    Attributes:
        methods: direction methods to choose between (``diff-means``, ``pca``, ``cones``,
            ``probe``, ``ensemble``); the study keeps the list it was created with.
        pca_k: PCA components per layer; ``component`` ranges over them (pca only).
        direction: where the direction is read, as a fraction of depth (fractional layer
            index; ``cones`` rounds it to a layer).
        max_weight: a writer's weight at the top of its tent.
        max_position: where the tent peaks, as a fraction of depth.
        min_weight: the weight at the tent's edges, as a fraction of ``max_weight`` (a
            fraction keeps the range fixed instead of depending on another parameter).
        min_distance: half-width of the tent, as a fraction of depth; beyond it, weight 0.
        addition_max: largest activation-addition strength, in units of the mean-difference
            norm at the direction's layer, applied *against* the refusal direction. 0 (the
            default) keeps the addition off: it cannot be folded into weights.
        addition_snap: strengths below this are 0 (off), so TPE can switch it off.
        calibrate: offer calibrated weights (``calibrate_weight``) as a choice.
        heads: (layer, query head) pairs whose outputs also lose the trial's direction, by a
            searched ``head_weight`` in [0, 1] (e.g. a discovered circuit's top heads);
            empty (the default): no head-level edit and no ``head_weight`` parameter.
        remove_massive: take the attention sinks' massive-activation direction out of every
            extracted direction (:func:`circuitlab.directions.without_massive`).
        sae: the SAE folder (SAELens layout) the ``sae`` method ranks refusal features of.
        sae_max_features: the most features an ``sae`` trial ablates; ``sae_features``
            (how many of the top-ranked ones) is searched in ``[1, sae_max_features]``.
        per_layer: offer per-layer directions (each layer's writers remove the direction
            they write into) as a choice beside the one fractional-index direction. On by
            default; spaces recorded without the key (older studies) mean off.
    """

    methods: tuple[str, ...] = ("diff-means", "pca", "cones")
    pca_k: int = 3
    direction: Range = (0.3, 0.95)
    max_weight: Range = (0.0, 1.5)
    max_position: Range = (0.3, 1.0)
    min_weight: Range = (0.0, 1.0)
    min_distance: Range = (0.05, 0.7)
    addition_max: float = 0.0
    addition_snap: float = 0.05
    calibrate: bool = True
    heads: tuple[tuple[int, int], ...] = ()
    remove_massive: bool = False
    sae: str | None = None
    sae_max_features: int = 8
    per_layer: bool = True

    def __post_init__(self) -> None:
        # Heads arrive as lists from JSON and as HeadIds from circuits: store plain pairs.
        pairs = tuple(
            (h.layer, h.head) if isinstance(h, HeadId) else (int(h[0]), int(h[1]))
            for h in self.heads
        )
        object.__setattr__(self, "heads", pairs)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.heads:
            # Studies made before heads existed recorded no such key; a space without heads
            # must compare equal to theirs (resume checks compare these dicts).
            del data["heads"]
        if not self.remove_massive:
            del data["remove_massive"]  # likewise for studies older than the option
        if self.sae is None:
            del data["sae"], data["sae_max_features"]  # likewise
        if not self.per_layer:
            del data["per_layer"]  # likewise
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        # A recorded space without the key predates the option, which was then off.
        tuples.setdefault("per_layer", False)
        return cls(**tuples)

    def ranges(self) -> dict[str, Range]:
        """Every continuous parameter's name and range (what profiles are clamped to)."""
        out = {"direction": self.direction, "addition_strength": (0.0, self.addition_max)}
        for writer in ("attn", "mlp"):
            for name in KERNEL_PARAMS:
                out[f"{writer}_{name}"] = getattr(self, name)
        if self.heads:
            out["head_weight"] = HEAD_WEIGHT
        return out


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Suggest every parameter of ``space`` on ``trial`` (always all of them).

    Returns:
        The parameters by name, as plain values (what :func:`build_interventions` reads).
    """
    params: dict[str, Any] = {"method": trial.suggest_categorical("method", list(space.methods))}
    params["component"] = trial.suggest_int("component", 0, max(space.pca_k - 1, 0))
    for name, (low, high) in space.ranges().items():
        params[name] = trial.suggest_float(name, low, high)
    if "sae" in space.methods:
        params["sae_features"] = trial.suggest_int("sae_features", 1, space.sae_max_features)
    params["calibrate"] = trial.suggest_categorical(
        "calibrate", [False, True] if space.calibrate else [False]
    )
    if space.per_layer:
        params["per_layer"] = trial.suggest_categorical("per_layer", [False, True])
    return params


def clamp_params(params: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Fit profile parameters into the space: clamp floats, drop unknown names and methods.

    Optuna would warn about a fixed value outside a distribution and still use it; a profile
    written for another space must not steer the search outside its own.
    """
    ranges = space.ranges()
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in ranges:
            low, high = ranges[name]
            out[name] = min(max(float(value), low), high)
        elif name == "method":
            if value in space.methods:
                out[name] = value
        elif name == "component":
            out[name] = min(max(int(value), 0), max(space.pca_k - 1, 0))
        elif name == "calibrate":
            out[name] = bool(value) and space.calibrate
        elif name == "sae_features" and "sae" in space.methods:
            out[name] = min(max(int(value), 1), space.sae_max_features)
        elif name == "per_layer" and space.per_layer:
            out[name] = bool(value)
    return out


def _kernel(params: Mapping[str, Any], writer: str, depth: int) -> LayerKernel:
    peak = params[f"{writer}_max_weight"]
    return LayerKernel(
        max_weight=peak,
        max_weight_position=params[f"{writer}_max_position"] * depth,
        min_weight=params[f"{writer}_min_weight"] * peak,
        # depth is >= 1 for any real model and the range starts above 0.
        min_weight_distance=max(params[f"{writer}_min_distance"] * depth, 1e-3),
    )


def build_interventions(
    params: Mapping[str, Any], assets: StudyAssets, space: SearchSpace
) -> tuple[Intervention, ...]:
    """Turn one trial's parameters into interventions (plain data, applied as hooks).

    The embedding is never edited (``embed=0``): like Heretic, the tents decide which layers
    are edited, and a direction read at 30 %+ depth is mostly absent from token embeddings.

    Args:
        params: as returned by :func:`suggest`.
        assets: the study's directions and calibration.
        space: the study's space (for the addition snap).

    Returns:
        The ablation, then the head-level ablation when the space has heads, then an
        activation addition when its strength is not 0.
    """
    depth = assets.n_layers - 1
    method = params["method"]
    index = params["direction"] * depth
    layer = round(index)
    ref = assets.refs[method]
    component = int(params["component"]) if method == "pca" else 0
    # SAE features live at one layer and have no per-layer form: no calibration, and the
    # head-level edit and the addition read the difference-of-means direction instead.
    per_layer = bool(params.get("per_layer")) and method != "sae"
    calibrate = params.get("calibrate") and method != "sae" and not per_layer
    calibration = assets.calibration(method, layer, component) if calibrate else 1.0
    common: dict[str, Any] = {
        "attn": _kernel(params, "attn", depth),
        "mlp": _kernel(params, "mlp", depth),
        "embed": 0.0,
        "calibration": calibration,
    }
    if method == "cones" and not (per_layer and "per-layer" in assets.refs):
        at_layer = None if per_layer else layer
        ablation: Intervention = SubspaceAblation(ref, layer=at_layer, **common)
    elif method == "sae":
        n = int(params["sae_features"])
        ablation = SubspaceAblation(ref, layer=0, components=tuple(range(n)), **common)
        method, ref = "diff-means", assets.refs["diff-means"]
    elif per_layer and "per-layer" in assets.refs:
        ablation = DirectionalAblation(assets.refs["per-layer"], index=None, **common)
    else:
        # Studies set up before the per-layer set existed use the method's own layers.
        own = None if per_layer else index
        ablation = DirectionalAblation(ref, index=own, component=component, **common)
    edits: list[Intervention] = [ablation]
    if space.heads:
        # Cone directions are not aligned across layers: read them at one layer, as above.
        at = float(layer) if method == "cones" else index
        heads = tuple(HeadId(*pair) for pair in space.heads)
        weight = params["head_weight"]
        edits.append(
            HeadAblation(heads, "project", ref, index=at, component=component, weight=weight)
        )
    strength = params.get("addition_strength", 0.0)
    if strength >= space.addition_snap:
        scale = assets.addition_scale(method, layer, component)
        edits.append(
            ActivationAddition(ref, -strength * scale, (layer,), index=index, component=component)
        )
    return tuple(edits)

"""What a study computes once and every trial reuses: prompts, directions, KL baseline.

Directions are extracted once per *study* (by the first worker, under the study lock),
saved next to the study and referred to by folder and content hash, so every trial's
intervention JSON stays small and every worker edits along exactly the same vectors. The
KL baseline, refusal-token ids and calibrations are recomputed per *worker* process: they
are cheap, deterministic, and not worth a file format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from circuitlab import directions as d
from circuitlab.activations import (
    collect_activations,
    massive_directions,
    response_labels,
    select_position,
)
from circuitlab.decoding import prefill
from circuitlab.directions import DirectionSet, calibrate_weight
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import MarkerJudge
from circuitlab.evaluate.kl import KLBaseline
from circuitlab.evaluate.openings import opening_token_ids, refusal_log_mass
from circuitlab.interventions import DirectionRef
from circuitlab.prompt_data import SPLIT_SEED, side_prompts
from circuitlab.prompts import prompts_hash
from circuitlab.sae import refusal_feature_set

__all__ = [
    "SUPERVISED",
    "SearchPrompts",
    "StudyAssets",
    "extract_directions",
    "prepare_assets",
]

log = logging.getLogger(__name__)

SUPERVISED = frozenset({"probe", "ensemble"})
KNOWN_METHODS = frozenset({"diff-means", "pca", "cones", "sae", *SUPERVISED})
# KMeans with silhouette selection needs a few prompts per cone to mean anything.
MIN_CONE_PROMPTS = 10


@dataclass(frozen=True)
class SearchPrompts:
    """The splits a search uses; the test split is only read after the search.

    Attributes:
        harmful_train, harmless_train: directions are extracted from these.
        harmful_search: the refusal objective (the search tunes on it).
        harmless_search: the KL objective.
        harmful_test, harmless_test: the final evaluation, never seen by the search.
    """

    harmful_train: tuple[str, ...]
    harmless_train: tuple[str, ...]
    harmful_search: tuple[str, ...]
    harmless_search: tuple[str, ...]
    harmful_test: tuple[str, ...] = ()
    harmless_test: tuple[str, ...] = ()

    @classmethod
    def from_testbed(
        cls,
        n_train: int = 64,
        n_search: int = 30,
        n_kl: int = 30,
        n_test: int = 64,
        split_seed: int = 0,
    ) -> SearchPrompts:
        """AdvBench and our harmless set cut by the one split policy (the refusal organism's
        own train / search / test splits): directions from train, search on the search
        split, report on test."""
        if split_seed != SPLIT_SEED:
            raise ValueError(f"the split policy's seed is {SPLIT_SEED}; splits never move")
        harmful, harmless = side_prompts(None, True), side_prompts(None, False)

        def take(prompts, n: int) -> tuple[str, ...]:
            return tuple(prompts)[:n]

        return cls(
            take(harmful.train, n_train),
            take(harmless.train, n_train),
            take(harmful.search, n_search),
            take(harmless.search, n_kl),
            tuple(harmful.test(n_test)) if n_test else (),
            tuple(harmless.test(n_test)) if n_test else (),
        )

    def search_hashes(self) -> dict[str, str]:
        """Hashes of every split the search reads (a resumed study must see the same)."""
        names = ("harmful_train", "harmless_train", "harmful_search", "harmless_search")
        return {name: prompts_hash(getattr(self, name)) for name in names}


def _train_activations(model, prompts: SearchPrompts, cache_dir, batch_size, progress):
    return tuple(
        select_position(
            collect_activations(
                model, list(p), batch_size=batch_size, cache_dir=cache_dir, progress=progress
            )
        )
        for p in (prompts.harmful_train, prompts.harmless_train)
    )


def _labels(model, prompts: SearchPrompts, cache_dir, batch_size) -> tuple[list, list]:
    judge = MarkerJudge().judge
    options = {"batch_size": batch_size, "cache_dir": cache_dir}
    return (
        response_labels(model, list(prompts.harmful_train), judge, **options),
        response_labels(model, list(prompts.harmless_train), judge, **options),
    )


def usable_methods(methods: Sequence[str], n_harmful_train: int) -> tuple[str, ...]:
    """The methods that can run on this many prompts (cones need enough to cluster)."""
    unknown = sorted(set(methods) - KNOWN_METHODS)
    if unknown:
        raise ValueError(f"unknown direction method(s) {unknown}; known: {sorted(KNOWN_METHODS)}")
    kept = tuple(m for m in methods if m != "cones" or n_harmful_train >= MIN_CONE_PROMPTS)
    if len(kept) < len(methods):
        log.info(
            "cones left out: %d harmful train prompts (< %d)", n_harmful_train, MIN_CONE_PROMPTS
        )
    if not kept:
        raise ValueError("no direction method left to search")
    return kept


def extract_directions(
    model: HookedModel,
    prompts: SearchPrompts,
    methods: Sequence[str],
    *,
    pca_k: int = 3,
    seed: int = 0,
    remove_massive: bool = False,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
    progress: bool = False,
    sae: str | None = None,
    sae_max_features: int = 8,
    per_layer: bool = False,
) -> dict[str, DirectionSet]:
    """One DirectionSet per method from the train split (plus diff-means, always).

    Diff-means is always extracted: its mean-difference norms scale activation additions and
    its signs orient the directions of sign-free methods (PCA, cones).

    Args:
        methods: from ``diff-means``, ``pca``, ``cones``, ``probe``, ``ensemble``; the last two
            label prompts by the model's own judged greedy answers (generation, cached);
            ``sae`` ranks the latents of the SAE at ``sae`` (a folder) by harmful-minus-
            harmless activation and keeps the top ``sae_max_features`` decoder directions.
        remove_massive: take the massive-activation direction (found on 8 harmless train
            prompts) out of every set (:func:`circuitlab.directions.without_massive`).
        per_layer: also extract ``per-layer``, the set per-layer trials remove: diff-means
            orthogonal to the harmless mean, without the massive direction (whatever
            ``remove_massive`` says), each layer's writers given the direction they write
            into (:func:`circuitlab.directions.writer_aligned`).

    Returns:
        The sets by method name.
    """
    harmful, harmless = _train_activations(model, prompts, cache_dir, batch_size, progress)
    sets = {"diff-means": d.extract_diff_means(harmful, harmless)}
    labels = _labels(model, prompts, cache_dir, batch_size) if SUPERVISED & set(methods) else None
    for method in methods:
        if method in ("pca", "cones", "probe", "ensemble"):
            sets[method] = d.extract(method, harmful, harmless, labels, pca_k=pca_k, seed=seed)
        elif method == "sae":
            if sae is None:
                raise ValueError("the sae method needs an SAE folder (SearchSpace.sae)")
            sets[method] = refusal_feature_set(
                model, sae, prompts.harmful_train, prompts.harmless_train, sae_max_features,
                batch_size=batch_size, cache_dir=cache_dir,
            )  # fmt: skip
    found = None
    if remove_massive or per_layer:
        found = massive_directions(model, prompts.harmless_train, batch_size=batch_size)
    if remove_massive:
        sets = {method: d.without_massive(ds, found) for method, ds in sets.items()}
    if per_layer:
        own = d.extract_diff_means(harmful, harmless, orthogonalize_harmless=True)
        sets["per-layer"] = d.writer_aligned(d.without_massive(own, found))
    return sets


@dataclass
class StudyAssets:
    """Per-worker precomputation shared by every trial (nothing here changes per trial).

    Attributes:
        n_layers: the model's layers.
        refs: each method's saved directions, as interventions refer to them.
        sets: the same sets, loaded.
        baseline: the base model's log-probs on the harmless search prompts.
        refusal_tokens: first tokens of refusal openings (the cheap refusal score).
        base_refusal_mass: mean first-token probability of those tokens on the harmful
            search prompts, unedited.
        harmful_train: harmful train activations (for calibration), read lazily.
    """

    n_layers: int
    refs: dict[str, DirectionRef]
    sets: dict[str, DirectionSet]
    baseline: KLBaseline
    refusal_tokens: list[int]
    base_refusal_mass: float
    harmful_train: Float[Tensor, "n layer d_model"] | None = None
    _calibrations: dict[tuple[str, int, int], float] = field(default_factory=dict, repr=False)

    def oriented(self, method: str, layer: int, component: int) -> Float[Tensor, " d_model"]:
        """The unit direction at ``layer``, signed to point the way diff-means does."""
        vector = self.sets[method].direction(layer, component).double()
        reference = self.sets["diff-means"].direction(layer, 0).double()
        return vector if float(vector @ reference) >= 0 else -vector

    def calibration(self, method: str, layer: int, component: int) -> float:
        """The calibrated weight multiplier of a direction (computed once, then cached)."""
        key = (method, layer, component)
        if key not in self._calibrations:
            if self.harmful_train is None:
                raise ValueError("calibration needs the harmful train activations")
            vector = self.oriented(method, layer, component).float()
            found = calibrate_weight(self.harmful_train, vector, layer)
            self._calibrations[key] = found.multiplier
        return self._calibrations[key]

    def addition_scale(self, method: str, layer: int, component: int) -> float:
        """Mean-difference norm at ``layer``, signed so that ``+scale * direction`` points
        towards refusal (an addition against refusal uses a negative strength)."""
        norm = float(self.sets["diff-means"].scores[layer, 0])
        vector = self.sets[method].direction(layer, component).double()
        reference = self.sets["diff-means"].direction(layer, 0).double()
        return norm if float(vector @ reference) >= 0 else -norm


def prepare_assets(
    model: HookedModel,
    prompts: SearchPrompts,
    refs: dict[str, DirectionRef],
    *,
    kl_k: int = 4,
    batch_size: int = 16,
    cache_dir: str | Path | None = "cache",
    calibrate: bool = True,
) -> StudyAssets:
    """Load the study's directions and compute this worker's baselines (call unedited).

    Args:
        refs: the study's saved directions by method.
        kl_k: tokens of the base's greedy continuation for the k-token KL.
        calibrate: read the harmful train activations (from the cache) for calibration.

    Returns:
        The assets every trial of this worker uses.
    """
    if model.n_active_hooks():
        raise RuntimeError("prepare_assets needs the unedited model: hooks are attached")
    sets = {method: ref.load() for method, ref in refs.items()}
    # The trials score KL with KLBaseline.score, the same teacher-forced pass as this base
    # side, so an unedited model scores exactly 0.
    baseline = KLBaseline.compute(model, list(prompts.harmless_search), kl_k, batch_size)
    tokens = sorted(opening_token_ids(model.tokenizer))
    first = prefill(model, list(prompts.harmful_search), batch_size).first_logprobs
    mass = refusal_log_mass(first, tokens).exp().mean().item()
    harmful = None
    if calibrate:
        harmful = _train_activations(model, prompts, cache_dir, batch_size, False)[0]
    log.info("base first-token refusal mass on the search prompts: %.3f", mass)
    return StudyAssets(model.n_layers, refs, sets, baseline, tokens, mass, harmful)

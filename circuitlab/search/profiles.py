"""Warm starts: per-family parameter sets enqueued as a study's first trials.

A profile is JSON (``circuitlab/data/profiles/<family>.json``) listing trial parameters in
the search space's depth-fraction units, so it applies to any model of the family whatever
its depth. The family comes from ``config.model_type`` (``llama``, ``qwen2``, ``gemma3``...),
never from the model's name, which users rename freely; it can be overridden.

The packaged profiles are informed guesses, not measurements: refusal directions read at
roughly 40-65 % of depth (Arditi et al. 2024 across Llama, Qwen, Gemma chat models), tent
kernels peaking in the later half (Heretic's default ranges), and our own organism's layer
22 of 30. ``circuitlab profiles learn STUDY`` replaces a guess with the best trials of a
finished study (:func:`learn_profile`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from circuitlab.search.front import FrontPoint, choose, knee, rank_key
from circuitlab.search.space import SearchSpace, clamp_params
from circuitlab.search.storage import SearchError

__all__ = [
    "FAMILIES",
    "Profile",
    "detect_family",
    "enqueue_profile",
    "learn_profile",
    "load_profile",
    "resolve_profile",
    "save_profile",
]

log = logging.getLogger(__name__)

# config.model_type values of each family (architecture, not checkpoint: a fine-tune of
# Llama is still model_type "llama").
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": ("llama",),
    "qwen": ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"),
    "mistral": ("mistral", "mixtral", "ministral"),
    "gemma": ("gemma", "gemma2", "gemma3", "gemma3_text"),
}
PARAM_KEYS = ("method", "component", "calibrate", "per_layer")


@dataclass(frozen=True)
class Profile:
    """Warm-start trials for one model family.

    Attributes:
        name: what the study records (the family, or the file it came from).
        family: the family.
        model_types: the ``config.model_type`` values it was made for.
        source: where the trials come from (a guess, or the study they were learned from).
        trials: parameter dicts, best first.
        scores: for learned profiles, each trial's (refusal rate, KL) on its study.
    """

    name: str
    family: str
    model_types: tuple[str, ...]
    source: str
    trials: tuple[dict[str, Any], ...]
    scores: tuple[tuple[float, float], ...] = field(default=())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str) -> Profile:
        return cls(
            name=name,
            family=data["family"],
            model_types=tuple(data.get("model_types", ())),
            source=data.get("source", ""),
            trials=tuple(dict(t) for t in data["trials"]),
            scores=tuple(tuple(s) for s in data.get("scores", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("name")
        return data


def detect_family(model_type: str) -> str | None:
    """The family of a ``config.model_type``, or None for families without a profile."""
    for family, types in FAMILIES.items():
        if model_type in types:
            return family
    return None


def load_profile(source: str | Path) -> Profile:
    """A packaged family profile by name, or a profile JSON file by path."""
    if isinstance(source, str) and source in FAMILIES:
        text = files("circuitlab").joinpath(f"data/profiles/{source}.json").read_text()
        return Profile.from_dict(json.loads(text), source)
    path = Path(source)
    if not path.is_file():
        raise SearchError(f"no profile {source!r}: not a family ({sorted(FAMILIES)}) or a file")
    return Profile.from_dict(json.loads(path.read_text()), str(path))


def resolve_profile(
    profile: str | Path | None,
    model_type: str,
    family: str | None = None,
    learned_dir: str | Path | None = None,
) -> Profile | None:
    """The profile to warm-start with.

    Args:
        profile: ``auto`` (detect the family), ``none``/None, a family name or a JSON file.
        model_type: the model's ``config.model_type``.
        family: overrides the detected family for ``auto``.
        learned_dir: where ``profiles learn`` writes (``<family>.json``); for ``auto`` a
            learned profile there wins over the packaged guess.

    Returns:
        The profile, or None.
    """
    if profile is None or profile == "none":
        return None
    if profile != "auto":
        return load_profile(profile)
    family = family or detect_family(model_type)
    if family is None:
        log.info("no warm-start profile for model_type %r", model_type)
        return None
    learned = Path(learned_dir) / f"{family}.json" if learned_dir is not None else None
    if learned is not None and learned.is_file():
        return load_profile(learned)
    return load_profile(family)


def enqueue_profile(study: optuna.Study, profile: Profile, space: SearchSpace) -> int:
    """Enqueue the profile's trials (clamped into ``space``); returns how many."""
    for i, params in enumerate(profile.trials):
        fitted = clamp_params(params, space)
        if space.per_layer:
            # A profile written before per-layer directions existed meant the global one.
            fitted.setdefault("per_layer", False)
        study.enqueue_trial(
            fitted,
            user_attrs={"warm_start": f"{profile.name}#{i}"},
            skip_if_exists=True,
        )
    log.info("enqueued %d warm-start trial(s) from %s", len(profile.trials), profile.name)
    return len(profile.trials)


def _profile_params(params: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    keep = set(space.ranges()) | set(PARAM_KEYS)
    return {k: v for k, v in params.items() if k in keep}


def learn_profile(
    study: optuna.Study, top: int = 4, kl_target: float = 0.2, family: str | None = None
) -> Profile:
    """A profile from a finished study: the points of its front a search should revisit.

    The chosen point (the default rule of :func:`circuitlab.search.choose`) comes first,
    then the front's knee, then the rest of the front from the least KL up, then other
    trials by the old rule (fewest refusals under the KL target). Taking the ``top`` trials
    of one ranking gave four near-copies of one point, which spends the warm start's trials
    on one corner of the space and leaves TPE little to compare against.

    Args:
        study: a study run by :func:`circuitlab.search.run_search`.
        top: how many trials to keep.
        kl_target: the KL budget of the choice rule.
        family: override the family recorded in the study.

    Returns:
        The profile (save it with :func:`save_profile`).
    """
    setup = study.user_attrs.get("setup", {})
    model_type = setup.get("model_type", "")
    family = family or setup.get("family") or detect_family(model_type)
    if family is None:
        raise SearchError(f"cannot tell the family of model_type {model_type!r}; pass family")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise SearchError(f"study {study.study_name!r} has no complete trial to learn from")
    by_number = {t.number: t for t in trials}
    front = [FrontPoint(t.number, t.values[0], t.values[1], {}, ()) for t in study.best_trials]
    order = [choose(front, kl_target).number]
    bend = knee(front)
    order += [bend.number] if bend is not None else []
    order += [p.number for p in sorted(front, key=lambda p: (p.kl, p.refusal_rate))]
    ranked = sorted(trials, key=lambda t: rank_key(t.values[0], t.values[1], kl_target))
    order += [t.number for t in ranked]
    best = [by_number[n] for n in dict.fromkeys(order)][:top]
    space = SearchSpace.from_dict(setup["space"]) if "space" in setup else SearchSpace()
    return Profile(
        name=family,
        family=family,
        model_types=(model_type,) if model_type else (),
        source=f"learned from study {study.study_name!r} ({len(trials)} complete trials, "
        f"model {setup.get('model_name', '?')})",
        trials=tuple(_profile_params(t.params, space) for t in best),
        scores=tuple((t.values[0], t.values[1]) for t in best),
    )


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write a profile as indented JSON (people read and diff these)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path

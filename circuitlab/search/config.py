"""A search or an abliteration as one frozen value, instead of a score of keywords.

The command line builds a :class:`SearchConfig` (and, for ``abliterate``, an
:class:`AbliterateConfig` around it) once from its settings; :func:`search_with` and
:func:`abliterate_with` hand it to :func:`~circuitlab.search.run_search` and
:func:`~circuitlab.search.abliterate`. The value is plain data: ``as_dict`` is what run
reports record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from circuitlab.search.abliterate import DEFAULT_BATCH_CAP, Abliteration, abliterate
from circuitlab.search.front import DEFAULT_KL_TARGET, Rule
from circuitlab.search.objective import ObjectiveConfig
from circuitlab.search.space import SearchSpace
from circuitlab.search.study import run_search

__all__ = ["AbliterateConfig", "SearchConfig", "abliterate_with", "search_with"]


@dataclass(frozen=True)
class SearchConfig:
    """Everything :func:`~circuitlab.search.run_search` is parameterised by, but the model,
    the prompts, the study name and the judge (see its docstring for each field)."""

    n_trials: int = 50
    storage: str | None = None
    space: SearchSpace = field(default_factory=SearchSpace)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    seed: int = 0
    profile: str | Path | None = "auto"
    family: str | None = None
    n_startup_trials: int = 10
    fail_unknown: bool = False
    heartbeat: int = 10
    cache_dir: str | Path = "cache"
    progress: bool = False
    preflight: bool = False
    response_prefix: str | None = "auto"

    def keywords(self) -> dict[str, Any]:
        """The fields as run_search's keywords (the trial budget is positional there)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "n_trials"}

    def as_dict(self) -> dict[str, Any]:
        out = {**self.keywords(), "n_trials": self.n_trials}
        out["space"], out["objective"] = self.space.as_dict(), self.objective.as_dict()
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


@dataclass(frozen=True)
class AbliterateConfig:
    """A search, then the choice, the test-split scorecard and the export."""

    search: SearchConfig = field(default_factory=SearchConfig)
    out: str | Path | None = None
    force: bool = False
    capability_n: int = 0
    kl_target: float = DEFAULT_KL_TARGET
    export_options: Mapping[str, Any] | None = None
    batch_cap: int = DEFAULT_BATCH_CAP

    def as_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "search"}
        own["out"] = None if self.out is None else str(self.out)
        own["export_options"] = dict(self.export_options or {})
        return {**own, "search": self.search.as_dict()}


def search_with(
    model,
    prompts,
    study_name: str,
    config: SearchConfig,
    *,
    judge=None,
    on_trial: Callable | None = None,
):
    """:func:`~circuitlab.search.run_search` with its parameters from ``config``."""
    return run_search(
        model, prompts, study_name, config.n_trials, judge=judge, on_trial=on_trial,
        **config.keywords(),
    )  # fmt: skip


def abliterate_with(
    model,
    prompts,
    study_name: str,
    config: AbliterateConfig,
    *,
    judge=None,
    test_judge=None,
    rule: Rule | None = None,
) -> Abliteration:
    """:func:`~circuitlab.search.abliterate` with its parameters from ``config``."""
    search = config.search.keywords()
    default = SearchConfig()
    for name in ("heartbeat", "n_startup_trials"):  # abliterate keeps run_search's defaults
        if search.pop(name) != getattr(default, name):
            raise ValueError(f"abliterate does not take {name}; leave it at its default")
    return abliterate(
        model, prompts, study_name, config.search.n_trials, out=config.out, force=config.force,
        judge=judge, test_judge=test_judge, capability_n=config.capability_n,
        kl_target=config.kl_target, rule=rule,
        export_options=dict(config.export_options) if config.export_options else None,
        batch_cap=config.batch_cap, **search,
    )  # fmt: skip

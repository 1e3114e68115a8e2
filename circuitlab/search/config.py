"""A search or an abliteration as one frozen value, instead of a score of keywords.

The command line builds a :class:`SearchConfig` (and, for ``abliterate``, an
:class:`AbliterateConfig` around it) once from its settings and hands it to
:func:`~circuitlab.search.run_search` or :func:`~circuitlab.search.abliterate`. The value is
plain data: ``as_dict`` is what run reports record.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from circuitlab.export.options import ExportOptions
from circuitlab.search.front import DEFAULT_KL_TARGET, DEFAULT_MARGIN
from circuitlab.search.objective import ObjectiveConfig
from circuitlab.search.space import SearchSpace

__all__ = ["DEFAULT_BATCH_CAP", "AbliterateConfig", "SearchConfig"]

DEFAULT_BATCH_CAP = 64


@dataclass(frozen=True)
class SearchConfig:
    """Everything :func:`~circuitlab.search.run_search` is parameterised by, but the model,
    the prompts, the study name and the judge.

    Attributes:
        n_trials: the budget, over all workers and runs.
        storage: see :func:`circuitlab.search.storage.open_store`.
        space, objective: for a new study (an existing study keeps its own).
        seed: sampler seed (per trial: ``seed + trial number``) and extraction seed.
        profile: warm-start profile: ``auto`` (by ``config.model_type``), a family name, a
            JSON file, or None.
        family: override the detected family for ``auto``.
        n_startup_trials: random trials before TPE models the history (warm starts count).
        fail_unknown: fail RUNNING trials of workers on other hosts too (journal storages;
            RDB storages find dead workers by their heartbeat).
        heartbeat: seconds between heartbeats of running trials (RDB storages); a trial
            without one for three intervals is failed and re-run.
        cache_dir: cache root (default storage, activations, learned profiles).
        progress: draw progress bars.
        preflight: first measure the base model on the search prompts and stop
            (:class:`~circuitlab.evaluate.preflight.PreflightError`) when there is nothing to
            search for; ``response_prefix`` (``auto``: a closed reasoning block when the
            model opens one) is settled there, before any activation is read.
    """

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

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["space"], out["objective"] = self.space.as_dict(), self.objective.as_dict()
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


@dataclass(frozen=True)
class AbliterateConfig:
    """A search, then the choice, the test-split scorecard and the export.

    Attributes:
        search: the search (:class:`SearchConfig`).
        out: export folder; None: do not export.
        export: how the export is checked and written (``force`` replaces ``out``); its
            ``seed`` defaults to the search's and its bar follows ``search.progress``.
        capability_n: MMLU questions in the test scorecards (0: no capability check).
        kl_target, margin, refusal_target: the choice (see :func:`circuitlab.search.choose`).
        score_knee: also score the front's knee on the test split when it is not the
            chosen point (one more scorecard).
        batch_cap: on an accelerator the batch size is measured (the largest power of two
            up to this that fits); on CPU the objective's batch size stands.
    """

    search: SearchConfig = field(default_factory=SearchConfig)
    out: str | Path | None = None
    export: ExportOptions = field(default_factory=ExportOptions)
    capability_n: int = 0
    kl_target: float = DEFAULT_KL_TARGET
    margin: float = DEFAULT_MARGIN
    refusal_target: float | None = None
    score_knee: bool = True
    batch_cap: int = DEFAULT_BATCH_CAP

    def as_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "search"}
        own["out"] = None if self.out is None else str(self.out)
        own["export"] = self.export.as_dict()
        return {**own, "search": self.search.as_dict()}

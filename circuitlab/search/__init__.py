"""Optuna search over refusal edits: directions × per-writer tent kernels × calibration.

Each trial: suggest every parameter (:mod:`~circuitlab.search.space`) → interventions (plain
data, stored in the trial) → hooks on the one loaded model → first-token KL and refusal mass
→ prune or generate with early stopping → (refusal rate, KL), both minimised by seeded
multivariate TPE. Studies live in Optuna storage (a journal file by default), resume after
any crash, and accept several worker processes (:mod:`~circuitlab.search.storage`).

Example:
    >>> prompts = SearchPrompts.from_testbed(n_train=64, n_search=30, n_kl=30)
    >>> study = run_search(model, prompts, "smollm-demo", n_trials=50)
    >>> point = choose(pareto_front(study), kl_target=0.2)
"""

from circuitlab.search.abliterate import Abliteration, abliterate, export_choice
from circuitlab.search.assets import SearchPrompts, StudyAssets, extract_directions
from circuitlab.search.front import (
    FrontPoint,
    SearchResult,
    choose,
    evaluate_choice,
    pareto_front,
    trial_interventions,
)
from circuitlab.search.objective import ObjectiveConfig, TrialScore, score_trial
from circuitlab.search.profiles import (
    Profile,
    detect_family,
    learn_profile,
    load_profile,
    save_profile,
)
from circuitlab.search.space import SearchSpace, build_interventions, suggest
from circuitlab.search.storage import SearchError, open_store
from circuitlab.search.study import run_search

__all__ = [
    "Abliteration",
    "FrontPoint",
    "ObjectiveConfig",
    "Profile",
    "SearchError",
    "SearchPrompts",
    "SearchResult",
    "SearchSpace",
    "StudyAssets",
    "TrialScore",
    "abliterate",
    "build_interventions",
    "choose",
    "detect_family",
    "evaluate_choice",
    "export_choice",
    "extract_directions",
    "learn_profile",
    "load_profile",
    "open_store",
    "pareto_front",
    "run_search",
    "save_profile",
    "score_trial",
    "suggest",
    "trial_interventions",
]

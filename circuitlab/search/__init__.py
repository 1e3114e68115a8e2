"""Optuna search over refusal edits: directions × per-writer tent kernels × calibration.

Each trial: suggest every parameter (:mod:`~circuitlab.search.space`) → interventions (plain
data, stored in the trial) → hooks on the one loaded model → first-token KL and refusal mass
→ prune or generate with early stopping → (refusal rate, KL), both minimised by seeded
multivariate TPE. Studies live in Optuna storage (a journal file by default), resume after
any crash, and accept several worker processes (:mod:`~circuitlab.search.storage`).

Example:
    >>> prompts = SearchPrompts.from_testbed(n_train=64, n_search=30, n_kl=30)
    >>> study = run_search(model, prompts, "smollm-demo", SearchConfig(n_trials=50))
    >>> point = choose(pareto_front(study), kl_target=0.2)
"""

import lazy_loader

# Submodules load on first use of a name, so importing one light module (plain data)
# does not pull in torch-heavy siblings.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "abliterate": ["Abliteration", "abliterate", "export_choice"],
        "assets": ["SearchPrompts", "StudyAssets", "extract_directions"],
        "config": ["AbliterateConfig", "SearchConfig"],
        "front": [
            "FrontPoint",
            "SearchResult",
            "choose",
            "evaluate_choice",
            "pareto_front",
            "trial_interventions",
        ],
        "objective": ["ObjectiveConfig", "TrialScore", "score_trial"],
        "profiles": ["Profile", "detect_family", "learn_profile", "load_profile", "save_profile"],
        "space": ["SearchSpace", "build_interventions", "suggest"],
        "storage": ["SearchError", "open_store"],
        "setup": ["StudySetup"],
        "study": ["run_search"],
    },
)

"""Run (or resume, or join) a study: setup once, then ask → suggest → hooks → score → tell.

The first worker extracts the directions, and only then creates the study, stores the
directions inside it, enqueues the warm-start trials and records everything the study
depends on (a :class:`StudySetup`) in ``study.user_attrs["setup"]`` (last: its presence
marks a complete set-up). A set-up that fails leaves no study and no new journal behind.
Later workers (and resumed runs, on any host) check that they have the same model and
prompts, copy the stored directions into their own cache and join in; a resume that fails
its checks writes nothing. The study's own search space and objective settings win over the
caller's (a warning says so): the trials of one study must be comparable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from circuitlab.activations import model_fingerprint
from circuitlab.engine import HookedModel
from circuitlab.evaluate.judges import Judge, MarkerJudge
from circuitlab.evaluate.preflight import preflight as check_base_model
from circuitlab.interventions import DirectionRef, to_dict
from circuitlab.progress import progress_bar
from circuitlab.search.assets import (
    SearchPrompts,
    StudyAssets,
    extract_directions,
    prepare_assets,
    usable_methods,
)
from circuitlab.search.config import SearchConfig
from circuitlab.search.objective import (
    ObjectiveConfig,
    TrialScore,
    check_early_reading,
    score_trial,
)
from circuitlab.search.profiles import detect_family, enqueue_profile, resolve_profile
from circuitlab.search.setup import SETUP_VERSION, StudySetup, check_setup
from circuitlab.search.space import SearchSpace, build_interventions, suggest
from circuitlab.search.storage import (
    COUNTED,
    SearchError,
    StudyStore,
    counted,
    fetch_directions,
    open_store,
    put_directions,
    recover_stale,
    retry_later,
    tpe_sampler,
    trial_seed,
    worker_id,
)

__all__ = ["open_study", "run_search", "study_refs"]

log = logging.getLogger(__name__)

# Consecutive failing trials after which the worker stops (FAIL is not counted in the
# budget, so a trial that always raises would otherwise loop forever).
MAX_CONSECUTIVE_FAILURES = 3
# How long a worker waits for another one's set-up of the same new study (RDB storages).
SETUP_WAIT = 600


def _wait_for_setup(store: StudyStore) -> tuple[optuna.Study, StudySetup]:
    """The study and its setup, waiting while another worker is still setting it up."""
    deadline = time.monotonic() + SETUP_WAIT
    while True:
        study = store.load()
        setup = study.user_attrs.get("setup")
        if setup is not None:
            return study, StudySetup.from_dict(setup)
        if time.monotonic() > deadline:
            raise SearchError(
                f"study {store.name!r} was created but never set up (its first worker died?); "
                "delete it or use another name"
            )
        time.sleep(1.0)


def open_study(
    store: StudyStore,
    model: HookedModel,
    prompts: SearchPrompts,
    config: SearchConfig,
    judge: str = "markers",
) -> tuple[optuna.Study, StudySetup]:
    """The study and its setup: checked if it exists, else created (call under the store's
    lock). Creation comes after the slow extraction, and a failure after it deletes the
    study again: a failed set-up or resume writes nothing.

    Args:
        config: the space, objective, seed, profile, family, cache and progress of a new
            study (an existing one keeps its own space and objective).

    Returns:
        The study and its :class:`StudySetup` (stored as ``study.user_attrs["setup"]``).
    """
    space, objective, seed = config.space, config.objective, config.seed
    cache_dir, progress = config.cache_dir, config.progress
    fingerprint, hashes = model_fingerprint(model), prompts.search_hashes()
    try:
        methods = usable_methods(space.methods, len(prompts.harmful_train))
    except ValueError as exc:
        raise SearchError(str(exc)) from None
    space = replace(space, methods=methods)
    if store.exists():
        study, setup = _wait_for_setup(store)
        check_setup(setup, fingerprint, hashes, space, objective, judge)
        return study, setup
    sets = extract_directions(
        model, prompts, space.methods, pca_k=space.pca_k, seed=seed,
        remove_massive=space.remove_massive, sae=space.sae,
        sae_max_features=space.sae_max_features, per_layer=space.per_layer,
        batch_size=objective.batch_size,
        cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    model_type = model.hf_model.config.model_type
    learned = None if cache_dir is None else Path(cache_dir) / "profiles"
    chosen = resolve_profile(config.profile, model_type, config.family, learned)
    try:
        study = store.create()
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it meanwhile
        study, setup = _wait_for_setup(store)
        check_setup(setup, fingerprint, hashes, space, objective, judge)
        return study, setup
    try:
        refs = {method: {"hash": put_directions(store, study, ds)} for method, ds in sets.items()}
        setup = StudySetup(
            version=SETUP_VERSION,
            model=fingerprint,
            model_name=str(model.resolved.location),
            model_type=model_type,
            n_layers=model.n_layers,
            prompts=hashes,
            space=space,
            objective=objective,
            directions=refs,
            seed=seed,
            profile=None if chosen is None else chosen.name,
            family=config.family or detect_family(model_type),
            judge=judge,
        )
        if chosen is not None:
            enqueue_profile(study, chosen, space)
        study.set_user_attr("setup", setup.as_dict())
    except BaseException:
        store.discard()
        raise
    return study, setup


def study_refs(
    store: StudyStore, setup: StudySetup, cache_dir: str | Path
) -> dict[str, DirectionRef]:
    """The study's direction sets by method, as this host's copies (written from the
    storage into ``cache_dir`` once), pinned to the hashes the study recorded."""
    refs = {}
    for method, ref in setup.directions.items():
        if "folder" in ref:  # studies set up before directions travelled in the storage
            refs[method] = DirectionRef(folder=ref["folder"], hash=ref["hash"])
            continue
        folder = fetch_directions(store, ref["hash"], cache_dir)
        refs[method] = DirectionRef(folder=str(folder.resolve()), hash=ref["hash"])
    return refs


def _ask(store: StudyStore, budget: int, seed: int, n_startup: int):
    """The next trial of this worker, or None once the budget is used up."""
    with store.lock():
        if store.heartbeat:  # a dead worker's trial (any host) is failed and re-enqueued
            recover_stale(store.load(), locked=False)
        trials = store.load().get_trials(deepcopy=False)
        if sum(t.state in COUNTED for t in trials) >= budget:
            return None
        # Seeded per trial number: one worker replays exactly; parallel workers, which
        # ask at different numbers, do not draw the same random start-up points.
        study = store.load(tpe_sampler(trial_seed(seed, len(trials)), n_startup))
        trial = study.ask()
        if store.heartbeat:  # beat before anything else: a trial without a beat never goes stale
            store.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr("worker", worker_id())
    if store.lock_path is None:
        ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(t.state in COUNTED for t in ahead) >= budget:
            trial.set_user_attr("over_budget", True)
            study.tell(trial, state=TrialState.FAIL)
            return None
    return study, trial


@dataclass(frozen=True)
class _Worker:
    """Everything one worker process needs to run trials of a study."""

    store: StudyStore
    model: HookedModel
    assets: StudyAssets
    space: SearchSpace
    objective: ObjectiveConfig
    harmful: tuple[str, ...]
    judge: Judge
    seed: int
    n_startup: int

    def run(self, study: optuna.Study, trial: optuna.Trial) -> TrialScore:
        with _beating(self.store, trial):
            return self._run(study, trial)

    def _run(self, study: optuna.Study, trial: optuna.Trial) -> TrialScore:
        params = suggest(trial, self.space)
        interventions = build_interventions(params, self.assets, self.space)
        # Plain data: what `circuitlab export` and `evaluate --intervention` can read back.
        trial.set_user_attr("interventions", [to_dict(iv) for iv in interventions])
        trial.set_user_attr("judge", self.judge.name)
        score = score_trial(
            self.model, interventions, self.assets, self.harmful, self.judge, self.objective
        )
        trial.set_user_attr("score", score.as_dict())
        if score.pruned is not None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, score.values())
        log.info("trial %d: %s", trial.number, score)
        return score


@contextmanager
def _beating(store: StudyStore, trial: optuna.Trial) -> Iterator[None]:
    """Beat the trial's heartbeat while it runs (RDB storages), as ``study.optimize`` does.

    Optuna keeps its heartbeat thread private; it is used here because the search asks and
    tells trials itself."""
    if not store.heartbeat:
        yield
        return
    from optuna.storages._heartbeat import get_heartbeat_thread

    with get_heartbeat_thread(trial._trial_id, store.storage):
        yield


def run_search(
    model: HookedModel,
    prompts: SearchPrompts,
    study_name: str,
    config: SearchConfig,
    *,
    judge: Judge | None = None,
    on_trial: Callable[[int, TrialScore], None] | None = None,
) -> optuna.Study:
    """Run trials of a study until ``config.n_trials`` are COMPLETE, PRUNED or RUNNING.

    Start it in several processes on one storage to search in parallel; start it again
    after a crash (or ``kill -9``) to resume. Nothing is copied or reloaded between trials:
    each trial's edit is hooks on the one loaded model.

    Args:
        model: the base model.
        prompts: train / search splits (the test split is not read).
        study_name: the study's name in the storage.
        config: the budget, storage, space, objective, seed and the rest
            (:class:`~circuitlab.search.config.SearchConfig`).
        judge: refusal judge (default ``MarkerJudge``).
        on_trial: called after each of this worker's trials with its number and score.

    Returns:
        The study, reloaded after the last trial.
    """
    n_trials, cache_dir, progress = config.n_trials, config.cache_dir, config.progress
    if n_trials < 1:
        raise SearchError(f"the trial budget must be at least 1, got {n_trials}")
    judge = judge or MarkerJudge()
    if config.preflight:
        base = check_base_model(
            model, prompts.harmful_search, judge, max_new_tokens=config.objective.max_new_tokens,
            response_prefix=config.response_prefix, batch_size=config.objective.batch_size,
            progress=progress,
        )  # fmt: skip
        objective = check_early_reading(config.objective, judge, base.prompts, base.responses)
        config = replace(config, objective=objective)
    elif config.response_prefix not in (None, "auto"):
        model.response_prefix = config.response_prefix  # a fixed prefill applies without one
    store = open_store(study_name, config.storage, cache_dir, heartbeat=config.heartbeat)
    try:
        with store.lock():
            study, setup = open_study(store, model, prompts, config, judge=judge.name)
            recover_stale(
                study, locked=store.lock_path is not None, fail_unknown=config.fail_unknown
            )
    except BaseException:
        store.remove_created()
        raise
    if counted(store.load()) >= n_trials and not _others_running(store):
        return store.load()  # nothing left to run: skip this worker's baselines
    space, objective = setup.space, setup.objective
    assets = prepare_assets(
        model, prompts, study_refs(store, setup, cache_dir), batch_size=objective.batch_size,
        cache_dir=cache_dir, calibrate=space.calibrate,
    )  # fmt: skip
    worker = _Worker(
        store, model, assets, space, objective, tuple(prompts.harmful_search),
        judge, config.seed, config.n_startup_trials,
    )  # fmt: skip
    _loop(worker, n_trials, progress, on_trial)
    return store.load()


def _others_running(store: StudyStore) -> bool:
    """Whether trials of other workers still run on a storage whose heartbeat will tell if
    they die: then a worker with nothing left to ask waits, to re-run them if they do."""
    if not store.heartbeat:
        return False
    return bool(store.load().get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _next(worker: _Worker, budget: int):
    """The next trial to run, waiting out other workers' running trials on heartbeat
    storages (one of them may die and need re-running); None when all is done."""
    while (asked := _ask(worker.store, budget, worker.seed, worker.n_startup)) is None:
        if not _others_running(worker.store):
            return None
        time.sleep(worker.store.storage.get_heartbeat_interval())
    return asked


def _loop(worker: _Worker, budget: int, progress: bool, on_trial) -> None:
    """Ask, run and tell until the budget is used up (by this and any other worker)."""
    failures = 0
    with progress_bar(budget, f"trials of {worker.store.name}", progress) as advance:
        shown = min(counted(worker.store.load()), budget)
        advance(shown)
        while (asked := _next(worker, budget)) is not None:
            study, trial = asked
            try:
                score = worker.run(study, trial)
                failures = 0
            except Exception as exc:
                log.exception("trial %d failed", trial.number)
                trial.set_user_attr("error", repr(exc))
                study.tell(trial, state=TrialState.FAIL)
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise SearchError(f"{failures} trials in a row failed; last: {exc!r}") from exc
                continue
            except BaseException:
                # Interrupted (Ctrl-C): close the trial and run its point again later, as
                # for a worker killed by a signal.
                study.tell(trial, state=TrialState.FAIL)
                retry_later(study, worker.store.storage.get_trial(trial._trial_id))
                raise
            if on_trial is not None:
                on_trial(trial.number, score)
            now = min(counted(study), budget)
            advance(max(now - shown, 0))
            shown = max(now, shown)

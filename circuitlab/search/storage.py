"""Where a study lives, who may ask for the next trial, and what a dead worker left behind.

The default storage is an Optuna journal file, ``cache/studies/<name>.journal`` (JSON lines;
no pickle, no database). Any Optuna storage URL works as well (``sqlite:///x.db``, ...);
a plain path is taken as a journal file. Saved directions live beside the study, in
``<journal>.assets/`` (or ``cache/studies/<name>.assets/`` for URL storages).

Several processes can work on one study. For a journal file, a ``flock`` on
``<journal>.circuitlab-lock`` makes "count the trials, then ask for one" atomic, so the
budget is met exactly. The kernel drops a ``flock`` when its holder dies, even by SIGKILL.
URL storages have no such lock: there a worker asks first, then checks its trial's rank,
and a trial over the budget is failed with ``user_attrs["over_budget"]``.

Stale trials. Optuna's journal storage has no heartbeat, so each trial records its worker
(host, pid, process start time). On start, a worker fails every RUNNING trial whose worker
process is gone (same host: the pid is dead or belongs to a newer process), and re-enqueues
that trial's parameters once (``user_attrs["retry_of"]``) so the point is still evaluated.
A RUNNING trial of another host cannot be checked; it is left alone unless
``fail_unknown`` is set (``--fail-running``), since its worker may still be alive. The
retry joins the back of Optuna's queue of enqueued trials: behind any warm starts not yet
run, which the budget may not reach.

A process killed in the middle of a journal append could leave a partial last line, which
Optuna rejects once another line follows it. The append is one small ``write`` and
``fsync``; we have not seen it, and do not repair it.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from circuitlab.errors import CircuitlabError

try:  # POSIX only; elsewhere the URL-storage rank check stands in.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "COUNTED",
    "SearchError",
    "StudyStore",
    "open_store",
    "recover_stale",
    "trial_seed",
    "worker_id",
    "worker_alive",
]

log = logging.getLogger(__name__)

# States that use up the budget: FAIL does not (its point is retried or resampled).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
DIRECTIONS = ("minimize", "minimize")


class SearchError(CircuitlabError):
    """A study that cannot be run or resumed as asked."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell reused pids."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its closing bracket are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def worker_id() -> dict[str, Any]:
    """This process, as recorded in each trial it runs."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def worker_alive(worker: dict[str, Any]) -> bool | None:
    """True or False for a worker on this host, None when it runs elsewhere (unknowable)."""
    if worker.get("host") != socket.gethostname():
        return None
    pid = int(worker["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    started = worker.get("start")
    return started is None or _start_time(pid) == started


@dataclass(frozen=True)
class StudyStore:
    """A study's storage, its lock and its folder for saved directions."""

    name: str
    storage: optuna.storages.BaseStorage | str
    lock_path: Path | None
    assets_dir: Path

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes for journal files; a no-op for URL storages."""
        if self.lock_path is None or fcntl is None:
            yield
            return
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def create(self) -> optuna.Study:
        """Create the study, or load it if it exists."""
        return optuna.create_study(
            study_name=self.name, storage=self.storage, directions=DIRECTIONS, load_if_exists=True
        )

    def load(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        try:
            return optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study named {self.name!r} in {self.storage}") from None


def open_store(
    name: str, storage: str | None = None, cache_dir: str | Path = "cache"
) -> StudyStore:
    """Open (creating files as needed) the storage of study ``name``.

    Args:
        name: the study name.
        storage: None for ``cache_dir/studies/<name>.journal``; a path for another journal
            file; an Optuna storage URL (anything with ``://``).
        cache_dir: the cache root.

    Returns:
        The store.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is not None and "://" in storage:
        assets = Path(cache_dir) / "studies" / f"{name}.assets"
        return StudyStore(name, storage, None, assets)
    path = Path(storage) if storage else Path(cache_dir) / "studies" / f"{name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalStorage(JournalFileBackend(str(path)))
    lock = path.with_name(path.name + ".circuitlab-lock")
    return StudyStore(name, backend, lock, path.with_name(path.name + ".assets"))


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study seeded ``seed``.

    Mixed, not added: with ``seed + number``, study seed 2 replayed study seed 1's draws one
    trial later, so "independent" seeds shared most of their trials.
    """
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def tpe_sampler(seed: int, n_startup_trials: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE, seeded. ``constant_liar`` keeps parallel workers apart."""
    with warnings.catch_warnings():
        # multivariate and constant_liar are flagged experimental; we chose them knowingly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            constant_liar=True,
            n_startup_trials=n_startup_trials,
        )


def counted(study: optuna.Study) -> int:
    """Trials that use up the budget: COMPLETE, PRUNED and RUNNING."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def _is_stale(trial: optuna.trial.FrozenTrial, locked: bool, fail_unknown: bool) -> bool:
    worker = trial.user_attrs.get("worker")
    if worker is None:
        # Workers record themselves right after asking, under the lock: a trial without a
        # worker seen under the lock lost its worker in between. Without a lock, give the
        # asker a minute.
        if locked or trial.datetime_start is None:
            return True
        return (datetime.now() - trial.datetime_start).total_seconds() > 60
    alive = worker_alive(worker)
    return alive is False or (alive is None and fail_unknown)


def recover_stale(study: optuna.Study, locked: bool, fail_unknown: bool = False) -> list[int]:
    """Fail RUNNING trials whose worker is gone; re-enqueue their parameters once.

    Args:
        study: the study (call under the store's lock when it has one).
        locked: whether the caller holds the store's lock.
        fail_unknown: also fail RUNNING trials of workers on other hosts.

    Returns:
        The numbers of the trials failed.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(trial, locked, fail_unknown):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
        if "retry_of" not in trial.user_attrs and trial.params:
            attrs = {"retry_of": trial.number}
            if "warm_start" in trial.user_attrs:
                attrs["warm_start"] = trial.user_attrs["warm_start"]
            study.enqueue_trial(trial.params, user_attrs=attrs)
    if failed:
        log.warning("failed stale trial(s) %s left RUNNING by dead workers", failed)
    return failed

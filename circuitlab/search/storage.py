"""Where a study lives, who may ask for the next trial, and what a dead worker left behind.

The default storage is an Optuna journal file, ``cache/studies/<name>.journal`` (JSON lines;
no pickle, no database): one host. A plain path is taken as a journal file. For workers on
several hosts use a PostgreSQL URL (``postgresql://user@db-host/circuitlab``); any Optuna
RDB URL works, but SQLite on a network disk is not safe for concurrent writers. Study
names are names, not paths: letters, digits, ``.``, ``_`` and ``-``.

Everything a worker needs travels inside the storage: the direction sets a study searches
over are stored there as content-addressed blobs (study system attributes named by their
hash), and each worker writes its own copy into its own cache. Nothing in a study refers to
a file of one host. ``<cache>/studies/<name>.assets/`` (or ``<journal>.assets/``) holds what
one host writes about a study: reports and the chosen edit.

Several processes can work on one study. For a journal file, a ``flock`` on
``<journal>.circuitlab-lock`` makes "count the trials, then ask for one" atomic, so the
budget is met exactly. The kernel drops a ``flock`` when its holder dies, even by SIGKILL.
URL storages have no such lock: there a worker asks first, then checks its trial's rank,
and a trial over the budget is failed with ``user_attrs["over_budget"]``.

Stale trials. On RDB storages each running trial beats a heartbeat; a trial whose beat
stops (its worker died, on any host) is failed by the next worker that looks, and Optuna's
retry callback enqueues its parameters once (``system_attrs["failed_trial"]``), so the
point is still evaluated, with no flag. Journal storages have no heartbeat, so each trial
records its worker (host, pid, process start time). On start, a worker fails every RUNNING
trial whose worker process is gone (same host: the pid is dead or belongs to a newer
process), and re-enqueues that trial's parameters once (``user_attrs["retry_of"]``). A
RUNNING trial of another host cannot be checked there; it is left alone unless
``fail_unknown`` is set (``--fail-running``). A trial interrupted by Ctrl-C is failed and
re-enqueued the same way. A retry joins the back of Optuna's queue of enqueued trials.

A process killed in the middle of a journal append could leave a partial last line, which
Optuna rejects once another line follows it. The append is one small ``write`` and
``fsync``; we have not seen it, and do not repair it.
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import tempfile
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

from circuitlab import checks
from circuitlab._resources import atomic_folder
from circuitlab.directions import DirectionSet
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
    "fetch_directions",
    "put_directions",
    "stored_copy",
    "recover_stale",
    "retry_later",
    "trial_seed",
    "worker_id",
    "worker_alive",
]

log = logging.getLogger(__name__)

# States that use up the budget: FAIL does not (its point is retried or resampled).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
DIRECTIONS = ("minimize", "minimize")
BLOB = "circuitlab:directions:"
# Seconds between heartbeats of a running trial on RDB storages; a trial is stale after
# GRACE of them without one.
HEARTBEAT = 10
GRACE = 3


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
    """A study's storage, its lock and its folder for this host's files about it.

    Attributes:
        created: files this store created on opening (a new journal and its lock), removed
            by :meth:`discard` when a set-up fails.
    """

    name: str
    storage: optuna.storages.BaseStorage
    lock_path: Path | None
    assets_dir: Path
    created: tuple[Path, ...] = ()

    @property
    def heartbeat(self) -> bool:
        """Whether running trials beat a heartbeat (RDB storages)."""
        from optuna.storages._heartbeat import is_heartbeat_enabled

        return is_heartbeat_enabled(self.storage)

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
        """Create the study; DuplicatedStudyError if it exists."""
        return optuna.create_study(
            study_name=self.name, storage=self.storage, directions=DIRECTIONS
        )

    def exists(self) -> bool:
        return any(s.study_name == self.name for s in self.storage.get_all_studies())

    def load(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        try:
            return optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler)
        except KeyError:
            raise SearchError(f"no study named {self.name!r} in this storage") from None

    def discard(self) -> None:
        """Undo a failed set-up: delete the study, and the files this store created."""
        if self.exists():
            optuna.delete_study(study_name=self.name, storage=self.storage)
        self.remove_created()

    def remove_created(self) -> None:
        """Remove the files this store created, if the storage holds no study."""
        if self.created and not self.storage.get_all_studies():
            for path in self.created:
                path.unlink(missing_ok=True)


def _rdb(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    import inspect

    from optuna.storages import RDBStorage

    with warnings.catch_warnings():
        # Heartbeats and their retry callback are flagged experimental; chosen knowingly.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna 4.9 renamed both the callback and its argument; older names still work.
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        retry = (retry or optuna.storages.RetryFailedTrialCallback)(max_retry=1)
        named = "heartbeat_stale_trial_callback"
        if named not in inspect.signature(RDBStorage).parameters:
            named = "failed_trial_callback"
        return RDBStorage(
            url, heartbeat_interval=heartbeat, grace_period=GRACE * heartbeat, **{named: retry}
        )


def open_store(
    name: str,
    storage: str | None = None,
    cache_dir: str | Path = "cache",
    *,
    create: bool = True,
    heartbeat: int = HEARTBEAT,
) -> StudyStore:
    """Open the storage of study ``name`` (creating a journal file as needed).

    Args:
        name: the study name (letters, digits, ``.``, ``_``, ``-``).
        storage: None for ``cache_dir/studies/<name>.journal``; a path for another journal
            file; an Optuna storage URL (anything with ``://``).
        cache_dir: the cache root.
        create: make a missing journal file; False: a missing one is SearchError.
        heartbeat: seconds between heartbeats of running trials (RDB storages).

    Returns:
        The store.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    checks.study_name(name)
    if storage is not None and "://" in storage:
        assets = Path(cache_dir) / "studies" / f"{name}.assets"
        return StudyStore(name, _rdb(storage, heartbeat), None, assets)
    path = Path(storage) if storage else Path(cache_dir) / "studies" / f"{name}.journal"
    if storage is None:  # a derived path stays inside the cache (the name is checked too)
        checks.within(path, Path(cache_dir) / "studies", "study journal")
    lock = path.with_name(path.name + ".circuitlab-lock")
    if not path.exists() and not create:
        raise SearchError(f"no study named {name!r}: {path} does not exist")
    created = tuple(p for p in (path, lock) if not p.exists())
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = JournalStorage(JournalFileBackend(str(path)))
    return StudyStore(name, backend, lock, path.with_name(path.name + ".assets"), created)


# --------------------------------------------------------------------- directions blobs
def put_directions(store: StudyStore, study: optuna.Study, ds: DirectionSet) -> str:
    """Store a direction set inside the study's storage; returns its hash (the blob's name).

    The blob is the set's own two files (JSON and safetensors, base64): a worker on any host
    rebuilds exactly the folder :meth:`DirectionSet.save` would have written.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = ds.save(Path(tmp) / "set")
        payload = {
            "json": (folder / "directions.json").read_text(),
            "safetensors": base64.b64encode((folder / "directions.safetensors").read_bytes())
            .decode("ascii"),
        }  # fmt: skip
    study_id = store.storage.get_study_id_from_name(study.study_name)
    store.storage.set_study_system_attr(study_id, BLOB + ds.hash, payload)
    return ds.hash


def stored_copy(cache_dir: str | Path, digest: str) -> Path:
    """Where this host keeps its copy of a study's direction set ``digest``."""
    return Path(cache_dir) / "directions" / "studies" / digest


def fetch_directions(store: StudyStore, digest: str, cache_dir: str | Path) -> Path:
    """This host's copy of a stored direction set: ``cache_dir/directions/studies/<hash>``,
    written from the storage's blob unless a copy with that hash is already there."""
    folder = stored_copy(cache_dir, digest)
    if (folder / "directions.json").is_file():
        try:
            if DirectionSet.load(folder).hash == digest:
                return folder
        except (OSError, ValueError, KeyError):
            pass
    study_id = store.storage.get_study_id_from_name(store.name)
    payload = store.storage.get_study_system_attrs(study_id).get(BLOB + digest)
    if payload is None:
        raise SearchError(f"study {store.name!r} holds no directions {digest}")
    with atomic_folder(folder) as tmp:
        (tmp / "directions.json").write_text(payload["json"])
        (tmp / "directions.safetensors").write_bytes(base64.b64decode(payload["safetensors"]))
        if DirectionSet.load(tmp).hash != digest:
            raise SearchError(f"stored directions {digest} do not match their hash")
    return folder


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


def retry_later(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a failed trial's parameters once more (not a retry of a retry)."""
    if "retry_of" in trial.user_attrs or "failed_trial" in trial.system_attrs or not trial.params:
        return
    attrs = {"retry_of": trial.number}
    if "warm_start" in trial.user_attrs:
        attrs["warm_start"] = trial.user_attrs["warm_start"]
    study.enqueue_trial(trial.params, user_attrs=attrs)


def recover_stale(study: optuna.Study, locked: bool, fail_unknown: bool = False) -> list[int]:
    """Fail RUNNING trials whose worker is gone; re-enqueue their parameters once.

    On storages with a heartbeat (RDB) that is the whole check, for workers on any host:
    Optuna fails trials whose beat stopped and its retry callback re-enqueues them. Elsewhere
    (journal files) the trials' recorded workers are checked.

    Args:
        study: the study (call under the store's lock when it has one).
        locked: whether the caller holds the store's lock.
        fail_unknown: also fail RUNNING trials of workers on other hosts.

    Returns:
        The numbers of the trials failed by the worker check (not the heartbeat's).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    from optuna.storages._heartbeat import is_heartbeat_enabled

    beating = is_heartbeat_enabled(study._storage)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # With a heartbeat, only a trial that died before recording its worker (and its
        # first beat) is left to this check, unless fail_unknown asks for more.
        if beating and not fail_unknown and "worker" in trial.user_attrs:
            continue
        if not _is_stale(trial, locked and not beating, fail_unknown):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        failed.append(trial.number)
        retry_later(study, trial)
    if failed:
        log.warning("failed stale trial(s) %s left RUNNING by dead workers", failed)
    return failed

"""Workers on several hosts, for real: a PostgreSQL server, two caches, one killed worker.

The server is Debian's ``postgresql`` package (``make postgres`` installs it), started by
the test on localhost in a temporary folder: the server users run, not a stand-in. It
refuses to run as root, so under root it runs as the unprivileged ``postgres`` user (or
``nobody``). Two ``circuitlab search`` processes with two different cache folders stand in
for two hosts: nothing but the database is shared between them.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tiny import tiny_llama

from circuitlab.search import open_store, pareto_front

REPO = Path(__file__).resolve().parents[1]


def _pg_binary(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, or where Debian puts it (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _unprivileged() -> tuple[list[str], int, int]:
    """(command prefix, uid, gid) to run the server as: nothing when not root."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL unprivileged")
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return [runuser, "-u", name, "--"], entry.pw_uid, entry.pw_gid
    pytest.skip("running as root with no unprivileged user to run PostgreSQL as")


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL server on localhost with an empty database; its URL."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server installed (make postgres installs Debian's)")
    pytest.importorskip("psycopg", reason="psycopg (pip install 'psycopg[binary]') is missing")
    import psycopg

    prefix, uid, gid = _unprivileged()
    # Directly under /tmp: pytest's own folders are private to root, and the server's user
    # must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="circuitlab-pg-"))
    os.chown(root, uid, gid)
    data, port = root / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "circuitlab", "--no-sync"],
            **run,
        )
        options = f"-k {root} -p {port} -c listen_addresses=localhost -c fsync=off"
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
             "start"],
            **run,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}")
    try:
        server = f"host=localhost port={port} user=circuitlab"
        with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as connection:
            connection.execute("CREATE DATABASE studies")
        yield f"postgresql+psycopg://circuitlab@localhost:{port}/studies"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _search(model: Path, url: str, cache: Path, trials: int) -> list[str]:
    return [
        sys.executable, "-m", "circuitlab.cli", "search", str(model),
        "--study", "shared", "--storage", url, "--trials", str(trials),
        "--methods", "diff-means", "--no-prune", "--profile", "none", "--no-preflight",
        "--n-train", "4", "--n-search", "24", "--n-kl", "48", "--max-new-tokens", "64",
        "--batch-size", "1", "--threads", "1", "--heartbeat", "1", "--cache-dir", str(cache),
    ]  # fmt: skip


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    # One storage, so one connection pool, for every poll: a URL opens a new engine per call,
    # and while a slow worker was awaited the idle connections used up the server's
    # max_connections ("too many clients already").
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name="shared", storage=_STORAGES[url]).get_trials()
    except KeyError:
        return []


def _scoring(url: str, pid: int) -> optuna.trial.FrozenTrial | None:
    """A trial of worker ``pid`` that is being scored (its parameters all drawn)."""
    for trial in _trials(url):
        worker = trial.user_attrs.get("worker", {})
        running = trial.state == TrialState.RUNNING and "interventions" in trial.user_attrs
        if running and worker.get("pid") == pid:
            return trial
    return None


def test_two_hosts_share_a_study_and_rerun_a_dead_workers_trial(postgres_url, tmp_path, cache_dir):
    model = tiny_llama(tmp_path / "model", cache_dir=cache_dir, n_layers=2, hidden_size=64)
    caches = {"a": tmp_path / "host-a", "b": tmp_path / "host-b"}
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    budget = 4
    spawn = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    a = subprocess.Popen(_search(model, postgres_url, caches["a"], budget), **spawn)
    b = subprocess.Popen(_search(model, postgres_url, caches["b"], budget), **spawn)
    try:
        deadline = time.monotonic() + 300
        while (seen := _scoring(postgres_url, a.pid)) is None:
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "worker a never ran a trial"
            time.sleep(0.05)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        out, errors = b.communicate(timeout=300)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
    assert b.returncode == 0, errors
    trials = _trials(postgres_url)
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    # Every trial recorded once: the budget's worth complete, the dead worker's one failed,
    # nothing left running or waiting.
    assert len(by_state[TrialState.COMPLETE]) == budget
    # The kill lands on the trial seen running or, if that one finished in between, on a's
    # next one: either way a's, and only one.
    (failed,) = by_state[TrialState.FAIL]
    assert failed.user_attrs["worker"]["pid"] == a.pid and failed.number >= seen.number
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    # Its point re-run by the other worker, found by the heartbeat, with no flag.
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    # A kill that landed on a's next trial may have come between two suggestions: the retry
    # keeps every value the failed trial drew and draws the rest.
    assert retry.state == TrialState.COMPLETE and failed.params.items() <= retry.params.items()
    assert retry.user_attrs["worker"]["pid"] == b.pid
    # The directions travelled inside the database: host b extracted nothing itself, or
    # read them from there; no trial of b refers to a file of a.
    setup = optuna.load_study(study_name="shared", storage=postgres_url).user_attrs["setup"]
    assert "folder" not in json.dumps(setup["directions"])
    for trial in by_state[TrialState.COMPLETE]:
        text = json.dumps(trial.user_attrs["interventions"])
        host = "a" if trial.user_attrs["worker"]["pid"] == a.pid else "b"
        assert str(caches[host]) in text and str(caches["b" if host == "a" else "a"]) not in text
    digest = setup["directions"]["diff-means"]["hash"]
    assert (caches["b"] / "directions" / "studies" / digest / "directions.json").is_file()
    assert "Pareto front of shared" in out
    store = open_store("shared", postgres_url, caches["b"])
    assert store.heartbeat
    # On host b, every trial's edit (a's too) reads b's own copy of the directions.
    shutil.rmtree(caches["a"])  # host a's files are not reachable from host b
    front = pareto_front(store.load(), caches["b"])
    refs = [iv.directions for point in front for iv in point.interventions]
    assert refs and all(Path(ref.folder).is_relative_to(caches["b"]) for ref in refs)
    assert all(ref.load().hash == ref.hash for ref in refs)

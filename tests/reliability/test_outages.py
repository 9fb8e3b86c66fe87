"""Outages: Redis or PostgreSQL failing under a running `syncd sync`, under the `syncd watch`
daemon in the middle of a reconcile, and under a real taskiq worker whose recorder writes
`task_executions`. Each run must fail cleanly (one line, exit 1) or ride it out, and the
stores must converge (or every run be recorded exactly once) afterwards."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from syncd.adapters.audit import Actor, AuditStore
from syncd.adapters.migrate import migrate
from syncd.adapters.postgres import DbStore
from syncd.cli.common import catalog
from syncd.core.settings import Settings
from syncd.operate import trigger
from tests.reliability.convergence import check_convergence, libpq_url
from tests.reliability.support import (
    Background,
    PrivateRedis,
    Stores,
    Tree,
    assert_clean_failure,
    database_blocked,
    finished,
    full_sync,
    private_redis,
    record,
    run_syncd,
    size,
    start_syncd_captured,
    taskiq_process,
    terminate_backends,
    wait_for,
    watch_daemon,
    writer_waiting,
    writes_blocked,
)
from tests.services import PG_ADMIN_DSN
from worker.broker import make_broker
from worker.tasks import registry

SIZES = [
    pytest.param(False, id="ci"),
    pytest.param(True, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]
TASKS, FILES = 500, 5


def seeded() -> tuple[int, random.Random]:
    seed = int(os.environ.get("SYNCD_RELIABILITY_SEED") or random.randrange(2**32))
    return seed, random.Random(seed)


def converged(root: Path, stores: Stores) -> bool:
    return not check_convergence(root, stores.database_url, stores.redis_url)


def wait_converged(root: Path, stores: Stores, timeout: float, what: str) -> float:
    try:
        return wait_for(lambda: converged(root, stores), timeout, what, poll=0.2)
    except AssertionError:
        problems = check_convergence(root, stores.database_url, stores.redis_url)
        raise AssertionError(
            f"{what}: still {len(problems)} discrepancies: {problems[:10]}"
        ) from None


# -- syncd sync --------------------------------------------------------------------------


@pytest.mark.parametrize("slow", SIZES)
def test_sync_fails_cleanly_when_redis_dies_and_the_next_sync_converges(
    fresh_database_url: str, tmp_path: Path, slow: bool
) -> None:
    """Redis (with an fsynced append-only file) dies under a sync; it comes back empty
    (its file deleted) or with its data; the next sync converges either way."""
    migrate(fresh_database_url)
    seed, rng = seeded()
    restarts: Counter[str] = Counter()
    with private_redis(tmp_path / "redis") as server:
        stores = Stores(fresh_database_url, server.url)
        tree = Tree(tmp_path / "taskdefs", TASKS, FILES, rng=rng)
        tree.write_base()
        duration = full_sync(tree.root, stores)

        def restart_and_converge(empty: bool) -> None:
            if empty:
                assert server.persist_dir is not None
                shutil.rmtree(server.persist_dir)
            server.start()
            full_sync(tree.root, stores, plan=True, in_process=not slow)
            restarts["empty" if empty else "with its data"] += 1

        # Deterministic: Redis dies after the sync read it, before PostgreSQL commits; the
        # rows commit, the Redis writes fail.
        for empty in (True, False):
            tree.mass_change()
            with writes_blocked(stores.database_url):
                proc = start_syncd_captured(stores.env, "sync", str(tree.root))
                wait_for(lambda: writer_waiting(stores.database_url), 60, "the sync's write")
                server.kill()
            assert_clean_failure(finished(proc), "Redis at redis://127.0.0.1:")
            restart_and_converge(empty)
        # Random moments over a whole sync.
        for round_ in range(size("SYNCD_RELIABILITY_OUTAGES", slow=slow)):
            tree.one_file_change() if round_ % 2 else tree.mass_change()
            proc = start_syncd_captured(stores.env, "sync", str(tree.root))
            time.sleep(rng.uniform(0, duration))
            server.kill()
            result = finished(proc)
            if result.returncode != 0:
                assert_clean_failure(result, "Redis at redis://127.0.0.1:")
            restart_and_converge(rng.random() < 0.5)
    record("sync through Redis outages", seed=seed, outages_survived=dict(restarts))


@pytest.mark.parametrize("slow", SIZES)
def test_sync_fails_cleanly_when_postgresql_fails_and_the_next_sync_converges(
    stores: Stores, tmp_path: Path, slow: bool
) -> None:
    seed, rng = seeded()
    tree = Tree(tmp_path / "taskdefs", TASKS, FILES, rng=rng)
    tree.write_base()
    duration = full_sync(tree.root, stores)
    db = stores.database_url
    # Deterministic: the sync's connections are killed while its write waits for a lock.
    tree.mass_change()
    with writes_blocked(db) as lock_holder:
        proc = start_syncd_captured(stores.env, "sync", str(tree.root))
        wait_for(lambda: writer_waiting(db), 60, "the sync's write")
        assert terminate_backends(db, keep=lock_holder.info.backend_pid) >= 2  # lock + write
    assert_clean_failure(finished(proc), "PostgreSQL at 127.0.0.1:5432/")
    full_sync(tree.root, stores, plan=True, in_process=not slow)
    outages = 1
    # The database refuses connections altogether.
    tree.one_file_change()
    with database_blocked(db, PG_ADMIN_DSN):
        assert_clean_failure(run_syncd(stores.env, "sync", str(tree.root)), "PostgreSQL at")
    full_sync(tree.root, stores, plan=True, in_process=not slow)
    outages += 1
    # Random moments over a whole sync.
    for round_ in range(size("SYNCD_RELIABILITY_OUTAGES", slow=slow)):
        tree.one_file_change() if round_ % 2 else tree.mass_change()
        proc = start_syncd_captured(stores.env, "sync", str(tree.root))
        time.sleep(rng.uniform(0, duration))
        terminate_backends(db)
        result = finished(proc)
        if result.returncode != 0:
            assert_clean_failure(result, "PostgreSQL at")
        full_sync(tree.root, stores, plan=True, in_process=not slow)
        outages += 1
    record("sync through PostgreSQL outages", seed=seed, outages_survived=outages)


# -- syncd watch ---------------------------------------------------------------------------


@pytest.mark.parametrize("slow", SIZES)
def test_daemon_rides_out_redis_restarts_and_postgresql_kills_mid_reconcile(
    fresh_database_url: str, tmp_path: Path, slow: bool
) -> None:
    migrate(fresh_database_url)
    seed, rng = seeded()
    db = fresh_database_url
    outages = 0
    with private_redis() as server:
        stores = Stores(db, server.url)
        tree = Tree(tmp_path / "taskdefs", 300, 3, rng=rng)
        tree.write_base()
        with watch_daemon(stores.env, tree.root, tmp_path / "watch.log") as daemon:
            wait_converged(tree.root, stores, 60, "the first reconcile")
            for _ in range(size("SYNCD_RELIABILITY_OUTAGES", slow=slow)):
                # Redis dies in the middle of a reconcile (after its plan, before its
                # PostgreSQL commit) and comes back empty: everything must be re-registered.
                with writes_blocked(db):
                    tree.one_file_change()
                    wait_for(lambda: writer_waiting(db), 30, "the daemon's write")
                    server.kill()
                time.sleep(1.0)  # it fails on Redis and backs off
                server.start()
                wait_converged(tree.root, stores, 60, "recovery from a Redis restart")
                # PostgreSQL connections killed in the middle of a reconcile.
                with writes_blocked(db) as holder:
                    tree.one_file_change()
                    wait_for(lambda: writer_waiting(db), 30, "the daemon's write")
                    terminate_backends(db, keep=holder.info.backend_pid)
                wait_converged(tree.root, stores, 60, "recovery from killed connections")
                # PostgreSQL refusing connections for a while, with an edit meanwhile.
                with database_blocked(db, PG_ADMIN_DSN):
                    tree.one_file_change()
                    time.sleep(2.0)
                wait_converged(tree.root, stores, 60, "recovery from a refusing database")
                outages += 3
            assert daemon.is_alive()
            wait_for(daemon.is_healthy, 30, "/healthz to report healthy again")
            assert daemon.stop() == 0
        final = run_syncd(stores.env, "plan", str(tree.root), "--detailed-exitcode")
        assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    log = daemon.log()
    assert "Traceback" not in log, log[-5000:]
    assert "reconcile failed: Redis at" in log
    assert "reconcile failed: PostgreSQL at" in log
    record("daemon through outages", seed=seed, outages_survived=outages)


# -- the worker and its recorder -----------------------------------------------------------

MANUAL_TASKS = """\
version: 1
tasks:
  - {name: tick, task_type: diagnostics.noop}
  - {name: nap, task_type: diagnostics.sleep, parameters: {seconds: 0.2}}
  - {name: long-nap, task_type: diagnostics.sleep, parameters: {seconds: 1.5}}
"""


class Kicker:
    """`syncd run NAME` in process (syncd.operate.trigger, what the CLI command calls)."""

    def __init__(self, stores: Stores) -> None:
        self._db = DbStore.from_url(stores.database_url)
        self._broker = make_broker(registry, Settings(redis_url=stores.redis_url))
        self._catalog = catalog()

    def run(self, name: str) -> str:
        audit = AuditStore(self._db.engine)
        return trigger(
            self._db, self._broker, self._catalog, name, audit=audit, actor=Actor.from_cli()
        )

    def close(self) -> None:
        self._db.close()


def executions(database_url: str) -> list[tuple[str, int, bool]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT task_id, attempt, is_success FROM task_executions ORDER BY id"
        ).fetchall()
    return [(str(t), int(a), bool(ok)) for t, a, ok in rows]


def check_records(rows: list[tuple[str, int, bool]], kicked: list[str]) -> None:
    """Every run sent is recorded exactly once, as a successful first attempt."""
    ids = [task_id for task_id, _, _ in rows]
    assert len(set(ids)) == len(ids), "a run was recorded twice"
    assert set(ids) == set(kicked), (set(kicked) - set(ids), set(ids) - set(kicked))
    assert len(rows) == len(kicked), (len(rows), len(kicked))
    assert all(attempt == 1 and ok for _, attempt, ok in rows), rows


def wait_recorded(database_url: str, count: int, timeout: float) -> None:
    wait_for(lambda: len(executions(database_url)) >= count, timeout, f"{count} records", 0.2)


@dataclass
class WorkerRig:
    stores: Stores
    server: PrivateRedis
    kicker: Kicker
    worker: Background


@contextmanager
def worker_rig(database_url: str, tmp_path: Path) -> Iterator[WorkerRig]:
    """Manual tasks synced, a real `taskiq worker` with a private spool, and a kicker; Redis
    is a private server with an fsynced append-only file (a restart keeps the streams)."""
    migrate(database_url)
    with private_redis(tmp_path / "redis") as server:
        stores = Stores(database_url, server.url)
        root = tmp_path / "taskdefs"
        root.mkdir()
        (root / "manual.yaml").write_text(MANUAL_TASKS)
        assert run_syncd(stores.env, "sync", str(root)).returncode == 0
        env = {**stores.env, "SYNCD_RECORDER_SPOOL": str(tmp_path / "spool" / "spool.jsonl")}
        args = ("worker", "worker.app:broker", "--workers", "1")
        kicker = Kicker(stores)
        try:
            with taskiq_process(env, tmp_path / "worker.log", *args) as worker:
                yield WorkerRig(stores, server, kicker, worker)
        finally:
            kicker.close()


@pytest.mark.parametrize("slow", SIZES)
def test_recorder_records_every_run_once_through_database_and_redis_outages(
    fresh_database_url: str, tmp_path: Path, slow: bool
) -> None:
    runs = size("SYNCD_RELIABILITY_RUNS", slow=slow)
    db = fresh_database_url
    kicked: list[str] = []
    faults = 0
    with worker_rig(db, tmp_path) as rig:
        for round_ in range(max(1, runs // 10)):
            kicked += [rig.kicker.run("nap" if i % 2 else "tick") for i in range(10)]
            fault = round_ % 3
            if fault == 0:  # the recorder's connection dies while runs are in flight
                time.sleep(0.1)
                terminate_backends(db)
            elif fault == 1:  # the database refuses connections for a while
                with database_blocked(db, PG_ADMIN_DSN):
                    time.sleep(1.5)
            else:  # Redis restarts (keeping its data) while the worker is idle
                wait_recorded(db, len(kicked), 60)
                rig.server.kill()
                rig.server.start()
            faults += 1
        wait_recorded(db, len(kicked), 90)
        time.sleep(1.0)  # nothing more may come
        rows = executions(db)
        assert rig.worker.is_alive()
    check_records(rows, kicked)
    record("recorder through outages", records=len(rows), expected=len(kicked), faults=faults)


def test_runs_in_flight_survive_a_dropped_worker_redis_connection(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Regression (found by this suite): the dropped connection ended the worker process, the
    runs in flight were cancelled unrecorded and their messages stayed pending for an hour."""
    db = fresh_database_url
    with worker_rig(db, tmp_path) as rig:
        first = rig.kicker.run("tick")  # the worker and its recorder work before the fault
        wait_recorded(db, 1, 30)
        kicked = [first, *(rig.kicker.run("long-nap") for _ in range(3))]
        started = lambda: rig.worker.log().count("Executing task") >= 4  # noqa: E731
        wait_for(started, 30, "the runs to start")
        with redis.Redis.from_url(rig.stores.redis_url) as client:  # drop every connection
            client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        # 1.5 s runs; a restarted worker is back within ~2 s: 6 s is plenty.
        wait_recorded(db, len(kicked), 6)
        time.sleep(0.5)  # and nothing twice
    check_records(executions(db), kicked)


# -- the checks catch what they are for ------------------------------------------------------


def _completed(code: int, stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["syncd"], code, "", stderr)


@pytest.mark.parametrize(
    ("code", "stderr"),
    [
        (0, ""),  # succeeded although the store was gone
        (2, "error: Redis at redis://127.0.0.1:1/0: Connection refused\n"),
        (1, "Traceback (most recent call last):\n  ...\nredis.exceptions.ConnectionError\n"),
        (1, "internal error: OperationalError: server closed the connection (run with --debug)\n"),
        (1, "error: Redis at redis://127.0.0.1:1/0: refused\nerror: and another line\n"),
        (1, "error: something unrelated\n"),
    ],
)
def test_the_clean_failure_check_catches(code: int, stderr: str) -> None:
    with pytest.raises(AssertionError):
        assert_clean_failure(_completed(code, stderr), "Redis at redis://127.0.0.1:")


def test_the_clean_failure_check_accepts_one_clear_line() -> None:
    line = "error: Redis at redis://127.0.0.1:1/0: Error 111 connecting. Connection refused."
    assert assert_clean_failure(_completed(1, line + "\n"), "Redis at") == line


@pytest.mark.parametrize(
    "rows",
    [
        [("a", 1, True)],  # one run lost
        [("a", 1, True), ("b", 1, True), ("b", 1, True)],  # recorded twice
        [("a", 1, True), ("b", 1, True), ("c", 1, True)],  # one that was never sent
        [("a", 1, True), ("b", 2, True)],  # a retry where none should be
        [("a", 1, True), ("b", 1, False)],  # a failure recorded as the outcome
    ],
)
def test_the_record_check_catches(rows: list[tuple[str, int, bool]]) -> None:
    with pytest.raises(AssertionError):
        check_records(rows, ["a", "b"])

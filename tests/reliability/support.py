"""Fault-injection helpers of the reliability tests: sizes from the environment, `syncd` and
taskiq subprocesses, private redis-servers, and PostgreSQL faults confined to one database.

Nothing here touches the shared servers beyond a test's own database and Redis db: Redis
outages use private `redis-server` processes; PostgreSQL outages terminate or block only
the connections of the test's own database.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench.taskdefs_gen import rewrite_file, write_tree
from syncd.cli.common import catalog
from syncd.core.guards import SyncOptions
from syncd.core.settings import Settings
from syncd.reconcile import Stores as SyncdStores
from syncd.reconcile import reconcile_once
from tests.e2e.conftest import REPO
from tests.reliability.convergence import LAYOUT, assert_converged, libpq_url
from tests.services import store_env

# (environment variable, CI default, slow default)
SIZES: dict[str, tuple[int, int]] = {
    "SYNCD_RELIABILITY_TASKS": (2000, 10_000),
    "SYNCD_RELIABILITY_FILES": (20, 100),
    "SYNCD_RELIABILITY_KILLS": (10, 100),
    "SYNCD_RELIABILITY_OUTAGES": (1, 10),
    "SYNCD_RELIABILITY_RUNS": (40, 400),
    "SYNCD_RELIABILITY_CONCURRENT": (4, 8),
    "SYNCD_RELIABILITY_FUZZ": (1200, 20_000),
}


def size(name: str, *, slow: bool) -> int:
    """The environment variable if set, else the CI or the slow default."""
    ci_default, slow_default = SIZES[name]
    raw = os.environ.get(name)
    return int(raw) if raw else (slow_default if slow else ci_default)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.02
) -> float:
    """Poll until predicate() is truthy; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - start


# -- syncd as a subprocess --------------------------------------------------------------


def syncd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncd.cli", *args]


def run_syncd(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        syncd_command(*args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_syncd(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """A `syncd` process whose output is discarded (nothing to drain, nothing to block on)."""
    return subprocess.Popen(
        syncd_command(*args),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> int | None:
    """SIGKILL unless it already ended; return its exit code if it ended by itself."""
    ended = proc.poll()
    if ended is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return ended


def require(condition: object, message: str) -> None:
    """A precondition of a scenario, not its property: RuntimeError, not AssertionError, so
    a broken setup never reads as the guarantee failing (or holding)."""
    if not condition:
        raise RuntimeError(message)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1 with one `error:` line and no traceback; return that line."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {lines}"
    assert lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def start_syncd_captured(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A `syncd` process whose (small) output the caller reads with communicate()."""
    return subprocess.Popen(
        syncd_command(*args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@dataclass
class Background:
    """A long-running process (daemon, worker, scheduler) logging to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def is_healthy(self) -> bool:
        return self.get("/healthz")[0] == 200

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def background(
    command: list[str], env: dict[str, str], log_path: Path, port: int = 0
) -> Iterator[Background]:
    """Start a process, yield it, and make sure it is gone afterwards (SIGINT, then SIGKILL)."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Background(proc, log_path, port)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def watch_daemon(
    env: dict[str, str], root: Path, log_path: Path, *extra: str, resync: float = 1.0
) -> AbstractContextManager[Background]:
    port = free_port()
    args = ["watch", str(root), "--http-port", str(port), "--resync-interval", str(resync)]
    return background(syncd_command(*args, *extra), env, log_path, port)


def taskiq_process(
    env: dict[str, str], log_path: Path, *args: str
) -> AbstractContextManager[Background]:
    return background([sys.executable, "-m", "taskiq", *args], env, log_path)


# -- a private redis-server ---------------------------------------------------------------


@dataclass
class PrivateRedis:
    """A throwaway redis-server on its own port: the shared one is never stopped.

    With `persist_dir`, an append-only file fsynced at every write makes a SIGKILL and
    restart keep the data (a restart "not empty"); without, a restart comes back empty.
    """

    port: int = field(default_factory=free_port)
    persist_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.persist_dir is None:
            persistence = ["--appendonly", "no"]
        else:
            self.persist_dir.mkdir(parents=True, exist_ok=True)
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
            persistence += ["--dir", str(self.persist_dir)]
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis.Redis(port=self.port) as conn:
            wait_for(lambda: _pings(conn), 10, "redis-server to start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


def _pings(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.ConnectionError:
        return False


@contextmanager
def private_redis(persist_dir: Path | None = None) -> Iterator[PrivateRedis]:
    server = PrivateRedis(persist_dir=persist_dir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- PostgreSQL faults, confined to the test's own database -------------------------------

TERMINATE_OTHERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s
"""


def terminate_backends(database_url: str, keep: int | None = None) -> int:
    """Kill every connection to this database but the one asking (and the backend `keep`);
    return how many."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(TERMINATE_OTHERS, (keep or 0,)).fetchone()
    return int(row[0]) if row else 0


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1].split("?", 1)[0]


@contextmanager
def database_blocked(database_url: str, admin_dsn: str) -> Iterator[None]:
    """No new connection to this database, and the existing ones killed, for the block."""
    name = sql.Identifier(database_name(database_url))
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database_name(database_url),),
            )
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


@contextmanager
def writes_blocked(database_url: str) -> Iterator[psycopg.Connection]:
    """Hold a SHARE lock on task_configs: reads go on, a sync's INSERT/UPDATE/DELETE waits.

    That parks a sync deterministically between its plan (rows and Redis read) and its
    PostgreSQL commit, so a fault can be injected exactly there.
    """
    conn = psycopg.connect(libpq_url(database_url))
    try:
        conn.execute("LOCK TABLE task_configs IN SHARE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def writer_waiting(database_url: str) -> bool:
    """Some other session of this database waits for a lock on a write to task_configs."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
            "AND query ~* '^\\s*(INSERT|UPDATE|DELETE)'"
        ).fetchone()
    return bool(row and row[0])


def row_signature(database_url: str) -> tuple[int, int, str]:
    """Changes whenever a sync commits: (row count, max id, newest updated_at)."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(id), 0), coalesce(max(updated_at)::text, '') "
            "FROM task_configs"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), str(row[2])


def reset_stores(database_url: str, redis_url: str) -> None:
    """Empty task_configs (and its executions) and the test's Redis db."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("TRUNCATE task_executions, task_configs")
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


@dataclass(frozen=True)
class Stores:
    """A migrated private database and a Redis db, as one test's pair of stores."""

    database_url: str
    redis_url: str

    @property
    def env(self) -> dict[str, str]:
        return store_env(self.database_url, self.redis_url)


REPORT_ENV = "SYNCD_RELIABILITY_REPORT"


def record(scenario: str, **numbers: Any) -> None:
    """Print a scenario's numbers; with $SYNCD_RELIABILITY_REPORT, append them there as JSON."""
    line = json.dumps({"scenario": scenario, **numbers}, default=str)
    print(f"\nreliability: {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


# -- the taskdefs tree the scenarios edit, and the full-sync check -------------------------

EXTRAS = """\
version: 1
tasks:
  - name: extra-manual
    task_type: diagnostics.noop
  - name: extra-disabled
    task_type: diagnostics.noop
    schedule: {interval: 30}
    enabled: false
  - name: extra-once
    task_type: diagnostics.noop
    schedule: {at: 2099-01-01T00:00:00Z}
  - name: extra-tz
    task_type: diagnostics.noop
    schedule: {cron: "0 3 * * 7", timezone: America/New_York}
  - name: extra-data-queue
    task_type: data.csv_summary
    schedule: {interval: 300}
    parameters: {source: /tmp/in.csv, column: amount}
"""
MODES = ("first sync", "one-file change", "mass change", "file deleted")
SCHEDULE_LINE = re.compile(r"^    schedule: \{.*\}$", re.MULTILINE)


@dataclass
class Tree:
    """A generated taskdefs tree and the edits the crash scenarios make to it."""

    root: Path
    tasks: int
    files: int
    revision: int = 0
    rng: random.Random = field(default_factory=random.Random)
    removed: int | None = None  # the group file "file deleted" took away

    def write_base(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        write_tree(self.root, self.tasks, self.files)
        (self.root / "extras.yaml").write_text(EXTRAS)
        self.removed = None

    def one_file_change(self) -> None:
        self.revision += 1
        index = self.rng.randrange(self.files)
        rewrite_file(self.root, index, self.tasks, self.files, self.revision)

    def mass_change(self) -> None:
        """Every task's row changes, and every task gets a new interval (cron ones move list)."""
        self.revision += 1
        write_tree(self.root, self.tasks, self.files, self.revision)
        interval = f"    schedule: {{interval: {3600 + self.revision}}}"
        for path in self.root.glob("group-*.yaml"):
            path.write_text(SCHEDULE_LINE.sub(interval, path.read_text()))
        self.removed = None

    def file_deleted(self) -> None:
        """One group file's tasks deleted (the one deleted before comes back, re-created)."""
        index = self.rng.choice([i for i in range(self.files) if i != self.removed])
        self._restore()
        (self.root / f"group-{index:03d}.yaml").unlink()
        self.removed = index

    def _restore(self) -> None:
        if self.removed is not None:
            rewrite_file(self.root, self.removed, self.tasks, self.files, self.revision)
            self.removed = None

    def prepare(self, mode: str, stores: Stores) -> None:
        if mode == "first sync":
            reset_stores(stores.database_url, stores.redis_url)
            self.write_base()
        elif mode == "one-file change":
            self._restore()
            self.one_file_change()
        elif mode == "mass change":
            self.mass_change()
        else:
            self.file_deleted()


class Probe:
    """Cheap signs of progress of a running sync: PostgreSQL commit, Redis chunk written."""

    def __init__(self, stores: Stores) -> None:
        self._pg = psycopg.connect(libpq_url(stores.database_url), autocommit=True)
        self._redis = redis.Redis.from_url(stores.redis_url)

    def rows(self) -> tuple[object, ...]:
        found = self._pg.execute(
            "SELECT count(*), coalesce(max(id), 0), max(updated_at) FROM task_configs"
        ).fetchone()
        assert found is not None
        return tuple(found)

    def version(self) -> bytes | None:
        value = self._redis.get(LAYOUT.version_key)
        return value if isinstance(value, bytes) else None

    def close(self) -> None:
        self._pg.close()
        self._redis.close()


def plan_is_empty(root: Path, stores: Stores) -> bool:
    """`syncd plan`, in process: the same reconcile_once, dry run."""
    settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url)
    opened = SyncdStores.open(settings)
    try:
        outcome = reconcile_once(
            root, opened, catalog(), datetime.now(UTC), options=SyncOptions(dry_run=True)
        )
    finally:
        opened.close()
    return outcome.plan.is_empty


def sync_in_process(root: Path, stores: Stores, *, max_deletes: int = 10) -> None:
    """reconcile_once, exactly as `syncd sync` runs it, without a process start."""
    settings = Settings(database_url=stores.database_url, redis_url=stores.redis_url)
    opened = SyncdStores.open(settings)
    try:
        opened.db.check_schema()
        outcome = reconcile_once(
            root, opened, catalog(), datetime.now(UTC), options=SyncOptions(max_deletes=max_deletes)
        )
    finally:
        opened.close()
    assert not outcome.refusals, outcome.refusals
    assert not outcome.loaded.errors, outcome.loaded.errors


def full_sync(
    root: Path,
    stores: Stores,
    *,
    plan: bool = False,
    max_deletes: int = 0,
    in_process: bool = False,
) -> float:
    """Sync to completion and check exact convergence; return seconds. A `syncd sync`
    process (exit 0, no traceback), or with in_process the same reconcile_once in this
    process: the CI versions repair that way, to spend their time on faults, not on
    interpreter start-ups."""
    start = time.monotonic()
    if in_process:
        sync_in_process(root, stores, max_deletes=max_deletes)
    else:
        proc = run_syncd(stores.env, "sync", str(root), "--max-deletes", str(max_deletes))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr
    took = time.monotonic() - start
    assert_converged(root, stores.database_url, stores.redis_url)
    if plan:  # also what syncd itself thinks (the checker is stricter, and cheaper)
        assert plan_is_empty(root, stores)
    return took

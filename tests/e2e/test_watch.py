"""`syncd watch` as a subprocess on real PostgreSQL and Redis: edits applied in seconds,
drift repaired by resync, broken files frozen, Redis restarts and an unreachable
PostgreSQL survived, one leader among two daemons with failover, clean exit on signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e.conftest import REPO, Cli
from tests.e2e.test_sync_cli import rows, taskfile

RESYNC = 2.0
LEASE_TTL = 10.0
LEASE_KEY = "syncd-leader:syncd"
EPHEMERAL_REDIS = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until predicate() is truthy; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Watcher:
    """A running `syncd watch`; its output goes to a file (no pipe to fill up or leak)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

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

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/healthz")
        return status, json.loads(body) if body else {}

    def is_healthy(self) -> bool:
        return self.health()[0] == 200

    def metric(self, sample: str) -> float | None:
        status, body = self.get("/metrics")
        for line in body.splitlines() if status == 200 else ():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return None

    def is_leader(self) -> bool:
        return self.metric("syncd_is_leader") == 1.0

    def log(self) -> str:
        return self.log_path.read_text()

    def reconciles(self) -> float:
        return self.metric('syncd_reconciles_total{result="ok"}') or 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextmanager
def watching(
    cli: Cli,
    *extra: str,
    env: dict[str, str] | None = None,
    name: str = "watch",
    root: Path | None = None,
) -> Iterator[Watcher]:
    port = free_port()
    log_path = cli.taskdefs.parent / f"{name}-{port}.log"
    taskdefs = str(root or cli.taskdefs)
    args = ["watch", taskdefs, "--http-port", str(port), "--resync-interval", str(RESYNC)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", *args, *extra],
            cwd=REPO,
            env=env or cli.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    watcher = Watcher(proc, port, log_path)
    try:
        yield watcher
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=15)


@pytest.fixture
def client(cli: Cli) -> Iterator[redis.Redis]:
    with cli.redis() as conn:
        yield conn


def payload(conn: redis.Redis, config_id: int) -> dict[str, Any] | None:
    raw = conn.get(f"syncd:data:task_{config_id}")
    found: dict[str, Any] | None = json.loads(str(raw)) if raw else None
    return found


def interval_of(conn: redis.Redis, config_id: int) -> object:
    found = payload(conn, config_id)
    return found and found["interval"]


def assert_no_traceback(*watchers: Watcher) -> None:
    for watcher in watchers:
        assert "Traceback" not in watcher.log(), watcher.log()


def test_an_edit_is_registered_within_seconds(cli: Cli, client: redis.Redis) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    with watching(cli) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        config_id = rows(cli)["a"][0]
        assert interval_of(client, config_id) == 60
        cli.write("a.yaml", taskfile({"name": "a", "schedule": "{interval: 61}"}))
        took = wait_for(lambda: interval_of(client, config_id) == 61, 10, "the edit")
        assert took < 2.0, f"edit registered after {took:.2f} s"
        # An atomic save (write a temp file, rename over): the directory watch sees it.
        tmp = cli.taskdefs / ".b.yaml.tmp"
        tmp.write_text(taskfile({"name": "b"}))
        os.replace(tmp, cli.taskdefs / "b.yaml")
        took = wait_for(lambda: "b" in rows(cli), 10, "the new file")
        assert took < 2.0, f"new file registered after {took:.2f} s"
        assert payload(client, rows(cli)["b"][0]) is not None
        assert watcher.stop() == 0
    assert_no_traceback(watcher)


def test_an_edit_is_applied_incrementally_and_the_resync_still_reads_everything(
    cli: Cli, client: redis.Redis
) -> None:
    """One file edited: only its tasks are re-planned (the log line and the metric say
    which path ran); a pause written meanwhile sends the next edit down the full path."""
    cli.write("a.yaml", taskfile({"name": "a"}))
    cli.write("b.yaml", taskfile({"name": "b"}))
    # A long resync: the edits below are not overtaken by one.
    with watching(cli, "--resync-interval", "300") as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        ids = {name: row[0] for name, row in rows(cli).items()}
        cli.write("a.yaml", taskfile({"name": "a", "schedule": "{interval: 61}"}))
        wait_for(lambda: interval_of(client, ids["a"]) == 61, 10, "the edit")
        incremental = 'syncd_reconcile_paths_total{path="incremental"}'
        wait_for(lambda: watcher.metric(incremental) == 1.0, 5, "the incremental metric")
        assert "path=incremental" in watcher.log()
        assert cli.run("pause", "b", check=True).returncode == 0
        cli.write("b.yaml", taskfile({"name": "b", "schedule": "{interval: 62}"}))
        wait_for(lambda: interval_of(client, ids["b"]) == 62, 10, "the edit after the pause")
        wait_for(lambda: "fallback=" in watcher.log(), 5, "the fallback's log line")
        assert watcher.metric(incremental) == 1.0
        assert client.get(f"schedule:status:{ids['b']}") == "paused"
        assert watcher.stop() == 0
    assert_no_traceback(watcher)


def test_a_replaced_directory_is_watched_again(cli: Cli, tmp_path: Path) -> None:
    """git-sync style: the taskdefs path is a symlink swapped atomically to a new checkout."""
    first, second, current = tmp_path / "rev1", tmp_path / "rev2", tmp_path / "current"
    for revision, tasks in ((first, [{"name": "a"}]), (second, [{"name": "a"}, {"name": "b"}])):
        revision.mkdir()
        (revision / "a.yaml").write_text(taskfile(*tasks))
    current.symlink_to(first)
    with watching(cli, root=current) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        swap = tmp_path / "swap"
        swap.symlink_to(second)
        os.replace(swap, current)
        took = wait_for(lambda: "b" in rows(cli), 10, "the new checkout")
        assert took < 2.0, f"new checkout registered after {took:.2f} s"
        (second / "c.yaml").write_text(taskfile({"name": "c"}))  # and it is watched
        wait_for(lambda: "c" in rows(cli), 5, "an edit in the new checkout")
        assert watcher.stop() == 0
    assert_no_traceback(watcher)


def test_a_hand_deleted_schedule_is_restored_by_resync(cli: Cli, client: redis.Redis) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}, {"name": "b"}))
    with watching(cli) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        config_id = rows(cli)["a"][0]
        client.delete(f"syncd:data:task_{config_id}")
        client.lrem("syncd:interval", 0, f"task_{config_id}")
        took = wait_for(lambda: payload(client, config_id), 3 * RESYNC, "drift repair")
        assert f"task_{config_id}" in client.lrange("syncd:interval", 0, -1)
        assert took < RESYNC + 2.0, f"restored after {took:.2f} s"
        wait_for(lambda: watcher.metric("syncd_drift_repaired_total") == 1.0, 5, "drift metric")
        assert watcher.stop() == 0
    assert_no_traceback(watcher)


def test_a_broken_file_freezes_its_tasks_while_another_file_applies(
    cli: Cli, client: redis.Redis
) -> None:
    cli.write("good.yaml", taskfile({"name": "g"}))
    cli.write("bad.yaml", taskfile({"name": "f1"}, {"name": "f2"}))
    with watching(cli) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        frozen_ids = [rows(cli)[name][0] for name in ("f1", "f2")]
        cli.write("bad.yaml", "version: 1\ntasks:\n  - name: f1\n    task_type: [broken\n")
        cli.write("good.yaml", taskfile({"name": "g", "priority": 2}, {"name": "g2"}))
        wait_for(lambda: "g2" in rows(cli), 10, "the valid edit")
        assert {"f1", "f2"} <= set(rows(cli))
        assert all(payload(client, config_id) for config_id in frozen_ids)
        wait_for(lambda: watcher.metric("syncd_frozen_files") == 1.0, 5, "frozen metric")
        assert watcher.metric('syncd_tasks{state="frozen"}') == 2.0
        # Problems are logged once per change, not at every resync; a taskdef problem
        # is not a dependency failure, so the daemon stays healthy.
        done = watcher.reconciles()
        wait_for(lambda: watcher.reconciles() >= done + 2, 4 * RESYNC, "two resyncs")
        assert len(re.findall(r"bad\.yaml:\d+:\d+: ", watcher.log())) == 1, watcher.log()
        assert watcher.is_healthy()
        assert all(payload(client, config_id) for config_id in frozen_ids)
        assert watcher.stop() == 0
    assert_no_traceback(watcher)


class PrivateRedis:
    """A throwaway redis-server on its own port: the shared one is never restarted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), *EPHEMERAL_REDIS],
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


def _pings(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except redis.ConnectionError:
        return False


def test_a_redis_restart_is_survived(cli: Cli) -> None:
    server = PrivateRedis(free_port())
    env = {**cli.env, "SYNCD_REDIS_URL": f"redis://127.0.0.1:{server.port}/0"}
    cli.write("a.yaml", taskfile({"name": "a"}, {"name": "b"}, {"name": "c"}))
    server.start()
    try:
        with (
            redis.Redis(port=server.port, decode_responses=True) as conn,
            watching(cli, env=env) as watcher,
        ):
            wait_for(watcher.is_healthy, 30, "the first reconcile")
            assert len(conn.keys("syncd:data:*")) == 3
            server.kill()
            wait_for(lambda: watcher.health()[0] == 503, 10, "/healthz to report Redis down")
            assert watcher.proc.poll() is None
            server.start()  # same port, empty: everything must come back from drift repair
            took = wait_for(lambda: len(conn.keys("syncd:data:*")) == 3, 20, "re-registration")
            assert conn.llen("syncd:interval") == 3
            assert len(conn.keys("schedule:status:*")) == 3
            wait_for(watcher.is_healthy, 10, "/healthz to recover")
            assert watcher.stop() == 0
    finally:
        server.kill()
    assert took < 10, f"re-registered {took:.1f} s after Redis came back"
    assert "cannot reach Redis" in watcher.log()
    assert_no_traceback(watcher)


def test_an_unreachable_database_is_retried_with_backoff(cli: Cli) -> None:
    env = {
        **cli.env,
        "SYNCD_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
    }
    cli.write("a.yaml", taskfile({"name": "a"}))
    with watching(cli, env=env) as watcher:
        errors = 'syncd_reconcile_errors_total{kind="store_unavailable"}'
        wait_for(lambda: (watcher.metric(errors) or 0) >= 3, 20, "three failed attempts")
        status, body = watcher.health()
        assert status == 503
        assert "store_unavailable" in body["reason"]
        assert watcher.proc.poll() is None
        assert watcher.stop() == 0
    delays = re.findall(r"retrying in ([\d.]+) s", watcher.log())
    assert [float(d) for d in delays[:3]] == [0.5, 1.0, 2.0]
    assert_no_traceback(watcher)


def test_two_daemons_elect_one_leader_and_fail_over(cli: Cli, client: redis.Redis) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    with watching(cli, name="one") as one, watching(cli, name="two") as two:
        wait_for(lambda: one.is_healthy() and two.is_healthy(), 30, "both daemons")
        for _ in range(10):  # exactly one leader, continuously
            assert [one.is_leader(), two.is_leader()].count(True) == 1
            time.sleep(0.2)
        leader, follower = (one, two) if one.is_leader() else (two, one)
        assert follower.health()[1]["role"] == "follower"
        assert "reconciled" not in follower.log()  # a follower never applies
        leader.proc.kill()
        took = wait_for(follower.is_leader, LEASE_TTL + 5, "the follower to take over")
        assert took < LEASE_TTL + 2, f"took over after {took:.1f} s"
        cli.write("a.yaml", taskfile({"name": "a"}, {"name": "b"}))
        wait_for(lambda: "b" in rows(cli), 10, "the new leader to apply an edit")
        wait_for(lambda: payload(client, rows(cli)["b"][0]), 5, "the new schedule")
        assert follower.stop() == 0
    assert_no_traceback(one, two)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_cleanly_and_releases_the_lease(
    cli: Cli, client: redis.Redis, sig: int
) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    with watching(cli) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        assert client.exists(LEASE_KEY)
        assert watcher.stop(sig) == 0
    assert not client.exists(LEASE_KEY)  # released: a follower need not wait for the TTL
    assert "stopped" in watcher.log()
    assert_no_traceback(watcher)

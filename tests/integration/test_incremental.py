"""The daemon's incremental reconcile on real PostgreSQL and Redis, in process.

A file change is re-planned alone against the daemon's view of the stores; a write by
anyone else (a pause, a hand edit of a row), a broken file or a duplicate name makes it
read and plan everything instead, with the very same result as the full path; and the
periodic resync still repairs drift the incremental path does not look at. The loop is
driven by `Daemon.tick` with the batches watchfiles would yield and a clock the test
moves; the stores, the lease and the reconcile are the real ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from watchfiles import Change

from syncd.adapters.lease import Lease
from syncd.cli.common import catalog
from syncd.core.guards import SyncOptions
from syncd.core.settings import Settings
from syncd.daemon.watch import Daemon, WatchConfig
from syncd.reconcile import Outcome, open_stores, reconcile_once
from tests.conftest import WriteTaskdef

RESYNC = 600.0
TASK = """
  - name: {name}
    task_type: diagnostics.noop
    schedule: {{interval: {interval}}}
"""


def taskfile(*tasks: tuple[str, int]) -> str:
    return "version: 1\ntasks:" + "".join(TASK.format(name=n, interval=i) for n, i in tasks)


class Clock:
    """The daemon's monotonic clock, moved by the test (resyncs come when it says)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    daemon: Daemon
    clock: Clock
    settings: Settings
    conn: redis.Redis
    root: Path

    def changed(self, *names: str) -> None:
        """One watchfiles batch naming these files, as an editor's save yields it."""
        self.daemon.tick({(Change.modified, str(self.root / name)) for name in names})

    def paths(self, path: str) -> float:
        sample = self.daemon.metrics.registry.get_sample_value
        return sample("syncd_reconcile_paths_total", {"path": path}) or 0.0

    def config_id(self, name: str) -> int:
        engine = create_engine(self.settings.database_url)
        try:
            with engine.connect() as conn:
                query = text("SELECT id FROM task_configs WHERE name = :n")
                return int(conn.execute(query, {"n": name}).scalar_one())
        finally:
            engine.dispose()

    def payload(self, name: str) -> dict[str, Any] | None:
        raw = self.conn.get(f"syncd:data:task_{self.config_id(name)}")
        return json.loads(raw) if raw else None

    def status(self, name: str) -> str | None:
        raw = self.conn.get(f"schedule:status:{self.config_id(name)}")
        return raw.decode() if raw else None

    def full_plan(self) -> Outcome:
        """What `syncd plan` says now: the full path, read only."""
        with open_stores(self.settings) as stores:
            return reconcile_once(
                self.root, stores, catalog(), datetime.now(UTC), options=SyncOptions(dry_run=True)
            )


@pytest.fixture
def rig(
    fresh_migrated_url: str, redis_url: str, taskdefs: Path, write: WriteTaskdef
) -> Iterator[Rig]:
    write("a.yaml", taskfile(("a1", 60), ("a2", 60)))
    write("b.yaml", taskfile(("b1", 60)))
    settings = Settings(database_url=fresh_migrated_url, redis_url=redis_url)
    lease = Lease.from_url(redis_url, settings.layout.lease_key, ttl=600)
    lease.refresh()
    clock = Clock()
    daemon = Daemon(
        WatchConfig(taskdefs, resync_interval=RESYNC),
        stores=lambda: open_stores(settings),
        catalog=catalog(),
        lease=lease,
        clock=clock,
    )
    conn = redis.Redis.from_url(redis_url)
    try:
        daemon.tick(set())  # the first reconcile: full, and the base of the view
        assert daemon.health()[0] == 200, daemon.health()
        yield Rig(daemon, clock, settings, conn, taskdefs)
    finally:
        daemon.close()
        lease.close()
        conn.close()


def reconciled(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The structured fields of each `reconciled` line."""
    return [r.__dict__["fields"] for r in caplog.records if r.getMessage().startswith("reconciled")]


def test_an_edit_is_applied_by_the_incremental_path(
    rig: Rig, write: WriteTaskdef, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.watch")
    write("a.yaml", taskfile(("a1", 61), ("a2", 60), ("a3", 90)))
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 1
    assert reconciled(caplog)[-1] | {"duration_ms": 0} == {
        "trigger": "change",
        "path": "incremental",
        "duration_ms": 0,
        "created": 1,
        "updated": 1,
        "deleted": 0,
        "drift": 0,
        "frozen": 0,
        "redis_ops": 3,
    }
    assert (rig.payload("a1") or {})["interval"] == 61
    assert (rig.payload("a3") or {})["interval"] == 90
    assert rig.status("a3") == "active"
    assert rig.full_plan().plan.is_empty  # exactly where the full path would have left it
    # A removed task is deleted by the same path, within the guards' limits.
    write("a.yaml", taskfile(("a1", 61), ("a3", 90)))
    a2 = rig.config_id("a2")
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 2
    assert rig.conn.get(f"syncd:data:task_{a2}") is None
    assert rig.conn.get(f"schedule:status:{a2}") is None
    assert rig.full_plan().plan.is_empty


def test_a_pause_elsewhere_makes_the_next_edit_read_everything(
    rig: Rig, write: WriteTaskdef, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.watch")
    with open_stores(rig.settings) as stores:  # as `syncd pause b1` writes it
        stores.redis.set_status(rig.config_id("b1"), "paused")
    write("b.yaml", taskfile(("b1", 75)))
    rig.changed("b.yaml")
    assert rig.paths("incremental") == 0
    assert rig.paths("full") == 2
    assert reconciled(caplog)[-1]["fallback"] == "Redis written elsewhere"
    assert (rig.payload("b1") or {})["interval"] == 75
    assert rig.status("b1") == "paused"  # the operator's pause is kept
    assert rig.full_plan().plan.is_empty
    write("a.yaml", taskfile(("a1", 62), ("a2", 60)))  # the view is sound again
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 1
    assert rig.status("b1") == "paused"


def test_a_row_written_elsewhere_makes_the_next_edit_read_everything(
    rig: Rig, write: WriteTaskdef, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.watch")
    engine = create_engine(rig.settings.database_url)
    with engine.begin() as conn:  # a hand edit: nothing in Redis moves
        conn.execute(text("UPDATE task_configs SET priority = 9 WHERE name = 'b1'"))
    engine.dispose()
    write("a.yaml", taskfile(("a1", 63), ("a2", 60)))
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 0
    entry = reconciled(caplog)[-1]
    assert entry["fallback"] == "task_configs written elsewhere"
    assert entry["drift"] == 1  # the edited row, repaired by the full path
    assert (rig.payload("a1") or {})["interval"] == 63
    assert rig.full_plan().plan.is_empty


def test_a_broken_file_edited_in_is_frozen_exactly_as_by_the_full_path(
    rig: Rig, write: WriteTaskdef, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.watch")
    ids = {name: rig.config_id(name) for name in ("a1", "a2")}
    write("a.yaml", "version: 1\ntasks:\n  - name: a1\n    task_type: [broken\n")
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 0
    assert reconciled(caplog)[-1]["fallback"] == "taskdef errors"
    assert reconciled(caplog)[-1]["frozen"] == 2
    for name, config_id in ids.items():  # never pruned: frozen as last applied
        assert rig.config_id(name) == config_id
        assert (rig.payload(name) or {})["interval"] == 60
    plan = rig.full_plan().plan
    assert plan.is_empty
    assert {t.name: t.state for t in plan.tasks if t.state == "frozen"} == {
        "a1": "frozen",
        "a2": "frozen",
    }
    # While a file is broken, an edit elsewhere still applies, by the full path.
    write("b.yaml", taskfile(("b1", 80)))
    rig.changed("b.yaml")
    assert rig.paths("incremental") == 0
    assert (rig.payload("b1") or {})["interval"] == 80
    assert rig.full_plan().plan.is_empty


def test_a_duplicate_name_edited_in_is_refused_exactly_as_by_the_full_path(
    rig: Rig, write: WriteTaskdef, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "syncd.watch")
    a1 = rig.config_id("a1")
    write("b.yaml", taskfile(("b1", 60), ("a1", 99)))
    rig.changed("b.yaml")
    assert rig.paths("incremental") == 0
    assert reconciled(caplog)[-1]["fallback"] == "taskdef errors"
    assert rig.config_id("a1") == a1
    assert (rig.payload("a1") or {})["interval"] == 60  # a.yaml, which applied it, keeps it
    full = rig.full_plan()
    assert full.plan.is_empty
    assert full.plan.broken_sources == ("b.yaml",)
    assert any("duplicate task name 'a1'" in p.message for p in full.loaded.errors)


def test_the_resync_repairs_drift_the_incremental_path_does_not_look_at(
    rig: Rig, write: WriteTaskdef
) -> None:
    b1 = rig.config_id("b1")
    rig.conn.delete(f"syncd:data:task_{b1}")  # by hand: the version key does not move
    rig.conn.lrem("syncd:interval", 0, f"task_{b1}")
    write("a.yaml", taskfile(("a1", 64), ("a2", 60)))
    rig.changed("a.yaml")
    assert rig.paths("incremental") == 1
    assert rig.payload("b1") is None  # not b.yaml's turn
    rig.clock.now += RESYNC
    rig.daemon.tick(set())
    assert rig.paths("full") == 2
    assert (rig.payload("b1") or {})["interval"] == 60
    assert f"task_{b1}".encode() in rig.conn.lrange("syncd:interval", 0, -1)
    sample = rig.daemon.metrics.registry.get_sample_value
    assert sample("syncd_drift_repaired_total") == 1.0


def test_a_burst_of_files_is_held_until_quiet_and_reconciled_once(
    rig: Rig, write: WriteTaskdef
) -> None:
    write("a.yaml", taskfile(("a1", 65), ("a2", 65)))
    write("b.yaml", taskfile(("b1", 65)))
    rig.changed("a.yaml", "b.yaml")  # a checkout's first batch: held, not reconciled
    assert rig.paths("incremental") == 0
    write("c.yaml", taskfile(("c1", 65)))
    rig.clock.now += 0.1
    rig.changed("c.yaml")  # still part of the burst
    assert rig.paths("incremental") + rig.paths("full") == 1
    rig.clock.now += 1.0
    rig.daemon.tick(set())  # quiet: one reconcile of all three files
    assert rig.paths("incremental") + rig.paths("full") == 2
    for name in ("a1", "a2", "b1", "c1"):
        assert (rig.payload(name) or {})["interval"] == 65
    assert rig.full_plan().plan.is_empty

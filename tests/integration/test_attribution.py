"""Executions that remember their task, on a real PostgreSQL and Redis.

The recorder stores the task name, content hash and git revision of the labels syncd
puts on a schedule; a weird label costs only its column. The reader finds a deleted
task's history by name, computes the failure streak and each task's activity in one
query. A sync in a git repository labels each schedule with its row's revision, and a
commit that changes no task rewrites nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Connection

from syncd.adapters.postgres import DbStore
from syncd.cli.common import catalog
from syncd.core.guards import SyncOptions
from syncd.core.model import TaskConfig
from syncd.core.payloads import schedule_labels
from syncd.core.settings import Settings
from syncd.reconcile import Stores, open_stores, reconcile_once
from tests.conftest import WriteTaskdef
from tests.gitrepo import git
from tests.integration.test_recorder import add_config, conninfo, one_row, worker

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def db(fresh_migrated_url: str) -> Iterator[DbStore]:
    store = DbStore.from_url(fresh_migrated_url)
    yield store
    store.close()


def interval_task(name: str) -> TaskConfig:
    return TaskConfig(name, "diagnostics.noop", "interval", {"interval": 60})


# ---------------------------------------------------------------- the recorder


async def test_the_recorder_stores_the_task_as_it_fired(
    fresh_migrated_url: str, spool: Path
) -> None:
    config_id = await add_config(fresh_migrated_url)
    config = interval_task("nightly-export")
    labels = schedule_labels(config_id, config, "default", revision=REVISION)
    async with worker(fresh_migrated_url, spool) as w:
        ok = await w.kick("succeed", **labels)
        failed = await w.kick("fail", **labels)

    for task_id in (ok, failed):
        row = await one_row(fresh_migrated_url, task_id)
        assert (row["task_name"], row["config_hash"], row["git_revision"]) == (
            "nightly-export",
            config.content_hash(),
            REVISION,
        )


@pytest.mark.parametrize(
    "weird",
    [
        {"task_name": 12, "config_hash": 3.5, "git_revision": True},
        {"task_name": "x" * 201, "config_hash": "h" * 65, "git_revision": "r" * 65},
        {"task_name": "a\x00b", "config_hash": "", "git_revision": b"\xff"},
        {},  # a message sent by an older syncd, or by hand
    ],
)
async def test_a_weird_label_is_stored_as_null_and_the_run_is_kept(
    fresh_migrated_url: str, spool: Path, weird: dict[str, Any]
) -> None:
    async with worker(fresh_migrated_url, spool) as w:
        task_id = await w.kick("succeed", config_id=await add_config(fresh_migrated_url), **weird)

    row = await one_row(fresh_migrated_url, task_id)
    assert row["is_success"] is True
    assert (row["task_name"], row["config_hash"], row["git_revision"]) == (None, None, None)


# ---------------------------------------------------------------- the reader


def insert_run(
    url: str, config_id: int | None, name: str | None, minutes_ago: float, **values: Any
) -> None:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    row: dict[str, Any] = {
        "config_id": config_id,
        "task_id": uuid.uuid4().hex,
        "is_success": True,
        "started_at": started,
        "completed_at": started + timedelta(seconds=2),
        "duration_seconds": 2,
        "task_name": name,
        "config_hash": None,
        "git_revision": None,
        **values,
    }
    columns = ", ".join(row)
    marks = ", ".join(f"%({c})s" for c in row)
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute(f"INSERT INTO task_executions ({columns}) VALUES ({marks})", row)  # noqa: S608


def delete_config(url: str, config_id: int) -> None:
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute("DELETE FROM task_configs WHERE id = %s", (config_id,))


def config_name(url: str, config_id: int) -> str:
    with psycopg.connect(conninfo(url)) as conn:
        found = conn.execute("SELECT name FROM task_configs WHERE id = %s", (config_id,))
        return str(found.fetchone()[0])  # type: ignore[index]


class Queries:
    """Counts the statements an engine runs."""

    def __init__(self, db: DbStore) -> None:
        self.count = 0
        event.listen(db._engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Connection, *args: Any) -> None:
        self.count += 1


async def test_history_by_name_outlives_the_config_and_keeps_old_rows(
    fresh_migrated_url: str, db: DbStore
) -> None:
    old_id = await add_config(fresh_migrated_url)
    name = config_name(fresh_migrated_url, old_id)
    insert_run(fresh_migrated_url, old_id, name, 30, git_revision="aaa")
    delete_config(fresh_migrated_url, old_id)  # its runs keep their rows, config_id NULL
    new_id = await add_config(fresh_migrated_url)
    with psycopg.connect(conninfo(fresh_migrated_url)) as conn:
        conn.execute("UPDATE task_configs SET name = %s WHERE id = %s", (name, new_id))
    insert_run(fresh_migrated_url, new_id, None, 20)  # recorded before the columns existed: NULL
    insert_run(fresh_migrated_url, new_id, name, 10, is_success=False, git_revision="bbb")
    insert_run(fresh_migrated_url, None, "someone-else", 5)

    runs = db.executions.recent(name, False, None, 10)

    assert [(r.config_id, r.git_revision) for r in runs] == [
        (new_id, "bbb"),
        (new_id, None),
        (None, "aaa"),
    ]
    assert [r.name for r in runs] == [name, name, None]
    assert runs[2].task_name == name
    assert [r.git_revision for r in db.executions.recent(name, True, None, 10)] == ["bbb"]
    assert len(db.executions.recent(name, False, None, 2)) == 2
    assert len(db.executions.recent(None, False, None, 10)) == 4


async def test_failing_since_is_one_query(fresh_migrated_url: str, db: DbStore) -> None:
    config_id = await add_config(fresh_migrated_url)
    name = config_name(fresh_migrated_url, config_id)
    insert_run(fresh_migrated_url, config_id, name, 40, git_revision="good")
    for minutes in (30, 20, 10):
        insert_run(
            fresh_migrated_url, config_id, name, minutes, is_success=False, git_revision="bad"
        )
    queries = Queries(db)

    found = db.executions.failing_since(name)

    assert queries.count == 1
    assert found is not None
    assert (found.failures, found.runs, found.revision, found.attributed) == (3, 4, "bad", True)
    assert db.executions.failing_since("no-such-task") is None


async def test_activity_of_every_task_is_one_query(fresh_migrated_url: str, db: DbStore) -> None:
    ids = [await add_config(fresh_migrated_url) for _ in range(3)]
    busy, failing, idle = ids
    insert_run(fresh_migrated_url, busy, "busy", 30)
    insert_run(fresh_migrated_url, busy, "busy", 10, is_success=False, duration_seconds=7.5)
    insert_run(fresh_migrated_url, failing, "failing", 10, is_success=False)
    queries = Queries(db)

    activity = db.executions.activity(ids)

    assert queries.count == 1
    assert set(activity) == set(ids)
    now = datetime.now(UTC)
    assert all(now - timedelta(minutes=1) < a.registered_at <= now for a in activity.values())
    busy_runs = activity[busy]
    assert busy_runs.last_duration == 7.5
    assert busy_runs.last_started is not None
    assert busy_runs.last_success is not None
    ten_minutes = pytest.approx(timedelta(minutes=10), abs=timedelta(minutes=1))
    assert now - busy_runs.last_started == ten_minutes
    assert busy_runs.last_success < busy_runs.last_started
    assert (activity[failing].last_success, activity[idle].last_started) == (None, None)
    assert db.executions.activity([]) == {}


# ---------------------------------------------------------------- sync in a git repository


def sync(root: Path, stores: Stores) -> Any:
    return reconcile_once(root, stores, catalog(), datetime.now(UTC), options=SyncOptions())


def payload_labels(stores: Stores, name: str) -> dict[str, Any]:
    row = stores.db.get_row(name)
    assert row is not None
    record = stores.redis.read_schedules()[f"task_{row.id}"]
    assert record.payload is not None
    labels: dict[str, Any] = record.payload["labels"]
    assert labels["git_revision"] == row.git_revision  # always the row's own
    assert labels["config_hash"] == row.stored_hash
    return labels


def test_schedules_carry_their_rows_revision_across_commits(
    fresh_migrated_url: str, redis_url: str, taskdefs: Path, write: WriteTaskdef
) -> None:
    git(taskdefs, "init", "-q")
    write("a.yaml", "version: 1\ntasks:\n  - {name: a, task_type: diagnostics.noop, "
                    "schedule: {interval: 60}}\n")  # fmt: skip
    write("b.yaml", "version: 1\ntasks:\n  - {name: b, task_type: diagnostics.noop, "
                    "schedule: {interval: 90}}\n")  # fmt: skip
    git(taskdefs, "add", ".")
    git(taskdefs, "commit", "-qm", "one")
    first = git(taskdefs, "rev-parse", "HEAD")
    settings = Settings(database_url=fresh_migrated_url, redis_url=redis_url)
    with open_stores(settings) as stores:
        assert sync(taskdefs, stores).applied is not None
        assert payload_labels(stores, "a")["git_revision"] == first

        # A commit touching no task: nothing is rewritten, the labels keep `first`.
        (taskdefs / "README").write_text("notes\n")
        git(taskdefs, "add", ".")
        git(taskdefs, "commit", "-qm", "docs")
        assert sync(taskdefs, stores).applied is None
        assert payload_labels(stores, "a")["git_revision"] == first

        # A commit changing b: only b's row and schedule move to the new revision.
        write("b.yaml", "version: 1\ntasks:\n  - {name: b, task_type: diagnostics.noop, "
                        "schedule: {interval: 30}}\n")  # fmt: skip
        git(taskdefs, "commit", "-qam", "faster b")
        third = git(taskdefs, "rev-parse", "HEAD")
        outcome = sync(taskdefs, stores)
        assert [t.name for t in outcome.plan.changed] == ["b"]
        assert payload_labels(stores, "b")["git_revision"] == third
        assert payload_labels(stores, "a")["git_revision"] == first
        assert sync(taskdefs, stores).applied is None

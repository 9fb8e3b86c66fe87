"""DbStore on a real PostgreSQL: round trips, managed-only writes, the sync lock, bulk speed."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from syncd.adapters.postgres import SYNC_LOCK_KEY, DbStore
from syncd.core.errors import ConflictError, SchemaMissing, StoreUnavailable
from syncd.core.model import DesiredTask, Row
from tests.integration.rows import desired
from tests.services import PG_ADMIN_DSN

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x"
BULK = 10_000


def expected_row(task: DesiredTask, row_id: int, revision: str | None) -> Row:
    return Row(
        id=row_id,
        config=task.config,
        stored_hash=task.config.content_hash(),
        source_file=task.source,
        source_line=task.line,
        git_revision=revision,
    )


def insert_unmanaged(sql: Engine, name: str) -> int:
    with sql.begin() as conn:
        return int(
            conn.execute(
                text(
                    "INSERT INTO task_configs (name, task_type, scheduler_type, parameters,"
                    " schedule_config, max_retries, priority, enabled, managed_by, content_hash)"
                    " VALUES (:name, 'data.export', 'manual', '{}', '{}', 0, 5, true, 'ops', '-')"
                    " RETURNING id"
                ),
                {"name": name},
            ).scalar_one()
        )


def count(sql: Engine, where: str, **params: Any) -> int:
    with sql.connect() as conn:
        # `where` is a literal from the tests themselves; values go through bound params.
        query = text(f"SELECT count(*) FROM task_configs WHERE {where}")  # noqa: S608
        return int(conn.execute(query, params).scalar_one())


VARIED = [
    desired("cron-task"),
    desired(
        "interval-task",
        scheduler_type="interval",
        schedule_config={"interval": 300},
        retry_backoff_seconds=0.1,
        retry_backoff_max_seconds=86400.0,
    ),
    desired(
        "date-task",
        scheduler_type="date",
        schedule_config={"at": "2026-12-01T09:00:00+00:00"},
        timeout_seconds=None,
        retry_backoff_seconds=0.0,
        retry_backoff_max_seconds=0.0,
    ),
    desired(
        "manual-task",
        scheduler_type="manual",
        schedule_config={},
        enabled=False,
        description="",
        parameters={
            "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
            "unicode": "Grüße, 你好 ✓",
            'quote"key': "it's",
            "big": 2**53,
        },
    ),
]


def test_create_round_trips_every_field(store: DbStore) -> None:
    ids = store.apply(VARIED, [], [], "abc123")

    rows, unmanaged = store.read_rows()

    assert set(ids) == {t.name for t in VARIED}
    assert unmanaged == frozenset()
    assert rows == {t.name: expected_row(t, ids[t.name], "abc123") for t in VARIED}
    for row in rows.values():
        # What comes back hashes like what went in: a no-op sync stays a no-op.
        assert row.config.content_hash() == row.stored_hash
        assert store.get_row(row.config.name) == row
    assert store.get_row("no-such-task") is None


def test_update_changes_fields_hash_and_revision(store: DbStore, sql: Engine) -> None:
    ids = store.apply([desired("a"), desired("b")], [], [], "rev1")
    changed = desired(
        "a",
        description="now hourly",
        scheduler_type="interval",
        schedule_config={"interval": 3600},
        parameters={"path": "/srv"},
        max_retries=0,
        retry_backoff_seconds=2.5,
        retry_backoff_max_seconds=30.0,
        timeout_seconds=None,
        priority=9,
        enabled=False,
    )
    before = store.get_row("a")

    result = store.apply([], [(ids["a"], changed)], [], "rev2")

    after = store.get_row("a")
    assert result == {"a": ids["a"]}
    assert after == expected_row(changed, ids["a"], "rev2")
    assert before is not None
    assert after is not None
    assert after.stored_hash != before.stored_hash
    assert (after.config.retry_backoff_seconds, after.config.retry_backoff_max_seconds) == (
        2.5,
        30.0,
    )
    assert count(sql, "name = 'a' AND updated_at IS NOT NULL") == 1
    assert count(sql, "name = 'b' AND updated_at IS NULL AND git_revision = 'rev1'") == 1


def test_delete_removes_only_managed_rows(store: DbStore, sql: Engine) -> None:
    ids = store.apply([desired("a"), desired("b")], [], [], None)
    foreign = insert_unmanaged(sql, "hand-made")

    rows, unmanaged = store.read_rows()
    assert set(rows) == {"a", "b"}
    assert unmanaged == {"hand-made"}
    assert store.get_row("hand-made") is None

    store.apply([], [], [ids["a"], foreign], None)

    rows, unmanaged = store.read_rows()
    assert set(rows) == {"b"}
    assert unmanaged == {"hand-made"}
    assert count(sql, "id = :id AND managed_by = 'ops'", id=foreign) == 1


def test_a_failed_apply_changes_nothing(store: DbStore, sql: Engine) -> None:
    ids = store.apply([desired("keep")], [], [], "rev1")
    foreign = insert_unmanaged(sql, "hand-made")

    # Updating a row syncd does not manage aborts the whole transaction.
    with pytest.raises(ConflictError, match="no longer managed by syncd"):
        store.apply([desired("new")], [(foreign, desired("hand-made"))], [ids["keep"]], "rev2")

    rows, unmanaged = store.read_rows()
    assert set(rows) == {"keep"}
    assert rows["keep"].git_revision == "rev1"
    assert unmanaged == {"hand-made"}
    assert count(sql, "name = 'hand-made' AND task_type = 'data.export'") == 1


def test_deleting_a_config_keeps_its_history(store: DbStore, sql: Engine) -> None:
    ids = store.apply([desired("a")], [], [], None)
    with sql.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_executions (config_id, task_id, is_success, started_at,"
                " completed_at) VALUES (:id, 't1', true, now(), now())"
            ),
            {"id": ids["a"]},
        )

    store.apply([], [], [ids["a"]], None)

    with sql.connect() as conn:
        history = conn.execute(text("SELECT config_id, task_id FROM task_executions")).all()
    assert [tuple(row) for row in history] == [(None, "t1")]


def test_names_are_unique(store: DbStore, sql: Engine) -> None:
    store.apply([desired("a")], [], [], None)
    insert_unmanaged(sql, "hand-made")

    for batch in ([desired("a")], [desired("b"), desired("b")], [desired("hand-made")]):
        with pytest.raises(ConflictError, match="already taken") as caught:
            store.apply(batch, [], [], None)
        assert isinstance(caught.value.__cause__, SQLAlchemyError)

    rows, unmanaged = store.read_rows()
    assert set(rows) == {"a"}
    assert unmanaged == {"hand-made"}


def test_sync_lock_excludes_a_second_holder(store: DbStore, migrated_url: str) -> None:
    other = DbStore.from_url(migrated_url)  # its own engine, like another syncd process
    try:
        with store.sync_lock():
            started = time.monotonic()
            with pytest.raises(ConflictError, match="advisory lock held"):  # noqa: SIM117
                with other.sync_lock(wait_seconds=0.5):
                    pytest.fail("two holders of the sync lock")
            assert 0.5 <= time.monotonic() - started < 3

        with other.sync_lock(wait_seconds=0.5):
            pass
    finally:
        other.close()


def test_sync_lock_is_released_when_the_block_raises(store: DbStore) -> None:
    with pytest.raises(RuntimeError), store.sync_lock():
        raise RuntimeError("sync failed")

    with store.sync_lock(wait_seconds=0.5):
        pass


def test_a_waiting_sync_gets_the_lock_when_a_dead_holder_goes(
    store: DbStore, migrated_url: str
) -> None:
    dbname = migrated_url.rsplit("/", 1)[1]
    holder = psycopg.connect(PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"))
    holder.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK_KEY,))
    # The holder's session ends without unlocking, as when its process is killed.
    threading.Timer(0.3, holder.close).start()

    started = time.monotonic()
    with store.sync_lock(wait_seconds=5):
        waited = time.monotonic() - started
    assert 0.2 < waited < 3


def test_bulk_apply_of_10000_rows(store: DbStore) -> None:
    tasks = [
        desired(f"bulk-{i:05d}", priority=1 + i % 10, parameters={"i": i, "tags": [str(i)]})
        for i in range(BULK)
    ]

    started = time.perf_counter()
    ids = store.apply(tasks, [], [], "bulk")
    created = time.perf_counter() - started
    rows, _ = store.read_rows()
    read = time.perf_counter() - started - created

    assert len(set(ids.values())) == BULK
    assert rows == {t.name: expected_row(t, ids[t.name], "bulk") for t in tasks}
    assert created < 2.0, f"10,000 creates took {created:.2f} s"
    assert read < 2.0, f"reading 10,000 rows took {read:.2f} s"

    updated = [(ids[t.name], replace(t, config=replace(t.config, priority=10))) for t in tasks]
    started = time.perf_counter()
    assert store.apply([], updated, [], "bulk2") == ids
    store.apply([], [], list(ids.values()), "bulk3")
    changed = time.perf_counter() - started

    assert store.read_rows() == ({}, frozenset())
    assert changed < 2.0, f"10,000 updates and deletes took {changed:.2f} s"


def test_a_missing_schema_is_reported_as_such(fresh_database_url: str) -> None:
    store = DbStore.from_url(fresh_database_url)
    try:
        with pytest.raises(SchemaMissing, match=r"run `syncd migrate`"):
            store.read_rows()
        with pytest.raises(SchemaMissing):
            store.get_row("a")
        with pytest.raises(SchemaMissing):
            store.apply([desired("a")], [], [], None)
    finally:
        store.close()


def test_a_missing_database_says_run_migrate(migrated_url: str) -> None:
    store = DbStore.from_url(f"{migrated_url}_missing")
    try:
        with pytest.raises(SchemaMissing, match=r"_missing\" does not exist: run `syncd migrate`"):
            store.check_schema()
        with pytest.raises(SchemaMissing):
            store.read_rows()
    finally:
        store.close()


def test_an_unreachable_server_is_store_unavailable() -> None:
    store = DbStore.from_url(UNREACHABLE)
    try:
        with pytest.raises(StoreUnavailable, match=r"PostgreSQL at 127\.0\.0\.1:1/x: ") as caught:
            store.read_rows()
        assert isinstance(caught.value.__cause__, SQLAlchemyError)
        with pytest.raises(StoreUnavailable), store.sync_lock():
            pass
    finally:
        store.close()


@pytest.mark.parametrize(
    "url", ["not a url", "mysql://u:secret@h/db", "postgresql+psycopg2://u:secret@h/db"]
)
def test_a_bad_url_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(StoreUnavailable, match="expected postgresql") as caught:
        DbStore.from_url(url)
    assert "secret" not in str(caught.value)

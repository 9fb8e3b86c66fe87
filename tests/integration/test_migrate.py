"""`syncd migrate` on a real PostgreSQL: database creation, idempotence, schema checks, drift."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, Engine, create_engine, inspect, text

from schemas.tables import metadata
from syncd.adapters.migrate import (
    MigrateResult,
    alembic_config,
    current_revision,
    head_revision,
    migrate,
)
from syncd.adapters.postgres import DbStore
from syncd.core.errors import SchemaMissing, StoreUnavailable
from syncd.core.model import TaskConfig
from tests.services import PG_URL_BASE, drop_database

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x"


@pytest.fixture
def new_database() -> Iterator[tuple[str, str]]:
    """A database name that does not exist yet (needs quoting: '-' and capitals) and its URL."""
    name = f"syncd_test_New-DB_{uuid.uuid4().hex[:8]}"
    try:
        yield name, f"{PG_URL_BASE}/{name}"
    finally:
        drop_database(name)


@pytest.fixture
def engine(fresh_database_url: str) -> Iterator[Engine]:
    engine = create_engine(fresh_database_url)
    yield engine
    engine.dispose()


# The newest migration in syncd/migrations/versions; bump it with each new migration.
HEAD = "0005"


def test_head_revision_is_the_newest_migration() -> None:
    assert head_revision() == HEAD


def test_migrate_creates_a_missing_database_then_is_a_no_op(new_database: tuple[str, str]) -> None:
    name, url = new_database

    first = migrate(url)
    second = migrate(url)

    assert first == MigrateResult(created_database=True, from_revision=None, to_revision=HEAD)
    assert first.changed
    assert second == MigrateResult(created_database=False, from_revision=HEAD, to_revision=HEAD)
    assert not second.changed
    engine = create_engine(url)
    try:
        assert {"task_configs", "task_executions"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == name
    finally:
        engine.dispose()


def test_concurrent_migrates_take_turns(new_database: tuple[str, str]) -> None:
    _, url = new_database
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(migrate, [url, url]))

    assert sorted(r.created_database for r in results) == [False, True]
    assert sorted(str(r.from_revision) for r in results) == sorted([HEAD, "None"])
    assert {r.to_revision for r in results} == {HEAD}


def test_check_schema_fails_before_migrate_and_passes_after(
    fresh_database_url: str, engine: Engine
) -> None:
    store = DbStore.from_url(fresh_database_url)
    try:
        with pytest.raises(SchemaMissing, match=r"run `syncd migrate`"):
            store.check_schema()
        assert current_revision(engine) is None

        result = migrate(fresh_database_url)

        assert result == MigrateResult(False, None, HEAD)
        store.check_schema()
        assert current_revision(engine) == HEAD
    finally:
        store.close()


@pytest.mark.parametrize(
    "damage",
    ["UPDATE alembic_version SET version_num = '0000_older'", "DROP TABLE task_executions"],
)
def test_check_schema_rejects_a_schema_not_at_head(
    fresh_database_url: str, engine: Engine, damage: str
) -> None:
    migrate(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(text(damage))
    store = DbStore.from_url(fresh_database_url)
    try:
        with pytest.raises(SchemaMissing):
            store.check_schema()
    finally:
        store.close()


def test_migrate_refuses_a_revision_it_does_not_know(
    fresh_database_url: str, engine: Engine
) -> None:
    migrate(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))

    with pytest.raises(SchemaMissing, match="9999_from_the_future"):
        migrate(fresh_database_url)


def test_models_and_migration_do_not_drift(fresh_database_url: str, engine: Engine) -> None:
    migrate(fresh_database_url)

    assert schema_diffs(engine) == []
    # autogenerate ignores CHECK constraints: compare their names separately.
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        reflected = {c["name"] for c in inspector.get_check_constraints(table.name)}
        declared = {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
        assert reflected == declared, table.name


def test_drift_check_sees_a_changed_index(fresh_database_url: str, engine: Engine) -> None:
    """Control for the test above: an ascending index where the model says DESC is a diff."""
    migrate(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_task_executions_config_id_completed_at"))
        conn.execute(
            text(
                "CREATE INDEX ix_task_executions_config_id_completed_at "
                "ON task_executions (config_id, completed_at)"
            )
        )

    assert {diff[0] for diff in schema_diffs(engine)} == {"add_index", "remove_index"}


def test_drift_check_sees_a_changed_server_default(fresh_database_url: str, engine: Engine) -> None:
    """Control: the backoff columns' defaults are compared too, not only their presence."""
    migrate(fresh_database_url)
    with engine.begin() as conn:
        conn.execute(
            text("ALTER TABLE task_configs ALTER COLUMN retry_backoff_seconds SET DEFAULT 7")
        )

    assert [diff[0][0] for diff in schema_diffs(engine)] == ["modify_default"]


# What syncd computed for that config before the backoff fields existed.
HASH_BEFORE_0003 = "bf94111a725b00251d4261c86268222f814bfb02d6f351510b3fa2b505147f8a"


def upgrade_to(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_0003_gives_rows_written_before_it_the_default_backoff(
    fresh_database_url: str, engine: Engine
) -> None:
    """A row written by a syncd without the backoff columns reads back as a task at the
    defaults, whose hash is the one that syncd stored: the upgrade plans no row change."""
    config = TaskConfig(
        name="old",
        task_type="data.export",
        scheduler_type="interval",
        schedule_config={"interval": 60},
        max_retries=2,
    )
    upgrade_to(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO task_configs (name, task_type, scheduler_type, parameters,"
                " schedule_config, max_retries, priority, enabled, content_hash)"
                " VALUES ('old', 'data.export', 'interval', '{}', '{\"interval\": 60}',"
                " 2, 5, true, :hash)"
            ),
            {"hash": HASH_BEFORE_0003},
        )

    result = migrate(fresh_database_url)

    assert result == MigrateResult(False, "0002", HEAD)
    store = DbStore.from_url(fresh_database_url)
    try:
        row = store.get_row("old")
    finally:
        store.close()
    assert row is not None
    assert (row.config.retry_backoff_seconds, row.config.retry_backoff_max_seconds) == (5.0, 600.0)
    assert row.config == config
    assert row.config.content_hash() == row.stored_hash == HASH_BEFORE_0003


def schema_diffs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))


def test_unreachable_server_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match=r"PostgreSQL at 127\.0\.0\.1:1/x") as caught:
        migrate(UNREACHABLE)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)

    store = DbStore.from_url(UNREACHABLE)
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/x"):
            store.check_schema()
    finally:
        store.close()

    engine = create_engine(UNREACHABLE)
    with pytest.raises(StoreUnavailable):
        current_revision(engine)
    engine.dispose()

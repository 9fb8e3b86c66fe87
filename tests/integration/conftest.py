"""Fixtures of the integration tests: the session's database, migrated, and a plain engine
for the tests' own SQL (setup by hand, and checks behind the stores' backs); a fresh
migrated database for a test that needs one to itself; the recorder's spool file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from syncd.adapters.migrate import migrate
from syncd.adapters.postgres import DbStore


@pytest.fixture(scope="module")
def migrated_url(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture(scope="module")
def sql(migrated_url: str) -> Iterator[Engine]:
    engine = create_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def fresh_migrated_url(fresh_database_url: str) -> str:
    migrate(fresh_database_url)
    return fresh_database_url


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "recorder.jsonl"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the test's Redis database, to look behind syncd's back."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def store(migrated_url: str, sql: Engine) -> Iterator[DbStore]:
    """A DbStore on the module's migrated database, emptied first (modules about Redis
    define their own `store`)."""
    with sql.begin() as conn:
        conn.execute(text("TRUNCATE task_executions, task_configs RESTART IDENTITY"))
    store = DbStore.from_url(migrated_url)
    yield store
    store.close()

"""Fixtures of the integration tests: the session's database, migrated, and a plain engine
for the tests' own SQL (setup by hand, and checks behind the stores' backs); a fresh
migrated database for a test that needs one to itself; the recorder's spool file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from syncd.adapters.migrate import migrate


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

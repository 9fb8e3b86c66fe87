"""Shared fixtures: a helper that writes taskdef files into a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.services import private_database, private_redis_db

WriteTaskdef = Callable[[str, str], Path]


@pytest.fixture
def taskdefs(tmp_path: Path) -> Path:
    root = tmp_path / "taskdefs"
    root.mkdir()
    return root


@pytest.fixture
def write(taskdefs: Path) -> WriteTaskdef:
    def write_file(name: str, body: str) -> Path:
        path = taskdefs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip("\n"))
        return path

    return write_file


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A private PostgreSQL database for this test session (empty: no schema)."""
    with private_database() as url:
        yield url


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """A private PostgreSQL database for one test."""
    with private_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_session_url() -> Iterator[str]:
    with private_redis_db() as url:
        yield url


@pytest.fixture
def redis_url(redis_session_url: str) -> str:
    """The session's private Redis database, flushed before each test."""
    client = redis.Redis.from_url(redis_session_url)
    client.flushdb()
    client.close()
    return redis_session_url

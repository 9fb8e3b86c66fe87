"""Shared fixtures: a helper that writes taskdef files into a temporary directory.

Every test runs under tests/policy.yaml (a permissive operator policy for temporary
directories and local servers) with the diagnostics.* task types registered, unless it
sets its own: both are read from the environment, before the task registry is imported.
The parse cache of the whole run (every syncd process it starts) is a temporary
directory, removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.services import PARSE_CACHE, TEST_POLICY, private_database, private_redis_db

WriteTaskdef = Callable[[str, str], Path]
os.environ["SYNCD_POLICY"] = str(TEST_POLICY)
os.environ["SYNCD_DIAGNOSTICS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def parse_cache() -> Iterator[Path]:
    """One parse cache for the run, inherited by every syncd process a test starts."""
    directory = Path(tempfile.mkdtemp(prefix="syncd-parse-cache-"))
    os.environ[PARSE_CACHE] = str(directory)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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

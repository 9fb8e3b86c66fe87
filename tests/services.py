"""Real PostgreSQL and Redis for tests: a private database and a private Redis db per run.

Each pytest run creates its own PostgreSQL database (dropped at the end) and claims a
free Redis logical database (1-15) with SET NX in db 0, flushing it before and after,
so parallel runs and a developer's own data never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from psycopg import sql

PG_ADMIN_DSN = os.environ.get(
    "SYNCD_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE = os.environ.get("SYNCD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("SYNCD_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_TTL_SECONDS = 6 * 3600
# The operator policy tests run under (permissive for temporary directories and local servers).
TEST_POLICY = Path(__file__).resolve().parent / "policy.yaml"
PARSE_CACHE = "SYNCD_PARSE_CACHE"


def clean_env() -> dict[str, str]:
    """This environment without syncd's settings, except the run's parse cache (so no
    process of a test writes one under the user's home)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_") or k == PARSE_CACHE}


def store_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a syncd or taskiq process in a test: these stores, the test
    policy, the diagnostics task types, no worker metrics port (tests of it set one)."""
    env = clean_env()
    env.update(
        SYNCD_DATABASE_URL=database_url,
        SYNCD_REDIS_URL=redis_url,
        SYNCD_POLICY=str(TEST_POLICY),
        SYNCD_DIAGNOSTICS="1",
        SYNCD_WORKER_METRICS_PORT="0",
    )
    return env


@contextmanager
def private_database() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh, empty database; drop it afterwards."""
    name = f"syncd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_URL_BASE}/{name}"
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def private_redis_db() -> Iterator[str]:
    """Yield a redis:// URL of a claimed, empty logical database; flush and release it after."""
    admin = redis.Redis.from_url(f"{REDIS_BASE}/0")
    token = uuid.uuid4().hex
    for index in range(1, 16):
        if admin.set(f"syncd-test-claim:{index}", token, nx=True, ex=CLAIM_TTL_SECONDS):
            break
    else:
        raise RuntimeError("no free Redis database (1-15) for tests")
    url = f"{REDIS_BASE}/{index}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        if admin.get(f"syncd-test-claim:{index}") == token.encode():
            admin.delete(f"syncd-test-claim:{index}")
        admin.close()

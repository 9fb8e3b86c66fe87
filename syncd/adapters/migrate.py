"""Create or upgrade syncd's PostgreSQL schema (`syncd migrate`); safe to run any number of times.

Called by the CLI's `migrate` command and `syncd up`; `DbStore.check_schema` asks it for the
current and head revisions. It creates the database if needed, then runs alembic's `upgrade
head` with a Config built in code (no alembic.ini). It never downgrades and never reads or
writes task rows. The revisions live in `migrations/versions/` beside this module.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from psycopg import sql
from sqlalchemy import URL, Connection, Engine, func, select

from syncd.adapters.pg import (
    CONNECT_TIMEOUT_SECONDS,
    one_off_engine,
    parse_url,
    translate,
    translate_errors,
)
from syncd.core.errors import SchemaMissing

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MAINTENANCE_DB = "postgres"
# Two `syncd migrate` runs at once (say, replicas starting together) take turns on this.
MIGRATE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"syncd.migrate").digest()[:8], "big", signed=True)


@dataclass(frozen=True)
class MigrateResult:
    created_database: bool
    from_revision: str | None
    to_revision: str | None

    @property
    def changed(self) -> bool:
        return self.created_database or self.from_revision != self.to_revision


def migrate(database_url: str) -> MigrateResult:
    """Create the database if missing, then upgrade its schema to the head revision."""
    url = parse_url(database_url)
    created = ensure_database(url)
    engine = one_off_engine(url)
    try:
        with translate_errors(url), engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(MIGRATE_LOCK_KEY)))
            before = _revision_on(conn)
            _upgrade(conn)
            after = _revision_on(conn)
    finally:
        engine.dispose()
    return MigrateResult(created, before, after)


def ensure_database(url: URL) -> bool:
    """Create the database `url` names unless it exists; True if this call created it."""
    name = url.database
    if name is None or name == MAINTENANCE_DB:
        return False
    try:
        with psycopg.connect(**_maintenance_params(url)) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (name,)).fetchone() is not None:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        # A concurrent migrate created it between our check and our CREATE; PostgreSQL
        # reports that race as a unique violation on pg_database, not DuplicateDatabase.
        return False
    except psycopg.Error as exc:
        raise translate(url, exc) from exc


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at; None for a database never migrated."""
    with translate_errors(engine.url), engine.connect() as conn:
        return _revision_on(conn)


@functools.cache
def head_revision() -> str:
    """The newest revision shipped with this syncd (read once: the scripts never change)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no alembic revisions found in {MIGRATIONS_DIR}")
    return head


def alembic_config() -> Config:
    config = Config()
    # '%' would start ConfigParser interpolation in a path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def _upgrade(conn: Connection) -> None:
    config = alembic_config()
    # env.py runs on this connection, inside the transaction that holds the migrate lock.
    config.attributes["connection"] = conn
    config.attributes["database_url"] = conn.engine.url
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        # Typically a revision newer than this syncd knows: upgrading syncd is the fix.
        raise SchemaMissing(f"cannot upgrade the database schema: {exc}") from exc


def _revision_on(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _maintenance_params(url: URL) -> dict[str, Any]:
    """psycopg connect arguments for the server's `postgres` database, from the same URL."""
    params: dict[str, Any] = dict(url.query)
    params.update(url.translate_connect_args(username="user", database="dbname"))
    params.update(dbname=MAINTENANCE_DB, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    # CREATE DATABASE cannot run inside a transaction block.
    params["autocommit"] = True
    return params

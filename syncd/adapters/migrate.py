"""Create or upgrade syncd's PostgreSQL schema (`syncd migrate`); safe to run any number of times.

Called by the CLI's `migrate` command and `syncd up`; `DbStore.check_schema` asks it for the
current and head revisions. It creates the database if needed, then runs alembic's `upgrade
head` with a Config built in code (no alembic.ini). It never downgrades and never reads or
writes task rows. The revisions live in `migrations/versions/` beside this module.

Every command that opens the stores checks the revisions, so that check stays light: the
database's revision is one query of `alembic_version`, and the head is read from the
revision files' `revision` and `down_revision` assignments without importing alembic;
alembic itself is imported only to migrate.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from sqlalchemy import URL, Connection, Engine, func, select, text

from syncd.adapters.pg import (
    CONNECT_TIMEOUT_SECONDS,
    one_off_engine,
    parse_url,
    translate,
    translate_errors,
)
from syncd.core.errors import SchemaMissing

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
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
    """The newest revision shipped with this syncd (read once: the scripts never change).

    The one revision no other names as its `down_revision`, as alembic finds it
    (a test holds the two to the same answer), from the files' text alone.
    """
    # Like alembic, files whose names start with "_" (an __init__.py) are no revisions.
    paths = sorted(p for p in VERSIONS_DIR.glob("*.py") if not p.name.startswith("_"))
    revisions = [_revision_ids(path) for path in paths]
    named = {revision for revision, _ in revisions}
    parents = {parent for _, down in revisions for parent in down}
    heads = sorted(named - parents)
    if len(heads) != 1:
        raise RuntimeError(f"expected one head revision in {VERSIONS_DIR}, found {heads}")
    return heads[0]


def _revision_ids(path: Path) -> tuple[str, tuple[str, ...]]:
    """(revision, down revisions) of a revision file, from its module-level assignments."""
    values: dict[str, Any] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in _REVISION_NAMES:
                    values[target.id] = ast.literal_eval(node.value)
    revision, down = values.get("revision"), values.get("down_revision")
    if not isinstance(revision, str):
        raise RuntimeError(f"{path} assigns no revision id")
    return revision, (down,) if isinstance(down, str) else tuple(down or ())


_REVISION_NAMES = frozenset({"revision", "down_revision"})


def alembic_config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 (only migrating needs alembic)

    config = Config()
    # '%' would start ConfigParser interpolation in a path.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def _upgrade(conn: Connection) -> None:
    from alembic import command  # noqa: PLC0415 (only migrating needs alembic)
    from alembic.util import CommandError  # noqa: PLC0415

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
    """What alembic's MigrationContext.get_current_revision reads: the one row of
    `alembic_version` (in the search path), or None without the table or a row."""
    if conn.execute(_VERSION_TABLE).scalar_one() is None:
        return None
    found = conn.execute(_VERSION_ROWS).scalars().all()
    if len(found) > 1:
        raise SchemaMissing(f"the database is at several revisions ({', '.join(found)})")
    return found[0] if found else None


_VERSION_TABLE = text("SELECT to_regclass('alembic_version')::text")
_VERSION_ROWS = text("SELECT version_num FROM alembic_version")


def _maintenance_params(url: URL) -> dict[str, Any]:
    """psycopg connect arguments for the server's `postgres` database, from the same URL."""
    params: dict[str, Any] = dict(url.query)
    params.update(url.translate_connect_args(username="user", database="dbname"))
    params.update(dbname=MAINTENANCE_DB, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    # CREATE DATABASE cannot run inside a transaction block.
    params["autocommit"] = True
    return params

"""PostgreSQL basics shared by every module that talks to it: URLs, engines, errors, bulk rows.

`parse_url` accepts only PostgreSQL through psycopg 3 and never echoes a password;
`translate_errors` turns any driver error into a `SyncdError` (keeping it as the cause);
`jsonb_records` unpacks many rows from ONE jsonb parameter, typed by the columns of a
table in `schemas.tables`, which is how both syncd's writes and the worker's recorder
insert in bulk without building SQL from strings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import URL, Engine, Table, bindparam, column, create_engine, func, make_url
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import ColumnClause, TableValuedAlias

from syncd.core.errors import ConflictError, SchemaMissing, StoreUnavailable, SyncdError

CONNECT_TIMEOUT_SECONDS = 5
SCHEMA_MISSING_MESSAGE = "database schema is missing or out of date: run `syncd migrate`"
URL_FORM = "postgresql+psycopg://USER@HOST:PORT/DBNAME"
NAME_CONSTRAINT = "uq_task_configs_name"


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL, checked to be PostgreSQL through psycopg 3 (the only driver shipped)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # Not str(exc): it would echo the URL, password included.
        raise StoreUnavailable(f"invalid database URL; expected {URL_FORM}") from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername != "postgresql+psycopg" or not parsed.database:
        raise StoreUnavailable(f"unsupported database URL {parsed!r}; expected {URL_FORM}")
    return parsed


def pooled_engine(url: str | URL) -> Engine:
    """An engine for a long-lived process: a pool, pre-ping, a bounded connect."""
    return create_engine(
        url if isinstance(url, URL) else parse_url(url),
        pool_pre_ping=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def one_off_engine(url: URL) -> Engine:
    """An engine for a one-off command: NullPool, so no idle connection is kept open."""
    return create_engine(
        url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )


def describe(url: URL) -> str:
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database}"


def short_reason(error: BaseException) -> str:
    """The first line of a driver message, without psycopg's generic prefix."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    return first.removeprefix("connection failed: ")[:300]


def translate(url: URL, error: BaseException) -> SyncdError:
    """The SyncdError for a driver (psycopg) error raised while talking to `url`."""
    if isinstance(error, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return SchemaMissing(SCHEMA_MISSING_MESSAGE)
    if _is_missing_database(url, error):
        return SchemaMissing(f'database "{url.database}" does not exist: run `syncd migrate`')
    if isinstance(error, psycopg.errors.UniqueViolation) and (
        error.diag.constraint_name == NAME_CONSTRAINT
    ):
        detail = error.diag.message_detail or short_reason(error)
        return ConflictError(f"task name already taken in task_configs: {detail}")
    return StoreUnavailable(f"{describe(url)}: {short_reason(error)}")


def _is_missing_database(url: URL, error: BaseException) -> bool:
    # psycopg reports a failed connection without a SQLSTATE, so the server's (English)
    # message is matched too; in another server locale this falls back to StoreUnavailable.
    if not isinstance(error, psycopg.OperationalError):
        return False
    return error.sqlstate == "3D000" or f'database "{url.database}" does not exist' in str(error)


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    """Re-raise any SQLAlchemy or psycopg error as a SyncdError, keeping it as the cause."""
    try:
        yield
    except DBAPIError as exc:
        raise translate(url, exc.orig or exc) from exc
    except (SQLAlchemyError, psycopg.Error) as exc:
        raise translate(url, exc) from exc


def jsonb_records(
    table: Table,
    names: Sequence[str],
    records: list[dict[str, Any]] | None = None,
    *extra: ColumnClause[Any],
) -> TableValuedAlias:
    """Rows as ONE jsonb parameter `records`, unpacked by jsonb_to_recordset into typed rows.

    One statement with one parameter, whatever the count: multi-row VALUES would need a
    bind per cell (PostgreSQL allows 65,535 per statement) and its SQL text costs more to
    build than the rows do to write. Each of `names` is typed as `table`'s column of that
    name; `extra` adds columns the table does not have (say, the id of the row to update).
    With `records` None the value is bound at execution time (a compiled statement).
    """
    typed = [column(name, table.c[name].type) for name in names]
    source = func.jsonb_to_recordset(bindparam("records", records, type_=JSONB))
    return source.table_valued(*extra, *typed).render_derived(name="incoming", with_types=True)

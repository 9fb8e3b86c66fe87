"""PostgreSQL basics shared by every module that talks to it: URLs, engines, errors, bulk rows.

`parse_url` accepts only PostgreSQL through psycopg 3 and never echoes any part of the
user name or password, however malformed the URL; `translate_errors` turns any driver
error into a `SyncdError` (keeping it as the cause);
`jsonb_records` unpacks many rows from ONE jsonb parameter, typed by the columns of a
table in `schemas.tables`, which is how both syncd's writes and the worker's recorder
insert in bulk without building SQL from strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import psycopg
from sqlalchemy import URL, Engine, Table, bindparam, column, create_engine, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.expression import ColumnClause, TableValuedAlias

from syncd.adapters.urls import HostPortProblem, split_host_port
from syncd.core.errors import (
    ConflictError,
    SchemaMissing,
    StoreRefused,
    StoreUnavailable,
    SyncdError,
)

CONNECT_TIMEOUT_SECONDS = 5
SCHEMA_MISSING_MESSAGE = "database schema is missing or out of date: run `syncd migrate`"
URL_FORM = "postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DBNAME"
NAME_CONSTRAINT = "uq_task_configs_name"
DRIVER = "postgresql+psycopg"
# libpq's own schemes: syncd always talks through psycopg 3.
LIBPQ_SCHEMES = ("postgresql", "postgres")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNENCODED_AT = "the password seems to contain an unencoded '@': percent-encode it as %40"
_UNENCODED_QUESTION = (
    "the password seems to contain an unencoded '?', or an '@' follows it in the query: "
    "percent-encode them as %3F and %40"
)
_UNENCODED_SLASH = (
    "the user name seems to contain an unencoded '/', or an '@' follows the host: "
    "percent-encode them as %2F and %40"
)


@dataclass(frozen=True)
class _Parts:
    """A database URL cut at its one '@': everything but `userinfo` lies after it."""

    scheme: str
    userinfo: str | None  # None: the URL has no '@'
    host: str
    port: int | None
    database: str
    query: str


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL, checked to be PostgreSQL through psycopg 3 (the only driver shipped).

    Cut by hand rather than by `make_url`, which splits the user info at the FIRST '@': an
    unencoded '@' in a password would put the rest of it into the host, and from there
    into every message. Here a URL is refused unless its parts are unambiguous, and no
    message shows anything from before the '@'.
    """
    parts = _cut(url)
    driver = DRIVER if parts.scheme in LIBPQ_SCHEMES else parts.scheme
    if driver != DRIVER:
        raise StoreUnavailable(f"unsupported database URL {_shown(parts)}; expected {URL_FORM}")
    if not parts.database:
        raise _invalid("it names no database", _shown(parts))
    user, password = _credentials(parts.userinfo)
    return URL.create(
        DRIVER,
        username=user,
        password=password,
        host=parts.host or None,
        port=parts.port,
        database=unquote(parts.database),
        query=_query(parts.query),
    )


def _cut(url: str) -> _Parts:
    scheme, separator, rest = url.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        raise _invalid("it does not start with a scheme such as postgresql+psycopg://")
    if _CONTROL.search(url):
        raise _invalid("it contains a control character (a newline?)")
    if rest.count("@") > 1:
        raise _invalid(_UNENCODED_AT, _masked(scheme, rest))
    userinfo, at, location = rest.partition("@") if "@" in rest else ("", "", rest)
    if "?" in userinfo:
        # That '@' may be inside the query (say, in password=...): what follows it could
        # be the rest of a password.
        raise _invalid(_UNENCODED_QUESTION, _masked(scheme, rest))
    if "/" in userinfo.partition(":")[0]:
        # A user name cannot hold '/': that '@' is in the path, or the name is unencoded.
        raise _invalid(_UNENCODED_SLASH, _masked(scheme, rest))
    host_path, _, query = location.partition("?")
    host_port, _, database = host_path.partition("/")
    host, port = _host_port(host_port, show=bool(at))
    return _Parts(scheme, userinfo if at else None, host, port, database, query)


def _host_port(text: str, *, show: bool) -> tuple[str, int | None]:
    """HOST[:PORT] or [IPV6]:PORT; `show`: the port may be quoted in a message."""
    try:
        host, _, port = split_host_port(text, show=show)
    except HostPortProblem as exc:
        raise _invalid(str(exc)) from None
    return host, port


def _credentials(userinfo: str | None) -> tuple[str | None, str | None]:
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _query(text: str) -> dict[str, str | list[str]]:
    """The query as make_url reads it: a repeated key becomes a list."""
    values: dict[str, list[str]] = {}
    for key, value in parse_qsl(text):
        values.setdefault(key, []).append(value)
    return {key: found[0] if len(found) == 1 else found for key, found in values.items()}


def _invalid(reason: str, shown: str = "") -> StoreUnavailable:
    where = f" {shown}" if shown else ""
    return StoreUnavailable(f"invalid database URL{where}: {reason}; expected {URL_FORM}")


def _masked(scheme: str, rest: str) -> str:
    """The URL with everything before its last '@' as ***, and no query."""
    before, _, after = rest.rpartition("@")
    # With a '?' before it, that '@' may sit in the query (say, in password=...):
    # then nothing after it is known to be safe.
    host_part = "" if "?" in before else after.partition("?")[0]
    return f"{scheme}://***@{host_part}"


def _shown(parts: _Parts) -> str:
    credentials = "" if parts.userinfo is None else "***@"
    port = "" if parts.port is None else f":{parts.port}"
    return f"{parts.scheme}://{credentials}{_bracketed(parts.host)}{port}/{parts.database}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
    """Where `url` points, for messages: host, port and database; never the user info."""
    host = _bracketed(url.host) if url.host else "localhost"
    return f"PostgreSQL at {host}:{url.port or 5432}/{url.database}"


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
    if isinstance(error, _REFUSALS):
        return StoreRefused(f"{describe(url)} refused a value: {short_reason(error)}")
    return StoreUnavailable(f"{describe(url)}: {short_reason(error)}")


# What the server says about the data it was sent, not about itself: a bad value (class 22),
# a constraint (23) or a trigger that raised (P0001).
_REFUSALS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.RaiseException)


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

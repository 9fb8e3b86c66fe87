"""The PostgreSQL adapter of syncd: read and write `task_configs`, and the sync advisory lock.

The CLI and the daemon build one `DbStore` and hand it to the sync; `syncd.migrate` reuses
its error translation. Every driver error becomes a `SyncdError` here. It only reads
`task_executions` (the worker owns it, DESIGN §6) and decides nothing: the plan does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Integer,
    Select,
    any_,
    bindparam,
    column,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    literal,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.sql.expression import ColumnClause, TableValuedAlias

from schemas.tables import MANAGED_BY_SYNCD, task_configs, task_executions
from syncd.errors import ConflictError, SchemaMissing, StoreUnavailable, SyncdError
from syncd.state import CONFIG_FIELDS, DesiredTask, Row, TaskConfig

CONNECT_TIMEOUT_SECONDS = 5
SCHEMA_MISSING_MESSAGE = "database schema is missing or out of date: run `syncd migrate`"
# A fixed 64-bit key, derived rather than invented so no other application picks it by chance.
SYNC_LOCK_KEY = int.from_bytes(hashlib.sha256(b"syncd.sync").digest()[:8], "big", signed=True)
URL_FORM = "postgresql+psycopg://USER@HOST:PORT/DBNAME"
LOCK_HELD_MESSAGE = "another syncd sync is running (advisory lock held); try again"
NAME_CONSTRAINT = "uq_task_configs_name"
REQUIRED_TABLES = frozenset({"task_configs", "task_executions"})

_t = task_configs
# The columns apply() writes from a DesiredTask (managed_by and timestamps aside).
_WRITTEN = (
    "name",
    *CONFIG_FIELDS,
    "content_hash",
    "source_file",
    "source_line",
    "git_revision",
)
_ROW_COLUMNS = (
    _t.c.id,
    _t.c.name,
    *(_t.c[name] for name in CONFIG_FIELDS),
    _t.c.managed_by,
    _t.c.content_hash,
    _t.c.source_file,
    _t.c.source_line,
    _t.c.git_revision,
)


class DbStore:
    """`task_configs` as syncd sees it: managed rows in, one transaction of changes out."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def from_url(cls, url: str) -> DbStore:
        engine = create_engine(
            parse_url(url),
            pool_pre_ping=True,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )
        return cls(engine)

    def check_schema(self) -> None:
        """Raise SchemaMissing unless the tables exist and the schema is at the head revision."""
        # Local import: syncd.migrate builds on this module's error translation.
        from syncd.migrate import current_revision, head_revision

        with translate_errors(self._engine.url), self._engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        if (
            not REQUIRED_TABLES.issubset(tables)
            or current_revision(self._engine) != head_revision()
        ):
            raise SchemaMissing(SCHEMA_MISSING_MESSAGE)

    @contextmanager
    def sync_lock(self, wait_seconds: float = 30.0) -> Iterator[None]:
        """Hold the cluster-wide sync lock for the block, or raise ConflictError.

        A session-level lock on a dedicated connection: it survives the block's own
        transactions, and PostgreSQL drops it by itself if this process dies.
        """
        with translate_errors(self._engine.url):
            # AUTOCOMMIT: the lock connection must not sit "idle in transaction" meanwhile.
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                _acquire_lock(conn, wait_seconds)
            except BaseException:
                conn.close()
                raise
        try:
            yield
        finally:
            _release_lock(conn)

    def read_rows(self) -> tuple[dict[str, Row], frozenset[str]]:
        """Managed rows by name, and the names of rows someone else manages (one query)."""
        managed: dict[str, Row] = {}
        unmanaged: set[str] = set()
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            # all(): one fetchall, not a driver fetchone per row.
            records = conn.execute(select(*_ROW_COLUMNS)).mappings().all()
        for record in records:
            if record["managed_by"] == MANAGED_BY_SYNCD:
                managed[record["name"]] = _row_from(record)
            else:
                unmanaged.add(record["name"])
        return managed, frozenset(unmanaged)

    def read_foreign_ids(self) -> frozenset[int]:
        """Ids of rows syncd does not manage: their status keys are not syncd's to remove."""
        query = select(_t.c.id).where(_t.c.managed_by != MANAGED_BY_SYNCD)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            return frozenset(conn.execute(query).scalars().all())

    def apply(
        self,
        creates: Sequence[DesiredTask],
        updates: Sequence[tuple[int, DesiredTask]],
        deletes: Sequence[int],
        revision: str | None,
    ) -> dict[str, int]:
        """Write all changes in one transaction; return name -> id of created and updated rows."""
        with translate_errors(self._engine.url), self._engine.begin() as conn:
            ids = _insert_rows(conn, creates, revision)
            ids.update(_update_rows(conn, updates, revision))
            _delete_rows(conn, deletes)
        return ids

    def get_row(self, name: str) -> Row | None:
        """The managed row of that name, or None (also for a row syncd does not manage)."""
        query = select(*_ROW_COLUMNS).where(_t.c.name == name, _t.c.managed_by == MANAGED_BY_SYNCD)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            record = conn.execute(query).mappings().one_or_none()
        return None if record is None else _row_from(record)

    def row_times(self, config_id: int) -> tuple[datetime, datetime | None] | None:
        """(created_at, updated_at) of a row, or None; updated_at is NULL until an update."""
        query = select(_t.c.created_at, _t.c.updated_at).where(_t.c.id == config_id)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            found = conn.execute(query).one_or_none()
        return None if found is None else (found.created_at, found.updated_at)

    def read_executions(
        self, name: str | None, failed_only: bool, since: datetime | None, limit: int
    ) -> list[ExecutionRow]:
        """Finished attempts, newest first; `name` matches the task's current row."""
        query = _executions_query()
        if name is not None:
            query = query.where(_t.c.name == name)
        if failed_only:
            query = query.where(_e.c.is_success.is_(False))
        if since is not None:
            query = query.where(_e.c.completed_at >= since)
        query = query.order_by(_e.c.completed_at.desc(), _e.c.id.desc()).limit(limit)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return [_execution_from(record) for record in records]

    def last_executions(self, config_ids: Sequence[int]) -> dict[int, ExecutionRow]:
        """The newest attempt of each task, in one query whatever the count.

        DISTINCT ON walks the (config_id, completed_at DESC) index: one row per task.
        """
        if not config_ids:
            return {}
        ids = bindparam("ids", list(config_ids), type_=ARRAY(Integer))
        query = (
            _executions_query()
            .where(_e.c.config_id == any_(ids))
            .distinct(_e.c.config_id)
            .order_by(_e.c.config_id, _e.c.completed_at.desc(), _e.c.id.desc())
        )
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return {record["config_id"]: _execution_from(record) for record in records}

    def close(self) -> None:
        self._engine.dispose()


def _acquire_lock(conn: Connection, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while not conn.execute(select(func.pg_try_advisory_lock(SYNC_LOCK_KEY))).scalar_one():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConflictError(LOCK_HELD_MESSAGE)
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


def _release_lock(conn: Connection) -> None:
    try:
        conn.execute(select(func.pg_advisory_unlock(SYNC_LOCK_KEY)))
    except SQLAlchemyError:
        # The session is broken, and a lock dies with its session; never hand a
        # connection that may still hold it back to the pool. Not raised: the
        # block's own outcome (success or its exception) is what the caller needs.
        conn.invalidate()
    finally:
        conn.close()


def _row_from(record: RowMapping) -> Row:
    config = TaskConfig(name=record["name"], **{name: record[name] for name in CONFIG_FIELDS})
    return Row(
        id=record["id"],
        config=config,
        stored_hash=record["content_hash"],
        source_file=record["source_file"],
        source_line=record["source_line"],
        git_revision=record["git_revision"],
    )


def _values(task: DesiredTask, revision: str | None) -> dict[str, Any]:
    return {
        "name": task.name,
        **task.config.field_values(),
        "content_hash": task.config.content_hash(),
        "source_file": task.source,
        "source_line": task.line,
        "git_revision": revision,
    }


def _incoming(records: list[dict[str, Any]], *extra: ColumnClause[Any]) -> TableValuedAlias:
    """All records as ONE jsonb parameter, unpacked by jsonb_to_recordset into typed rows.

    One statement with one parameter, whatever the count: multi-row VALUES would need a
    bind per cell (PostgreSQL allows 65,535 per statement) and its SQL text costs more to
    build than the rows do to write.
    """
    typed = [column(name, _t.c[name].type) for name in _WRITTEN]
    rows = func.jsonb_to_recordset(bindparam("records", records, type_=JSONB))
    return rows.table_valued(*extra, *typed).render_derived(name="incoming", with_types=True)


def _insert_rows(
    conn: Connection, creates: Sequence[DesiredTask], revision: str | None
) -> dict[str, int]:
    if not creates:
        return {}
    src = _incoming([_values(task, revision) for task in creates])
    rows = select(*(src.c[name] for name in _WRITTEN), literal(MANAGED_BY_SYNCD))
    # RETURNING the name too: no reliance on the order rows come back in.
    stmt = insert(_t).from_select([*_WRITTEN, "managed_by"], rows).returning(_t.c.id, _t.c.name)
    return {name: row_id for row_id, name in conn.execute(stmt)}


def _update_rows(
    conn: Connection, updates: Sequence[tuple[int, DesiredTask]], revision: str | None
) -> dict[str, int]:
    if not updates:
        return {}
    records = [{"row_id": row_id, **_values(task, revision)} for row_id, task in updates]
    src = _incoming(records, column("row_id", Integer))
    stmt = (
        update(_t)
        .where(_t.c.id == src.c.row_id, _t.c.managed_by == MANAGED_BY_SYNCD)
        .values({**{name: src.c[name] for name in _WRITTEN}, "updated_at": func.now()})
    )
    matched = conn.execute(stmt).rowcount
    if matched != len(updates):
        # A row vanished or changed hands since read_rows: the plan is stale. Raising
        # rolls the whole transaction back, creates and deletes included.
        raise ConflictError(
            f"{len(updates) - matched} task_configs row(s) to update are gone or no longer "
            "managed by syncd; nothing was applied, run sync again"
        )
    return {task.name: row_id for row_id, task in updates}


def _delete_rows(conn: Connection, deletes: Sequence[int]) -> None:
    if not deletes:
        return
    ids = bindparam("ids", list(deletes), type_=ARRAY(Integer))
    # The managed_by guard makes "syncd only deletes what it manages" hold even if a
    # caller passes a foreign id; an id already gone is simply nothing to do.
    conn.execute(delete(_t).where(_t.c.id == any_(ids), _t.c.managed_by == MANAGED_BY_SYNCD))


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


# -- task_executions (read only) -------------------------------------------------------

_e = task_executions


@dataclass(frozen=True)
class ExecutionRow:
    """One finished attempt as `status`, `explain` and `history` show it."""

    id: int
    config_id: int | None  # NULL once the task's row is deleted (history is kept)
    name: str | None  # the task's current name; None when its row is gone
    task_id: str
    attempt: int
    is_success: bool
    started_at: datetime
    completed_at: datetime
    duration_seconds: float | None
    error_message: str | None


def _executions_query() -> Select[Any]:
    joined = _e.outerjoin(_t, _t.c.id == _e.c.config_id)
    return select(
        _e.c.id,
        _e.c.config_id,
        _t.c.name,
        _e.c.task_id,
        _e.c.attempt,
        _e.c.is_success,
        _e.c.started_at,
        _e.c.completed_at,
        _e.c.duration_seconds,
        _e.c.error_message,
    ).select_from(joined)


def _execution_from(record: RowMapping) -> ExecutionRow:
    duration = record["duration_seconds"]
    return ExecutionRow(
        id=record["id"],
        config_id=record["config_id"],
        name=record["name"],
        task_id=record["task_id"],
        attempt=record["attempt"],
        is_success=record["is_success"],
        started_at=record["started_at"],
        completed_at=record["completed_at"],
        duration_seconds=None if duration is None else float(duration),
        error_message=record["error_message"],
    )

"""The PostgreSQL adapter of syncd: read and write `task_configs`, and the sync advisory lock.

The CLI and the daemon build one `DbStore` and hand it to the reconcile; it decides
nothing (the plan does) and lets no driver error out (`adapters.pg.translate_errors`).
`task_executions` belongs to the worker: `executions` reads it, nothing here writes it.

The two bulk paths of a sync go through the driver itself: new rows are written with
COPY (ids drawn from the identity sequence first), and `read_rows` fetches plain tuples.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import set_json_loads
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    any_,
    bindparam,
    column,
    delete,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from schemas.tables import MANAGED_BY_SYNCD, task_configs
from syncd.adapters.migrate import current_revision, head_revision
from syncd.adapters.pg import (
    SCHEMA_MISSING_MESSAGE,
    jsonb_records,
    pooled_engine,
    short_reason,
    translate_errors,
)
from syncd.core.errors import ConflictError, SchemaMissing
from syncd.core.model import CONFIG_FIELDS, DesiredTask, Row, TaskConfig

if TYPE_CHECKING:
    from syncd.adapters.executions import ExecutionReader

# A fixed 64-bit key, derived rather than invented so no other application picks it by chance.
SYNC_LOCK_KEY = int.from_bytes(hashlib.sha256(b"syncd.sync").digest()[:8], "big", signed=True)
LOCK_HELD_MESSAGE = "another syncd sync is running (advisory lock held); try again"
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
# What read_rows selects: the row's bookkeeping, then TaskConfig's fields in its order.
_READ_COLUMNS = (
    "id",
    "managed_by",
    "content_hash",
    "source_file",
    "source_line",
    "git_revision",
    *(field.name for field in dataclasses.fields(TaskConfig)),
)
_READ_ROWS = sql.SQL("SELECT {} FROM {}").format(
    sql.SQL(", ").join(map(sql.Identifier, _READ_COLUMNS)), sql.Identifier(_t.name)
)
# The columns COPY writes, in `_copy_row`'s order (created_at takes its default).
_COPIED = ("id", *_WRITTEN, "managed_by")
_COPY_ROWS = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(_t.name), sql.SQL(", ").join(map(sql.Identifier, _COPIED))
)
# Ids for n new rows, drawn as an INSERT would (the identity column's sequence), which is
# looked up once: called per row, pg_get_serial_sequence cost more than the nextval.
_NEW_IDS = sql.SQL(
    "WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence({}, 'id')::regclass AS seq) "
    "SELECT nextval(s.seq) FROM s, generate_series(1, %s)"
).format(sql.Literal(_t.name))
# The JSON columns' text: what psycopg's Jsonb dumper sends (json.dumps defaults).
_JSON = json.JSONEncoder()
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

    @functools.cached_property
    def executions(self) -> ExecutionReader:
        """The `task_executions` reader on the same engine (imported when first used: a
        sync never reads history)."""
        from syncd.adapters.executions import ExecutionReader  # noqa: PLC0415

        return ExecutionReader(self._engine)

    @classmethod
    def from_url(cls, url: str) -> DbStore:
        return cls(pooled_engine(url))

    @property
    def engine(self) -> Engine:
        """The pooled engine, for stores of other tables to share (`AuditStore`)."""
        return self._engine

    def check_schema(self) -> None:
        """Raise SchemaMissing unless the tables exist and the schema is at the head revision."""
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
        """Managed rows by name, and the names of rows someone else manages (one query).

        Read through the driver as plain tuples, the config's columns in `TaskConfig`'s
        field order: every row of the table is read on every sync, and a result row
        object per row cost more than the query."""
        managed: dict[str, Row] = {}
        unmanaged: set[str] = set()
        with self._cursor("read task_configs") as cursor:
            set_json_loads(_load_json, cursor)
            records = cursor.execute(_READ_ROWS).fetchall()
        for row_id, managed_by, stored_hash, source, line, revision, *config in records:
            if managed_by == MANAGED_BY_SYNCD:
                task = TaskConfig(*config)
                managed[task.name] = Row(row_id, task, stored_hash, source, line, revision)
            else:
                unmanaged.add(config[0])
        return managed, frozenset(unmanaged)

    @contextmanager
    def _cursor(self, what: str) -> Iterator[psycopg.Cursor[Any]]:
        """A driver cursor on a pooled connection, errors translated as everywhere here."""
        with (
            translate_errors(self._engine.url),
            self._engine.connect() as conn,
            _driver_errors(what),
            _driver(conn).cursor() as cursor,
        ):
            yield cursor

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

    def refused_rows(
        self,
        creates: Sequence[DesiredTask],
        updates: Sequence[tuple[int, DesiredTask]],
        revision: str | None,
    ) -> dict[str, str]:
        """Which of these rows PostgreSQL refuses (name -> its reason); writes nothing.

        Each row is tried alone in a savepoint of one transaction that is rolled back: the
        slow path after a bulk write was refused, to name the task at fault."""
        tries: list[tuple[str, list[DesiredTask], list[tuple[int, DesiredTask]]]] = [
            (t.config.name, [t], []) for t in creates
        ]
        tries += [(task.config.name, [], [(row_id, task)]) for row_id, task in updates]
        refused: dict[str, str] = {}
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            everything = conn.begin()
            try:
                for name, one_create, one_update in tries:
                    try:
                        with conn.begin_nested():
                            _insert_rows(conn, one_create, revision)
                            _update_rows(conn, one_update, revision)
                    except DBAPIError as exc:
                        refused[name] = short_reason(exc.orig or exc)
            finally:
                everything.rollback()
        return refused

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

    def rows_mark(self) -> str:
        """A fingerprint of every `task_configs` row: equal marks mean no row was written
        between them (for a caller keeping its own view of the rows)."""
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            return str(conn.execute(_ROWS_MARK).scalar_one())

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


def _insert_rows(
    conn: Connection, creates: Sequence[DesiredTask], revision: str | None
) -> dict[str, int]:
    """COPY the new rows in, ids taken from the table's identity sequence beforehand.

    COPY parses rows in bulk with no SQL text, JSON document or per-row RETURNING to
    build; the ids are drawn first (sorted, so rows get them in plan order, as one
    INSERT would give them) because COPY returns nothing. A value the server refuses
    fails the COPY like it failed the INSERT (a StoreRefused, a ConflictError for a
    name taken by now), inside the caller's transaction.
    """
    if not creates:
        return {}
    # Hashed before the COPY starts (each config caches its hash): the server waits for
    # rows while COPY is open, and hashing is most of the client's work per row.
    hashes = [task.config.content_hash() for task in creates]
    with _driver_errors("COPY task_configs"), _driver(conn).cursor() as cursor:
        cursor.execute(_NEW_IDS, (len(creates),))
        ids = sorted(row_id for (row_id,) in cursor.fetchall())
        with cursor.copy(_COPY_ROWS) as copy:
            for row_id, task, digest in zip(ids, creates, hashes, strict=True):
                copy.write_row(_copy_row(row_id, task, digest, revision))
    return {task.name: row_id for row_id, task in zip(ids, creates, strict=True)}


@contextmanager
def _driver_errors(statement: str) -> Iterator[None]:
    """Wrap what psycopg raises as SQLAlchemy wraps it for its own statements, so callers
    see one kind of error whether a statement went through SQLAlchemy or the driver."""
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _load_json(data: str | bytes) -> Any:
    # The server's own rendering of a jsonb value: valid JSON, no surrounding space, so
    # the scanner alone is enough (json.loads adds encoding detection and checks; twice
    # the cost, for 2 values per row of every sync).
    return _DECODE_JSON(data if isinstance(data, str) else data.decode())[0]


_DECODE_JSON = json.JSONDecoder().raw_decode


def _driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under `conn`, in the transaction `conn` began."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"expected a psycopg connection, got {type(driver).__name__}")
    return driver


def _copy_row(row_id: int, task: DesiredTask, digest: str, revision: str | None) -> tuple[Any, ...]:
    """The values of `_COPIED`, in order; JSON columns as text the server parses once."""
    config = task.config
    return (
        row_id,
        config.name,
        config.description,
        config.task_type,
        config.scheduler_type,
        _JSON.encode(config.schedule_config),
        _JSON.encode(config.parameters),
        config.max_retries,
        config.retry_backoff_seconds,
        config.retry_backoff_max_seconds,
        config.timeout_seconds,
        config.priority,
        config.enabled,
        digest,
        task.source,
        task.line,
        revision,
        MANAGED_BY_SYNCD,
    )


def _update_rows(
    conn: Connection, updates: Sequence[tuple[int, DesiredTask]], revision: str | None
) -> dict[str, int]:
    if not updates:
        return {}
    records = [{"row_id": row_id, **_values(task, revision)} for row_id, task in updates]
    src = jsonb_records(_t, _WRITTEN, records, column("row_id", Integer))
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


# xmin is the id of the transaction that wrote a row version: an UPDATE gives the row a new
# one, so the sum moves with any write; the count catches the delete of a new row.
_ROWS_MARK = text(
    "SELECT count(*)::text || ':' || coalesce(sum(xmin::text::bigint), 0)::text FROM task_configs"
)

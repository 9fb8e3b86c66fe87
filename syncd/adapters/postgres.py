"""The PostgreSQL adapter of syncd: read and write `task_configs`, and the sync advisory lock.

The CLI and the daemon build one `DbStore` and hand it to the reconcile; it decides
nothing (the plan does) and lets no driver error out (`adapters.pg.translate_errors`).
`task_executions` belongs to the worker: `executions` reads it, nothing here writes it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    any_,
    bindparam,
    column,
    delete,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from schemas.tables import MANAGED_BY_SYNCD, task_configs
from syncd.adapters.executions import ExecutionReader
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
        self.executions = ExecutionReader(engine)

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
    if not creates:
        return {}
    src = jsonb_records(_t, _WRITTEN, [_values(task, revision) for task in creates])
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

"""Where the recorder's records go: `task_executions`, one INSERT per batch.

The statement is built once from `schemas.tables` (no hand-written SQL): the batch is
ONE jsonb parameter unpacked by jsonb_to_recordset with the table's own column types.
The LEFT JOIN stores NULL for a config deleted meanwhile instead of failing the batch on
the foreign key; ON CONFLICT (task_id, attempt) DO NOTHING makes a re-sent record (a
retried flush, a redelivered message) a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from schemas.tables import task_configs, task_executions
from syncd.adapters.pg import jsonb_records, parse_url
from syncd.core.model import Execution
from worker.recording.records import WRITTEN, record_json

logger = logging.getLogger("worker.recorder")


class ExecutionSink(Protocol):
    """Where records go. `write` returns once every record is stored (or permanently refused)."""

    async def write(self, records: Sequence[Execution]) -> None: ...

    async def close(self) -> None: ...


def _insert_sql() -> str:
    incoming = jsonb_records(task_executions, WRITTEN)
    config = task_configs.c.id
    others = [name for name in WRITTEN if name != "config_id"]
    rows = select(config, *(incoming.c[name] for name in others)).select_from(
        incoming.outerjoin(task_configs, config == incoming.c.config_id)
    )
    stmt = (
        insert(task_executions)
        .from_select(["config_id", *others], rows)
        .on_conflict_do_nothing(index_elements=["task_id", "attempt"])
    )
    dialect = psycopg_dialect()  # type: ignore[no-untyped-call]
    return str(stmt.compile(dialect=dialect))


INSERT_SQL = _insert_sql()

# Errors about the data itself: retrying cannot help, so the record is isolated and refused.
_REFUSED = (psycopg.DataError, psycopg.IntegrityError)


class PostgresSink:
    """Writes batches over one psycopg connection, reconnecting after any failure."""

    def __init__(self, database_url: str, connect_timeout: int = 5) -> None:
        url = parse_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.inserted = 0
        self.refused = 0

    async def write(self, records: Sequence[Execution]) -> None:
        try:
            try:
                await self._insert(records)
            except _REFUSED:
                # Find the bad record(s) one statement each, so the others still get in. A
                # lone record gets a second try too: a config deleted between the join and the
                # foreign key check fails once, then joins to NULL.
                await self._insert_one_by_one(records)
        except BaseException:
            # Broken, cancelled mid-statement or of unknown state: never reuse it.
            await self.close()
            raise

    async def _insert(self, records: Sequence[Execution]) -> None:
        if self._conn is None:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,  # one statement per batch: it commits by itself
                connect_timeout=self._connect_timeout,
                application_name="syncd-recorder",
            )
        payload = json.dumps([record_json(r) for r in records], ensure_ascii=False)
        cursor = await self._conn.execute(INSERT_SQL, {"records": payload})
        self.inserted += max(cursor.rowcount, 0)

    async def _insert_one_by_one(self, records: Sequence[Execution]) -> None:
        for record in records:
            try:
                await self._insert([record])
            except _REFUSED:
                self._refuse(record)

    def _refuse(self, record: Execution) -> None:
        self.refused += 1
        logger.error("task_executions refused a record, dropped: %s", record_json(record))

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

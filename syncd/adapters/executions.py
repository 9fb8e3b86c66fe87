"""The read side of `task_executions`: finished attempts for `status`, `explain` and `history`.

The worker's recorder writes the table; syncd only reads it, through this module, and
gets `core.model.Execution` values back (the same type the recorder inserts). Every
query joins `task_configs` for the task's current name and is built from `schemas.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Integer, Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping

from schemas.tables import task_configs, task_executions
from syncd.adapters.pg import translate_errors
from syncd.core.model import Execution

_e, _t = task_executions, task_configs
# Every column of an Execution but the two the views never show (kept short on purpose).
_SHOWN = ("id", "config_id", "task_id", "attempt", "is_success", "started_at", "completed_at",
          "duration_seconds", "error_message")  # fmt: skip


class ExecutionReader:
    """Queries over `task_executions`; shares the engine of the `DbStore` that owns it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def recent(
        self, name: str | None, failed_only: bool, since: datetime | None, limit: int
    ) -> list[Execution]:
        """Finished attempts, newest first; `name` matches the task's current row."""
        query = _query()
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

    def last_of(self, config_ids: Sequence[int]) -> dict[int, Execution]:
        """The newest attempt of each task, in one query whatever the count.

        DISTINCT ON walks the (config_id, completed_at DESC) index: one row per task.
        """
        if not config_ids:
            return {}
        ids = bindparam("ids", list(config_ids), type_=ARRAY(Integer))
        query = (
            _query()
            .where(_e.c.config_id == any_(ids))
            .distinct(_e.c.config_id)
            .order_by(_e.c.config_id, _e.c.completed_at.desc(), _e.c.id.desc())
        )
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return {record["config_id"]: _execution_from(record) for record in records}


def _query() -> Select[Any]:
    joined = _e.outerjoin(_t, _t.c.id == _e.c.config_id)
    return select(*(_e.c[name] for name in _SHOWN), _t.c.name).select_from(joined)


def _execution_from(record: RowMapping) -> Execution:
    values = {name: record[name] for name in _SHOWN}
    duration = values["duration_seconds"]  # NUMERIC comes back as a Decimal
    values["duration_seconds"] = None if duration is None else float(duration)
    return Execution(**values, name=record["name"])

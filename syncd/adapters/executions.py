"""The read side of `task_executions`: finished attempts for `status`, `explain` and `history`.

The worker's recorder writes the table; syncd only reads it, through this module, and
gets `core.model.Execution` values back (the same type the recorder inserts). Every
query joins `task_configs` for the task's current name and is built from `schemas.tables`.
A task's history is found by its current row and by the name its runs recorded, so it
outlives a deleted config. Each method is one query, whatever the number of tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Integer, Select, any_, bindparam, func, select, true, union
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql.elements import ColumnElement

from schemas.tables import task_configs, task_executions
from syncd.adapters.pg import translate_errors
from syncd.core.lateness import STREAK_WINDOW, Activity, FailingSince, failing_since
from syncd.core.model import Execution

_e, _t = task_executions, task_configs
# Every column of an Execution but the two the views never show (kept short on purpose).
_SHOWN = ("id", "config_id", "task_id", "attempt", "is_success", "started_at", "completed_at",
          "duration_seconds", "error_message", "task_name", "config_hash",
          "git_revision")  # fmt: skip


class ExecutionReader:
    """Queries over `task_executions`; shares the engine of the `DbStore` that owns it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def recent(
        self, name: str | None, failed_only: bool, since: datetime | None, limit: int
    ) -> list[Execution]:
        """Finished attempts, newest first; `name` matches the task's current row or the
        name its runs recorded (the history of a deleted or renamed task)."""
        filters = _filters(failed_only, since)
        if name is None:
            query = _newest(filters, limit)
        else:
            # Two index scans that stop at `limit` each, rather than one OR that reads and
            # sorts every run of the task; UNION drops a run both find.
            config_id = select(_t.c.id).where(_t.c.name == name).scalar_subquery()
            by_row = _newest([_e.c.config_id == config_id, *filters], limit)
            by_name = _newest([_e.c.task_name == name, *filters], limit)
            both = union(by_row, by_name).subquery()
            query = select(both).order_by(both.c.completed_at.desc(), both.c.id.desc())
            query = query.limit(limit)
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return [_execution_from(record) for record in records]

    def failing_since(self, name: str, window: int = STREAK_WINDOW) -> FailingSince | None:
        """The failure streak of task `name` over its last `window` runs (one query)."""
        return failing_since(self.recent(name, False, None, window))

    def activity(self, config_ids: Sequence[int]) -> dict[int, Activity]:
        """When each task's row was last written, its newest attempt's start and duration,
        and the end of its newest success: one query, two index probes per task."""
        if not config_ids:
            return {}
        ids = bindparam("ids", list(config_ids), type_=ARRAY(Integer))
        last = (
            select(_e.c.started_at, _e.c.duration_seconds)
            .where(_e.c.config_id == _t.c.id)
            .order_by(_e.c.completed_at.desc(), _e.c.id.desc())
            .limit(1)
            .lateral("last_run")
        )
        success = (
            select(_e.c.completed_at)
            .where(_e.c.config_id == _t.c.id, _e.c.is_success)
            .order_by(_e.c.completed_at.desc())
            .limit(1)
            .lateral("last_success")
        )
        query = (
            select(
                _t.c.id,
                func.coalesce(_t.c.updated_at, _t.c.created_at).label("registered_at"),
                last.c.started_at,
                last.c.duration_seconds,
                success.c.completed_at,
            )
            .select_from(_t.outerjoin(last, true()).outerjoin(success, true()))
            .where(_t.c.id == any_(ids))
        )
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            records = conn.execute(query).mappings().all()
        return {record["id"]: _activity_from(record) for record in records}

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


def _filters(failed_only: bool, since: datetime | None) -> list[ColumnElement[bool]]:
    filters: list[ColumnElement[bool]] = []
    if failed_only:
        filters.append(_e.c.is_success.is_(False))
    if since is not None:
        filters.append(_e.c.completed_at >= since)
    return filters


def _newest(filters: Sequence[ColumnElement[bool]], limit: int) -> Select[Any]:
    """The newest `limit` runs matching every filter."""
    newest_first = (_e.c.completed_at.desc(), _e.c.id.desc())
    return _query().where(*filters).order_by(*newest_first).limit(limit)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)  # NUMERIC comes back as a Decimal


def _execution_from(record: RowMapping) -> Execution:
    values = {name: record[name] for name in _SHOWN}
    values["duration_seconds"] = _seconds(values["duration_seconds"])
    return Execution(**values, name=record["name"])


def _activity_from(record: RowMapping) -> Activity:
    return Activity(
        registered_at=record["registered_at"],
        last_started=record["started_at"],
        last_duration=_seconds(record["duration_seconds"]),
        last_success=record["completed_at"],
    )

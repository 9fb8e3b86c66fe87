"""Reads of `task_executions` the CLI's views do not need: keyset pages, new rows, recent
outcomes per task. Core statements built from `schemas.tables`; every value is bound.

- `executions_page`: newest first, filtered, one page after an opaque cursor. The cursor
  is the last row's `(completed_at, id)`, so a page stays right while new rows arrive
  (an offset would shift by the rows inserted meanwhile); the indexes of migration 0005
  serve each filter in key order.
- `executions_after`, `max_execution_id`: what the event poller asks every second.
- `recent_outcomes`: the last N outcomes of each task, one index probe per task.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Engine,
    Integer,
    Select,
    and_,
    bindparam,
    func,
    not_,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.sql.elements import ColumnElement

from schemas.tables import task_configs, task_executions
from syncd.adapters.pg import translate_errors
from syncd.api.errors import BadRequest
from syncd.core.model import Execution

MAX_PAGE = 500
_e, _t = task_executions, task_configs
_SHOWN = ("id", "config_id", "task_id", "attempt", "is_success", "started_at", "completed_at",
          "duration_seconds", "error_message", "task_name", "config_hash",
          "git_revision")  # fmt: skip


@dataclass(frozen=True)
class ExecutionFilter:
    """What the executions page and `GET /api/v1/executions` may filter on."""

    task: str | None = None
    failed: bool = False
    since: datetime | None = None  # completed at or after
    until: datetime | None = None  # completed before


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's sort key."""

    completed_at: datetime
    id: int

    def encode(self) -> str:
        raw = json.dumps([self.completed_at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            when, ident = json.loads(raw)
            cursor = cls(datetime.fromisoformat(when), int(ident))
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise BadRequest("cursor: not a cursor this server gave out") from None
        if cursor.completed_at.tzinfo is None:
            raise BadRequest("cursor: not a cursor this server gave out")
        return cursor


@dataclass(frozen=True)
class Page:
    executions: list[Execution]
    next: Cursor | None  # None on the last page


def executions_page(
    engine: Engine, where: ExecutionFilter, after: Cursor | None, limit: int
) -> Page:
    """One page, newest first: at most `limit` rows after `after` (from the start if None)."""
    limit = max(1, min(limit, MAX_PAGE))
    query = _query()
    for condition in _conditions(where):
        query = query.where(condition)
    if after is not None:
        # Row comparison: PostgreSQL walks (completed_at DESC, id DESC) from the cursor on.
        query = query.where(tuple_(_e.c.completed_at, _e.c.id) < (after.completed_at, after.id))
    query = query.order_by(_e.c.completed_at.desc(), _e.c.id.desc()).limit(limit + 1)
    # Executed where it is built: every piece above is a Core construct with bound values.
    with translate_errors(engine.url), engine.connect() as conn:
        found = [_execution(record) for record in conn.execute(query).mappings().all()]
    more = len(found) > limit
    rows = found[:limit]
    last = rows[-1] if more else None
    return Page(rows, Cursor(last.completed_at, last.id or 0) if last else None)


def executions_after(engine: Engine, last_id: int, limit: int = 200) -> list[Execution]:
    """Rows with an id above `last_id`, oldest first (the poller's "what finished since")."""
    query = _query().where(_e.c.id > last_id).order_by(_e.c.id).limit(limit)
    with translate_errors(engine.url), engine.connect() as conn:
        return [_execution(record) for record in conn.execute(query).mappings().all()]


def max_execution_id(engine: Engine) -> int:
    """The highest execution id (0 when none): one read of the primary key's end."""
    with translate_errors(engine.url), engine.connect() as conn:
        found = conn.execute(select(func.max(_e.c.id))).scalar_one_or_none()
    return int(found or 0)


def recent_outcomes(engine: Engine, config_ids: Sequence[int], runs: int) -> dict[int, list[bool]]:
    """The last `runs` outcomes (True: ok) of each task, newest first, in one statement:
    a LATERAL subquery per id reads its `runs` newest rows off (config_id, completed_at)."""
    if not config_ids:
        return {}
    ids = func.unnest(bindparam("ids", list(config_ids), type_=ARRAY(Integer)))
    task = ids.table_valued("id").render_derived(name="task")
    last = (
        select(_e.c.is_success, _e.c.completed_at, _e.c.id)
        .where(_e.c.config_id == task.c.id)
        .order_by(_e.c.completed_at.desc(), _e.c.id.desc())
        .limit(runs)
        .lateral("last")
    )
    query = (
        select(task.c.id.label("config_id"), last.c.is_success)
        .select_from(task.join(last, true()))
        .order_by(task.c.id, last.c.completed_at.desc(), last.c.id.desc())
    )
    outcomes: dict[int, list[bool]] = {}
    with translate_errors(engine.url), engine.connect() as conn:
        for config_id, ok in conn.execute(query):
            outcomes.setdefault(config_id, []).append(bool(ok))
    return outcomes


def _query() -> Select[Any]:
    joined = _e.outerjoin(_t, _t.c.id == _e.c.config_id)
    # `name`: the task's name now (None once deleted); `task_name`: the one it ran under.
    return select(*(_e.c[column] for column in _SHOWN), _t.c.name).select_from(joined)


def _conditions(where: ExecutionFilter) -> list[ColumnElement[bool]]:
    conditions = []
    if where.task is not None:
        # The name recorded with the run, or (rows recorded before names were) the name
        # of the row the run belonged to.
        current = select(_t.c.id).where(_t.c.name == where.task).scalar_subquery()
        conditions.append(
            or_(
                _e.c.task_name == where.task,
                and_(_e.c.task_name.is_(None), _e.c.config_id == current),
            )
        )
    if where.failed:
        conditions.append(not_(_e.c.is_success))  # the partial index's own predicate
    if where.since is not None:
        conditions.append(_e.c.completed_at >= where.since)
    if where.until is not None:
        conditions.append(_e.c.completed_at < where.until)
    return conditions


def _execution(record: RowMapping) -> Execution:
    values = {column: record[column] for column in _SHOWN}
    duration = values["duration_seconds"]  # NUMERIC comes back as a Decimal
    values["duration_seconds"] = None if duration is None else float(duration)
    return Execution(**values, name=record["name"])

"""Operator actions on the live schedule: `syncd pause NAME`, `syncd resume NAME`.

Redis only (seed §5.3): a pause is the `paused` status, which the scheduler's `pre_send`
honours at the next tick and which sync never undoes (DESIGN §6). Resuming restores the
status the task's configuration implies; runs missed while paused are not sent, because
the scheduler kept advancing its clock while it skipped them.
"""

from __future__ import annotations

from datetime import datetime

from syncd.db_store import DbStore
from syncd.errors import NotFound, SyncdError
from syncd.redis_store import RedisStore
from syncd.state import Row


class NotPausable(SyncdError):
    """The task has no schedule to pause."""


def _row(db: DbStore, name: str) -> Row:
    row = db.get_row(name)
    if row is None:
        raise NotFound(f"no task named {name!r}")
    return row


def pause(db: DbStore, redis: RedisStore, name: str) -> str:
    """Pause a task; returns its previous status."""
    row = _row(db, name)
    previous = redis.get_status(row.id) or "missing"
    if not row.config.is_scheduled:
        raise NotPausable(f"{name!r} has no active schedule (manual or disabled); nothing to pause")
    redis.set_status(row.id, "paused")
    return previous


def resume(db: DbStore, redis: RedisStore, name: str, now: datetime) -> str:
    """Lift a pause; returns the status the task now has."""
    row = _row(db, name)
    at = row.config.at_time()
    status = "active" if row.config.is_scheduled and not (at and at <= now) else "inactive"
    redis.set_status(row.id, status)
    return status

"""Operator actions on the live system: `syncd pause`, `syncd resume` and `syncd run`.

A pause is the `paused` status in Redis, which the scheduler honours at the next tick and
which sync never undoes. Resuming restores the status the task's configuration implies;
runs missed while paused are not sent, because the scheduler kept advancing its clock
while it skipped them. `run` enqueues one message exactly like the scheduler's for the
task (same labels: retries, timeout, queue), marked `manual: true`; it does not touch the
task's schedule or status.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import RedisStore
from syncd.core.errors import NotFound, StoreUnavailable, SyncdError
from syncd.core.model import Row, TaskCatalog
from syncd.core.payloads import schedule_labels


class NotPausable(SyncdError):
    """The task has no schedule to pause."""


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
    config = row.config
    status = "active" if config.is_scheduled and not config.has_passed(now) else "inactive"
    redis.set_status(row.id, status)
    return status


def trigger(db: DbStore, broker: AsyncBroker, catalog: TaskCatalog, name: str) -> str:
    """Send one run of task `name` now; return the TaskIQ task id."""
    row = _row(db, name, hint=" (run `syncd sync` first?)")
    config = row.config
    labels: dict[str, Any] = {
        **schedule_labels(row.id, config, catalog.queue_for(config.task_type)),
        "manual": True,
    }
    return asyncio.run(_kick(broker, config.task_type, labels, config.parameters))


def _row(db: DbStore, name: str, hint: str = "") -> Row:
    row = db.get_row(name)
    if row is None:
        raise NotFound(f"no task named {name!r}{hint}")
    return row


async def _kick(
    broker: AsyncBroker, task_type: str, labels: dict[str, Any], kwargs: dict[str, Any]
) -> str:
    await broker.startup()
    try:
        kicker: AsyncKicker[Any, Any] = AsyncKicker(task_type, broker, labels)
        task = await kicker.kiq(**kwargs)
    except (OSError, RedisError) as exc:  # redis-py's ConnectionError is no OSError
        raise StoreUnavailable(f"cannot enqueue {task_type}: {exc}") from exc
    finally:
        await broker.shutdown()
    return task.task_id

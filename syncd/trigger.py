"""`syncd run NAME`: enqueue a task now, with its configured parameters and labels.

The message is exactly what the scheduler would send for the task (same labels, so the
worker applies the same retries, timeout and queue), marked `manual: true`. Used for
manual tasks and ad-hoc runs; it does not touch the task's schedule or status.
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from syncd.db_store import DbStore
from syncd.errors import NotFound, StoreUnavailable
from syncd.schedules import schedule_labels


def trigger(db: DbStore, broker: AsyncBroker, queues: dict[str, str], name: str) -> str:
    """Send one run of task `name`; return the TaskIQ task id."""
    row = db.get_row(name)
    if row is None:
        raise NotFound(f"no task named {name!r} (run `syncd sync` first?)")
    config = row.config
    labels: dict[str, Any] = {
        **schedule_labels(row.id, config, queues.get(config.task_type, "default")),
        "manual": True,
    }
    return asyncio.run(_kick(broker, config.task_type, labels, config.parameters))


async def _kick(
    broker: AsyncBroker, task_type: str, labels: dict[str, Any], kwargs: dict[str, Any]
) -> str:
    await broker.startup()
    try:
        kicker: AsyncKicker[Any, Any] = AsyncKicker(task_type, broker, labels)
        task = await kicker.kiq(**kwargs)
    except OSError as exc:
        raise StoreUnavailable(f"cannot enqueue {task_type}: {exc}") from exc
    finally:
        await broker.shutdown()
    return task.task_id

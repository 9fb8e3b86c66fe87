"""Operator actions on the live system: `syncd pause`, `syncd resume` and `syncd run`.

A pause is the `paused` status in Redis, which the scheduler honours at the next tick and
which sync never undoes. Resuming restores the status the task's configuration implies;
runs missed while paused are not sent, because the scheduler kept advancing its clock
while it skipped them. `run` enqueues one message exactly like the scheduler's for the
task (same labels: retries, timeout, queue), marked `manual: true`; it does not touch the
task's schedule or status.

Every call writes one `audit_log` row naming its `Actor` (a token, or a person at the
CLI) and how it ended: `ok`, `refused` (no such task, nothing to pause) or `error` (a
store failed). The audit is a record of the action, not a condition of it: when the row
cannot be written, the action's own outcome still stands and a warning is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from schemas.text import quoted, visible
from syncd.adapters.audit import Actor, AuditStore
from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import RedisStore
from syncd.core.errors import NotFound, StoreUnavailable, SyncdError
from syncd.core.model import Row, TaskCatalog
from syncd.core.payloads import schedule_labels

log = logging.getLogger("syncd.audit")


class NotPausable(SyncdError):
    """The task has no schedule to pause."""


# What the caller asked for that cannot be done: audited as "refused", not "error".
_REFUSALS = (NotFound, NotPausable)


def pause(db: DbStore, redis: RedisStore, name: str, *, audit: AuditStore, actor: Actor) -> str:
    """Pause a task; returns its previous status."""
    with _audited(audit, actor, "pause", name) as outcome:
        row = _row(db, name)
        previous = redis.get_status(row.id) or "missing"
        if not row.config.is_scheduled:
            raise NotPausable(
                f"{name!r} has no active schedule (manual or disabled); nothing to pause"
            )
        redis.set_status(row.id, "paused")
        outcome.detail = f"was {previous}"
    return previous


def resume(
    db: DbStore, redis: RedisStore, name: str, now: datetime, *, audit: AuditStore, actor: Actor
) -> str:
    """Lift a pause; returns the status the task now has."""
    with _audited(audit, actor, "resume", name) as outcome:
        row = _row(db, name)
        config = row.config
        status = "active" if config.is_scheduled and not config.has_passed(now) else "inactive"
        redis.set_status(row.id, status)
        outcome.detail = f"now {status}"
    return status


def trigger(
    db: DbStore,
    broker: AsyncBroker,
    catalog: TaskCatalog,
    name: str,
    *,
    audit: AuditStore,
    actor: Actor,
) -> str:
    """Send one run of task `name` now; return the TaskIQ task id."""
    with _audited(audit, actor, "run", name) as outcome:
        task_id = _send(db, broker, catalog, name)
        outcome.detail = f"task id {task_id}"
    return task_id


def _send(db: DbStore, broker: AsyncBroker, catalog: TaskCatalog, name: str) -> str:
    row = _row(db, name, hint=" (run `syncd sync` first?)")
    config = row.config
    labels: dict[str, Any] = {
        **schedule_labels(
            row.id, config, catalog.queue_for(config.task_type), revision=row.git_revision
        ),
        "manual": True,
    }
    return asyncio.run(_kick(broker, config.task_type, labels, config.parameters))


@dataclass
class _Outcome:
    """What the audit row of a successful action says (set by the action)."""

    detail: str = ""


@contextmanager
def _audited(audit: AuditStore, actor: Actor, action: str, name: str) -> Iterator[_Outcome]:
    """Run the block as `action` on task `name` and write its one audit row.

    Only Exception is caught: after Ctrl-C whether the action happened is unknown, and a
    row saying either would be a guess.
    """
    outcome = _Outcome()
    try:
        yield outcome
    except _REFUSALS as exc:
        _record(audit, actor, action, name, result="refused", detail=str(exc))
        raise
    except Exception as exc:
        reason = str(exc) if isinstance(exc, SyncdError) else f"{type(exc).__name__}: {exc}"
        _record(audit, actor, action, name, result="error", detail=reason)
        raise
    _record(audit, actor, action, name, result="ok", detail=outcome.detail)


def _record(
    audit: AuditStore, actor: Actor, action: str, name: str, *, result: str, detail: str
) -> None:
    """Write the row, or log why not; never raise a store error of its own.

    The action is over by now. A task that was paused stays paused and a message that was
    sent stays sent, so reporting the failed write as the action's failure would be
    wrong, and would invite a retry that runs the task twice. A refused or failed action
    keeps its own error, which says more than the audit's.
    """
    try:
        audit.record(actor, action, name, result, detail)
    except SyncdError as exc:
        shown = (action, quoted(name), visible(actor.name, 200), result, visible(str(exc)))
        log.warning("audit entry not written (%s %s by %s, %s): %s", *shown)


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

"""Apply a Plan: PostgreSQL first (one transaction; new rows get their ids), then Redis.

Called by `reconcile_once` only. The order is DESIGN §2's: schedule ids come from row
ids, and a crash between the two stores is repaired by the next reconcile because the
plan then sees the missing schedules as drift. Redis ops are built by a pure function
(`redis_ops`) so tests can check them without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from syncd.db_store import DbStore
from syncd.keys import KeyLayout, schedule_id
from syncd.plans import DEFAULT_QUEUE, Plan, TaskPlan
from syncd.redis_store import (
    DeleteStatus,
    PutSchedule,
    RedisOp,
    RedisStore,
    RemoveSchedule,
    SetStatus,
)
from syncd.schedules import build_schedule, index_key
from syncd.state import Desired

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class ApplyResult:
    rows_written: int
    rows_deleted: int
    redis_ops: int


def apply_plan(
    plan: Plan,
    desired: Desired,
    db: DbStore,
    redis: RedisStore,
    layout: KeyLayout,
    *,
    progress: Progress | None = None,
) -> ApplyResult:
    """Write the plan to both stores; raises StoreUnavailable if either fails midway."""
    creates = [desired.tasks[t.name] for t in plan.tasks if t.action == "create"]
    updates = [
        (t.config_id, desired.tasks[t.name])
        for t in plan.tasks
        if t.write_row and t.action in ("update", "noop") and t.config_id is not None
    ]
    deletes = [t.config_id for t in plan.tasks if t.action == "delete" and t.config_id is not None]
    ids: dict[str, int] = {}
    if creates or updates or deletes:
        if progress:
            progress("postgresql", 0, len(creates) + len(updates) + len(deletes))
        ids = db.apply(creates, updates, deletes, desired.revision)
    ops = redis_ops(plan, desired, ids, layout)
    if ops:
        redis.apply(
            ops, on_progress=(lambda done: progress("redis", done, len(ops))) if progress else None
        )
    return ApplyResult(len(creates) + len(updates), len(deletes), len(ops))


def redis_ops(
    plan: Plan, desired: Desired, ids: Mapping[str, int], layout: KeyLayout
) -> list[RedisOp]:
    """Status writes first (so a new schedule is never seen without its `active` status),
    then schedules, then status deletions of deleted tasks, then strays."""
    statuses: list[RedisOp] = []
    schedules: list[RedisOp] = []
    cleanups: list[RedisOp] = []
    for task in plan.tasks:
        config_id = task.config_id if task.config_id is not None else ids.get(task.name)
        if config_id is None:
            continue
        if task.status_op == "delete":
            cleanups.append(DeleteStatus(config_id))
        elif task.status_op is not None:
            statuses.append(SetStatus(config_id, task.status_op))
        if task.schedule_op is not None:
            schedules.append(_schedule_op(task, config_id, desired, layout))
    strays: list[RedisOp] = [RemoveSchedule(s.schedule_id, s.lists) for s in plan.strays]
    strays += [DeleteStatus(config_id) for config_id in plan.stray_statuses]
    return statuses + schedules + cleanups + strays


def _schedule_op(task: TaskPlan, config_id: int, desired: Desired, layout: KeyLayout) -> RedisOp:
    if task.schedule_op == "remove" or task.after is None:
        return RemoveSchedule(schedule_id(config_id), task.current_lists)
    queue = desired.queues.get(task.after.task_type, DEFAULT_QUEUE)
    payload = build_schedule(config_id, task.after, queue)
    if payload is None:  # a manual task never has schedule_op "put"; be safe anyway
        return RemoveSchedule(schedule_id(config_id), task.current_lists)
    key = index_key(layout, payload)
    if key is None:  # build_schedule always sets cron, time or interval
        raise ValueError(f"schedule for {task.name!r} has no kind")
    return PutSchedule(payload, key, task.current_lists)

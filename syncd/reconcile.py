"""One reconcile: load → desired → lock → read → plan → guards → apply.

The single path used by `syncd plan` (against the live stores), `syncd sync`, `sync
--dry-run`, `status`, `explain`, the daemon, the benchmarks and the tests: a dry run is the
real run stopped before the first write. (`plan --against REF` has no stores: it calls
the planner itself, on the state a sync of REF would have left.) Holding the sync lock
from the read to the last write means two syncs never interleave.

Applying writes PostgreSQL first (one transaction; new rows get their ids), then Redis:
schedule ids come from row ids, and a crash between the two is repaired by the next
reconcile, whose plan sees the missing schedules as drift. Every write comes from the
Plan; nothing is rebuilt from the taskdefs.

`on_phase(name, seconds)` is told how long each phase took (load, revision, desired, lock,
read, plan, postgresql, redis_ops, redis), so a benchmark times this very code rather than
a copy of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from syncd.adapters.git import revision_of
from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import (
    DeleteStatus,
    PutSchedule,
    RedisOp,
    RedisStore,
    RemoveSchedule,
    SetStatus,
)
from syncd.core.gcpause import gc_paused
from syncd.core.guards import SyncOptions, check_guards
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import Actual, DesiredTask, TaskCatalog
from syncd.core.payloads import index_key
from syncd.core.plan import Plan, TaskPlan, plan
from syncd.core.settings import Settings
from syncd.load.loader import LoadCache, LoadResult, build_desired, load_taskdefs

Progress = Callable[[str, int, int], None]  # (phase, done, total)
PhaseHook = Callable[[str, float], None]  # (phase, seconds)
DEFAULT_OPTIONS = SyncOptions()


@dataclass
class Stores:
    """The two adapters, opened from settings; close() releases their connections."""

    db: DbStore
    redis: RedisStore
    layout: KeyLayout

    @classmethod
    def open(cls, settings: Settings) -> Stores:
        return cls(
            DbStore.from_url(settings.database_url),
            RedisStore.from_url(settings.redis_url, settings.layout),
            settings.layout,
        )

    def close(self) -> None:
        self.db.close()
        self.redis.close()


@contextmanager
def open_stores(settings: Settings) -> Iterator[Stores]:
    stores = Stores.open(settings)
    try:
        stores.db.check_schema()
        yield stores
    finally:
        stores.close()


@dataclass(frozen=True)
class ApplyResult:
    rows_written: int
    rows_deleted: int
    redis_ops: int


@dataclass(frozen=True)
class Outcome:
    loaded: LoadResult
    plan: Plan
    applied: ApplyResult | None = None
    refusals: tuple[str, ...] = field(default=())


def read_actual(stores: Stores) -> Actual:
    rows, unmanaged = stores.db.read_rows()
    return Actual(
        rows,
        stores.redis.read_schedules(),
        stores.redis.read_statuses(),
        unmanaged,
        stores.db.read_foreign_ids(),
    )


def reconcile_once(
    taskdefs: Path,
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    *,
    options: SyncOptions = DEFAULT_OPTIONS,
    cache: LoadCache | None = None,
    progress: Progress | None = None,
    on_phase: PhaseHook | None = None,
) -> Outcome:
    """Make the stores match the taskdefs (or, with dry_run, say how).

    A plan a safety rule refuses is returned unapplied with its `refusals`; the caller
    decides how loudly to fail. Store failures raise StoreUnavailable.
    """
    timed = _Timer(on_phase)
    with gc_paused(), ExitStack() as held:
        with timed("load"):
            loaded = load_taskdefs(
                taskdefs, catalog.params, now=now, cache=cache, policy=catalog.policy
            )
        with timed("revision"):
            revision = revision_of(taskdefs) if taskdefs.is_dir() else None
        with timed("desired"):
            desired = build_desired(loaded, catalog, revision)
        if not options.dry_run:
            with timed("lock"):
                held.enter_context(stores.db.sync_lock(options.lock_wait_seconds))
        with timed("read"):
            actual = read_actual(stores)
        with timed("plan"):
            the_plan = plan(desired, actual, now, stores.layout)
        refusals = check_guards(the_plan, options)
        if options.dry_run or the_plan.is_empty or refusals:
            return Outcome(loaded, the_plan, None, refusals)
        applied = apply_plan(the_plan, stores, progress=progress, timed=timed)
    return Outcome(loaded, the_plan, applied, refusals)


def apply_plan(
    the_plan: Plan,
    stores: Stores,
    *,
    progress: Progress | None = None,
    timed: _Timer | None = None,
) -> ApplyResult:
    """Write the plan to both stores; raises StoreUnavailable if either fails midway."""
    timed = timed or _Timer(None)
    creates = [_row_values(t) for t in the_plan.tasks if t.action == "create"]
    updates = [
        (t.config_id, _row_values(t))
        for t in the_plan.tasks
        if t.write_row and t.action in ("update", "noop") and t.config_id is not None
    ]
    deletes = [
        t.config_id for t in the_plan.tasks if t.action == "delete" and t.config_id is not None
    ]
    ids: dict[str, int] = {}
    with timed("postgresql"):
        if creates or updates or deletes:
            if progress:
                progress("postgresql", 0, len(creates) + len(updates) + len(deletes))
            ids = stores.db.apply(creates, updates, deletes, the_plan.revision)
    with timed("redis_ops"):
        ops = redis_ops(the_plan, ids, stores.layout)
    with timed("redis"):
        if ops:
            report = (lambda done: progress("redis", done, len(ops))) if progress else None
            stores.redis.apply(ops, on_progress=report)
    return ApplyResult(len(creates) + len(updates), len(deletes), len(ops))


def _row_values(task: TaskPlan) -> DesiredTask:
    """What PostgreSQL stores for a planned row write (the plan carries all of it)."""
    if task.after is None or task.source is None or task.line is None:
        raise ValueError(f"plan writes row {task.name!r} without its configuration")
    return DesiredTask(task.after, task.source, task.line, task.path or task.source)


def redis_ops(the_plan: Plan, ids: Mapping[str, int], layout: KeyLayout) -> list[RedisOp]:
    """The plan's Redis writes, in a safe order: statuses first (a new schedule is never seen
    without its `active` status), then schedules, then status deletions, then strays."""
    statuses: list[RedisOp] = []
    schedules: list[RedisOp] = []
    cleanups: list[RedisOp] = []
    for task in the_plan.tasks:
        config_id = task.config_id if task.config_id is not None else ids.get(task.name)
        if config_id is None:
            continue
        if task.status_op == "delete":
            cleanups.append(DeleteStatus(config_id))
        elif task.status_op is not None:
            statuses.append(SetStatus(config_id, task.status_op))
        if task.schedule_op is not None:
            schedules.append(_schedule_write(task, config_id, layout))
    strays: list[RedisOp] = [RemoveSchedule(s.schedule_id, s.lists) for s in the_plan.strays]
    strays += [DeleteStatus(config_id) for config_id in the_plan.stray_statuses]
    return statuses + schedules + cleanups + strays


def _schedule_write(task: TaskPlan, config_id: int, layout: KeyLayout) -> RedisOp:
    payload = task.schedule_payload(config_id) if task.schedule_op == "put" else None
    if payload is None:
        return RemoveSchedule(schedule_id(config_id), task.current_lists)
    key = index_key(layout, payload)
    if key is None:  # a payload always has cron, time or interval
        raise ValueError(f"schedule for {task.name!r} has no kind")
    return PutSchedule(payload, key, task.current_lists)


class _Timer:
    """`with timed("phase"):` reports the block's duration to the hook, if any."""

    def __init__(self, hook: PhaseHook | None) -> None:
        self._hook = hook

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self._hook is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self._hook(phase, time.perf_counter() - start)

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
a copy of it. `hooks` let the daemon run its own steps at fixed points under the sync lock
(note the stores' version marks, see what was read, write Redis its own way) without a
second copy of this sequence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from syncd.core.errors import StoreRefused
from syncd.core.gcpause import gc_paused
from syncd.core.guards import SyncOptions, check_guards
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import Actual, DesiredTask, TaskCatalog
from syncd.core.payloads import index_key
from syncd.core.plan import Plan, TaskPlan, plan
from syncd.core.problems import Problem
from syncd.core.settings import Settings
from syncd.load.loader import LoadCache, LoadResult, build_desired, load_taskdefs

Progress = Callable[[str, int, int], None]  # (phase, done, total)
PhaseHook = Callable[[str, float], None]  # (phase, seconds)
# Writes the Redis ops in order, reporting how many are done.
RedisWriter = Callable[[Iterable[RedisOp], Callable[[int], None] | None], None]
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
    # Files whose rows PostgreSQL refused: nothing of theirs was written (frozen as last
    # applied), one error each naming the task.
    refused: tuple[Problem, ...] = ()
    ids: Mapping[str, int] = field(default_factory=dict)  # of the rows created
    # The status keys written: config id -> new value, None for a deleted key.
    status_writes: Mapping[int, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile found and did. `statuses`: every task's status key as the stores
    hold it afterwards (as read, with the reconcile's own status writes), so a caller
    needs no second read of every status; None when nobody read them."""

    loaded: LoadResult
    plan: Plan
    applied: ApplyResult | None = None
    refusals: tuple[str, ...] = field(default=())
    statuses: Mapping[int, str] | None = None


@dataclass(frozen=True)
class Hooks:
    """Steps a caller adds to `reconcile_once`, all under the sync lock (real runs only).

    `locked`: right after the lock is taken, before the read; `read`: with what was read;
    `rows_written`: after the PostgreSQL transaction committed; `write_redis`: writes the
    Redis ops instead of `RedisStore.apply`."""

    locked: Callable[[Stores], None] | None = None
    read: Callable[[Actual], None] | None = None
    rows_written: Callable[[Stores], None] | None = None
    write_redis: RedisWriter | None = None


def read_actual(stores: Stores) -> Actual:
    rows, unmanaged = stores.db.read_rows()
    return Actual(
        rows,
        stores.redis.read_schedules(),
        stores.redis.read_statuses(),
        unmanaged,
        stores.db.read_foreign_ids(),
    )


def owners_of(actual: Actual) -> dict[str, str | None]:
    """Which taskdef file each applied task came from (it keeps a duplicated name)."""
    return {name: row.source_file for name, row in actual.rows.items()}


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
    hooks: Hooks | None = None,
) -> Outcome:
    """Make the stores match the taskdefs (or, with dry_run, say how).

    A plan a safety rule refuses is returned unapplied with its `refusals`; the caller
    decides how loudly to fail. Store failures raise StoreUnavailable.
    """
    timed = _Timer(on_phase)
    hooks = hooks or Hooks()
    with gc_paused(), ExitStack() as held:
        with timed("load"):
            loaded = load_taskdefs(
                taskdefs, catalog.params, now=now, cache=cache, policy=catalog.policy
            )
            warm_hashes(loaded)
        with timed("revision"):
            revision = revision_of(taskdefs) if taskdefs.is_dir() else None
        if not options.dry_run:
            with timed("lock"):
                held.enter_context(stores.db.sync_lock(options.lock_wait_seconds))
            if hooks.locked is not None:
                hooks.locked(stores)
        with timed("read"):
            actual = read_actual(stores)
        if hooks.read is not None:
            hooks.read(actual)
        with timed("desired"):
            loaded = loaded.settle_duplicates(owners_of(actual))
            desired = build_desired(loaded, catalog, revision)
        with timed("plan"):
            the_plan = plan(desired, actual, now, stores.layout)
        # The plan carries every write: the payloads read (the bulk of a reconcile's
        # memory) can go before the apply builds its own.
        statuses = actual.statuses
        del actual
        refusals = check_guards(the_plan, options)
        if options.dry_run or the_plan.is_empty or refusals:
            return Outcome(loaded, the_plan, None, refusals, statuses)
        applied = apply_plan(
            the_plan,
            stores,
            progress=progress,
            timed=timed,
            write_redis=hooks.write_redis,
            rows_written=hooks.rows_written,
        )
    if applied.refused:
        loaded = loaded.with_problems(applied.refused)
    return Outcome(
        loaded, the_plan, applied, refusals, statuses_after(statuses, applied.status_writes)
    )


def warm_hashes(loaded: LoadResult) -> None:
    """Compute each config's (cached) content hash now, beside the configs just loaded:
    computed during the plan, 10,000 long-lived strings would sit among the read's
    short-lived objects, and keep that memory from being given back."""
    for task in loaded.tasks:
        task.config.content_hash()


def statuses_after(statuses: Mapping[int, str], writes: Mapping[int, str | None]) -> dict[int, str]:
    """The status keys once `writes` (config id -> value, None: deleted) are applied."""
    after = dict(statuses)
    for config_id, value in writes.items():
        if value is None:
            after.pop(config_id, None)
        else:
            after[config_id] = value
    return after


def apply_plan(
    the_plan: Plan,
    stores: Stores,
    *,
    progress: Progress | None = None,
    timed: _Timer | None = None,
    write_redis: RedisWriter | None = None,
    rows_written: Callable[[Stores], None] | None = None,
) -> ApplyResult:
    """Write the plan to both stores; raises StoreUnavailable if either fails midway.

    A value PostgreSQL refuses costs only its file: the rows are then written file by file,
    and a refused file's tasks get no row and no Redis write (they stay as last applied).
    `write_redis` replaces `RedisStore.apply`; `rows_written` runs after the rows' commit."""
    timed = timed or _Timer(None)
    writes = _RowWrites.of(the_plan.tasks)
    ids: dict[str, int] = {}
    refused: tuple[Problem, ...] = ()
    with timed("postgresql"):
        if writes:
            if progress:
                progress("postgresql", 0, len(writes))
            ids, refused = _write_rows(stores.db, the_plan, writes)
            if rows_written is not None:
                rows_written(stores)
    skipped = frozenset(p.path for p in refused)
    with timed("redis_ops"):
        ops = redis_ops(the_plan, ids, stores.layout, skip_paths=skipped)
    with timed("redis"):
        if ops:
            report = (lambda done: progress("redis", done, len(ops))) if progress else None
            if write_redis is None:
                stores.redis.apply(ops, on_progress=report)
            else:
                write_redis(ops, report)
    return ApplyResult(
        len(writes.creates) + len(writes.updates),
        len(writes.deletes),
        len(ops),
        refused,
        ids,
        ops.status_writes(),
    )


@dataclass(frozen=True)
class _RowWrites:
    """The PostgreSQL writes of some planned tasks."""

    creates: list[DesiredTask]
    updates: list[tuple[int, DesiredTask]]
    deletes: list[int]

    @classmethod
    def of(cls, tasks: Iterable[TaskPlan]) -> _RowWrites:
        tasks = list(tasks)
        return cls(
            [_row_values(t) for t in tasks if t.action == "create"],
            [
                (t.config_id, _row_values(t))
                for t in tasks
                if t.write_row and t.action in ("update", "noop") and t.config_id is not None
            ],
            [t.config_id for t in tasks if t.action == "delete" and t.config_id is not None],
        )

    def __len__(self) -> int:
        return len(self.creates) + len(self.updates) + len(self.deletes)


def _write_rows(
    db: DbStore, the_plan: Plan, writes: _RowWrites
) -> tuple[dict[str, int], tuple[Problem, ...]]:
    """All rows in one transaction; if PostgreSQL refuses a value, one transaction per file."""
    try:
        return db.apply(writes.creates, writes.updates, writes.deletes, the_plan.revision), ()
    except StoreRefused:
        pass
    by_file: dict[str | None, list[TaskPlan]] = {}
    for task in the_plan.tasks:
        by_file.setdefault(task.source, []).append(task)
    ids: dict[str, int] = {}
    refused: list[Problem] = []
    for tasks in by_file.values():
        group = _RowWrites.of(tasks)
        if not group:
            continue
        try:
            ids.update(db.apply(group.creates, group.updates, group.deletes, the_plan.revision))
        except StoreRefused as exc:
            refused += _refusals(db, tasks, group, the_plan.revision, str(exc))
    return ids, tuple(refused)


def _refusals(
    db: DbStore, tasks: list[TaskPlan], group: _RowWrites, revision: str | None, reason: str
) -> list[Problem]:
    """One error per refused task of a file (or one for the file, if no row alone fails)."""
    named = db.refused_rows(group.creates, group.updates, revision)
    shown = [t.path or t.source for t in tasks]
    path = next((p for p in shown if p), "<taskdefs>")
    where = {t.name: t.line or 1 for t in tasks}
    suffix = "; this file stays as last applied"
    if not named:
        return [Problem(path, 1, 1, f"PostgreSQL refused this file's rows: {reason}{suffix}")]
    return [
        Problem(path, where.get(name, 1), 1, f"task {name!r}: PostgreSQL refused it: {why}{suffix}")
        for name, why in named.items()
    ]


def _row_values(task: TaskPlan) -> DesiredTask:
    """What PostgreSQL stores for a planned row write (the plan carries all of it)."""
    if task.after is None or task.source is None or task.line is None:
        raise ValueError(f"plan writes row {task.name!r} without its configuration")
    return DesiredTask(task.after, task.source, task.line, task.path or task.source)


@dataclass(frozen=True)
class RedisOps:
    """The plan's Redis writes, in a safe order: statuses first (a new schedule is never seen
    without its `active` status), then schedules, then status deletions, then strays.

    A schedule's op, with its payload, is built only as it is sent: the payloads of 100,000
    new tasks held at once would be about 130 MB."""

    statuses: list[SetStatus]
    schedules: list[tuple[TaskPlan, int]]  # with the task's config id
    cleanups: list[DeleteStatus]
    strays: list[RedisOp]
    layout: KeyLayout

    def __len__(self) -> int:
        return len(self.statuses) + len(self.schedules) + len(self.cleanups) + len(self.strays)

    def __iter__(self) -> Iterator[RedisOp]:
        yield from self.statuses
        for task, config_id in self.schedules:
            yield _schedule_write(task, config_id, self.layout)
        yield from self.cleanups
        yield from self.strays

    def status_writes(self) -> dict[int, str | None]:
        """The status keys written: config id -> new value, None for a deleted key."""
        writes: dict[int, str | None] = {op.config_id: op.status for op in self.statuses}
        for op in (*self.cleanups, *self.strays):
            if isinstance(op, DeleteStatus):
                writes[op.config_id] = None
        return writes


def redis_ops(
    the_plan: Plan,
    ids: Mapping[str, int],
    layout: KeyLayout,
    skip_paths: frozenset[str] = frozenset(),
) -> RedisOps:
    """The plan's Redis writes (see `RedisOps`). Tasks of `skip_paths` (files whose rows
    were refused) get none."""
    ops = RedisOps([], [], [], [], layout)
    for task in the_plan.tasks:
        if skip_paths and (task.path or task.source) in skip_paths:
            continue
        config_id = task.config_id if task.config_id is not None else ids.get(task.name)
        if config_id is None:
            continue
        if task.status_op == "delete":
            ops.cleanups.append(DeleteStatus(config_id))
        elif task.status_op is not None:
            ops.statuses.append(SetStatus(config_id, task.status_op))
        if task.schedule_op is not None:
            ops.schedules.append((task, config_id))
    ops.strays.extend(RemoveSchedule(s.schedule_id, s.lists) for s in the_plan.strays)
    ops.strays.extend(DeleteStatus(config_id) for config_id in the_plan.stray_statuses)
    return ops


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

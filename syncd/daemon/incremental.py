"""The daemon's incremental reconcile: re-plan only the files that changed.

After a full reconcile whose plan was clean and fully applied, the daemon keeps a
`StoreView`: the managed rows, the index lists naming each schedule id and the status
keys as the stores hold them once that plan is applied, each task's settled plan, and two
marks of the stores (the Redis version token our last write left, a fingerprint of
`task_configs`). When a file changes, `reconcile_changed` loads the directory (unchanged
files come from the load cache), finds the files whose digest moved, and plans only the
tasks those files declare or declared, with the same `plan` function, against the rows
and lists of the view plus the schedules and statuses of those tasks read afresh in the
same Redis transaction as the version key. The merged plan (those tasks, every other task
as settled) passes the same guards as a full one; Redis is written in transactions that
read the version key too, so any other writer is noticed.

Anything unusual returns a `Fallback` with its reason and the daemon runs the full
reconcile instead: no view, a file added, removed or unreadable, any taskdef error
(broken files, duplicate names, limits), a mark that moved, a plan error or refusal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from syncd.adapters.git import revision_of
from syncd.adapters.redis import RedisOp
from syncd.core.gcpause import gc_paused
from syncd.core.guards import SyncOptions, check_guards
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import Actual, Desired, DesiredTask, Row, ScheduleRecord, TaskCatalog
from syncd.core.payloads import index_key
from syncd.core.plan import Plan, TaskPlan, plan
from syncd.load.loader import LoadCache, LoadResult, load_taskdefs
from syncd.reconcile import Hooks, Outcome, Stores, apply_plan, statuses_after, warm_hashes

_T = TypeVar("_T")


@dataclass(frozen=True)
class Fallback:
    """The incremental path cannot be trusted here: run the full reconcile."""

    reason: str


@dataclass
class StoreView:
    """The stores as the daemon left them, as far as re-planning a few files needs."""

    loaded: LoadResult
    rows: dict[str, Row]
    unmanaged: frozenset[str]
    foreign_ids: frozenset[int]
    lists: dict[str, tuple[str, ...]]  # schedule id -> index lists naming it
    statuses: dict[int, str]
    settled: dict[str, TaskPlan]  # each task as it stands once applied
    version: str | None  # the Redis version token after our last write
    rows_mark: str  # `rows_mark` after our last write of rows
    # False once the stores may hold what the view does not (a write of someone else's
    # seen while applying, a file's rows refused): the daemon then drops the view.
    sound: bool = True

    def compact(self) -> None:
        """Hold fresh copies of every row and settled plan.

        Called once a reconcile that replaced many of them has freed what it read: copies
        made now fill the gaps that memory left, while the originals sit among it and
        would keep it from being given back to the system."""
        self.rows = {name: replace(row) for name, row in self.rows.items()}
        self.settled = {name: replace(task) for name, task in self.settled.items()}
        self.statuses = dict(self.statuses)
        self.lists = dict(self.lists)

    def merged(self, sub: Plan) -> Plan:
        """The plan a full reconcile would make: `sub`'s tasks, every other one settled."""
        tasks = dict(self.settled)
        tasks.update((task.name, task) for task in sub.tasks)
        return Plan(
            tasks=tuple(tasks[name] for name in sorted(tasks)),
            errors=sub.errors,
            managed_count=len(self.rows),
            revision=sub.revision,
        )


class Marks:
    """The stores' marks, noted under the sync lock by the hooks of one reconcile."""

    def __init__(self, expected: str | None = None) -> None:
        self.version = expected
        self.rows_mark = ""
        self.kept = True  # False once another writer's version token was seen
        self.actual: Actual | None = None  # what the view needs of the read (no payloads)

    def hooks(self, stores: Stores) -> Hooks:
        """For `reconcile_once`: note both marks before reading, write Redis versioned."""
        return Hooks(
            locked=self._note,
            read=self._keep_actual,
            rows_written=self.note_rows,
            write_redis=lambda ops, report: self.write(stores, ops, report),
        )

    def write(
        self, stores: Stores, ops: Iterable[RedisOp], report: Callable[[int], None] | None
    ) -> None:
        written = stores.redis.apply_versioned(ops, self.version, on_progress=report)
        self.kept = self.kept and written.kept
        self.version = written.version

    def _note(self, stores: Stores) -> None:
        # Before the read: a write landing between these and the read moves a mark the
        # view has not seen, so the next incremental reconcile falls back (never the
        # reverse, a write in the view that the marks miss).
        self.version = stores.redis.read_version()
        self.note_rows(stores)

    def note_rows(self, stores: Stores) -> None:
        self.rows_mark = stores.db.rows_mark()

    def _keep_actual(self, actual: Actual) -> None:
        # The lists alone, not the payloads: the reconcile frees those before it applies.
        schedules = {
            sid: ScheduleRecord(sid, None, record.lists)
            for sid, record in actual.schedules.items()
            if record.lists
        }
        self.actual = replace(actual, schedules=schedules)


def view_after_full(
    outcome: Outcome, marks: Marks, layout: KeyLayout, previous: StoreView | None = None
) -> StoreView | None:
    """The view after a full reconcile, or None when it is not a sound base.

    `previous` (the view before it, never trusted for what it says) lends its objects
    wherever they are equal to the new ones: see `_reuse`."""
    actual = marks.actual
    if actual is None or not marks.kept or not _clean(outcome):
        return None
    view = StoreView(
        loaded=outcome.loaded,
        rows=dict(actual.rows),
        unmanaged=actual.unmanaged_names,
        foreign_ids=actual.foreign_ids,
        lists={sid: record.lists for sid, record in actual.schedules.items() if record.lists},
        statuses=dict(outcome.statuses or actual.statuses),
        settled={},
        version=marks.version,
        rows_mark=marks.rows_mark,
    )
    for stray in outcome.plan.strays:
        view.lists.pop(stray.schedule_id, None)
    settle(view, outcome.plan, outcome, layout)
    _reuse(view, previous)
    return view


def _reuse(view: StoreView, previous: StoreView | None) -> None:
    """Hold the previous view's objects where equal, and the loaded names as keys.

    A resync then keeps nothing it allocated: objects kept from a reconcile sit among
    the ones it frees (rows and payloads read back), and would pin that memory (Python
    returns an arena to the system only once all of it is free)."""
    old_rows = previous.rows if previous is not None else {}
    old_settled = previous.settled if previous is not None else {}
    view.rows = {
        row.config.name: _same(row, old_rows.get(row.config.name)) for row in view.rows.values()
    }
    view.settled = {
        task.name: _same(task, old_settled.get(task.name)) for task in view.settled.values()
    }
    if previous is not None and previous.statuses == view.statuses:
        view.statuses = previous.statuses
    else:
        view.statuses = {cid: sys.intern(value) for cid, value in view.statuses.items()}
    if previous is not None and previous.lists == view.lists:
        view.lists = previous.lists
    else:
        canonical: dict[tuple[str, ...], tuple[str, ...]] = {}
        view.lists = {sid: canonical.setdefault(lists, lists) for sid, lists in view.lists.items()}


def _same(new: _T, old: _T | None) -> _T:
    return old if old is not None and old == new else new


def _clean(outcome: Outcome) -> bool:
    """Applied in full (or nothing to apply), with no taskdef or plan error."""
    refused = outcome.applied is not None and bool(outcome.applied.refused)
    return not (outcome.loaded.errors or outcome.refusals or outcome.plan.errors or refused)


def settle(view: StoreView, the_plan: Plan, outcome: Outcome, layout: KeyLayout) -> None:
    """Record in the view what applying `the_plan` left in the stores."""
    ids = outcome.applied.ids if outcome.applied is not None else {}
    for task in the_plan.tasks:
        config_id = task.config_id if task.config_id is not None else ids.get(task.name)
        if task.action == "delete" or config_id is None:
            view.rows.pop(task.name, None)
            view.settled.pop(task.name, None)
            if config_id is not None:
                view.lists.pop(schedule_id(config_id), None)
            continue
        view.rows[task.name] = _row_after(task, view.rows.get(task.name), config_id, the_plan)
        _lists_after(view.lists, task, config_id, layout)
        view.settled[task.name] = _settled(task, config_id)
    if outcome.statuses is not None:
        view.statuses = dict(outcome.statuses)


def _row_after(task: TaskPlan, row: Row | None, config_id: int, the_plan: Plan) -> Row:
    config = task.after
    if config is not None and task.write_row:
        return Row(
            config_id, config, config.content_hash(), task.source, task.line, the_plan.revision
        )
    if config is None or row is None:
        raise ValueError(f"plan of {task.name!r} leaves no row to keep")
    if row.config is config:
        return row
    # Equal values: keep the loaded config and its strings, not the copies read back from
    # PostgreSQL (which would double what the daemon holds per task).
    digest = config.content_hash()
    return Row(
        row.id,
        config,
        digest if row.stored_hash == digest else row.stored_hash,
        task.source if row.source_file == task.source else row.source_file,
        row.source_line,
        row.git_revision,
    )


def _lists_after(
    lists: dict[str, tuple[str, ...]], task: TaskPlan, config_id: int, layout: KeyLayout
) -> None:
    sid = schedule_id(config_id)
    if task.schedule_op == "remove":
        lists.pop(sid, None)
    elif task.schedule_op == "put":
        payload = task.schedule_payload(config_id)
        key = index_key(layout, payload) if payload is not None else None
        if key is not None:
            lists[sid] = (key,)


def _settled(task: TaskPlan, config_id: int) -> TaskPlan:
    """The task as a later full plan sees it once applied: no change, no write (and the
    loaded config on both sides, not the one read back)."""
    config = task.after
    if task.before is config and not task.has_changes and not task.drift:
        return task
    return TaskPlan(
        name=task.name,
        action="noop",
        state=task.state,
        config_id=config_id,
        before=config,
        after=config,
        notes=task.notes,
        source=task.source,
        path=task.path,
        line=task.line,
        queue=task.queue,
        revision=task.revision,
    )


# -- the incremental reconcile ----------------------------------------------------------


def reconcile_changed(
    root: Path,
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    view: StoreView,
    *,
    options: SyncOptions,
    cache: LoadCache,
) -> Outcome | Fallback:
    """Apply the files changed since `view.loaded`, updating `view`; or say why not.

    An exception leaves `view` unsound: the caller must drop it."""
    with gc_paused():
        loaded = load_taskdefs(root, catalog.params, now=now, cache=cache, policy=catalog.policy)
        warm_hashes(loaded)
        changed = changed_sources(view.loaded, loaded)
        if isinstance(changed, Fallback):
            return changed
        revision = revision_of(root) if root.is_dir() else None
        with stores.db.sync_lock(options.lock_wait_seconds):
            return _under_lock(
                stores,
                catalog,
                now,
                view,
                loaded=loaded,
                changed=changed,
                revision=revision,
                options=options,
            )


def changed_sources(before: LoadResult, after: LoadResult) -> frozenset[str] | Fallback:
    """Files whose bytes changed; a Fallback when the set of files changed or any is bad."""
    if after.errors or before.errors:
        return Fallback("taskdef errors")
    old = {f.source: f.digest for f in before.files}
    new = {f.source: f.digest for f in after.files}
    if old.keys() != new.keys():
        return Fallback("files added or removed")
    return frozenset(source for source, digest in new.items() if old[source] != digest)


def affected_names(view: StoreView, loaded: LoadResult, changed: frozenset[str]) -> set[str]:
    """Every task the changed files declare or declared, and every row they own."""
    files = [f for f in (*view.loaded.files, *loaded.files) if f.source in changed]
    names = {task.name for file in files for task in file.tasks}
    names.update(name for name, row in view.rows.items() if row.source_file in changed)
    return names


def _under_lock(
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    view: StoreView,
    *,
    loaded: LoadResult,
    changed: frozenset[str],
    revision: str | None,
    options: SyncOptions,
) -> Outcome | Fallback:
    sub = _sub_plan(stores, catalog, now, view, loaded=loaded, changed=changed, revision=revision)
    if isinstance(sub, Fallback):
        return sub
    merged = view.merged(sub)
    if merged.errors or check_guards(merged, options):
        return Fallback("plan refused")  # the full path says why, exactly as always
    return _apply(stores, view, sub, merged, loaded)


def _sub_plan(
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    view: StoreView,
    *,
    loaded: LoadResult,
    changed: frozenset[str],
    revision: str | None,
) -> Plan | Fallback:
    """The plan of the changed files' tasks, if both marks are where the view left them.

    Its own function: the payloads read go with it, before the apply builds its own."""
    names = affected_names(view, loaded, changed)
    rows = {name: view.rows[name] for name in sorted(names) if name in view.rows}
    if stores.db.rows_mark() != view.rows_mark:
        return Fallback("task_configs written elsewhere")
    ids = [row.id for row in rows.values()]
    fresh = stores.redis.read_some(ids)
    if fresh.version != view.version:
        return Fallback("Redis written elsewhere")
    # The status keys of these tasks as just read; the others as the view left them.
    statuses = {**view.statuses, **fresh.statuses}
    for config_id in ids:
        if config_id not in fresh.statuses:
            statuses.pop(config_id, None)
    view.statuses = statuses
    actual = Actual(
        rows,
        _schedules(rows.values(), fresh.payloads, view.lists),
        fresh.statuses,
        view.unmanaged,
        view.foreign_ids,
    )
    return plan(_desired(loaded, changed, catalog, revision), actual, now, stores.layout)


def _desired(
    loaded: LoadResult, changed: frozenset[str], catalog: TaskCatalog, revision: str | None
) -> Desired:
    tasks = {
        task.name: DesiredTask(task.config, task.source, task.line, task.path)
        for file in loaded.files
        if file.source in changed
        for task in file.tasks
    }
    return Desired(tasks, frozenset(), catalog.queues, revision)


def _schedules(
    rows: Iterable[Row],
    payloads: Mapping[str, dict[str, Any]],
    lists: Mapping[str, tuple[str, ...]],
) -> dict[str, ScheduleRecord]:
    """What `read_schedules` would find for these rows: fresh payloads, lists as last left
    (only syncd adds to an index list, and every syncd write moves the version key)."""
    found: dict[str, ScheduleRecord] = {}
    for row in rows:
        sid = schedule_id(row.id)
        payload, listed = payloads.get(sid), lists.get(sid, ())
        if payload is not None or listed:
            found[sid] = ScheduleRecord(sid, payload, listed)
    return found


def _apply(stores: Stores, view: StoreView, sub: Plan, merged: Plan, loaded: LoadResult) -> Outcome:
    """Apply the sub-plan; the view follows what was written (or is marked unsound)."""
    if sub.is_empty:
        view.loaded = loaded
        return Outcome(loaded, merged, None, (), view.statuses)
    marks = Marks(view.version)
    applied = apply_plan(
        sub,
        stores,
        write_redis=lambda ops, report: marks.write(stores, ops, report),
        rows_written=marks.note_rows,
    )
    statuses = statuses_after(view.statuses, applied.status_writes)
    outcome = Outcome(loaded, merged, applied, (), statuses)
    if applied.refused or not marks.kept:
        view.sound = False
        return replace(outcome, loaded=loaded.with_problems(applied.refused))
    settle(view, sub, outcome, stores.layout)
    view.loaded, view.version = loaded, marks.version
    if marks.rows_mark:
        view.rows_mark = marks.rows_mark
    return outcome

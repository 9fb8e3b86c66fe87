"""One reconcile: load → validate → read actual → plan → (guard) → apply.

The single path used by `syncd plan`, `syncd sync`, `sync --dry-run`, the daemon and the
tests: a dry run is the real run stopped before the first write. Holding the sync lock
from the read to the last write means two syncs never interleave.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from syncd.apply import ApplyResult, Progress, apply_plan
from syncd.db_store import DbStore
from syncd.gcpause import gc_paused
from syncd.gitinfo import revision_of
from syncd.keys import KeyLayout
from syncd.load import LoadCache, LoadResult, load_taskdefs
from syncd.plans import Plan, plan
from syncd.redis_store import RedisStore
from syncd.settings import Settings
from syncd.state import Actual, Desired, DesiredTask, TaskCatalog


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
class SyncOptions:
    dry_run: bool = False
    allow_empty: bool = False
    max_deletes: int = 10
    lock_wait_seconds: float = 30.0


@dataclass(frozen=True)
class Outcome:
    loaded: LoadResult
    plan: Plan
    applied: ApplyResult | None = None
    refusals: tuple[str, ...] = field(default=())


def build_desired(loaded: LoadResult, catalog: TaskCatalog, revision: str | None) -> Desired:
    tasks = {t.spec.name: DesiredTask(t.config, t.source, t.line, t.path) for t in loaded.tasks}
    # Any error, even one not tied to a file (a missing directory), suspends pruning.
    broken = loaded.broken_sources or (frozenset({"<taskdefs>"}) if loaded.errors else frozenset())
    return Desired(tasks, broken, catalog.queues, revision)


def read_actual(stores: Stores) -> Actual:
    rows, unmanaged = stores.db.read_rows()
    return Actual(
        rows,
        stores.redis.read_schedules(),
        stores.redis.read_statuses(),
        unmanaged,
        stores.db.read_foreign_ids(),
    )


def check_guards(plan_: Plan, options: SyncOptions) -> tuple[str, ...]:
    """DESIGN §7 safety rules that need a human's explicit say-so."""
    reasons = list(plan_.errors)
    deletes = plan_.count("delete")
    if deletes and deletes == plan_.managed_count and not options.allow_empty:
        reasons.append(
            f"refusing to delete all {deletes} managed task(s): is the taskdefs directory "
            "empty or unreadable? Pass --allow-empty to confirm"
        )
    elif deletes > options.max_deletes:
        reasons.append(
            f"refusing to delete {deletes} tasks (more than --max-deletes {options.max_deletes}); "
            f"pass --max-deletes {deletes} to confirm"
        )
    return tuple(reasons)


def reconcile_once(
    taskdefs: Path,
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    *,
    options: SyncOptions = SyncOptions(),
    cache: LoadCache | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Make the stores match the taskdefs (or, with dry_run, say how).

    A plan a safety rule refuses is returned unapplied with its `refusals`; the caller
    decides how loudly to fail. Store failures raise StoreUnavailable.
    """
    with gc_paused():
        return _reconcile(
            taskdefs, stores, catalog, now, options=options, cache=cache, progress=progress
        )


def _reconcile(
    taskdefs: Path,
    stores: Stores,
    catalog: TaskCatalog,
    now: datetime,
    *,
    options: SyncOptions,
    cache: LoadCache | None,
    progress: Progress | None,
) -> Outcome:
    loaded = load_taskdefs(taskdefs, catalog.params, now=now, cache=cache)
    desired = build_desired(loaded, catalog, revision_of(taskdefs) if taskdefs.is_dir() else None)
    lock = nullcontext() if options.dry_run else stores.db.sync_lock(options.lock_wait_seconds)
    with lock:
        the_plan = plan(desired, read_actual(stores), now, stores.layout)
        refusals = check_guards(the_plan, options)
        if options.dry_run or the_plan.is_empty or refusals:
            return Outcome(loaded, the_plan, None, refusals)
        applied = apply_plan(
            the_plan, desired, stores.db, stores.redis, stores.layout, progress=progress
        )
    return Outcome(loaded, the_plan, applied, refusals)

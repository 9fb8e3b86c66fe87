"""Benchmark `syncd sync` against the obvious per-item approach: 10,000 tasks in 100 files.

What it measures, on private stores (tests/services.py: a fresh PostgreSQL database migrated
with `syncd.adapters.migrate.migrate`, and a claimed Redis db; dropped and flushed afterwards), on
the same generated taskdefs (bench/taskdefs_gen.py):

- syncd, the real path: `reconcile_once(dir, stores, catalog(), now, options=...)` for
  1. the first sync (empty stores -> rows + schedules + statuses),
  2. a no-op sync right after it,
  3. a one-file change (`rewrite_file(..., revision=1)`: one file's tasks updated), then sync;
  the no-op and one-file cases also with a `LoadCache` kept across calls, as the daemon does.
- where the first sync (and a no-op) spend their time: load + validate, git revision probe,
  build desired, read actual, plan, PostgreSQL apply, Redis ops, Redis apply, timed piece by
  piece in a second pass on fresh stores (plus how much of it was Python's cyclic GC).
- the per-item baseline, on fresh stores: the same `load_taskdefs`, then one ORM insert +
  commit, one `ListRedisScheduleSource.add_schedule` and one status SET per task; a no-op
  as one SELECT by name + one GET of the schedule data per task (compare, write nothing);
  a one-file change as that same scan plus, per changed task, an ORM update + commit and
  `delete_schedule` + `add_schedule`.

Every result is checked: syncd's outcomes must have the expected counts, and a dry-run
`reconcile_once` on the baseline's stores must plan nothing (it wrote the same state).

Usage: .venv/bin/python bench/sync_bench.py [--tasks N --files M --runs R]
(R > 1: every scenario runs R times on fresh stores and the medians are printed.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

import psycopg
import redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session
from taskiq import ScheduledTask
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.taskdefs_gen import rewrite_file, write_tree
from schemas.tables import TaskConfigModel
from syncd.adapters.migrate import migrate
from syncd.adapters.pg import parse_url
from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import RedisStore
from syncd.cli.common import catalog
from syncd.core.guards import SyncOptions
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import (
    CONFIG_FIELDS,
    TaskCatalog,
    TaskConfig,
)
from syncd.core.payloads import build_schedule
from syncd.load.loader import LoadCache, LoadedTask, load_taskdefs
from syncd.reconcile import Outcome, Stores, reconcile_once
from tests.services import PG_ADMIN_DSN, REDIS_BASE, private_database, private_redis_db

T = TypeVar("T")

FIRST = "first sync"
NOOP = "no-op sync"
NOOP_CACHED = "no-op sync, warm LoadCache"
ONE = "one-file change"
ONE_CACHED = "one-file change, warm LoadCache"
# No deletes are expected anywhere: refuse any, so a wrong run fails instead of pruning.
OPTIONS = SyncOptions(max_deletes=0)

Timings = dict[str, list[float]]


@dataclass(frozen=True)
class Size:
    tasks: int
    files: int

    @property
    def changed_file(self) -> int:
        return self.files // 2

    @property
    def changed_tasks(self) -> int:
        """Tasks in the rewritten file (taskdefs_gen puts the remainder in the last file)."""
        per_file = max(1, self.tasks // self.files)
        return (
            self.tasks - per_file * (self.files - 1)
            if self.changed_file == self.files - 1
            else per_file
        )


def timed(func: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def fail(message: str) -> NoReturn:
    raise SystemExit(f"sync_bench: {message}")


# -- syncd: the real path ------------------------------------------------------------------


def sync(root: Path, stores: Stores, tasks: TaskCatalog, cache: LoadCache | None) -> Outcome:
    return reconcile_once(root, stores, tasks, datetime.now(UTC), options=OPTIONS, cache=cache)


def check(outcome: Outcome, what: str, **expected: int) -> None:
    """Fail unless the outcome is clean and its plan summary has the expected counts."""
    if outcome.loaded.errors or outcome.refusals or outcome.plan.errors:
        problems = [
            *map(str, outcome.loaded.errors),
            *outcome.refusals,
            *map(str, outcome.plan.errors),
        ]
        fail(f"{what}: " + "; ".join(problems[:5]))
    summary = outcome.plan.summary()
    wrong = {k: summary[k] for k, v in expected.items() if summary[k] != v}
    if wrong:
        fail(f"{what}: expected {expected}, got {summary}")
    if outcome.plan.is_empty != (outcome.applied is None):
        fail(f"{what}: an empty plan must apply nothing, a non-empty one must apply")


def open_stores(db_url: str, redis_url: str) -> Stores:
    layout = KeyLayout()
    stores = Stores(DbStore.from_url(db_url), RedisStore.from_url(redis_url, layout), layout)
    stores.db.check_schema()
    return stores


def run_syncd(root: Path, size: Size, tasks: TaskCatalog) -> tuple[dict[str, float], str]:
    """The five syncd scenarios on fresh stores; returns seconds by scenario and a note."""
    write_tree(root, size.tasks, size.files)
    times: dict[str, float] = {}
    with private_database() as db_url, private_redis_db() as redis_url:
        migrate(db_url)
        stores = open_stores(db_url, redis_url)
        try:
            # The daemon's cache, empty at its first sync; filling it costs a dict insert per
            # file. The no-cache rows below are what `syncd sync` (the CLI) does every time.
            cache = LoadCache()
            times[FIRST], first = timed(lambda: sync(root, stores, tasks, cache))
            check(first, FIRST, create=size.tasks)
            applied = first.applied
            note = (
                f"{applied.rows_written} rows written, {applied.redis_ops} Redis ops"
                if applied
                else ""
            )
            times[NOOP], noop = timed(lambda: sync(root, stores, tasks, None))
            check(noop, NOOP, create=0, update=0, delete=0, drift=0)
            times[NOOP_CACHED], noop = timed(lambda: sync(root, stores, tasks, cache))
            check(noop, NOOP_CACHED, create=0, update=0, delete=0, drift=0)
            changed = size.changed_tasks
            rewrite_file(root, size.changed_file, size.tasks, size.files, revision=1)
            times[ONE], one = timed(lambda: sync(root, stores, tasks, None))
            check(one, ONE, create=0, update=changed, delete=0, drift=0)
            # Cached variant: one more revision of the same file (the cache has revision 0
            # of it and revision 0 of every other file), again `changed` tasks updated.
            rewrite_file(root, size.changed_file, size.tasks, size.files, revision=2)
            times[ONE_CACHED], one = timed(lambda: sync(root, stores, tasks, cache))
            check(one, ONE_CACHED, create=0, update=changed, delete=0, drift=0)
            check(sync(root, stores, tasks, None), "no-op after the changes", update=0, drift=0)
        finally:
            stores.close()
    return times, note


# -- syncd: where the time goes -------------------------------------------------------------


class GcClock:
    """Adds up the wall time Python's cyclic garbage collector runs while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


PIECES = {
    "load": "load + validate YAML",
    "revision": "git revision probe",
    "desired": "build desired",
    "lock": "take the sync lock",
    "read": "read actual (PG + Redis)",
    "plan": "plan",
    "postgresql": "PostgreSQL apply",
    "redis_ops": "build Redis ops",
    "redis": "Redis apply",
}
GC_SHARE = "(of which Python cyclic GC)"


def timed_sync(root: Path, stores: Stores, tasks: TaskCatalog) -> dict[str, float]:
    """One real `reconcile_once`, its phases timed by its own `on_phase` hook."""
    parts = dict.fromkeys(PIECES.values(), 0.0)

    def on_phase(phase: str, seconds: float) -> None:
        parts[PIECES[phase]] += seconds

    start = time.perf_counter()
    with GcClock() as gc_clock:
        outcome = reconcile_once(
            root, stores, tasks, datetime.now(UTC), options=OPTIONS, on_phase=on_phase
        )
    parts["total"] = time.perf_counter() - start
    parts[GC_SHARE] = gc_clock.seconds
    if outcome.refusals or outcome.loaded.errors:
        fail(f"breakdown: {outcome.refusals or outcome.loaded.errors}")
    return parts


def run_breakdown(root: Path, size: Size, tasks: TaskCatalog) -> dict[str, dict[str, float]]:
    write_tree(root, size.tasks, size.files)
    with private_database() as db_url, private_redis_db() as redis_url:
        migrate(db_url)
        stores = open_stores(db_url, redis_url)
        try:
            first = timed_sync(root, stores, tasks)
            noop = timed_sync(root, stores, tasks)
        finally:
            stores.close()
    return {FIRST: first, NOOP: noop}


# -- the obvious per-item approach ----------------------------------------------------------
#
# Written plainly, as one would without syncd. Its correctness gaps (not fixed, only noted):
# - re-adding a schedule that exists (a second "first sync", a retry after a crash) RPUSHes
#   its id again: duplicate list entries, so the scheduler sends that task twice per fire;
# - no transaction: a crash midway leaves some rows without schedules (or the reverse), and
#   nothing later notices, because the no-op check below only compares row and data key;
# - between `delete_schedule` and `add_schedule` the schedule is gone for a moment;
# - no lock (two runs interleave), no deletes/pruning, no stray or list-membership
#   check, no status check, no handling of expired one-shots or of an operator's pause;
# - `delete_schedule` LREMs the whole cron/interval list per changed task: O(list length).


@dataclass
class NaiveClients:
    engine: Engine
    source: Any  # ListRedisScheduleSource (taskiq_redis ships no type information)
    client: AsyncRedis
    layout: KeyLayout
    tasks: TaskCatalog

    def queue_of(self, config: TaskConfig) -> str:
        return self.tasks.queue_for(config.task_type)

    async def close(self) -> None:
        await self.client.aclose()
        await self.source.shutdown()
        # taskiq-redis leaves its pool open on shutdown (worker/schedule_source.py does this too).
        await self.source._connection_pool.disconnect()
        self.engine.dispose()


def new_row(task: LoadedTask, config: TaskConfig) -> TaskConfigModel:
    return TaskConfigModel(
        name=config.name,
        **config.field_values(),
        content_hash=config.content_hash(),  # NOT NULL column; also lets syncd check the result
        source_file=task.source,
        source_line=task.line,
        git_revision=None,  # a temporary directory is not a git work tree: syncd writes None too
    )


async def put_schedule(clients: NaiveClients, config_id: int, config: TaskConfig) -> str:
    """add_schedule for a scheduled task; returns the status to set."""
    payload = build_schedule(config_id, config, clients.queue_of(config))
    if payload is None:
        return "inactive"
    await clients.source.add_schedule(ScheduledTask.model_validate(payload))
    return "active"


async def naive_first_sync(root: Path, clients: NaiveClients) -> int:
    loaded = load_taskdefs(
        root, clients.tasks.params, now=datetime.now(UTC), policy=clients.tasks.policy
    )
    # expire_on_commit=False: reading row.id after commit would otherwise cost a SELECT.
    with Session(clients.engine, expire_on_commit=False) as session:
        for task in loaded.tasks:
            config = task.config
            row = new_row(task, config)
            session.add(row)
            session.commit()  # INSERT ... RETURNING id, then COMMIT
            status = await put_schedule(clients, row.id, config)
            await clients.client.set(clients.layout.status_key(row.id), status)
    return len(loaded.tasks)


def stored_config(row: TaskConfigModel) -> TaskConfig:
    return TaskConfig(name=row.name, **{name: getattr(row, name) for name in CONFIG_FIELDS})


async def naive_resync(root: Path, clients: NaiveClients) -> int:
    """Per task: SELECT by name and compare; GET the schedule data and compare. Returns writes."""
    loaded = load_taskdefs(
        root, clients.tasks.params, now=datetime.now(UTC), policy=clients.tasks.policy
    )
    writes = 0
    with Session(clients.engine, expire_on_commit=False) as session:
        for task in loaded.tasks:
            config = task.config
            query = select(TaskConfigModel).where(TaskConfigModel.name == config.name)
            row = session.scalars(query).one_or_none()
            if row is None:  # a new task (not exercised here: no task is added)
                row = new_row(task, config)
                session.add(row)
                session.commit()
                status = await put_schedule(clients, row.id, config)
                await clients.client.set(clients.layout.status_key(row.id), status)
                writes += 1
                continue
            sid = schedule_id(row.id)
            if stored_config(row) != config:
                for name, value in config.field_values().items():
                    setattr(row, name, value)
                row.content_hash = config.content_hash()
                row.source_file, row.source_line = task.source, task.line
                row.updated_at = datetime.now(UTC)
                session.commit()  # UPDATE, then COMMIT
                await clients.source.delete_schedule(sid)
                await put_schedule(clients, row.id, config)
                writes += 1
                continue
            raw = await clients.client.get(clients.layout.data_key(sid))
            expected = build_schedule(row.id, config, clients.queue_of(config))
            if (None if raw is None else json.loads(raw)) != expected:
                await clients.source.delete_schedule(sid)
                await put_schedule(clients, row.id, config)
                writes += 1
        session.rollback()  # end the read-only transaction of the last SELECTs
    return writes


async def naive_scenarios(
    root: Path, size: Size, clients: NaiveClients, verify: Callable[[str], None]
) -> dict[str, float]:
    times: dict[str, float] = {}
    start = time.perf_counter()
    created = await naive_first_sync(root, clients)
    times[FIRST] = time.perf_counter() - start
    if created != size.tasks:
        fail(f"per-item first sync created {created} tasks, expected {size.tasks}")
    verify(FIRST)
    start = time.perf_counter()
    writes = await naive_resync(root, clients)
    times[NOOP] = time.perf_counter() - start
    if writes:
        fail(f"per-item no-op sync wrote {writes} tasks")
    rewrite_file(root, size.changed_file, size.tasks, size.files, revision=1)
    start = time.perf_counter()
    writes = await naive_resync(root, clients)
    times[ONE] = time.perf_counter() - start
    if writes != size.changed_tasks:
        fail(f"per-item one-file change wrote {writes} tasks, expected {size.changed_tasks}")
    verify(ONE)
    return times


def run_naive(root: Path, size: Size, tasks: TaskCatalog) -> dict[str, float]:
    write_tree(root, size.tasks, size.files)
    layout = KeyLayout()
    with private_database() as db_url, private_redis_db() as redis_url:
        migrate(db_url)

        def verify(after: str) -> None:
            """syncd, dry run, on the per-item stores: it must find nothing to do."""
            stores = open_stores(db_url, redis_url)
            try:
                options = SyncOptions(dry_run=True, max_deletes=0)
                outcome = reconcile_once(root, stores, tasks, datetime.now(UTC), options=options)
            finally:
                stores.close()
            if not outcome.plan.is_empty:
                fail(f"after the per-item {after}, syncd plans {outcome.plan.summary()}")

        async def scenarios() -> dict[str, float]:
            clients = NaiveClients(
                create_engine(parse_url(db_url)),
                ListRedisScheduleSource(
                    redis_url, prefix=layout.prefix, serializer=JSONSerializer()
                ),
                AsyncRedis.from_url(redis_url),
                layout,
                tasks,
            )
            try:
                return await naive_scenarios(root, size, clients, verify)
            finally:
                await clients.close()

        return asyncio.run(scenarios())


# -- report ---------------------------------------------------------------------------------


def environment() -> str:
    with psycopg.connect(PG_ADMIN_DSN) as conn:
        pg = conn.execute("SHOW server_version").fetchone()
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
    with redis.Redis.from_url(f"{REDIS_BASE}/0") as client:
        info = cast(dict[str, Any], client.info("server"))
    settings = f"synchronous_commit={sync_commit[0] if sync_commit else '?'}, "
    settings += f"fsync={fsync[0] if fsync else '?'}"
    return (
        f"PostgreSQL {pg[0] if pg else '?'} ({settings}), Redis {info.get('redis_version', '?')}, "
        f"Python {sys.version.split()[0]}, all on 127.0.0.1"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_report(
    size: Size,
    *,
    runs: int,
    syncd: Timings,
    naive: Timings,
    parts: dict[str, Timings],
    notes: list[str],
) -> None:
    how = "median of " + str(runs) + " runs" if runs > 1 else "1 run"
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"taskdefs: {size.tasks} tasks in {size.files} files; one-file change: "
        f"{size.changed_tasks} tasks updated; {how}"
    )
    print(f"environment: {environment()}")
    print(f"syncd first sync applied: {notes[0]}")
    print()
    rows = [
        (FIRST + f" ({size.tasks} creates)", FIRST, FIRST),
        (NOOP, NOOP, NOOP),
        (NOOP_CACHED, NOOP_CACHED, NOOP),
        (ONE + f" ({size.changed_tasks} updates)", ONE, ONE),
        (ONE_CACHED, ONE_CACHED, ONE),
    ]
    width = max(len(label) for label, _, _ in rows)
    print(f"{'scenario':<{width}} | syncd s | per-item s | ratio")
    print(f"{'-' * width}-|---------|------------|--------")
    for label, ours, theirs in rows:
        a, b = median(syncd[ours]), median(naive[theirs])
        print(f"{label:<{width}} | {a:7.2f} | {b:10.2f} | {b / a:5.1f}x")
    print("(per-item has no cache: its no-op / one-file time is repeated on the cache rows;")
    print(" ratio = per-item / syncd.)")
    print()
    print("syncd breakdown (reconcile_once phases on fresh stores, no LoadCache), seconds:")
    print(f"  {'piece':<28} {'first sync':>10} {'no-op':>8}")
    for piece in (*PIECES.values(), "total", GC_SHARE):
        first, noop = median(parts[FIRST][piece]), median(parts[NOOP][piece])
        print(f"  {piece:<28} {first:10.3f} {noop:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1, help="repeats; medians are printed")
    args = parser.parse_args()
    if args.tasks < args.files or args.files < 1 or args.runs < 1:
        parser.error("need --files >= 1, --tasks >= --files and --runs >= 1")
    size = Size(args.tasks, args.files)
    tasks = catalog()
    syncd: Timings = {}
    naive: Timings = {}
    parts: dict[str, Timings] = {FIRST: {}, NOOP: {}}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "taskdefs"
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: syncd...", file=sys.stderr, flush=True)
            times, note = run_syncd(root, size, tasks)
            notes.append(note)
            for key, value in times.items():
                syncd.setdefault(key, []).append(value)
            print(f"run {run + 1}/{args.runs}: breakdown...", file=sys.stderr, flush=True)
            for scenario, pieces in run_breakdown(root, size, tasks).items():
                for piece, value in pieces.items():
                    parts[scenario].setdefault(piece, []).append(value)
            print(f"run {run + 1}/{args.runs}: per-item...", file=sys.stderr, flush=True)
            for key, value in run_naive(root, size, tasks).items():
                naive.setdefault(key, []).append(value)
    print_report(size, runs=args.runs, syncd=syncd, naive=naive, parts=parts, notes=notes)


if __name__ == "__main__":
    main()

"""Crash consistency: `syncd sync` SIGKILLed at random moments (and at the PostgreSQL→Redis
seam) during a first sync, a one-file change, a mass change and a file's deletion; the next
sync must make the stores match the YAML exactly. Also proves the convergence checker
catches each corruption."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis

from bench.taskdefs_gen import write_tree
from syncd.adapters.migrate import migrate
from tests.reliability.convergence import (
    assert_converged,
    check_convergence,
    libpq_url,
)
from tests.reliability.support import (
    MODES,
    PrivateRedis,
    Probe,
    Stores,
    Tree,
    full_sync,
    kill,
    private_redis,
    record,
    require,
    reset_stores,
    run_syncd,
    size,
    start_syncd,
    sync_in_process,
    wait_for,
    writer_waiting,
    writes_blocked,
)


@dataclass
class Tally:
    kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        return ", ".join(f"{n} {phase}" for phase, n in sorted(self.phases.items()))


# Targeted moments: as soon as PostgreSQL committed (before, or early in, the Redis writes),
# and as soon as the first Redis chunk (MULTI/EXEC of 2,000 ops) is in (a first sync of
# N tasks writes 2N ops: statuses first, then schedules).
AFTER_COMMIT = "after the PostgreSQL commit"
AFTER_FIRST_CHUNK = "after the first Redis chunk"


def crash_once(
    root: Path, stores: Stores, probe: Probe, when: float | str, max_deletes: int
) -> str:
    """Start a sync, SIGKILL it after `when` seconds (or at the seam); say where it was,
    judged by what it had written."""
    rows, version = probe.rows(), probe.version()
    proc = start_syncd(stores.env, "sync", str(root), "--max-deletes", str(max_deletes))
    if isinstance(when, str):

        def reached() -> bool:
            if when == AFTER_COMMIT:
                return probe.rows() != rows
            return probe.version() != version

        deadline = time.monotonic() + 120
        while proc.poll() is None and not reached() and time.monotonic() < deadline:
            pass  # busy: the windows are milliseconds wide
    else:
        time.sleep(float(when))
    ended = kill(proc)
    if ended is not None:
        assert ended == 0, f"the sync failed by itself with exit code {ended}"
        return "finished before the kill"
    if probe.version() != version:
        return "killed during or after the Redis writes"
    if probe.rows() != rows:
        return "killed between the PostgreSQL commit and Redis"
    return "killed before any write"


def run_crashes(stores: Stores, tmp_path: Path, *, slow: bool) -> Tally:
    seed = int(os.environ.get("SYNCD_RELIABILITY_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    tasks = size("SYNCD_RELIABILITY_TASKS", slow=slow)
    files = size("SYNCD_RELIABILITY_FILES", slow=slow)
    kills = size("SYNCD_RELIABILITY_KILLS", slow=slow)
    tree = Tree(tmp_path / "taskdefs", tasks, files, rng=rng)
    probe = Probe(stores)
    tally = Tally()
    try:
        # One full run of each scenario, to know how long a kill may wait.
        durations: dict[str, float] = {}
        for mode in MODES:
            tree.prepare(mode, stores)
            durations[mode] = full_sync(tree.root, stores, plan=True, max_deletes=tasks)
        # Random moments over the whole run, then the targeted ones.
        moments: list[tuple[str, float | str]] = [
            (mode, rng.uniform(0, durations[mode]))
            for mode in (MODES[i % len(MODES)] for i in range(kills))
        ]
        targeted = [
            ("first sync", AFTER_COMMIT),
            ("mass change", AFTER_COMMIT),
            ("file deleted", AFTER_COMMIT),
            ("first sync", AFTER_FIRST_CHUNK),
        ]
        if slow:
            targeted = 5 * [*targeted, ("one-file change", AFTER_COMMIT)]
        moments += targeted
        for mode, when in moments:
            tree.prepare(mode, stores)
            phase = crash_once(tree.root, stores, probe, when, max_deletes=tasks)
            tally.kills += 1
            tally.phases[f"{mode}: {phase}"] += 1
            full_sync(tree.root, stores, max_deletes=tasks, in_process=not slow)  # exactly
    finally:
        probe.close()
    final = run_syncd(stores.env, "plan", str(tree.root), "--detailed-exitcode")
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    record(
        "crash",
        seed=seed,
        tasks=tasks,
        files=files,
        kills_survived=tally.kills,
        durations={m: round(s, 2) for m, s in durations.items()},
        phases=dict(tally.phases),
    )
    return tally


def test_sync_survives_sigkill_anywhere(stores: Stores, tmp_path: Path) -> None:
    tally = run_crashes(stores, tmp_path, slow=False)
    assert tally.kills >= size("SYNCD_RELIABILITY_KILLS", slow=False)
    # At least the targeted kills land after a write (kills that all missed would prove little).
    assert sum(n for p, n in tally.phases.items() if "before any write" not in p) >= 4, (
        tally.summary()
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sync_survives_sigkill_anywhere_long(stores: Stores, tmp_path: Path) -> None:
    tally = run_crashes(stores, tmp_path, slow=True)
    assert tally.kills >= size("SYNCD_RELIABILITY_KILLS", slow=True)


def test_a_kill_between_postgresql_and_redis_during_deletes_converges(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Regression (found by this suite): the status keys of the deleted tasks were left
    behind for good, the plan only looked at status keys of rows that still exist."""
    migrate(fresh_database_url)
    with private_redis(tmp_path / "redis") as server:
        stores = Stores(fresh_database_url, server.url)
        root = tmp_path / "taskdefs"
        write_tree(root, 30, 3)
        full_sync(root, stores)
        (root / "group-001.yaml").unlink()  # its 10 tasks are to be deleted
        kill_after_commit(stores, server, root, "--max-deletes", "10")
        again = run_syncd(stores.env, "sync", str(root), "--max-deletes", "10")
        assert again.returncode == 0, again.stderr
        assert_converged(root, stores.database_url, stores.redis_url)


def kill_after_commit(stores: Stores, server: PrivateRedis, root: Path, *flags: str) -> None:
    """SIGKILL a sync right after its PostgreSQL commit, before Redis executed any write.

    The sync is parked on a table lock once it has read both stores; Redis is frozen
    (SIGSTOP); the lock is released, the sync commits, then blocks on the frozen Redis and
    is killed. A resumed Redis would still run the commands waiting in its socket buffer,
    so the frozen server is killed too and restarted from its append-only file (fsynced at
    every write): it comes back exactly as it was before the sync.
    """
    assert server.proc is not None
    assert server.persist_dir is not None
    probe = Probe(stores)
    try:
        rows = probe.rows()
        with writes_blocked(stores.database_url):
            proc = start_syncd(stores.env, "sync", str(root), *flags)
            wait_for(lambda: writer_waiting(stores.database_url), 60, "the sync's write")
            server.proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: probe.rows() != rows, 30, "the PostgreSQL commit")
        require(kill(proc) is None, "the sync ended although Redis was frozen")
    finally:
        probe.close()
        server.kill()
        server.start()


# -- the checker catches every kind of corruption ----------------------------------------


def _sql(stores: Stores, statement: str) -> None:
    with psycopg.connect(libpq_url(stores.database_url), autocommit=True) as conn:
        conn.execute(statement)


def _ids(stores: Stores) -> dict[str, int]:
    with psycopg.connect(libpq_url(stores.database_url)) as conn:
        rows = conn.execute("SELECT name, id FROM task_configs").fetchall()
    return {str(name): int(config_id) for name, config_id in rows}


Corruption = Callable[[Stores, redis.Redis, dict[str, int]], object]


def _payload(client: redis.Redis, sid: str) -> dict[str, object]:
    raw = client.get(f"syncd:data:{sid}")
    assert isinstance(raw, bytes)
    found: dict[str, object] = json.loads(raw)
    return found


def _interval_sid(ids: dict[str, int]) -> str:
    return f"task_{ids['task-00001']}"  # index 1: an interval task in taskdefs_gen


CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "schedule deleted": (
        lambda s, r, ids: r.delete(f"syncd:data:{_interval_sid(ids)}"),
        "is missing",
    ),
    "payload altered": (
        lambda s, r, ids: r.set(
            f"syncd:data:{_interval_sid(ids)}",
            json.dumps({**_payload(r, _interval_sid(ids)), "interval": 1}),
        ),
        "differs from build_schedule in ['interval']",
    ),
    "payload is pickle": (
        lambda s, r, ids: r.set(f"syncd:data:{_interval_sid(ids)}", b"\x80\x04K\x01."),
        "is not JSON",
    ),
    "listed twice": (
        lambda s, r, ids: r.rpush("syncd:interval", _interval_sid(ids)),
        "listed 2 times in syncd:interval",
    ),
    "listed in the wrong list": (
        lambda s, r, ids: (
            r.lrem("syncd:interval", 0, _interval_sid(ids)),
            r.rpush("syncd:cron", _interval_sid(ids)),
        ),
        "where it does not belong",
    ),
    "not listed": (
        lambda s, r, ids: r.lrem("syncd:interval", 0, _interval_sid(ids)),
        "is not listed in syncd:interval",
    ),
    "listed in a second list": (
        lambda s, r, ids: r.rpush("syncd:cron", _interval_sid(ids)),
        "where it does not belong",
    ),
    "stray list entry": (
        lambda s, r, ids: r.rpush("syncd:cron", "task_999999"),
        "task_999999 is listed in syncd:cron",
    ),
    "stray schedule": (
        lambda s, r, ids: r.set("syncd:data:task_999999", "{}"),
        "unexpected key syncd:data:task_999999",
    ),
    "stray one-shot list": (
        lambda s, r, ids: r.rpush("syncd:time:2030-01-01T00:00", "task_999999"),
        "unexpected key syncd:time:2030-01-01T00:00",
    ),
    "status wrong": (
        lambda s, r, ids: r.set(f"schedule:status:{ids['task-00001']}", "inactive"),
        "expected 'active'",
    ),
    "status missing": (
        lambda s, r, ids: r.delete(f"schedule:status:{ids['extra-manual']}"),
        "is None, expected 'inactive'",
    ),
    "orphan status": (
        lambda s, r, ids: r.set("schedule:status:999999", "active"),
        "belongs to no task",
    ),
    "foreign key in the db": (
        lambda s, r, ids: r.set("something-else", "1"),
        "outside the prefix",
    ),
    "row field edited": (
        lambda s, r, ids: _sql(s, "UPDATE task_configs SET priority = 10 - priority + 1"),
        "priority is",
    ),
    "row parameters edited": (
        lambda s, r, ids: _sql(
            s,
            "UPDATE task_configs SET parameters = parameters || '{\"x\": 1}' "
            "WHERE name = 'task-00002'",
        ),
        "parameters is",
    ),
    "row deleted": (
        lambda s, r, ids: _sql(s, "DELETE FROM task_configs WHERE name = 'task-00003'"),
        "'task-00003' has no row",
    ),
    "extra row": (
        lambda s, r, ids: _sql(
            s,
            "INSERT INTO task_configs (name, task_type, scheduler_type, parameters, "
            "schedule_config, max_retries, priority, enabled, content_hash) "
            "VALUES ('ghost', 'diagnostics.noop', 'manual', '{}', '{}', 0, 5, true, 'x')",
        ),
        "'ghost'",
    ),
    "row not managed": (
        lambda s, r, ids: _sql(
            s, "UPDATE task_configs SET managed_by = 'someone' WHERE name = 'task-00004'"
        ),
        "managed_by",
    ),
    "row hash stale": (
        lambda s, r, ids: _sql(
            s, "UPDATE task_configs SET content_hash = 'stale' WHERE name = 'task-00005'"
        ),
        "content_hash",
    ),
    "row source wrong": (
        lambda s, r, ids: _sql(
            s, "UPDATE task_configs SET source_line = 1 WHERE name = 'task-00006'"
        ),
        "source is",
    ),
}


def test_the_checker_reports_every_kind_of_corruption(stores: Stores, tmp_path: Path) -> None:
    root = tmp_path / "taskdefs"
    tree = Tree(root, 30, 3)
    tree.write_base()
    full_sync(root, stores)  # converged: the checker finds nothing
    with redis.Redis.from_url(stores.redis_url) as client:
        for name, (corrupt, fragment) in CORRUPTIONS.items():
            reset_stores(stores.database_url, stores.redis_url)
            sync_in_process(root, stores)
            assert check_convergence(root, stores.database_url, stores.redis_url) == [], name
            corrupt(stores, client, _ids(stores))
            problems = check_convergence(root, stores.database_url, stores.redis_url)
            assert any(fragment in p for p in problems), (name, problems)

"""Concurrency: several `syncd sync` of different edits at once end in exactly one of the
edits; two `syncd watch` daemons on the same stores never apply at the same time, even while
the leader lease changes hands; two schedulers never send the same fire twice."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import redis

from bench.taskdefs_gen import rewrite_file
from syncd.adapters.migrate import migrate
from tests.reliability.convergence import check_convergence, libpq_url
from tests.reliability.support import (
    Stores,
    Tree,
    background,
    finished,
    full_sync,
    private_redis,
    record,
    run_syncd,
    size,
    start_syncd_captured,
    sync_in_process,
    taskiq_process,
    wait_for,
    watch_daemon,
)
from worker.delivery import Tally

SIZES = [
    pytest.param(False, id="ci"),
    pytest.param(True, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]
TASKS, FILES = 1000, 10


# -- concurrent syncs ----------------------------------------------------------------------


def edited_copy(base: Tree, target: Path, index: int, revision: int) -> Path:
    """The base tree with file `index` rewritten and one task only this copy declares."""
    shutil.copytree(base.root, target)
    rewrite_file(target, index % base.files, base.tasks, base.files, revision)
    (target / "only-here.yaml").write_text(
        "version: 1\ntasks:\n"
        f"  - {{name: only-{revision}, task_type: diagnostics.noop, "
        f"schedule: {{interval: {60 + index}}}}}\n"
    )
    return target


def the_one_applied(copies: list[Path], stores: Stores) -> Path:
    """The one edit the stores hold exactly (the last applied); fails on none or several."""
    matches = [c for c in copies if not check_convergence(c, stores.database_url, stores.redis_url)]
    shown = {
        c.name: check_convergence(c, stores.database_url, stores.redis_url)[:3] for c in copies
    }
    assert len(matches) == 1, shown
    return matches[0]


@pytest.mark.parametrize("slow", SIZES)
def test_concurrent_syncs_of_different_edits_end_in_exactly_one_edit(
    stores: Stores, tmp_path: Path, slow: bool
) -> None:
    processes = size("SYNCD_RELIABILITY_CONCURRENT", slow=slow)
    base = Tree(tmp_path / "base", TASKS, FILES)
    base.write_base()
    full_sync(base.root, stores)
    winners = []
    for round_ in range(5 if slow else 1):
        copies = [
            edited_copy(base, tmp_path / f"r{round_}-e{i}", i, 1000 * (round_ + 1) + i)
            for i in range(processes)
        ]
        procs = [
            start_syncd_captured(stores.env, "sync", str(copy), "--max-deletes", "10")
            for copy in copies
        ]
        for result in [finished(proc) for proc in procs]:
            assert result.returncode == 0, result.stderr[-2000:]
            assert "Traceback" not in result.stderr
        winner = the_one_applied(copies, stores)
        plan = run_syncd(stores.env, "plan", str(winner), "--detailed-exitcode")
        assert plan.returncode == 0, plan.stdout[-2000:]
        winners.append(copies.index(winner))
        base = Tree(winner, TASKS, FILES)
    record("concurrent syncs", processes=processes, rounds=len(winners), winners=winners)


# -- two daemons -----------------------------------------------------------------------------

AUDIT = """
CREATE TABLE reliability_audit (app text, at timestamptz);
CREATE FUNCTION reliability_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO reliability_audit VALUES (current_setting('application_name'), clock_timestamp());
  RETURN NULL;
END $$;
CREATE TRIGGER reliability_audit AFTER INSERT OR UPDATE OR DELETE ON task_configs
  FOR EACH STATEMENT EXECUTE FUNCTION reliability_audit();
"""
MONITOR_LINE = re.compile(r'^(\d+\.\d+) \[\d+ ([\d.]+:\d+)\] "(\w+)"(?: "([^"]*)")?')
REDIS_WRITES = frozenset({"SET", "DEL", "RPUSH", "LREM", "INCR", "DELETE"})
DAEMONS = ("daemon-a", "daemon-b")


@dataclass(frozen=True)
class Write:
    who: str
    at: float
    what: str


@dataclass(frozen=True)
class Window:
    who: str
    start: float
    end: float
    writes: int


def pg_writes(database_url: str) -> list[Write]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute("SELECT app, extract(epoch FROM at) FROM reliability_audit").fetchall()
    return [Write(str(app), float(at), "postgresql") for app, at in rows if app in DAEMONS]


def redis_writes(monitor_log: Path, names: dict[str, str]) -> list[Write]:
    """Writes to syncd's keys seen by MONITOR, attributed by client address."""
    found = []
    for line in monitor_log.read_text(errors="replace").splitlines():
        match = MONITOR_LINE.match(line)
        if not match:
            continue
        at, address, command, key = match.groups()
        who = names.get(address)
        if who and command.upper() in REDIS_WRITES and key and key.startswith(("syncd:", "sched")):
            found.append(Write(who, float(at), f"redis {command}"))
    return found


def reconciles(log: str, who: str) -> list[tuple[float, float]]:
    """(start, end) of every reconcile that finished, from the daemon's JSON log."""
    spans = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if str(entry.get("message", "")).startswith("reconciled"):
            end = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
            spans.append((end - entry["duration_ms"] / 1000 - 0.002, end + 0.002))
    return spans


def apply_windows(writes: list[Write], spans: dict[str, list[tuple[float, float]]]) -> list[Window]:
    """Group each daemon's writes by the reconcile they happened in: one window per apply."""
    groups: dict[tuple[str, int], list[float]] = {}
    for write in writes:
        owner = [i for i, (a, b) in enumerate(spans[write.who]) if a <= write.at <= b]
        assert owner, f"{write} happened outside every reconcile {write.who} logged"
        groups.setdefault((write.who, owner[0]), []).append(write.at)
    return sorted(
        (Window(who, min(times), max(times), len(times)) for (who, _), times in groups.items()),
        key=lambda w: w.start,
    )


def overlaps(windows: list[Window]) -> list[tuple[Window, Window]]:
    return [
        (a, b)
        for i, a in enumerate(windows)
        for b in windows[i + 1 :]
        if a.who != b.who and b.start <= a.end and a.start <= b.end
    ]


LEASE_KEY = "syncd-leader:syncd"


def hand_over(client: redis.Redis, timeout: float = 15.0) -> None:
    """Delete the lease key until the other daemon holds it (tokens are host:pid:random)."""
    before = client.get(LEASE_KEY)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.delete(LEASE_KEY)
        wait_for(lambda: client.get(LEASE_KEY) is not None, 5, "a daemon to take the lease")
        if client.get(LEASE_KEY) != before:
            return
    raise AssertionError("the lease never changed hands")


def concurrent_reconciles(spans: dict[str, list[tuple[float, float]]]) -> int:
    first, second = (spans[who] for who in DAEMONS)
    return sum(1 for a in first for b in second if a[0] < b[1] and b[0] < a[1])


@contextmanager
def monitoring(port: int, log_path: Path) -> Iterator[None]:
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            ["redis-cli", "-p", str(port), "monitor"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def client_names(client: redis.Redis, names: dict[str, str]) -> None:
    for entry in client.client_list():
        if entry.get("name") in DAEMONS:
            names[str(entry["addr"])] = str(entry["name"])


@pytest.mark.parametrize("slow", SIZES)
def test_two_daemons_never_apply_at_the_same_time(
    fresh_database_url: str, tmp_path: Path, slow: bool
) -> None:
    migrate(fresh_database_url)
    with psycopg.connect(libpq_url(fresh_database_url), autocommit=True) as conn:
        conn.execute(AUDIT)
    rng = random.Random()
    handovers = 24 if slow else 3
    names: dict[str, str] = {}
    with private_redis() as server, server.client() as client:
        tree = Tree(tmp_path / "taskdefs", 2000, 10, rng=rng)
        tree.write_base()
        envs = {
            who: Stores(
                f"{fresh_database_url}?application_name={who}", f"{server.url}?client_name={who}"
            ).env
            for who in DAEMONS
        }
        with (
            monitoring(server.port, tmp_path / "monitor.log"),
            watch_daemon(
                envs["daemon-a"], tree.root, tmp_path / "a.log", "--log-format", "json"
            ) as one,
            watch_daemon(
                envs["daemon-b"], tree.root, tmp_path / "b.log", "--log-format", "json"
            ) as two,
        ):
            wait_for(lambda: one.is_healthy() and two.is_healthy(), 60, "both daemons")
            for _ in range(handovers):
                # The lease changes hands; the old leader believes it leads until its next
                # renewal (up to 2 s later). A mass change now has both daemons plan and
                # apply at the same moment: only the sync lock keeps their writes apart.
                hand_over(client)
                tree.mass_change()
                client_names(client, names)
                time.sleep(2.0)
            time.sleep(3.0)  # let the last change apply
            client_names(client, names)
            assert one.stop() == 0
            assert two.stop() == 0
        stores = Stores(fresh_database_url, server.url)
        assert not check_convergence(tree.root, stores.database_url, stores.redis_url)
    logs = {"daemon-a": one.log(), "daemon-b": two.log()}
    assert all("Traceback" not in log for log in logs.values())
    spans = {who: reconciles(log, who) for who, log in logs.items()}
    contended = concurrent_reconciles(spans)
    in_postgresql = pg_writes(fresh_database_url)
    in_redis = redis_writes(tmp_path / "monitor.log", names)
    assert in_postgresql, "no PostgreSQL write was traced"
    assert in_redis, "no Redis write was traced"
    writes = in_postgresql + in_redis
    windows = apply_windows(writes, spans)
    by_daemon = {who: sum(1 for w in windows if w.who == who) for who in DAEMONS}
    assert not overlaps(windows), overlaps(windows)[:5]
    # Coverage: the daemons did reconcile at the same time (else the check proves little).
    assert contended >= 1, f"no two reconciles ran at once: {spans}"
    assert sum(by_daemon.values()) > handovers, by_daemon
    record(
        "two daemons",
        lease_handovers=handovers,
        applies=by_daemon,
        concurrent_reconciles=contended,
        writes_traced={"postgresql": len(in_postgresql), "redis": len(in_redis)},
        overlapping_applies=0,
    )


# -- two schedulers --------------------------------------------------------------------------

TICKER = """\
version: 1
tasks:
  - {name: tick, task_type: diagnostics.noop, schedule: {interval: 1}}
"""


def started_times(database_url: str) -> list[float]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at) FROM task_executions ORDER BY started_at"
        ).fetchall()
    return [float(at) for (at,) in rows]


def check_fires(times: list[float]) -> None:
    """Runs of a 1 s interval task: one per second, never two in one second-slot.

    Both schedulers tick at the turn of each second, so a fire sent twice shows up as two
    runs milliseconds apart (and as twice the rate)."""
    observed = times[-1] - times[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    slots = [int(t) for t in times]
    assert min(gaps) > 0.5, f"two runs {min(gaps):.3f} s apart: {times}"
    assert len(set(slots)) == len(slots), "two runs in one second-slot"
    assert len(times) <= observed + 2, f"{len(times)} runs in {observed:.1f} s"
    assert len(times) >= 0.6 * observed, f"only {len(times)} runs in {observed:.1f} s"


@pytest.mark.parametrize("slow", SIZES)
def test_two_schedulers_never_send_the_same_fire_twice(
    stores: Stores, tmp_path: Path, slow: bool
) -> None:
    root = tmp_path / "taskdefs"
    root.mkdir()
    (root / "a.yaml").write_text(TICKER)
    assert run_syncd(stores.env, "sync", str(root)).returncode == 0
    seconds = 60.0 if slow else 10.0
    env = {**stores.env, "SYNCD_RECORDER_SPOOL": str(tmp_path / "spool" / "spool.jsonl")}
    scheduler = [sys.executable, "-m", "worker.scheduler"]
    with (
        taskiq_process(
            env, tmp_path / "worker.log", "worker", "worker.app:broker", "--workers", "1"
        ),
        background(scheduler, env, tmp_path / "s1.log") as first,
        background(scheduler, env, tmp_path / "s2.log") as second,
    ):
        wait_for(lambda: started_times(stores.database_url), 60, "the first run", poll=0.2)
        time.sleep(seconds)
    times = started_times(stores.database_url)
    check_fires(times)
    observed = times[-1] - times[0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Fires each scheduler found claimed by the other, from its tick summaries.
    cancelled = [Tally.summed(log.log()).taken for log in (first, second)]
    record(
        "two schedulers",
        seconds=round(observed, 1),
        runs=len(times),
        min_gap=round(min(gaps), 3),
        fires_refused_per_scheduler=cancelled,
    )


# -- the checks catch what they are for ------------------------------------------------------


def test_the_overlap_check_catches_two_applies_at_once() -> None:
    spans = {"daemon-a": [(10.0, 11.0)], "daemon-b": [(10.5, 12.0)]}
    writes = [
        Write("daemon-a", 10.2, "postgresql"),
        Write("daemon-a", 10.8, "redis SET"),
        Write("daemon-b", 10.7, "postgresql"),  # while daemon-a was between its writes
        Write("daemon-b", 11.5, "redis SET"),
    ]
    assert overlaps(apply_windows(writes, spans))
    apart = [*writes[:2], Write("daemon-b", 10.9, "postgresql"), writes[3]]
    assert not overlaps(apply_windows(apart, spans))


def test_the_overlap_check_catches_a_write_outside_any_reconcile() -> None:
    with pytest.raises(AssertionError, match="outside every reconcile"):
        apply_windows([Write("daemon-a", 99.0, "redis SET")], {"daemon-a": [(1.0, 2.0)]})


@pytest.mark.parametrize(
    "times",
    [
        [0.01, 1.01, 1.02, 2.01, 3.01],  # one fire sent twice
        [0.01, 0.55, 1.01, 1.55, 2.01],  # twice the rate, offset schedulers
        [0.01, 0.99, 1.5, 2.01, 3.01],  # two in the same second-slot
        [0.01, 5.0, 10.0],  # hardly fired at all
    ],
)
def test_the_fire_check_catches(times: list[float]) -> None:
    with pytest.raises(AssertionError):
        check_fires([100.0 + t for t in times])


def test_the_edit_check_catches_a_mix_of_two_edits(stores: Stores, tmp_path: Path) -> None:
    base = Tree(tmp_path / "base", 30, 3)
    base.write_base()
    first = edited_copy(base, tmp_path / "first", 0, 1)
    second = edited_copy(base, tmp_path / "second", 1, 2)
    mixed = tmp_path / "mixed"
    shutil.copytree(first, mixed)
    shutil.copy(second / "group-001.yaml", mixed / "group-001.yaml")  # half of each edit
    sync_in_process(mixed, stores)
    with pytest.raises(AssertionError):
        the_one_applied([first, second], stores)
    sync_in_process(second, stores)
    assert the_one_applied([first, second], stores) == second

"""Benchmark worker throughput: no-op tasks per second through a real `taskiq worker`.

Each round enqueues N `diagnostics.noop` messages (the labels `syncd run` would send) on a
private Redis db, starts one worker process (default async concurrency) and times it until all
N are done: acked (no recorder) or N rows in task_executions of a private, migrated database.
Variants alternate per round; medians are printed. Usage: bench/worker_bench.py [-n N -r R]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import STDOUT, Popen, TimeoutExpired

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# diagnostics.noop is registered only with SYNCD_DIAGNOSTICS=1 (here and in the workers).
os.environ["SYNCD_DIAGNOSTICS"] = "1"
from taskiq.kicker import AsyncKicker

from syncd.adapters.migrate import migrate
from syncd.core.keys import queue_stream
from syncd.core.model import TaskConfig
from syncd.core.payloads import schedule_labels
from syncd.core.settings import Settings
from tests.services import private_database, private_redis_db
from worker.broker import CONSUMER_GROUP, make_broker
from worker.tasks import registry

REPO = Path(__file__).resolve().parent.parent
TASK = "diagnostics.noop"
STREAM = queue_stream(registry[TASK].queue)
APPS = {"recorder": "worker.app:broker", "no recorder": "bench.worker_bench_app:broker"}
POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 600.0
STOP_SECONDS = 10.0


@dataclass(frozen=True)
class Stores:
    database_url: str
    redis_url: str

    @property
    def conninfo(self) -> str:
        return self.database_url.replace("postgresql+psycopg://", "postgresql://")


@dataclass(frozen=True)
class Timing:
    variant: str
    wall: float  # worker process start -> all N done (includes start-up)
    steady: float  # first task acked -> all N done
    clean_stop: bool  # the worker exited on SIGINT (else it was killed after STOP_SECONDS)
    cpu: float  # CPU seconds of the worker's processes, start-up included

    def rates(self, count: int) -> tuple[float, float]:
        return count / self.wall, count / self.steady


def worker_command(app: str) -> list[str]:
    return [sys.executable, "-m", "taskiq", "worker", app, "--workers", "1"]


# --- setting a round up -------------------------------------------------------------------


def bench_config() -> TaskConfig:
    return TaskConfig(name="bench-noop", task_type=TASK, scheduler_type="manual")


def insert_config(stores: Stores, config: TaskConfig) -> int:
    """A real task_configs row, so the recorder's join finds the config as in production."""
    with psycopg.connect(stores.conninfo, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO task_configs (name, task_type, scheduler_type, parameters, "
            "schedule_config, max_retries, priority, enabled, content_hash) "
            "VALUES (%s, %s, %s, '{}', '{}', %s, %s, true, %s) RETURNING id",
            (
                config.name,
                config.task_type,
                config.scheduler_type,
                config.max_retries,
                config.priority,
                config.content_hash(),
            ),
        ).fetchone()
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned no row")
    return int(row[0])


def reset(stores: Stores) -> None:
    """Empty both private stores between rounds (our own claimed Redis db only)."""
    with redis.Redis.from_url(stores.redis_url) as client:
        client.flushdb()
    with psycopg.connect(stores.conninfo, autocommit=True) as conn:
        conn.execute("TRUNCATE task_executions")


async def enqueue(stores: Stores, count: int, config_id: int) -> None:
    """Send `count` messages as `syncd run` would: the broker's kicker, the schedule labels."""
    broker = make_broker(registry, Settings(redis_url=stores.redis_url))
    await broker.startup()  # creates the consumer groups, as the worker's start-up would
    labels = schedule_labels(config_id, bench_config(), registry[TASK].queue)
    try:
        for start in range(0, count, 500):
            chunk = range(start, min(start + 500, count))
            await asyncio.gather(*(AsyncKicker(TASK, broker, labels).kiq() for _ in chunk))
    finally:
        await broker.shutdown()


# --- watching a worker --------------------------------------------------------------------


def acked(client: redis.Redis) -> int:
    """Messages the group read and acked (Redis 7's entries-read minus those still pending)."""
    (group,) = [g for g in client.xinfo_groups(STREAM) if g["name"] == CONSUMER_GROUP.encode()]
    return int(group["entries-read"] or 0) - int(group["pending"])


def recorded(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute("SELECT count(*) FROM task_executions").fetchone()
    return 0 if row is None else int(row[0])


def watch(
    acked_now: Callable[[], int], done_now: Callable[[], int], count: int, proc: Popen[bytes]
) -> float:
    """Poll until `done_now()` reaches count; return when the first ack was seen (monotonic)."""
    first = None
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while (done := done_now()) < count:
        if first is None and acked_now() > 0:
            first = time.monotonic()
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker exited or timed out after {done}/{count} tasks")
        time.sleep(POLL_SECONDS)
    return first if first is not None else time.monotonic()


def run_worker(stores: Stores, variant: str, count: int, log: Path) -> Timing:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    env.update(
        SYNCD_REDIS_URL=stores.redis_url,
        SYNCD_DATABASE_URL=stores.database_url,
        SYNCD_RECORDER_SPOOL=str(log.with_suffix(".spool.jsonl")),
        SYNCD_WORKER_METRICS_PORT="0",  # counted as in production, not served
        SYNCD_DIAGNOSTICS="1",
    )
    with (
        log.open("wb") as out,
        psycopg.connect(stores.conninfo, autocommit=True) as conn,
        redis.Redis.from_url(stores.redis_url) as client,
    ):
        # Both variants start the clock at the first ack; the recorder's ends at its last row.
        acked_now = functools.partial(acked, client)
        done_now = functools.partial(recorded, conn) if variant == "recorder" else acked_now
        started = time.monotonic()
        proc = Popen(
            worker_command(APPS[variant]),
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=STDOUT,
            start_new_session=True,  # its own process group, so stop() can kill it whole
        )
        try:
            first = watch(acked_now, done_now, count, proc)
            done = time.monotonic()
            cpu = group_cpu_seconds(proc.pid)
        finally:
            clean = stop(proc)
        check_round(variant, count, acked(client), recorded(conn), log)
    return Timing(variant, done - started, done - first, clean, cpu)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the process group, from /proc."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields: state, ppid, pgrp, ..., utime (12), stime (13)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def stop(proc: Popen[bytes]) -> bool:
    """SIGINT (clean: the recorder drains its buffer); True if the worker exited by itself.

    An idle worker without the recorder may not exit on SIGINT (it keeps polling the
    stream), so after STOP_SECONDS the whole process group is killed: killing only the
    parent would leave its worker child consuming the next round's messages.
    """
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_SECONDS)
    except TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return False
    return True


def check_round(variant: str, count: int, done: int, rows: int, log: Path) -> None:
    """Every message acked, and rows only (and exactly) when the recorder ran."""
    expected_rows = count if variant == "recorder" else 0
    if done != count or rows != expected_rows or b"Traceback" in log.read_bytes():
        raise RuntimeError(f"{variant}: {done} acked, {rows} rows; see {log}")


# --- the benchmark ------------------------------------------------------------------------


def run(count: int, rounds: int, workdir: Path) -> dict[str, list[Timing]]:
    results: dict[str, list[Timing]] = {v: [] for v in APPS}
    with private_database() as database_url, private_redis_db() as redis_url:
        stores = Stores(database_url, redis_url)
        migrate(database_url)
        config_id = insert_config(stores, bench_config())
        for round_ in range(rounds):
            order = list(APPS) if round_ % 2 == 0 else list(reversed(APPS))
            for variant in order:
                reset(stores)
                asyncio.run(enqueue(stores, count, config_id))
                log = workdir / f"{variant.replace(' ', '-')}-{round_}.log"
                timing = run_worker(stores, variant, count, log)
                results[variant].append(timing)
                print_round(round_, timing, count)
    return results


def print_round(round_: int, timing: Timing, count: int) -> None:
    wall, steady = timing.rates(count)
    print(
        f"round {round_ + 1} {timing.variant:>11}: {timing.wall:6.2f} s total "
        f"({wall:6.0f} tasks/s), {steady:6.0f} tasks/s after the first ack"
        + ("" if timing.clean_stop else f"; ignored SIGINT, killed after {STOP_SECONDS:g} s"),
        flush=True,
    )


def summarize(results: dict[str, list[Timing]], count: int) -> dict[str, dict[str, float]]:
    summary = {}
    for variant, timings in results.items():
        rates = [t.rates(count) for t in timings]
        summary[variant] = {
            "median_tasks_per_s": statistics.median(r[0] for r in rates),
            "median_steady_tasks_per_s": statistics.median(r[1] for r in rates),
            "median_seconds": statistics.median(t.wall for t in timings),
            "median_cpu_ms_per_task": statistics.median(1000 * t.cpu / count for t in timings),
        }
    return summary


def print_summary(summary: dict[str, dict[str, float]], count: int, rounds: int) -> None:
    print(f"\n{count} x {TASK}, {rounds} rounds, medians (1 worker process, default concurrency)")
    for variant, numbers in summary.items():
        print(
            f"  {variant:>11}: {numbers['median_tasks_per_s']:6.0f} tasks/s incl. start-up, "
            f"{numbers['median_steady_tasks_per_s']:6.0f} tasks/s steady "
            f"({numbers['median_seconds']:.2f} s), "
            f"{1000 * numbers['median_cpu_ms_per_task']:.0f} us of worker CPU per task"
        )
        print(f"  {'':>11}  {shlex.join(worker_command(APPS[variant]))}")
    with_, without = summary["recorder"], summary["no recorder"]
    for key, what in (
        ("median_tasks_per_s", "incl. start-up"),
        ("median_steady_tasks_per_s", "steady"),
    ):
        print(f"  recorder / no recorder ({what}): {with_[key] / without[key]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--tasks", type=int, default=5000)
    parser.add_argument("-r", "--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    args = parser.parse_args(argv)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}", flush=True)
    # Worker logs are kept if a round fails (the error names the log); removed on success.
    workdir = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    results = run(args.tasks, args.rounds, workdir)
    shutil.rmtree(workdir)
    summary = summarize(results, args.tasks)
    print_summary(summary, args.tasks, args.rounds)
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

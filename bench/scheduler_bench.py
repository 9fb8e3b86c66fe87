"""Benchmark the scheduler: N crons due in the same minute, fired by real scheduler processes.

What it does, on a private Redis database (tests/services.py: claimed, flushed after):

1. registers N crons due at the next minute boundary but one (`M * * * *`: diagnostics.noop,
   each its own config id) and their
   `active` statuses the way `syncd sync` writes them (`RedisStore.apply`);
2. starts K `taskiq scheduler worker.app:scheduler --update-interval 1` processes (K = 2 by
   default: the claim decides which one sends each fire) and lets them load;
3. waits for a minute boundary, then until every fire is in the stream or 55 s passed.

It prints what matters for "no due fire is lost": fires sent (stream entries), distinct
schedule ids among them, duplicates, fires missing; when the first and the last entry were
added after the boundary (a stream id's first part is Redis' clock in ms); the schedulers'
log lines of retried and failed sends; and each scheduler's peak RSS (VmHWM). Exit status 1
when a fire is missing or sent twice.

Usage: .venv/bin/python bench/scheduler_bench.py [--due N] [--schedulers K]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from syncd.adapters.redis import PutSchedule, RedisOp, RedisStore, SetStatus
from syncd.core.keys import KeyLayout, queue_stream
from syncd.core.model import TaskConfig
from syncd.core.payloads import build_schedule, index_key
from tests.services import private_database, private_redis_db, store_env

REPO = Path(__file__).resolve().parent.parent
LAYOUT = KeyLayout()
STREAM = queue_stream("default")


def register(redis_url: str, due: int, minute: int) -> None:
    ops: list[RedisOp] = []
    for config_id in range(1, due + 1):
        config = TaskConfig(
            name=f"bench-{config_id}",
            task_type="diagnostics.noop",
            scheduler_type="cron",
            schedule_config={"cron": f"{minute} * * * *"},
        )
        payload = build_schedule(config_id, config, "default") or {}
        ops += [PutSchedule(payload, index_key(LAYOUT, payload) or LAYOUT.cron_key),
                SetStatus(config_id, "active")]  # fmt: skip
    store = RedisStore.from_url(redis_url, LAYOUT)
    try:
        store.apply(ops)
    finally:
        store.close()


def start_schedulers(env: dict[str, str], count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    taskiq = Path(sys.executable).with_name("taskiq")
    command = [str(taskiq), "scheduler", "worker.app:scheduler", "--update-interval", "1"]
    procs = []
    for index in range(count):
        with (logs / f"scheduler-{index}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    return procs


def next_boundary(after_seconds: float) -> float:
    """The first minute boundary at least `after_seconds` from now (epoch seconds)."""
    now = time.time()
    return (int((now + after_seconds) // 60) + 1) * 60.0


def peak_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def wait_for_fires(client: redis.Redis, due: int, boundary: float) -> None:
    while time.time() < boundary + 55:
        if int(client.xlen(STREAM)) >= due and time.time() > boundary + 2:
            return
        time.sleep(0.25)


def report(client: redis.Redis, due: int, boundary: float, logs: Path, rss: list[float]) -> bool:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(STREAM)  # type: ignore[assignment]
    ids = Counter(json.loads(fields[b"data"])["labels"]["schedule_id"] for _, fields in entries)
    stamps = sorted(int(entry_id.split(b"-")[0]) / 1000 for entry_id, _ in entries)
    duplicates = sum(n - 1 for n in ids.values())
    missing = due - len(ids)
    text = "".join(path.read_text(errors="replace") for path in sorted(logs.glob("*.log")))
    print(f"due in one minute      {due:>9,}")
    print(f"stream entries         {len(entries):>9,}")
    print(f"distinct schedule ids  {len(ids):>9,}   missing {missing:,}, duplicates {duplicates:,}")
    if stamps:
        print(f"first entry after :00  {stamps[0] - boundary:>9.2f} s")
        print(f"last entry after :00   {stamps[-1] - boundary:>9.2f} s")
    print(f"send retries logged    {text.count('retrying in'):>9,}")
    print(f"fires given up logged  {text.count('NOT SENT'):>9,}")
    print(f"unretrieved exceptions {text.count('exception was never retrieved'):>9,}")
    print("scheduler peak RSS     " + ", ".join(f"{mb:.0f} MB" for mb in rss))
    return missing == 0 and duplicates == 0


def run(due: int, schedulers: int) -> bool:
    with private_database() as database_url, private_redis_db() as redis_url:
        # Due in that one minute only: `* * * * *` would fire as soon as the schedulers
        # start, and then (taskiq waits 60 s between two fires) always at that second.
        boundary = next_boundary(after_seconds=15 + due / 5_000)
        register(redis_url, due, datetime.fromtimestamp(boundary, UTC).minute)
        env = store_env(database_url, redis_url) | {"SYNCD_SCHEDULER_METRICS_PORT": "0"}
        client = redis.Redis.from_url(redis_url)
        with tempfile.TemporaryDirectory() as tmp:
            logs = Path(tmp)
            procs = start_schedulers(env, schedulers, logs)
            try:
                print(f"load 1 min {os.getloadavg()[0]:.2f}; fires due at "
                      f"{datetime.fromtimestamp(boundary, UTC):%H:%M:%S} UTC")  # fmt: skip
                wait_for_fires(client, due, boundary)
                rss = [peak_rss_mb(p.pid) or 0.0 for p in procs]
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            ok = report(client, due, boundary, logs, rss)
        client.close()
        return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--due", type=int, default=10_000, help="crons due in the minute")
    parser.add_argument("--schedulers", type=int, default=2, help="scheduler processes")
    args = parser.parse_args(argv)
    sys.exit(0 if run(args.due, args.schedulers) else 1)


if __name__ == "__main__":
    main()

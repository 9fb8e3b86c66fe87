"""Benchmark the scheduler: N crons due in the same minute, fired by real scheduler processes.

What it does, on a private Redis database (tests/services.py: claimed, flushed after):

1. registers N crons due at the next minute boundary but one (`M * * * *`: diagnostics.noop,
   each its own config id) and their `active` statuses the way `syncd sync` writes them
   (`RedisStore.apply`);
2. starts K `python -m worker.scheduler` processes (K = 2 by default: the claim decides
   which one sends each fire) and lets them load;
3. waits for a minute boundary, then until every fire is in the stream or 55 s passed.

It prints what matters for "no due fire is lost": fires sent (stream entries), distinct
schedule ids among them, duplicates, fires missing; when the first and the last entry were
added after the boundary (a stream id's first part is Redis' clock in ms); the schedulers'
log lines of retried and failed sends; the schedulers' tick summaries; each scheduler's
peak RSS (VmHWM) and the CPU seconds it used from loading to the end. Exit status 1 when a
fire is missing or sent twice.

`--every-minute` registers `* * * * *` instead and measures each scheduler's CPU seconds
over one whole minute in which all N fire (the steady cost of N crons due every minute).
`--hold N` registers N crons that are not due, starts one scheduler, and prints its RSS
once it holds them, and again after a sync rewrote every schedule (a full re-read).
`--command taskiq` runs the former `taskiq scheduler worker.app:scheduler` command line, for
a comparison with the scheduler loop it replaced (on a tree that still has it).

Usage: .venv/bin/python bench/scheduler_bench.py [--due N] [--schedulers K] [--every-minute]
       .venv/bin/python bench/scheduler_bench.py --hold 100000
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
from worker.delivery import Tally

REPO = Path(__file__).resolve().parent.parent
LAYOUT = KeyLayout()
STREAM = queue_stream("default")
COMMANDS = {
    "syncd": [sys.executable, "-m", "worker.scheduler"],
    "taskiq": [
        str(Path(sys.executable).with_name("taskiq")),
        *("scheduler", "worker.app:scheduler", "--update-interval", "1"),
    ],
}


def register(redis_url: str, due: int, cron: str) -> None:
    ops: list[RedisOp] = []
    for config_id in range(1, due + 1):
        config = TaskConfig(
            name=f"bench-{config_id}",
            task_type="diagnostics.noop",
            scheduler_type="cron",
            schedule_config={"cron": cron},
        )
        payload = build_schedule(config_id, config, "default") or {}
        ops += [PutSchedule(payload, index_key(LAYOUT, payload) or LAYOUT.cron_key),
                SetStatus(config_id, "active")]  # fmt: skip
    store = RedisStore.from_url(redis_url, LAYOUT)
    try:
        store.apply(ops)
    finally:
        store.close()


def start_schedulers(
    env: dict[str, str], count: int, logs: Path, command: list[str]
) -> list[subprocess.Popen[bytes]]:
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sleep_until(when: float) -> None:
    time.sleep(max(0.0, when - time.time()))


def wait_for_fires(client: redis.Redis, due: int, boundary: float) -> None:
    while time.time() < boundary + 55:
        if int(client.xlen(STREAM)) >= due and time.time() > boundary + 2:
            return
        time.sleep(0.25)


def report(client: redis.Redis, due: int, boundary: float, logs: Path) -> bool:
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
    print(f"retry log lines        {text.count('retrying in'):>9,}")
    print(f"given-up log lines     {text.count('NOT SENT'):>9,}")
    print(f"unretrieved exceptions {text.count('exception was never retrieved'):>9,}")
    print(f"tick summaries         {Tally.summed(text)}")
    at = f"tick {datetime.fromtimestamp(boundary, UTC):%H:%M:%S}: "
    for line in text.splitlines():
        if at in line:
            print("  " + line[line.index(at) :])
    return missing == 0 and duplicates == 0


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(due: int, schedulers: int, command: list[str], every_minute: bool) -> bool:
    with private_database() as database_url, private_redis_db() as redis_url:
        # Due in that one minute only: `* * * * *` would fire as soon as the schedulers
        # start (and, under taskiq's loop, then always at that second).
        boundary = next_boundary(after_seconds=15 + due / 5_000)
        minute = datetime.fromtimestamp(boundary, UTC).minute
        register(redis_url, due, "* * * * *" if every_minute else f"{minute} * * * *")
        env = store_env(database_url, redis_url) | {"SYNCD_SCHEDULER_METRICS_PORT": "0"}
        client = redis.Redis.from_url(redis_url)
        with tempfile.TemporaryDirectory() as tmp:
            logs = Path(tmp)
            procs = start_schedulers(env, schedulers, logs, command)
            try:
                print(f"load 1 min {os.getloadavg()[0]:.2f}; fires due at "
                      f"{datetime.fromtimestamp(boundary, UTC):%H:%M:%S} UTC")  # fmt: skip
                if every_minute:
                    ok = measure_a_minute(client, procs, due, boundary, logs)
                else:
                    wait_for_fires(client, due, boundary)
                    measured(procs)
                    ok = report(client, due, boundary, logs)
            finally:
                stop(procs)
        client.close()
        return ok


def measured(procs: list[subprocess.Popen[bytes]]) -> None:
    rss = [peak_rss_mb(p.pid) or 0.0 for p in procs]
    cpu = [cpu_seconds(p.pid) for p in procs]
    print("scheduler peak RSS     " + ", ".join(f"{mb:.0f} MB" for mb in rss))
    print("scheduler CPU so far   " + ", ".join(f"{s:.2f} s" for s in cpu))


def measure_a_minute(
    client: redis.Redis, procs: list[subprocess.Popen[bytes]], due: int, boundary: float, logs: Path
) -> bool:
    """CPU over [boundary + 2 s, boundary + 62 s]: exactly one fire of each cron inside."""
    sleep_until(boundary + 2)
    before = [cpu_seconds(p.pid) for p in procs]
    client.delete(STREAM)
    sleep_until(boundary + 62)
    used = [cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True)]
    entries = int(client.xlen(STREAM))
    print(f"crons due each minute  {due:>9,}")
    print(f"sent in that minute    {entries:>9,}")
    print("scheduler CPU/minute   " + ", ".join(f"{s:.2f} s" for s in used))
    print("scheduler peak RSS     " + ", ".join(f"{peak_rss_mb(p.pid) or 0:.0f} MB" for p in procs))
    text = "".join(path.read_text(errors="replace") for path in sorted(logs.glob("*.log")))
    print(f"tick summaries         {Tally.summed(text)}")
    return entries == due


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hold(count: int, command: list[str]) -> bool:
    """RSS of one scheduler holding `count` schedules, none of them due."""
    with private_database() as database_url, private_redis_db() as redis_url:
        not_now = (datetime.now(UTC).minute + 30) % 60
        register(redis_url, count, f"{not_now} * * * *")
        env = store_env(database_url, redis_url) | {"SYNCD_SCHEDULER_METRICS_PORT": "0"}
        with tempfile.TemporaryDirectory() as tmp:
            logs = Path(tmp)
            (proc,) = start_schedulers(env, 1, logs, command)
            try:
                print(f"load 1 min {os.getloadavg()[0]:.2f}; {count:,} schedules")
                time.sleep(5 + count / 5_000)  # loaded (the log tells, below)
                print(f"after loading          RSS {rss_mb(proc.pid):.0f} MB, "
                      f"peak {peak_rss_mb(proc.pid) or 0:.0f} MB")  # fmt: skip
                # Every payload changes (as a sync that rewrites every schedule would).
                register(redis_url, count, f"{(not_now + 1) % 60} * * * *")
                time.sleep(5 + count / 5_000)
                print(f"after a full re-read   RSS {rss_mb(proc.pid):.0f} MB, "
                      f"peak {peak_rss_mb(proc.pid) or 0:.0f} MB")  # fmt: skip
                print(f"CPU so far             {cpu_seconds(proc.pid):.2f} s")
            finally:
                stop([proc])
            print("".join(p.read_text() for p in logs.glob("*.log"))[-600:])
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--due", type=int, default=10_000, help="crons due in the minute")
    parser.add_argument("--schedulers", type=int, default=2, help="scheduler processes")
    parser.add_argument("--command", choices=sorted(COMMANDS), default="syncd")
    parser.add_argument(
        "--every-minute", action="store_true", help="`* * * * *`: measure CPU per minute"
    )
    parser.add_argument("--hold", type=int, default=0, help="schedules held, none due")
    args = parser.parse_args(argv)
    if args.hold:
        sys.exit(0 if hold(args.hold, COMMANDS[args.command]) else 1)
    ok = run(args.due, args.schedulers, COMMANDS[args.command], args.every_minute)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

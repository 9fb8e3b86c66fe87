"""How the `syncd` CLI scales with the size of the taskdefs tree, next to goals and a floor.

For each size (default 1,000 and 10,000 tasks; 100,000 only with `--with-100k`) it writes a
tree with bench/taskdefs_gen.py (100 tasks per file) and times fresh CLI processes, each
`python -m syncd.cli ...` against private stores (tests/services.py: a new PostgreSQL
database migrated with `syncd.adapters.migrate.migrate`, a claimed empty Redis db; both
removed afterwards, also on failure):

- start-up: `syncd --help` (the CLI has no `--version`), the cost of any command;
- `syncd validate DIR` with an empty parse cache (every file parsed), then again with the
  cache that run filled (the everyday case: an unchanged file is not parsed again);
- a cold `syncd sync DIR` on the empty stores and an empty parse cache (a first deploy on
  a new machine: nothing to reuse), checked: every row and schedule written;
- a no-op `syncd sync DIR` right after it (a new process, the cache it filled), checked:
  nothing applied.

Each run has a parse cache of its own (`SYNCD_PARSE_CACHE`), removed afterwards.

Wall time runs from spawning the child to reaping it. Peak RSS is the child's own
`ru_maxrss` from `os.wait4` (not RUSAGE_CHILDREN, whose maximum covers every child reaped
so far), in MB of 10^6 bytes. Each child is spawned by a small stdlib-only launcher
process (`LAUNCHER`), not by this bench: on Linux a child's ru_maxrss starts at the RSS
of the process it was forked from.

The floor is what a cold sync of the same tree cannot avoid, done in this process on
fresh stores: read and parse every file with `yaml.CSafeLoader`; one PostgreSQL COPY of a
row per task (with a sha256 content hash, as syncd stores) into a scratch table made
`LIKE task_configs INCLUDING ALL`; one MULTI/EXEC pipeline of SET data key + RPUSH to the
cron/interval list + SET status per task, with the keys syncd uses.

Every measurement is repeated `--runs` times on fresh stores and the medians are printed,
each CLI row next to its goal (ok/over), after the 1-minute load average of each size.

With `--server-stats`, the work the servers did for each cold and no-op sync is printed
too (medians): PostgreSQL's `pg_stat_database` of the private database (`active_time`,
the time its sessions spent running statements; transactions; rows inserted, fetched,
returned) and Redis' `INFO commandstats` (calls and server time per command; Redis
counts for the whole server, so another client's commands meanwhile are counted too).

Usage: .venv/bin/python bench/scale_bench.py [--sizes 1000,10000] [--with-100k]
       [-r RUNS] [--json PATH] [--server-stats]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import psycopg
import redis
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.sync_bench import environment
from bench.taskdefs_gen import write_tree
from syncd.adapters.migrate import migrate
from syncd.core.keys import KeyLayout, queue_stream, schedule_id
from tests.services import PG_ADMIN_DSN, private_database, private_redis_db, store_env

REPO = Path(__file__).resolve().parent.parent
TASKS_PER_FILE = 100
DEFAULT_SIZES = (1_000, 10_000)
BIG = 100_000
# Its own key prefix: the floor and the CLI write the same key names, none of the defaults.
PREFIX = "syncdbench"
LAYOUT = KeyLayout(prefix=PREFIX)
BENCH_POLICY = REPO / "bench" / "policy.yaml"
# A hung child would otherwise hang the bench; 100k cold syncs stay far below this.
CHILD_TIMEOUT_SECONDS = 1800.0
FLOOR_TABLE = "bench_floor"

STARTUP = "start-up (--help)"
VALIDATE_FIRST = "validate, empty cache"
VALIDATE = "validate"
COLD = "cold sync"
NOOP = "no-op sync"
CLI_WORK = (STARTUP, VALIDATE_FIRST, VALIDATE, COLD, NOOP)
PARSE = "parse"
COPY = "copy"
REDIS = "redis"
TOTAL = "total"
FLOOR_PIECES = (PARSE, COPY, REDIS, TOTAL)
FLOOR_LABELS = {
    PARSE: "floor: read + CSafeLoader",
    COPY: "floor: PostgreSQL COPY",
    REDIS: "floor: Redis MULTI/EXEC",
    TOTAL: "floor: total",
}

# The goals (README, "Performance").
VALIDATE_LIMIT_10K = 1.2  # seconds
COLD_VS_FLOOR_10K = 1.3  # times the floor's total
NOOP_OVER_STARTUP_10K = 0.3  # seconds above start-up
BIG_VS_10K = 11.0  # the 100k cold sync, times the 10k one
BIG_RSS_LIMIT_MB = 400.0


def fail(message: str) -> SystemExit:
    return SystemExit(f"scale_bench: {message}")


# -- child processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildSample:
    seconds: float
    rss_mb: float


@dataclass(frozen=True)
class CliRun:
    sample: ChildSample
    returncode: int
    stdout: str
    stderr: str


# Spawns the measured command and reports its wall time and wait4 rusage on fd argv[1].
# Why a launcher: Linux carries the high-water RSS of the process that forks a child into
# the child's ru_maxrss (saved at exec), so a child of this bench, which holds parsed
# taskdefs and SQLAlchemy, would show at least the bench's RSS. The launcher is stdlib only
# (`-I -S`, about 10 MB), below any CLI's own peak. It also kills the command on a timeout.
LAUNCHER = """\
import json, os, signal, subprocess, sys, time
report, timeout, command = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
child = subprocess.Popen(command)
signal.signal(signal.SIGALRM, lambda *_: child.kill())
signal.setitimer(signal.ITIMER_REAL, timeout)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
child.returncode = os.waitstatus_to_exitcode(status)
with os.fdopen(report, "w") as out:
    json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "rc": child.returncode}, out)
"""


def run_cli(args: Sequence[str], env: Mapping[str, str]) -> CliRun:
    """One `python -m syncd.cli ARGS` process: wall time, its own peak RSS, its output."""
    command = [sys.executable, "-m", "syncd.cli", *args]
    read_end, write_end = os.pipe()
    launch = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(write_end)]
    # Output goes to files, not pipes: no reader thread competes with the child for a CPU.
    with (
        os.fdopen(read_end, "rb") as report,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        try:
            launcher = subprocess.run(
                [*launch, str(CHILD_TIMEOUT_SECONDS), *command],
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(write_end,),
                check=False,
            )
        finally:
            os.close(write_end)
        measured = report.read()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if launcher.returncode != 0 or not measured:
        raise fail(f"the launcher of `syncd {args[0]}` failed:\n{stderr[-1500:]}")
    numbers = json.loads(measured)
    # Linux reports ru_maxrss in KiB.
    sample = ChildSample(numbers["seconds"], numbers["maxrss_kib"] * 1024 / 1e6)
    return CliRun(sample, numbers["rc"], stdout, stderr)


def hidden(text: str, secrets: Sequence[str]) -> str:
    """`text` without the store URLs, which may hold a password."""
    for index, secret in enumerate(secrets):
        text = text.replace(secret, f"<store-url-{index}>")
    return text


def run_checked(args: Sequence[str], env: Mapping[str, str], secrets: Sequence[str]) -> CliRun:
    run = run_cli(args, env)
    if run.returncode != 0 or "Traceback" in run.stderr:
        tail = hidden((run.stdout[-1500:] + run.stderr[-1500:]).strip(), secrets)
        raise fail(f"`syncd {args[0]}` exited {run.returncode}:\n{tail}")
    return run


def cli_env(db_url: str, redis_url: str) -> dict[str, str]:
    """The tests' CLI environment, with the benchmarks' policy (as `make bench` sets it),
    production's task catalog (no diagnostics types) and this bench's key prefix."""
    env = store_env(db_url, redis_url)
    env.update(
        SYNCD_POLICY=str(BENCH_POLICY),
        SYNCD_DIAGNOSTICS="0",
        SYNCD_SCHEDULE_PREFIX=PREFIX,
    )
    return env


# -- stores ---------------------------------------------------------------------------------


@contextmanager
def migrated_stores() -> Iterator[tuple[str, str]]:
    """A fresh migrated PostgreSQL database and an empty Redis db, both removed afterwards."""
    with private_database() as db_url, private_redis_db() as redis_url:
        migrate(db_url)
        yield db_url, redis_url


def pg_conninfo(db_url: str) -> str:
    """libpq conninfo of a private database (its SQLAlchemy URL ends in the name)."""
    return make_conninfo(PG_ADMIN_DSN, dbname=db_url.rsplit("/", 1)[1])


def count_rows(db_url: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    with psycopg.connect(pg_conninfo(db_url)) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def count_listed(redis_url: str) -> int:
    """Schedule ids in the cron and interval lists (the generated tree has no others)."""
    with redis.Redis.from_url(redis_url) as client:
        return int(client.llen(LAYOUT.cron_key)) + int(client.llen(LAYOUT.interval_key))


def expect_state(db_url: str, redis_url: str, table: str, tasks: int, what: str) -> None:
    rows, listed = count_rows(db_url, table), count_listed(redis_url)
    if rows != tasks or listed != tasks:
        raise fail(f"{what}: {rows} rows and {listed} listed schedules, expected {tasks}")


# -- the CLI rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CliMeasures:
    samples: dict[str, ChildSample]
    server: dict[str, ServerStats]  # of COLD and NOOP, with --server-stats only


def measure_cli(root: Path, tasks: int, server_stats: bool = False) -> CliMeasures:
    """Start-up, validate, cold sync and no-op sync, each a new process, on fresh stores."""
    with migrated_stores() as (db_url, redis_url), tempfile.TemporaryDirectory() as cache:
        env, secrets = cli_env(db_url, redis_url), (db_url, redis_url)
        env["SYNCD_PARSE_CACHE"] = str(Path(cache) / "parse")
        samples = {
            STARTUP: run_checked(["--help"], env, secrets).sample,
            VALIDATE_FIRST: run_checked(["validate", str(root)], env, secrets).sample,
            VALIDATE: run_checked(["validate", str(root)], env, secrets).sample,
        }
        shutil.rmtree(Path(cache) / "parse")
        server: dict[str, ServerStats] = {}
        for work in (COLD, NOOP):
            before = server_snapshot(db_url, redis_url) if server_stats else None
            run = run_checked(["sync", str(root)], env, secrets)
            if before is not None:
                server[work] = server_snapshot(db_url, redis_url).minus(before)
            check_sync(run, work, tasks, secrets)
            expect_state(db_url, redis_url, "task_configs", tasks, work)
            samples[work] = run.sample
    return CliMeasures(samples, server)


def check_sync(run: CliRun, work: str, tasks: int, secrets: Sequence[str]) -> None:
    if work == COLD and f"Applied: {tasks} row(s) written" not in run.stderr:
        raise fail(f"cold sync did not write {tasks} rows: {hidden(run.stderr, secrets)}")
    if work == NOOP and "Applied:" in run.stderr:
        raise fail(f"the no-op sync applied changes: {hidden(run.stderr, secrets)}")


# -- server-side work (--server-stats) ----------------------------------------------------

# pg_stat_database counters of one database: active_time is in milliseconds (PostgreSQL 14+).
PG_COUNTERS = ("active_time", "xact_commit", "tup_inserted", "tup_fetched", "tup_returned")
# Redis commands a sync sends (INFO commandstats names), reported one by one.
REDIS_COMMANDS = ("multi", "exec", "set", "mset", "rpush", "lrem", "del", "get", "mget",
                  "lrange", "scan")  # fmt: skip


@dataclass(frozen=True)
class ServerStats:
    """Counters of the servers (or the difference of two readings)."""

    pg: dict[str, float]
    redis_calls: dict[str, int]
    redis_usec: dict[str, int]

    def minus(self, before: ServerStats) -> ServerStats:
        return ServerStats(
            {k: v - before.pg.get(k, 0.0) for k, v in self.pg.items()},
            {k: v - before.redis_calls.get(k, 0) for k, v in self.redis_calls.items()},
            {k: v - before.redis_usec.get(k, 0) for k, v in self.redis_usec.items()},
        )


def server_snapshot(db_url: str, redis_url: str) -> ServerStats:
    """pg_stat_database of the private database and Redis' INFO commandstats, now."""
    name = db_url.rsplit("/", 1)[1]
    columns = sql.SQL(", ").join(map(sql.Identifier, PG_COUNTERS))
    query = sql.SQL("SELECT {} FROM pg_stat_database WHERE datname = %s").format(columns)
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        # The statistics a backend reports when it ends are read by a fresh snapshot.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(query, (name,)).fetchone()
    pg = {key: float(value or 0) for key, value in zip(PG_COUNTERS, row or (), strict=False)}
    with redis.Redis.from_url(redis_url) as client:
        stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    found = {key.removeprefix("cmdstat_"): value for key, value in stats.items()}
    calls = {cmd: int(found.get(cmd, {}).get("calls", 0)) for cmd in REDIS_COMMANDS}
    usec = {cmd: int(found.get(cmd, {}).get("usec", 0)) for cmd in REDIS_COMMANDS}
    return ServerStats(pg, calls, usec)


def server_lines(result: SizeResult) -> list[str]:
    """Median server-side counters of each sync of one size, one line per store."""
    lines: list[str] = []
    for work, runs in result.server.items():
        pg = {key: statistics.median(run.pg[key] for run in runs) for key in PG_COUNTERS}
        pg_text = ", ".join(f"{key} {value:.0f}" for key, value in pg.items())
        lines.append(f"{result.tasks} {work}: PostgreSQL {pg_text} (active_time in ms)")
        redis_parts: list[str] = []
        total_usec = 0.0
        for cmd in REDIS_COMMANDS:
            calls = statistics.median(run.redis_calls[cmd] for run in runs)
            usec = statistics.median(run.redis_usec[cmd] for run in runs)
            # EXEC's time includes the commands it ran, which are counted on their own.
            total_usec += 0 if cmd == "exec" else usec
            if calls:
                redis_parts.append(f"{cmd} {calls:.0f}× {usec / 1000:.1f} ms")
        shown = ", ".join(redis_parts) or "no commands"
        total = f"{total_usec / 1000:.1f} ms besides EXEC"
        lines.append(f"{result.tasks} {work}: Redis {total}: {shown}")
    return lines


# -- the floor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloorTask:
    config_id: int
    source: str
    spec: dict[str, Any]


FLOOR_COLUMNS = (
    "id",
    "name",
    "description",
    "task_type",
    "scheduler_type",
    "parameters",
    "schedule_config",
    "max_retries",
    "timeout_seconds",
    "priority",
    "enabled",
    "source_file",
    "content_hash",
)


def parse_tree(paths: Sequence[Path]) -> list[FloorTask]:
    tasks: list[FloorTask] = []
    for path in paths:
        document = yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
        for spec in document["tasks"]:
            tasks.append(FloorTask(len(tasks) + 1, str(path), spec))
    return tasks


def scheduler_type(schedule: Mapping[str, Any]) -> str:
    """The task_configs.scheduler_type of a taskdef's `schedule` mapping."""
    kinds = {"cron": "cron", "interval": "interval", "at": "date"}
    return next((kind for key, kind in kinds.items() if key in schedule), "manual")


def content_hash(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def floor_row(task: FloorTask, digest: str) -> tuple[Any, ...]:
    spec = task.spec
    schedule = spec.get("schedule") or {}
    return (
        task.config_id,  # ids chosen here: COPY has no RETURNING, and the keys need them
        spec["name"],
        spec.get("description", ""),
        spec["task_type"],
        scheduler_type(schedule),
        json.dumps(spec.get("parameters") or {}),
        json.dumps(schedule),
        spec.get("max_retries", 0),
        spec.get("timeout_seconds"),
        spec.get("priority", 5),
        spec.get("enabled", True),
        task.source,
        digest,
    )


def copy_rows(db_url: str, tasks: Sequence[FloorTask]) -> list[str]:
    """COPY one row per task in one transaction; returns the content hashes."""
    digests = [content_hash(task.spec) for task in tasks]
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(FLOOR_TABLE),
        sql.SQL(", ").join(map(sql.Identifier, FLOOR_COLUMNS)),
    )
    with psycopg.connect(pg_conninfo(db_url)) as conn, conn.cursor() as cur:
        with cur.copy(copy_sql) as copy:
            for task, digest in zip(tasks, digests, strict=True):
                copy.write_row(floor_row(task, digest))
        conn.commit()
    return digests


def floor_payload(task: FloorTask, digest: str, queue: str = "default") -> dict[str, Any]:
    """A schedule payload shaped like syncd's (core/payloads.py), so as many bytes go out."""
    spec, sid = task.spec, schedule_id(task.config_id)
    schedule = spec.get("schedule") or {}
    retries = spec.get("max_retries", 0)
    labels = {
        "config_id": task.config_id,
        "task_name": spec["name"],
        "config_hash": digest,
        "priority": spec.get("priority", 5),
        "queue": queue,
        "queue_name": queue_stream(queue),
        "max_retries": retries + 1,
        "retry_on_error": retries > 0,
        "timeout": spec.get("timeout_seconds"),
    }
    return {
        "task_name": spec["task_type"],
        "labels": labels,
        "args": [],
        "kwargs": spec.get("parameters") or {},
        "task_id": None,
        "schedule_id": sid,
        "cron": schedule.get("cron"),
        "cron_offset": schedule.get("timezone"),
        "time": None,
        "interval": schedule.get("interval"),
    }


def push_schedules(redis_url: str, tasks: Sequence[FloorTask], digests: Sequence[str]) -> None:
    """One MULTI/EXEC: data key, index list entry and status of every task."""
    # taskdefs_gen writes cron and interval tasks only; one-shots' time lists are left out.
    lists = {"cron": LAYOUT.cron_key, "interval": LAYOUT.interval_key}
    with redis.Redis.from_url(redis_url) as client:
        pipe = client.pipeline(transaction=True)
        for task, digest in zip(tasks, digests, strict=True):
            sid = schedule_id(task.config_id)
            kind = scheduler_type(task.spec.get("schedule") or {})
            payload = json.dumps(floor_payload(task, digest), separators=(",", ":"))
            pipe.set(LAYOUT.data_key(sid), payload)
            if kind in lists:
                pipe.rpush(lists[kind], sid)
            pipe.set(LAYOUT.status_key(task.config_id), "active" if kind in lists else "inactive")
        pipe.execute()


def measure_floor(paths: Sequence[Path], tasks: int) -> dict[str, float]:
    with migrated_stores() as (db_url, redis_url):
        create = sql.SQL("CREATE TABLE {} (LIKE task_configs INCLUDING ALL)").format(
            sql.Identifier(FLOOR_TABLE)
        )
        with psycopg.connect(pg_conninfo(db_url), autocommit=True) as conn:
            conn.execute(create)
        times: dict[str, float] = {}
        start = time.perf_counter()
        parsed = parse_tree(paths)
        times[PARSE] = time.perf_counter() - start
        start = time.perf_counter()
        digests = copy_rows(db_url, parsed)
        times[COPY] = time.perf_counter() - start
        start = time.perf_counter()
        push_schedules(redis_url, parsed, digests)
        times[REDIS] = time.perf_counter() - start
        times[TOTAL] = times[PARSE] + times[COPY] + times[REDIS]
        expect_state(db_url, redis_url, FLOOR_TABLE, tasks, "floor")
    return times


# -- one size -------------------------------------------------------------------------------


@dataclass
class SizeResult:
    tasks: int
    files: int
    load_1min: float
    cli: dict[str, list[ChildSample]] = field(default_factory=dict)
    floor: dict[str, list[float]] = field(default_factory=dict)
    server: dict[str, list[ServerStats]] = field(default_factory=dict)

    def seconds(self, work: str) -> float:
        return statistics.median(sample.seconds for sample in self.cli[work])

    def rss_mb(self, work: str) -> float:
        return statistics.median(sample.rss_mb for sample in self.cli[work])

    def floor_seconds(self, piece: str) -> float:
        return statistics.median(self.floor[piece])


def measure_size(root: Path, tasks: int, runs: int, server_stats: bool = False) -> SizeResult:
    files = max(1, tasks // TASKS_PER_FILE)
    paths = write_tree(root, tasks, files)
    load = os.getloadavg()[0]
    print(f"{tasks} tasks in {files} files: 1-minute load average {load:.2f}", flush=True)
    result = SizeResult(tasks, files, load)
    for run in range(1, runs + 1):
        progress = f"{tasks} tasks, run {run}/{runs}"
        print(f"{progress}: floor...", file=sys.stderr, flush=True)
        for piece, seconds in measure_floor(paths, tasks).items():
            result.floor.setdefault(piece, []).append(seconds)
        print(f"{progress}: CLI...", file=sys.stderr, flush=True)
        measured = measure_cli(root, tasks, server_stats)
        for work, sample in measured.samples.items():
            result.cli.setdefault(work, []).append(sample)
        for work, stats in measured.server.items():
            result.server.setdefault(work, []).append(stats)
    return result


# -- goals and the table --------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    met: bool


Results = Mapping[int, SizeResult]


def validate_goal(results: Results) -> Goal:
    limit = VALIDATE_LIMIT_10K
    return Goal(f"≤ {limit:.2f} s", results[10_000].seconds(VALIDATE) <= limit)


def cold_goal(results: Results) -> Goal:
    this = results[10_000]
    limit = COLD_VS_FLOOR_10K * this.floor_seconds(TOTAL)
    return Goal(f"≤ {COLD_VS_FLOOR_10K}× floor = {limit:.2f} s", this.seconds(COLD) <= limit)


def noop_goal(results: Results) -> Goal:
    this = results[10_000]
    limit = this.seconds(STARTUP) + NOOP_OVER_STARTUP_10K
    text = f"≤ start-up + {NOOP_OVER_STARTUP_10K} = {limit:.2f} s"
    return Goal(text, this.seconds(NOOP) <= limit)


def big_cold_goal(results: Results) -> Goal:
    big = results[BIG]
    rss_ok = big.rss_mb(COLD) <= BIG_RSS_LIMIT_MB
    rss_text = f"≤ {BIG_RSS_LIMIT_MB:.0f} MB"
    if 10_000 not in results:  # no 10k row in this run to scale from
        return Goal(f"{rss_text} (no 10k run for the time goal)", rss_ok)
    limit = BIG_VS_10K * results[10_000].seconds(COLD)
    text = f"≤ {BIG_VS_10K:.0f}× 10k = {limit:.2f} s, {rss_text}"
    return Goal(text, rss_ok and big.seconds(COLD) <= limit)


GOALS: dict[tuple[str, int], Callable[[Results], Goal]] = {
    (VALIDATE, 10_000): validate_goal,
    (COLD, 10_000): cold_goal,
    (NOOP, 10_000): noop_goal,
    (COLD, BIG): big_cold_goal,
}

Row = tuple[str, str, str, str, str, str]
HEADER: Row = ("size", "work", "median s", "peak RSS MB", "goal", "verdict")


def size_rows(result: SizeResult, results: Results) -> list[Row]:
    rows: list[Row] = []
    size = str(result.tasks)
    for work in CLI_WORK:
        goal_of = GOALS.get((work, result.tasks))
        goal = goal_of(results) if goal_of else None
        rows.append(
            (
                size,
                work,
                f"{result.seconds(work):.3f}",
                f"{result.rss_mb(work):.0f}",
                goal.text if goal else "-",
                ("ok" if goal.met else "over") if goal else "-",
            )
        )
    for piece in FLOOR_PIECES:
        seconds = f"{result.floor_seconds(piece):.3f}"
        rows.append((size, FLOOR_LABELS[piece], seconds, "-", "-", "-"))
    return rows


def print_table(rows: Sequence[Row]) -> None:
    widths = [max(len(row[i]) for row in (HEADER, *rows)) for i in range(len(HEADER))]
    numeric = {0, 2, 3}  # right-aligned columns

    def line(row: Row) -> str:
        cells = (
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return " | ".join(cells).rstrip()

    print(line(HEADER))
    print("-+-".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def write_json(path: Path, results: Results, rows: Sequence[Row], runs: int) -> None:
    raw = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "environment": environment(),
        "runs": runs,
        "peak_rss": "ru_maxrss from os.wait4 in a small launcher process, MB of 10^6 bytes",
        "sizes": [asdict(result) for result in results.values()],
        "table": [dict(zip(HEADER, row, strict=True)) for row in rows],
    }
    path.write_text(json.dumps(raw, indent=2) + "\n")


# -- main -----------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of task counts") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("task counts must be at least 1")
    return sizes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="task counts, comma-separated (default 1000,10000)",
    )
    parser.add_argument(
        "--with-100k", action="store_true", help=f"also {BIG} tasks (takes minutes)"
    )
    parser.add_argument("-r", "--runs", type=int, default=3, help="repeats; medians are printed")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the raw numbers")
    parser.add_argument(
        "--server-stats",
        action="store_true",
        help="also print PostgreSQL's and Redis' own counters of each cold and no-op sync",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    # Past 10k a size is minutes of a loaded machine: only on request.
    if max(args.sizes) > 10_000 and not args.with_100k:
        parser.error("sizes above 10000 need --with-100k")
    args.sizes = sorted({*args.sizes, *([BIG] if args.with_100k else [])})
    return args


def main() -> None:
    args = parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"environment: {environment()}; {os.cpu_count()} CPUs")
    how = f"median of {args.runs} runs" if args.runs > 1 else "1 run"
    print(f"{how}; peak RSS: ru_maxrss from os.wait4 in a small launcher, MB = 10^6 bytes")
    results: dict[int, SizeResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tasks in args.sizes:
            root = Path(tmp) / f"taskdefs-{tasks}"
            results[tasks] = measure_size(root, tasks, args.runs, args.server_stats)
    rows = [row for result in results.values() for row in size_rows(result, results)]
    print()
    print_table(rows)
    if args.server_stats:
        print()
        for result in results.values():
            print("\n".join(server_lines(result)))
    if args.json:
        write_json(args.json, results, rows, args.runs)


if __name__ == "__main__":
    main()

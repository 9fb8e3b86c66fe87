"""Benchmark `syncd watch` on 10,000 tasks: edit-to-registered latency and no-op resync time.

Starts the real daemon (a subprocess, JSON logs) on a private PostgreSQL database and
Redis db, waits for the first sync, makes 50 single-file edits that each change one task's
interval (alternately in place and as an atomic rename) and polls Redis for each new
payload; then rewrites every file at once (a checkout-like burst) and counts reconciles;
then reads the no-op resync durations from the log and the daemon's steady RSS.
Usage: .venv/bin/python bench/watch_bench.py [--tasks N --files M --edits K]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.taskdefs_gen import rewrite_file, write_tree
from tests.services import private_database, private_redis_db

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, step: float = 0.002
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def is_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:
        return False


def log_entries(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def reconciles(path: Path, trigger: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in log_entries(path)
        if e["message"].startswith("reconciled") and trigger in (None, e.get("trigger"))
    ]


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def describe(values: list[float], unit: str = "ms") -> str:
    return (
        f"p50 {percentile(values, 0.5):.0f} {unit}, p95 {percentile(values, 0.95):.0f} {unit}, "
        f"max {max(values):.0f} {unit} (n={len(values)})"
    )


def edit_interval(root: Path, file_index: int, old: int, new: int, atomic: bool) -> None:
    """Change one task's interval in one file (its `{interval: N}` is unique in the file)."""
    path = root / f"group-{file_index:03d}.yaml"
    text = path.read_text()
    before, after = f"{{interval: {old}}}", f"{{interval: {new}}}"
    if text.count(before) != 1:
        raise SystemExit(f"{path}: expected one {before!r}")
    text = text.replace(before, after)
    if atomic:  # how most editors save: a hidden temp file renamed over the original
        tmp = root / f".{path.name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def measure_edits(
    root: Path, args: argparse.Namespace, ids: dict[str, int], conn: redis.Redis
) -> tuple[list[float], list[float]]:
    """Latency (ms) from write to the new payload in Redis, for in-place and atomic edits."""
    per_file = args.tasks // args.files
    in_place: list[float] = []
    atomic: list[float] = []
    current: dict[int, int] = {}
    for k in range(args.edits):
        file_index = (k * 7) % args.files  # 7 is coprime with 100: a different file each time
        start = file_index * per_file
        index = next(i for i in range(start, start + per_file) if i % 3 == 1)  # interval kind
        old, new = current.get(index, 60 + index % 600), 5000 + k
        current[index] = new
        key = f"syncd:data:task_{ids[f'task-{index:05d}']}"
        began = time.perf_counter()
        edit_interval(root, file_index, old, new, atomic=bool(k % 2))

        def registered(key: str = key, new: int = new) -> bool:
            raw = conn.get(key)
            return raw is not None and json.loads(raw)["interval"] == new

        wait_for(registered, 60, f"edit {k}")
        (atomic if k % 2 else in_place).append((time.perf_counter() - began) * 1000)
        time.sleep(0.3)  # let each edit be a lone edit, not part of a burst
    return in_place, atomic


def measure_burst(root: Path, args: argparse.Namespace, log_path: Path) -> tuple[int, float]:
    """Rewrite every file (every task changes); return reconciles it caused and seconds."""
    before = len(reconciles(log_path))
    began = time.perf_counter()
    for file_index in range(args.files):
        rewrite_file(root, file_index, args.tasks, args.files, revision=1)
    written = time.perf_counter()

    def all_updated() -> bool:
        done = reconciles(log_path)[before:]
        return sum(int(e["updated"]) for e in done) >= int(args.tasks)

    wait_for(all_updated, 300, "the burst to be applied", step=0.05)
    applied = time.perf_counter()
    time.sleep(3)  # any late reconcile of the burst would show up now
    caused = [e for e in reconciles(log_path)[before:] if e["trigger"] != "resync"]
    print(f"  burst written in {written - began:.2f} s")
    return len(caused), applied - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--resync-interval", type=float, default=10.0)
    parser.add_argument("--resyncs", type=int, default=3, help="no-op resyncs to time")
    parser.add_argument("--keep-log", type=Path, help="copy the daemon's log here")
    args = parser.parse_args()
    with (
        private_database() as database_url,
        private_redis_db() as redis_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
        # The generated tasks write below /tmp/bench: the bench policy allows it.
        policy = os.environ.get("SYNCD_POLICY", str(REPO / "bench" / "policy.yaml"))
        env.update(SYNCD_DATABASE_URL=database_url, SYNCD_REDIS_URL=redis_url, SYNCD_POLICY=policy)
        subprocess.run(
            [sys.executable, "-m", "syncd.cli", "migrate"], env=env, cwd=REPO, check=True
        )
        run(Path(tmp), args, env, database_url, redis_url)


def run(
    tmp: Path, args: argparse.Namespace, env: dict[str, str], database_url: str, redis_url: str
) -> None:
    root = tmp / "taskdefs"
    write_tree(root, args.tasks, args.files)
    size = sum(p.stat().st_size for p in root.iterdir())
    port = free_port()
    log_path = tmp / "watch.log"
    command = [
        *(sys.executable, "-m", "syncd.cli", "watch", str(root)),
        *("--http-port", str(port), "--resync-interval", str(args.resync_interval)),
        *("--log-format", "json"),
    ]
    print(f"command: {' '.join(command)}")
    print(f"taskdefs: {args.tasks} tasks in {args.files} files ({size / 1e6:.1f} MB)")
    started = time.perf_counter()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with redis.Redis.from_url(redis_url) as conn:
            report(
                root,
                args,
                log_path,
                port,
                started=started,
                database_url=database_url,
                conn=conn,
                pid=proc.pid,
            )
        print(f"steady RSS after the resyncs: {rss_mb(proc.pid):.0f} MB")
        proc.send_signal(signal.SIGTERM)
        print(f"SIGTERM -> exit code {proc.wait(timeout=60)}")
        if args.keep_log:
            shutil.copyfile(log_path, args.keep_log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def report(
    root: Path,
    args: argparse.Namespace,
    log_path: Path,
    port: int,
    *,
    started: float,
    database_url: str,
    conn: redis.Redis,
    pid: int,
) -> None:
    # /healthz turns 200 a moment before the reconcile's log line is written.
    wait_for(lambda: is_healthy(port) and reconciles(log_path), 600, "the first sync", step=0.1)
    first = reconciles(log_path)[0]
    print(
        f"initial sync: healthy {time.perf_counter() - started:.1f} s after start "
        f"(reconcile {first['duration_ms']} ms, {first['created']} created), "
        f"RSS {rss_mb(pid):.0f} MB"
    )
    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as db:
        ids: dict[str, int] = dict(db.execute("SELECT name, id FROM task_configs").fetchall())
    in_place, atomic = measure_edits(root, args, ids, conn)
    print(f"edit -> registered in Redis, one task's interval per edit ({args.edits} edits):")
    print(f"  all:            {describe(in_place + atomic)}")
    print(f"  in place:       {describe(in_place)}")
    print(f"  atomic rename:  {describe(atomic)}")
    edits = [float(e["duration_ms"]) for e in reconciles(log_path, "change") if e["updated"] == 1]
    print(f"  reconcile part: {describe(edits)}")
    paths = Counter(str(e.get("path")) for e in reconciles(log_path, "change"))
    print(f"  paths of the change reconciles: {dict(paths)}")
    print(f"  RSS after the edits: {rss_mb(pid):.0f} MB")
    count, seconds = measure_burst(root, args, log_path)
    print(
        f"burst: {args.files} files rewritten ({args.tasks} tasks updated) -> {count} "
        f"reconcile(s), applied {seconds:.1f} s after the last write; RSS {rss_mb(pid):.0f} MB"
    )
    seen = len(reconciles(log_path, "resync"))
    wait_for(
        lambda: len(reconciles(log_path, "resync")) >= seen + args.resyncs,
        args.resync_interval * (args.resyncs + 2),
        "no-op resyncs",
        step=0.2,
    )
    noop = [
        float(e["duration_ms"])
        for e in reconciles(log_path, "resync")[seen:]
        if e["created"] == e["updated"] == e["deleted"] == e["drift"] == 0
    ]
    print(f"no-op resync of {args.tasks} tasks: {describe(noop)}")


if __name__ == "__main__":
    main()

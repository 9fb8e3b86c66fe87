"""worker.runner: blocking attempts in child processes that deadlines and limits can stop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from worker.recording.records import format_traceback
from worker.runner import ChildDied, Limits, MemoryLimitExceeded, RemoteError, Runner

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def with_runner(body: Callable[[Runner], Awaitable[T]], **limits: Any) -> T:
    """Run `body` with a runner of two slots, one per task type, 256 MiB, 30 s default."""
    values = {"concurrency": 2, "per_type": 1, "memory_mb": 256, "default_timeout": 30.0}

    async def main() -> T:
        pool = Runner(Limits(**{**values, **limits}))
        try:
            return await body(pool)
        finally:
            pool.close()

    return asyncio.run(main())


def test_a_blocking_task_runs_in_a_reused_child(tmp_path: Path) -> None:
    async def body(pool: Runner) -> tuple[object, object, int]:
        first = await pool.run("cleanup.temp_files", {"path": str(tmp_path), "dry_run": True}, 5)
        second = await pool.run("diagnostics.busy", {"seconds": 0}, 5)
        return first, second, pool.replaced

    first, second, replaced = with_runner(body)
    assert first == {"removed": 0, "bytes_freed": 0, "dry_run": True}
    assert second == {"busy": 0}
    assert replaced == 0


def test_the_soft_deadline_raises_in_the_task_and_the_attempt_times_out() -> None:
    async def body(pool: Runner) -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out after 5 s"):
            await pool.run("diagnostics.busy", {"seconds": 30}, 5)
        return time.monotonic() - start

    took = with_runner(body)
    assert 4.0 <= took < 5.0  # the soft deadline (at 4.5 s) comes before the hard one


def test_the_hard_deadline_kills_a_task_that_ignores_the_soft_one() -> None:
    async def body(pool: Runner) -> tuple[float, int, object]:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="timed out after 2 s"):
            await pool.run("diagnostics.busy", {"seconds": 30, "ignore_soft_limit": True}, 2)
        took = time.monotonic() - start
        after = await pool.run("diagnostics.busy", {"seconds": 0}, 5)  # a fresh child
        return took, pool.replaced, after

    took, replaced, after = with_runner(body)
    assert 2.0 <= took < 3.0
    assert replaced == 1
    assert after == {"busy": 0}


def test_a_task_without_a_timeout_gets_the_default() -> None:
    async def body(pool: Runner) -> None:
        with pytest.raises(TimeoutError, match="timed out after 1 s"):
            await pool.run("diagnostics.busy", {"seconds": 30, "ignore_soft_limit": True}, None)

    with_runner(body, default_timeout=1.0)


def endless_line(tmp_path: Path) -> str:
    """A 1 GiB sparse file: one line of NUL bytes, which a CSV reader holds whole. (The
    policy keeps file tasks off /dev/zero; this needs as much memory, within the roots.)"""
    path = tmp_path / "endless.csv"
    with path.open("wb") as handle:
        handle.truncate(1 << 30)
    return str(path)


def test_memory_over_the_limit_fails_the_attempt_only(tmp_path: Path) -> None:
    source = endless_line(tmp_path)

    async def body(pool: Runner) -> object:
        with pytest.raises(MemoryLimitExceeded, match="memory limit of 256 MiB"):
            await pool.run("data.csv_summary", {"source": source, "column": "a"}, 20)
        return await pool.run("diagnostics.busy", {"seconds": 0}, 5)

    assert with_runner(body) == {"busy": 0}


def test_a_task_error_keeps_its_name_and_the_childs_traceback(tmp_path: Path) -> None:
    async def body(pool: Runner) -> BaseException:
        with pytest.raises(RemoteError) as caught:
            await pool.run("cleanup.temp_files", {"path": str(tmp_path / "missing")}, 5)
        return caught.value

    error = with_runner(body)
    assert type(error).__name__ == "ConfinementError"
    assert "missing does not exist" in str(error)
    assert isinstance(error, RemoteError)
    assert "temp_files" in error.remote_traceback
    assert "temp_files" in format_traceback(error)  # what the recorder stores


def test_a_child_that_dies_fails_its_attempt_and_is_replaced() -> None:
    async def body(pool: Runner) -> object:
        with pytest.raises(ChildDied, match="exit code 3"):
            await pool.run("diagnostics.exit", {"code": 3}, 5)
        return await pool.run("diagnostics.busy", {"seconds": 0}, 5)

    assert with_runner(body) == {"busy": 0}


def test_one_task_type_cannot_take_every_slot(tmp_path: Path) -> None:
    """Two slots, one per type: a second `busy` waits, a task of another type does not."""

    async def body(pool: Runner) -> tuple[float, float]:
        start = time.monotonic()
        slow = asyncio.create_task(pool.run("diagnostics.busy", {"seconds": 3}, 10))
        queued = asyncio.create_task(pool.run("diagnostics.busy", {"seconds": 0}, 10))
        await asyncio.sleep(0.3)
        await pool.run("data.directory_usage", {"path": str(tmp_path)}, 10)
        other = time.monotonic() - start
        await queued
        same = time.monotonic() - start
        await slow
        return other, same

    other, same = with_runner(body)
    assert other < 2.0  # another type ran while the first busy one held its type's slot
    assert same >= 3.0  # the second busy one waited for the first


PARENT = """
import asyncio
from worker.runner import Limits, Runner

async def main() -> None:
    pool = Runner(Limits(2, 2, 256, 60.0))
    busy = asyncio.create_task(
        pool.run("diagnostics.busy", {"seconds": 60, "ignore_soft_limit": True}, 60)
    )
    await asyncio.sleep(1.0)
    print("busy", flush=True)
    await busy

if __name__ == "__main__":
    asyncio.run(main())
"""


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def test_no_child_outlives_a_sigkilled_worker() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "busy"
        below = descendants(parent.pid)
        assert len(below) >= 2  # the forkserver and the child running the attempt
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in below if Path(f"/proc/{pid}").exists()] == []


LOGGING_PARENT = """
import asyncio, logging
from worker.runner import Limits, Runner

async def main() -> None:
    pool = Runner(Limits(2, 2, 256, 60.0))
    try:
        await pool.run("notification.log", {"message": "hello from a child"}, 10)
    finally:
        pool.close()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="PARENT-FORMAT %(name)s: %(message)s")
    asyncio.run(main())
"""


def test_a_task_logs_to_the_workers_output_in_the_workers_format() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_PARENT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    assert "PARENT-FORMAT syncd.notification: hello from a child" in done.stderr

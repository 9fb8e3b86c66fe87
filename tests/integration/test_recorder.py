"""The recording middleware on a real PostgreSQL: row contents, retries, outages, the spool."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import pytest
from psycopg.rows import dict_row
from taskiq import Context, InMemoryBroker, SimpleRetryMiddleware, TaskiqDepends

from syncd.core.model import Execution
from worker.recording import ExecutionRecorder, PostgresSink

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/x"
KILL_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@dataclass
class Worker:
    broker: InMemoryBroker
    recorder: ExecutionRecorder
    tasks: dict[str, Any]

    async def kick(self, name: str, *args: Any, **labels: Any) -> str:
        sent = await self.tasks[name].kicker().with_labels(**labels).kiq(*args)
        return str(sent.task_id)

    async def drain(self) -> None:
        # A retry is kicked from inside the failed attempt: wait until nothing runs any more.
        # sleep(0): a finished task leaves the set only in a done callback, which must get a turn.
        while self.broker._running_tasks:
            await self.broker.wait_all()
            await asyncio.sleep(0)


def register_tasks(broker: InMemoryBroker) -> dict[str, Any]:
    @broker.task
    async def succeed(value: Any = "ok") -> Any:
        await asyncio.sleep(0.01)
        return value

    @broker.task
    async def fail(message: str = "boom") -> None:
        raise ValueError(message)

    @broker.task
    async def flaky(context: Annotated[Context, TaskiqDepends()]) -> str:
        if int(context.message.labels.get("_retries", 0)) < 2:
            raise RuntimeError("not yet")
        return "third time lucky"

    @broker.task
    async def sleepy() -> None:
        await asyncio.sleep(5)

    @broker.task
    async def huge() -> str:
        return "x" * 200_000

    @broker.task
    async def odd() -> Any:
        return {"at": datetime(2026, 1, 2, tzinfo=UTC), "ids": {7}, "nul": "a\x00b"}

    return {
        "succeed": succeed,
        "fail": fail,
        "flaky": flaky,
        "sleepy": sleepy,
        "huge": huge,
        "odd": odd,
    }


@asynccontextmanager
async def worker(
    url: str, spool: Path, recorder_last: bool = True, **options: Any
) -> AsyncIterator[Worker]:
    """An in-process worker: retry middleware plus the recorder (added last, as documented)."""
    broker = InMemoryBroker()
    broker.is_worker_process = True  # what `taskiq worker` sets: startup starts the flusher
    options = {"flush_interval": 0.05, "shutdown_timeout": 5.0, **options}
    recorder = ExecutionRecorder(PostgresSink(url), spool_path=spool, **options)
    retry = SimpleRetryMiddleware(default_retry_count=1)
    broker.add_middlewares(*((retry, recorder) if recorder_last else (recorder, retry)))
    tasks = register_tasks(broker)
    await broker.startup()
    running = Worker(broker, recorder, tasks)
    try:
        yield running
    finally:
        await running.drain()
        await broker.shutdown()


async def rows(url: str, *task_ids: str) -> list[dict[str, Any]]:
    query = "SELECT * FROM task_executions WHERE task_id = ANY(%s) ORDER BY task_id, attempt"
    async with await psycopg.AsyncConnection.connect(conninfo(url), row_factory=dict_row) as conn:
        cursor = await conn.execute(query, (list(task_ids),))
        return await cursor.fetchall()


async def one_row(url: str, task_id: str) -> dict[str, Any]:
    (row,) = await rows(url, task_id)
    return row


async def add_config(url: str) -> int:
    sql = (
        "INSERT INTO task_configs (name, task_type, scheduler_type, parameters, schedule_config,"
        " max_retries, priority, enabled, content_hash) VALUES (%s, 'x.y', 'manual', '{}', '{}',"
        " 0, 5, true, '') RETURNING id"
    )
    async with await psycopg.AsyncConnection.connect(conninfo(url)) as conn:
        cursor = await conn.execute(sql, (f"task-{uuid.uuid4().hex[:8]}",))
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


def labels(config_id: int, max_retries: int = 1, **extra: Any) -> dict[str, Any]:
    """What syncd.core.payloads puts on every message."""
    return {
        "config_id": config_id,
        "task_name": "some-task",
        "priority": 5,
        "queue": "default",
        "max_retries": max_retries,
        "retry_on_error": max_retries > 1,
        **extra,
    }


async def test_a_success_is_recorded_with_its_result(migrated_url: str, spool: Path) -> None:
    config_id = await add_config(migrated_url)
    before = datetime.now(UTC)
    async with worker(migrated_url, spool) as w:
        task_id = await w.kick("succeed", {"files": 3}, **labels(config_id))

    row = await one_row(migrated_url, task_id)
    assert row["config_id"] == config_id
    assert (row["attempt"], row["is_success"], row["result"]) == (1, True, {"files": 3})
    assert row["error_message"] is None
    assert row["error_traceback"] is None
    assert before <= row["started_at"] <= row["completed_at"] <= datetime.now(UTC)
    assert 0.01 <= row["duration_seconds"] < 1


async def test_a_failure_keeps_message_and_traceback(migrated_url: str, spool: Path) -> None:
    async with worker(migrated_url, spool) as w:
        task_id = await w.kick("fail", "disk \x00 full", **labels(await add_config(migrated_url)))

    row = await one_row(migrated_url, task_id)
    assert (row["is_success"], row["result"]) == (False, None)
    assert row["error_message"] == "ValueError: disk \ufffd full"
    assert "in fail" in row["error_traceback"]
    assert row["error_traceback"].rstrip().endswith("ValueError: disk \ufffd full")


@pytest.mark.parametrize("recorder_last", [True, False])
async def test_retries_give_one_row_per_attempt(
    migrated_url: str, spool: Path, recorder_last: bool
) -> None:
    """Either order: the retry middleware bumps `_retries` in the failed message's labels."""
    config_id = await add_config(migrated_url)
    async with worker(migrated_url, spool, recorder_last) as w:
        flaky = await w.kick("flaky", **labels(config_id, max_retries=3))
        doomed = await w.kick("fail", **labels(config_id, max_retries=3))

    flaky_rows = await rows(migrated_url, flaky)
    assert [(r["attempt"], r["is_success"]) for r in flaky_rows] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert flaky_rows[-1]["result"] == "third time lucky"
    assert flaky_rows[0]["error_message"] == "RuntimeError: not yet"
    doomed_rows = await rows(migrated_url, doomed)
    assert [(r["attempt"], r["is_success"]) for r in doomed_rows] == [
        (1, False),
        (2, False),
        (3, False),
    ]
    assert {r["error_message"] for r in doomed_rows} == {"ValueError: boom"}


async def test_a_timeout_is_a_failure_that_says_so(migrated_url: str, spool: Path) -> None:
    async with worker(migrated_url, spool) as w:
        task_id = await w.kick("sleepy", **labels(await add_config(migrated_url), timeout=0.2))

    row = await one_row(migrated_url, task_id)
    assert row["is_success"] is False
    assert row["error_message"] == "TimeoutError: timed out after 0.2 s"
    assert 0.2 <= row["duration_seconds"] < 2


async def test_results_are_bounded_and_made_json(migrated_url: str, spool: Path) -> None:
    async with worker(migrated_url, spool) as w:
        huge = await w.kick("huge", **labels(await add_config(migrated_url)))
        odd = await w.kick("odd", **labels(await add_config(migrated_url)))

    truncated = (await one_row(migrated_url, huge))["result"]
    assert truncated == {"truncated": True, "bytes": 200_002, "preview": '"' + "x" * 999}
    assert (await one_row(migrated_url, odd))["result"] == {
        "at": "2026-01-02 00:00:00+00:00",
        "ids": "{7}",
        "nul": "a\ufffdb",
    }


async def test_an_unknown_config_id_is_stored_as_null(migrated_url: str, spool: Path) -> None:
    """The config may be deleted while its task runs: the row is kept, unlinked (SET NULL)."""
    async with worker(migrated_url, spool) as w:
        task_id = await w.kick("succeed", **labels(2_000_000_000))

    row = await one_row(migrated_url, task_id)
    assert (row["config_id"], row["is_success"]) == (None, True)


async def test_writing_a_record_twice_stores_it_once(migrated_url: str) -> None:
    """A flush whose commit went unobserved, or a redelivered message, is sent again."""
    now = datetime.now(UTC)
    record = Execution(
        config_id=None,
        task_id=uuid.uuid4().hex,
        attempt=1,
        is_success=True,
        started_at=now,
        completed_at=now + timedelta(seconds=1),
        duration_seconds=1.0,
        error_message=None,
        result=[1],
    )
    sink = PostgresSink(migrated_url)
    try:
        await sink.write([record, record])
        await sink.write([record])
    finally:
        await sink.close()

    assert len(await rows(migrated_url, record.task_id)) == 1
    assert sink.inserted == 1


async def test_a_refused_record_does_not_block_its_batch(
    fresh_migrated_url: str, spool: Path
) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo(fresh_migrated_url)) as conn:
        await conn.execute(
            "ALTER TABLE task_executions ADD CONSTRAINT no_poison "
            "CHECK (error_message IS NULL OR error_message NOT LIKE '%poison%')"
        )
        await conn.commit()
    async with worker(fresh_migrated_url, spool, batch_size=50) as w:
        good = [await w.kick("succeed", **labels(0)) for _ in range(5)]
        bad = await w.kick("fail", "poison", **labels(0))
        assert isinstance(w.recorder.sink, PostgresSink)
        sink = w.recorder.sink

    assert len(await rows(fresh_migrated_url, *good)) == 5
    assert await rows(fresh_migrated_url, bad) == []
    assert sink.refused == 1


@pytest.mark.timeout(60)
async def test_no_record_is_lost_while_connections_are_killed(
    migrated_url: str, spool: Path
) -> None:
    config_id = await add_config(migrated_url)
    kicked: list[str] = []
    async with (
        worker(migrated_url, spool, batch_size=25) as w,
        await psycopg.AsyncConnection.connect(conninfo(migrated_url), autocommit=True) as admin,
    ):
        for wave in range(12):
            kicked += [await w.kick("succeed", wave, **labels(config_id)) for _ in range(30)]
            await asyncio.sleep(0.1)
            if wave % 2 == 1:
                await admin.execute(KILL_OTHERS)
        failures = w.recorder.stats.flush_failures

    found = await rows(migrated_url, *kicked)
    assert sorted(r["task_id"] for r in found) == sorted(kicked)
    assert len(found) == 360
    assert failures >= 3  # the kills did hit the recorder's connection
    assert w.recorder.stats.buffered == 0


async def test_shutdown_without_postgres_spools_and_next_startup_writes(
    migrated_url: str, spool: Path
) -> None:
    async with worker(UNREACHABLE, spool, shutdown_timeout=0.5) as down:
        kicked = [await down.kick("succeed", n, **labels(0)) for n in range(20)]
    assert down.recorder.stats.spooled == 20
    assert len(spool.read_text().splitlines()) == 20

    async with worker(migrated_url, spool):
        pass  # startup re-queues the spool, shutdown flushes it

    found = await rows(migrated_url, *kicked)
    assert sorted(r["task_id"] for r in found) == sorted(kicked)
    assert {r["result"] for r in found} == set(range(20))
    assert [p.name for p in spool.parent.iterdir()] == ["recorder.jsonl.lock"]


async def test_a_full_buffer_spills_and_is_taken_back_after_the_outage(
    fresh_migrated_url: str, spool: Path
) -> None:
    hide = "ALTER TABLE task_executions RENAME TO {}"
    async with await psycopg.AsyncConnection.connect(
        conninfo(fresh_migrated_url), autocommit=True
    ) as admin:
        await admin.execute(hide.format("hidden"))  # an outage that the sink keeps retrying
        async with worker(fresh_migrated_url, spool, max_buffered=10) as w:
            kicked = [await w.kick("succeed", n, **labels(0)) for n in range(25)]
            await w.drain()
            assert (w.recorder.stats.buffered, w.recorder.stats.spooled) == (10, 15)
            await admin.execute("ALTER TABLE hidden RENAME TO task_executions")
            await wait_until(lambda: w.recorder.stats.written >= 25)

    assert len(await rows(fresh_migrated_url, *kicked)) == 25
    assert list(spool.parent.glob("*.claimed")) == []


async def wait_until(condition: Any, seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)

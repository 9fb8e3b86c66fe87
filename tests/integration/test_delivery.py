"""The scheduler's sending step on a real Redis: every due fire is sent exactly once, or
counted and logged as not sent; never dropped without a trace (worker/delivery.py).

Each test drives `DeliveringScheduler.on_ready` as taskiq's loop does (one asyncio task per
due schedule, all at once) with real brokers and sources on the test's Redis database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
import redis
from taskiq import ScheduledTask

from syncd.core.keys import KeyLayout, queue_stream
from syncd.core.model import TaskConfig
from syncd.core.payloads import build_schedule
from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.delivery import DeliveringScheduler
from worker.schedule_source import CLAIMED, NOT_ACTIVE, TAKEN, SyncdScheduleSource
from worker.tasks import registry

LAYOUT = KeyLayout()
STREAM = queue_stream("default")


def due_task(config_id: int, schedule: dict[str, object] | None = None) -> ScheduledTask:
    config = TaskConfig(
        name=f"t{config_id}",
        task_type="diagnostics.noop",
        scheduler_type="interval" if schedule and "interval" in schedule else "cron",
        schedule_config=schedule or {"cron": "* * * * *"},
    )
    payload = build_schedule(config_id, config, "default")
    assert payload is not None
    return ScheduledTask.model_validate(payload)


def set_statuses(raw: redis.Redis, statuses: dict[int, str]) -> None:
    raw.mset({LAYOUT.status_key(i): status for i, status in statuses.items()})


def sent_schedule_ids(raw: redis.Redis) -> list[str]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = raw.xrange(STREAM)  # type: ignore[assignment]
    return [json.loads(fields[b"data"])["labels"]["schedule_id"] for _, fields in entries]


def counted(scheduler: DeliveringScheduler, result: str) -> float:
    sample = "syncd_scheduler_fires_total"
    return scheduler.metrics.registry.get_sample_value(sample, {"result": result}) or 0.0


def retries(scheduler: DeliveringScheduler) -> float:
    sample = "syncd_scheduler_send_retries_total"
    return scheduler.metrics.registry.get_sample_value(sample) or 0.0


@asynccontextmanager
async def scheduler_on(redis_url: str, **options: float) -> AsyncIterator[DeliveringScheduler]:
    broker = make_broker(registry, Settings(redis_url=redis_url))
    source = SyncdScheduleSource(redis_url, LAYOUT)
    scheduler = DeliveringScheduler(broker, source, **options)  # type: ignore[arg-type]
    try:
        yield scheduler
    finally:
        await source.shutdown()
        await broker.shutdown()


async def fire_all(scheduler: DeliveringScheduler, tasks: list[ScheduledTask]) -> None:
    (source,) = scheduler.sources
    await asyncio.gather(*(scheduler.on_ready(source, task) for task in tasks))


def clear_of_minute_end(margin: float = 8.0) -> None:
    """A cron fire's claim is its minute: a test must not straddle two."""
    second = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
    if second > 60 - margin:
        time.sleep(60.5 - second)


@pytest.fixture
def raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


async def test_1000_due_crons_are_sent_exactly_once_by_two_schedulers(
    redis_url: str, raw: redis.Redis
) -> None:
    active = dict.fromkeys(range(1, 1001), "active")
    paused = dict.fromkeys(range(1001, 1101), "paused")
    set_statuses(raw, active | paused)
    tasks = [due_task(i) for i in [*active, *paused]]
    clear_of_minute_end()
    async with scheduler_on(redis_url) as first, scheduler_on(redis_url) as second:
        # Each finds all of them due at once, as two scheduler processes do at :00.
        await asyncio.gather(fire_all(first, tasks), fire_all(second, list(reversed(tasks))))

        sent = sent_schedule_ids(raw)
        assert sorted(sent) == sorted(f"task_{i}" for i in active)
        assert counted(first, "sent") + counted(second, "sent") == 1000
        assert counted(first, "taken") + counted(second, "taken") == 1000
        assert counted(first, "not_active") == counted(second, "not_active") == 100
        assert counted(first, "failed") == counted(second, "failed") == 0
    claimed = {
        int(key.split(b":")[2].removeprefix(b"task_")) for key in raw.scan_iter("syncd-fire:*")
    }
    assert claimed == set(active)  # a paused task's fire is not even claimed


async def test_a_failed_send_gives_its_claim_back_and_is_retried_until_sent(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    set_statuses(raw, {1: "active"})
    raw.set(STREAM, "not a stream")  # XADD answers WRONGTYPE until the key is fixed
    clear_of_minute_end()

    async def repair_later() -> None:
        await asyncio.sleep(0.6)
        raw.delete(STREAM)

    caplog.set_level(logging.WARNING, "syncd.scheduler")
    async with scheduler_on(redis_url) as scheduler:
        await asyncio.gather(fire_all(scheduler, [due_task(1)]), repair_later())

        assert sent_schedule_ids(raw) == ["task_1"]
        assert retries(scheduler) >= 1
        assert counted(scheduler, "sent") == 1
        assert counted(scheduler, "failed") == 0
    assert "sending schedule task_1 failed" in caplog.text


async def test_a_fire_not_sent_in_time_is_counted_logged_and_left_unclaimed(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    set_statuses(raw, {7: "active"})
    raw.set(STREAM, "not a stream")
    caplog.set_level(logging.WARNING, "syncd.scheduler")
    async with scheduler_on(redis_url, retry_window_seconds=1.0) as scheduler:
        await fire_all(scheduler, [due_task(7, {"interval": 60})])

        assert counted(scheduler, "failed") == 1
        assert counted(scheduler, "sent") == 0
    assert "schedule task_7 NOT SENT" in caplog.text
    # The claim was given back: another scheduler (or the next fire) may still send it.
    assert list(raw.scan_iter("syncd-fire:*")) == []


async def test_a_claim_recognises_its_own_token_after_a_lost_reply(
    redis_url: str, raw: redis.Redis
) -> None:
    set_statuses(raw, {3: "active", 4: "paused"})
    source = SyncdScheduleSource(redis_url, LAYOUT)
    now = datetime.now(UTC)
    try:
        assert await source.claim(due_task(3), "mine", now) == CLAIMED
        assert await source.claim(due_task(3), "mine", now) == CLAIMED  # asked again
        assert await source.claim(due_task(3), "theirs", now) == TAKEN
        assert await source.claim(due_task(4), "mine", now) == NOT_ACTIVE
        await source.release(due_task(3), "theirs", now)  # not theirs to give back
        assert await source.claim(due_task(3), "other", now) == TAKEN
        await source.release(due_task(3), "mine", now)
        assert await source.claim(due_task(3), "other", now) == CLAIMED
    finally:
        await source.shutdown()


async def test_a_one_shot_moved_to_a_later_time_is_claimed_again(
    redis_url: str, raw: redis.Redis
) -> None:
    set_statuses(raw, {5: "active"})
    source = SyncdScheduleSource(redis_url, LAYOUT)
    now = datetime.now(UTC)
    first = due_task(5, {"interval": 60}).model_copy(
        update={"interval": None, "time": datetime(2030, 1, 1, 9, 0, tzinfo=UTC)}
    )
    moved = first.model_copy(update={"time": datetime(2030, 1, 2, 9, 0, tzinfo=UTC)})
    try:
        assert await source.claim(first, "a", now) == CLAIMED
        assert await source.claim(first, "b", now) == TAKEN  # the same fire: sent once
        assert await source.claim(moved, "b", now) == CLAIMED  # a new time: a new fire
    finally:
        await source.shutdown()

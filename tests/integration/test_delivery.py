"""The scheduler on a real Redis: every due fire is sent exactly once, or counted and logged
as not sent; never dropped without a trace (worker/delivery.py, worker/scheduler.py).

The delivery tests hand batches of due fires to `DeliveringScheduler.deliver` as the tick
loop does, with real brokers and sources on the test's Redis database; the tick loop tests
run `TickLoop` itself on schedules written the way `syncd sync` writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from taskiq import ScheduledTask, TaskiqMessage, TaskiqMiddleware
from taskiq.cli.scheduler.run import is_cron_task_now
from taskiq.kicker import AsyncKicker

from schemas.taskdef import SchedulerType
from syncd.adapters.redis import PutSchedule, RedisOp, RedisStore, SetStatus
from syncd.core.keys import KeyLayout, queue_stream
from syncd.core.model import TaskConfig
from syncd.core.payloads import build_schedule, index_key
from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.delivery import DeliveringScheduler, Tally
from worker.schedule_source import (
    CLAIMED,
    NOT_ACTIVE,
    SENT,
    TAKEN,
    Schedule,
    SyncdScheduleSource,
)
from worker.scheduler import ScheduleTable, TickLoop
from worker.tasks import registry

LAYOUT = KeyLayout()
STREAM = queue_stream("default")


def payload_of(config_id: int, schedule: dict[str, object] | None = None) -> dict[str, Any]:
    kind: SchedulerType = "cron"
    if schedule and "interval" in schedule:
        kind = "interval"
    elif schedule and "at" in schedule:
        kind = "date"
    config = TaskConfig(
        name=f"t{config_id}",
        task_type="diagnostics.noop",
        scheduler_type=kind,
        schedule_config=schedule or {"cron": "* * * * *"},
    )
    payload = build_schedule(config_id, config, "default")
    assert payload is not None
    return payload


def due_task(config_id: int, schedule: dict[str, object] | None = None) -> ScheduledTask:
    return ScheduledTask.model_validate(payload_of(config_id, schedule))


def due(config_id: int, schedule: dict[str, object] | None = None) -> Schedule:
    return Schedule.of(due_task(config_id, schedule))


def set_statuses(raw: redis.Redis, statuses: dict[int, str]) -> None:
    raw.mset({LAYOUT.status_key(i): status for i, status in statuses.items()})


def register(redis_url: str, statuses: dict[int, str], cron: str = "* * * * *") -> None:
    """Cron schedules and their statuses, written the way `syncd sync` writes them."""
    ops: list[RedisOp] = []
    for config_id, status in statuses.items():
        payload = payload_of(config_id, {"cron": cron})
        ops += [PutSchedule(payload, index_key(LAYOUT, payload) or LAYOUT.cron_key),
                SetStatus(config_id, status)]  # fmt: skip
    store = RedisStore.from_url(redis_url, LAYOUT)
    try:
        store.apply(ops)
    finally:
        store.close()


def entries(raw: redis.Redis) -> list[dict[str, Any]]:
    found: list[tuple[bytes, dict[bytes, bytes]]] = raw.xrange(STREAM)  # type: ignore[assignment]
    return [json.loads(fields[b"data"]) for _, fields in found]


def sent_schedule_ids(raw: redis.Redis) -> list[str]:
    return [message["labels"]["schedule_id"] for message in entries(raw)]


def counted(scheduler: DeliveringScheduler, result: str) -> float:
    sample = "syncd_scheduler_fires_total"
    return scheduler.metrics.registry.get_sample_value(sample, {"result": result}) or 0.0


def retries(scheduler: DeliveringScheduler) -> float:
    sample = "syncd_scheduler_send_retries_total"
    return scheduler.metrics.registry.get_sample_value(sample) or 0.0


def claimed_ids(raw: redis.Redis) -> set[int]:
    return {int(key.split(b":")[2].removeprefix(b"task_")) for key in raw.scan_iter("syncd-fire:*")}


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


async def fire_all(scheduler: DeliveringScheduler, schedules: list[Schedule]) -> Tally:
    """One tick's batch, as the tick loop hands it over."""
    now = datetime.now(UTC).replace(microsecond=0)
    return await scheduler.deliver(scheduler.fires(schedules, now), "tick test")


def clear_of_minute_end(margin: float = 8.0) -> None:
    """A cron fire's claim is its minute: a test must not straddle two."""
    second = datetime.now(UTC).second + datetime.now(UTC).microsecond / 1e6
    if second > 60 - margin:
        time.sleep(60.5 - second)


# -- batches -------------------------------------------------------------------------------


async def test_1000_due_crons_are_sent_exactly_once_by_two_schedulers(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    active = dict.fromkeys(range(1, 1001), "active")
    paused = dict.fromkeys(range(1001, 1101), "paused")
    set_statuses(raw, active | paused)
    schedules = [due(i) for i in [*active, *paused]]
    clear_of_minute_end()
    caplog.set_level(logging.INFO, "syncd.scheduler")
    async with scheduler_on(redis_url) as first, scheduler_on(redis_url) as second:
        # Each finds all of them due at once, as two scheduler processes do at :00.
        tallies = await asyncio.gather(
            fire_all(first, schedules), fire_all(second, list(reversed(schedules)))
        )

        sent = sent_schedule_ids(raw)
        assert sorted(sent) == sorted(f"task_{i}" for i in active)
        assert counted(first, "sent") + counted(second, "sent") == 1000
        assert counted(first, "taken") + counted(second, "taken") == 1000
        assert counted(first, "not_active") == counted(second, "not_active") == 100
        assert counted(first, "failed") == counted(second, "failed") == 0
    assert sum(t.sent for t in tallies) == 1000
    assert all(t.due == 1100 for t in tallies)
    assert claimed_ids(raw) == set(active)  # a paused task's fire is not even claimed
    # One summary line per batch, not one line per fire.
    summaries = [r for r in caplog.records if r.getMessage().startswith("tick test: 1100 due")]
    assert len(summaries) == 2
    assert all(r.levelno == logging.INFO for r in summaries)
    assert sum(r.levelno >= logging.INFO for r in caplog.records) == 2


def varied_task(config_id: int) -> ScheduledTask:
    """A schedule whose labels and arguments hold every kind of JSON value."""
    task = due_task(config_id)
    labels = {**task.labels, "flag": True, "ratio": 0.5, "none": None, "nested": {"a": [1]}}
    update = {
        "labels": labels,
        "args": [1, 2.5, "x", None, {"a": [1, True]}, "é"],
        "kwargs": {"k": True, "n": None, "s": "\u2028"},
    }
    return task.model_copy(update=update)


def kicker_bytes(scheduler: DeliveringScheduler, task: ScheduledTask, task_id: str) -> bytes:
    """What TaskiqScheduler.on_ready sends for this schedule, with that task id."""
    kicker: AsyncKicker[Any, Any] = (
        AsyncKicker(task.task_name, scheduler.broker, dict(task.labels))
        .with_labels(schedule_id=task.schedule_id)
        .with_task_id(task_id=task_id)
    )
    message = kicker._prepare_message(*task.args, **task.kwargs)
    return scheduler.broker.formatter.dumps(message).message


class Hooks(TaskiqMiddleware):
    """A middleware with send hooks: the scheduler must run them as the kicker does."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        self.seen.append(("pre_send", message.labels["schedule_id"]))
        return message

    def post_send(self, message: TaskiqMessage) -> None:
        self.seen.append(("post_send", message.labels["schedule_id"]))


@pytest.mark.parametrize("hooked", [False, True], ids=["plain", "send-hooks"])
async def test_the_message_is_the_one_taskiqs_kicker_would_send(
    redis_url: str, raw: redis.Redis, hooked: bool
) -> None:
    set_statuses(raw, {1: "active", 2: "paused"})
    task = varied_task(1)
    clear_of_minute_end()
    async with scheduler_on(redis_url) as scheduler:
        hooks = Hooks()
        if hooked:
            scheduler.broker.add_middlewares(hooks)
        await fire_all(scheduler, [Schedule.of(task), Schedule.of(varied_task(2))])
        await fire_all(scheduler, [Schedule.of(task)])  # taken: claimed already
        found: list[tuple[bytes, dict[bytes, bytes]]] = raw.xrange(STREAM)  # type: ignore[assignment]
        ((_, fields),) = found
        task_id = json.loads(fields[b"data"])["task_id"]
        assert fields[b"data"] == kicker_bytes(scheduler, task, task_id)
        assert counted(scheduler, "taken") == 1
    # The hooks run around each message sent, once: not for fires not sent.
    assert hooks.seen == ([("pre_send", "task_1"), ("post_send", "task_1")] if hooked else [])


async def test_a_failed_send_gives_its_claim_back_and_is_retried_until_sent(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    set_statuses(raw, {1: "active", 2: "active"})
    raw.set(STREAM, "not a stream")  # XADD answers WRONGTYPE until the key is fixed
    clear_of_minute_end()

    async def repair_later() -> None:
        await asyncio.sleep(0.6)
        assert claimed_ids(raw) == set()  # given back while it waits for its retry
        raw.delete(STREAM)

    caplog.set_level(logging.WARNING, "syncd.scheduler")
    async with scheduler_on(redis_url) as scheduler:
        tally, _ = await asyncio.gather(fire_all(scheduler, [due(1), due(2)]), repair_later())

        assert sorted(sent_schedule_ids(raw)) == ["task_1", "task_2"]
        assert retries(scheduler) >= 2
        assert counted(scheduler, "sent") == 2
        assert counted(scheduler, "failed") == 0
    assert (tally.sent, tally.failed) == (2, 0)
    assert tally.retries >= 2
    assert "sending 2 fire(s) failed" in caplog.text
    assert "task_1, task_2" in caplog.text
    # A retry keeps the fire's task id: one task id per fire.
    assert len({m["task_id"] for m in entries(raw)}) == 2


async def test_a_fire_not_sent_in_time_is_counted_logged_and_left_unclaimed(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    set_statuses(raw, {7: "active"})
    raw.set(STREAM, "not a stream")
    caplog.set_level(logging.WARNING, "syncd.scheduler")
    async with scheduler_on(redis_url, retry_window_seconds=1.0) as scheduler:
        tally = await fire_all(scheduler, [due(7, {"interval": 60})])

        assert counted(scheduler, "failed") == 1
        assert counted(scheduler, "sent") == 0
        assert retries(scheduler) >= 1
    assert tally.failed == 1
    assert "1 fire(s) NOT SENT" in caplog.text
    assert "gave up when their time ran out: task_7" in caplog.text
    # The claim was given back: another scheduler (or the next fire) may still send it.
    assert list(raw.scan_iter("syncd-fire:*")) == []


async def test_a_claim_recognises_its_own_token_after_a_lost_reply(
    redis_url: str, raw: redis.Redis
) -> None:
    set_statuses(raw, {3: "active", 4: "paused"})
    source = SyncdScheduleSource(redis_url, LAYOUT)
    now = datetime.now(UTC)
    try:
        assert await source.claim(due(3), "mine", now) == CLAIMED
        assert await source.claim(due(3), "mine", now) == CLAIMED  # asked again
        assert await source.claim(due(3), "theirs", now) == TAKEN
        assert await source.claim(due(4), "mine", now) == NOT_ACTIVE
        await source.release(due(3), "theirs", now)  # not theirs to give back
        assert await source.claim(due(3), "other", now) == TAKEN
        await source.release(due(3), "mine", now)
        assert await source.claim(due(3), "other", now) == CLAIMED
    finally:
        await source.shutdown()


async def test_claims_of_a_batch_are_answered_in_order(redis_url: str, raw: redis.Redis) -> None:
    set_statuses(raw, {1: "active", 2: "paused", 3: "active", 4: "inactive"})
    source = SyncdScheduleSource(redis_url, LAYOUT)
    minute = "202601010000"
    fires = [(due(i), minute, 60_000) for i in (1, 2, 3, 4, 5)]  # 5: no status key at all
    try:
        assert await source.claim_many(fires[2:3], "theirs") == [CLAIMED]
        assert await source.claim_many(fires, "mine") == [
            CLAIMED,
            NOT_ACTIVE,
            TAKEN,
            NOT_ACTIVE,
            NOT_ACTIVE,
        ]
        # Its message added, the claim says so: asking again after a lost reply does not
        # send it twice, and another sender still finds it taken.
        assert await source.add_to_streams([(STREAM, due(1), minute, b"m")], "mine") == [None]
        assert await source.claim_many(fires[:1], "mine") == [SENT]
        assert await source.claim_many(fires[:1], "theirs") == [TAKEN]
    finally:
        await source.shutdown()
    assert claimed_ids(raw) == {1, 3}
    assert [fields for _, fields in raw.xrange(STREAM)] == [{b"data": b"m"}]  # type: ignore[union-attr]


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
        assert await source.claim(Schedule.of(first), "a", now) == CLAIMED
        assert await source.claim(Schedule.of(first), "b", now) == TAKEN  # the same fire
        assert await source.claim(Schedule.of(moved), "b", now) == CLAIMED  # a new time
    finally:
        await source.shutdown()


async def test_taskiqs_own_loop_can_still_drive_the_scheduler(
    redis_url: str, raw: redis.Redis
) -> None:
    set_statuses(raw, {1: "active", 2: "paused"})
    clear_of_minute_end()
    async with scheduler_on(redis_url) as scheduler:
        (source,) = scheduler.sources
        await asyncio.gather(*(scheduler.on_ready(source, due_task(i)) for i in (1, 2, 1)))

        assert sent_schedule_ids(raw) == ["task_1"]
        assert (counted(scheduler, "sent"), counted(scheduler, "taken")) == (1, 1)
        assert counted(scheduler, "not_active") == 1


# -- the tick loop -------------------------------------------------------------------------


async def run_loops(loops: list[TickLoop], done: Callable[[], bool]) -> None:
    """Run the loops until `done` (or 60 s, a failure), then stop them."""
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        for _ in range(600):
            if done():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the tick loops did not finish their fires in 60 s")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_two_tick_loops_send_1000_due_crons_exactly_once(
    redis_url: str, raw: redis.Redis
) -> None:
    active = dict.fromkeys(range(1, 1001), "active")
    paused = dict.fromkeys(range(1001, 1101), "paused")
    register(redis_url, active | paused)
    clear_of_minute_end(margin=20)
    async with scheduler_on(redis_url) as first, scheduler_on(redis_url) as second:
        schedulers = [first, second]

        def settled() -> bool:  # each scheduler has found all 1,100 due and dealt with them
            results = ("sent", "taken", "not_active", "failed")
            return all(sum(counted(s, r) for r in results) == 1100 for s in schedulers)

        await run_loops([TickLoop(first), TickLoop(second)], settled)

        assert Counter(sent_schedule_ids(raw)) == Counter(f"task_{i}" for i in active)
        assert sum(counted(s, "sent") for s in schedulers) == 1000
        assert sum(counted(s, "taken") for s in schedulers) == 1000
        assert counted(first, "not_active") == counted(second, "not_active") == 100
        assert counted(first, "failed") == counted(second, "failed") == 0
    assert claimed_ids(raw) == set(active)  # paused tasks are never claimed


async def test_a_pause_between_ticks_stops_the_next_fire(redis_url: str, raw: redis.Redis) -> None:
    ops: list[RedisOp] = []
    for config_id in (1, 2):
        payload = payload_of(config_id, {"interval": 1})
        ops += [PutSchedule(payload, LAYOUT.interval_key), SetStatus(config_id, "active")]
    store = RedisStore.from_url(redis_url, LAYOUT)
    store.apply(ops)
    async with scheduler_on(redis_url) as scheduler:
        loop = TickLoop(scheduler)
        await run_loops([loop], lambda: counted(scheduler, "sent") >= 2)
        store.apply([SetStatus(2, "paused")])
        sent_before = Counter(sent_schedule_ids(raw))
        await run_loops([loop], lambda: counted(scheduler, "not_active") >= 2)
    store.close()
    sent_after = Counter(sent_schedule_ids(raw))
    assert sent_after["task_2"] == sent_before["task_2"]
    assert sent_after["task_1"] > sent_before["task_1"]


# -- the schedule table --------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_each_distinct_cron_expression_is_evaluated_once_per_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, object]] = []
    real = is_cron_task_now

    def counting(cron: str, now: datetime, offset: Any = None, last_run: Any = None) -> bool:
        calls.append((cron, offset))
        return real(cron, now, offset, last_run)

    monkeypatch.setattr("worker.scheduler.is_cron_task_now", counting)
    expressions: list[dict[str, object]] = [
        {"cron": "* * * * *"},
        {"cron": "0 * * * *"},
        {"cron": "30 9 * * *"},
    ]
    expressions.append({"cron": "* * * * *", "timezone": "Europe/Berlin"})
    schedules = {
        s.schedule_id: s for i in range(1, 1001) if (s := due(i, expressions[i % 4])) is not None
    }
    table = ScheduleTable()
    table.replace(schedules, at("2026-01-05T09:00:00"))

    fired = table.due(at("2026-01-05T09:00:00"))
    assert len(calls) == 4  # 1,000 schedules, 4 distinct (expression, time zone) pairs
    assert len(fired) == 750  # all but "30 9 * * *" (UTC)
    assert table.due(at("2026-01-05T09:00:01")) == []  # the minute's crons fired already
    assert len(calls) == 4
    assert len(table.due(at("2026-01-05T09:01:00"))) == 500  # "* * * * *" twice
    assert len(calls) == 8


def test_a_cron_fires_in_its_time_zone_and_once_per_minute() -> None:
    table = ScheduleTable()
    berlin = due(1, {"cron": "0 9 * * *", "timezone": "Europe/Berlin"})
    table.replace({berlin.schedule_id: berlin}, at("2026-01-05T07:59:00"))
    assert table.due(at("2026-01-05T07:59:59")) == []
    assert table.due(at("2026-01-05T08:00:00")) == [berlin]  # 09:00 in Berlin in winter
    assert table.due(at("2026-01-05T08:00:30")) == []
    assert table.due(at("2026-01-05T09:00:00")) == []


def test_a_cron_added_mid_minute_fires_at_the_next_tick() -> None:
    table = ScheduleTable()
    table.replace({}, at("2026-01-05T08:00:00"))
    assert table.due(at("2026-01-05T08:00:00")) == []
    added = due(1)
    table.replace({added.schedule_id: added}, at("2026-01-05T08:00:20"))
    assert table.due(at("2026-01-05T08:00:21")) == [added]
    assert table.due(at("2026-01-05T08:00:22")) == []
    assert table.due(at("2026-01-05T08:01:00")) == [added]


def test_an_interval_fires_at_first_sight_then_every_n_seconds() -> None:
    table = ScheduleTable()
    every3 = due(1, {"interval": 3})
    table.replace({every3.schedule_id: every3}, at("2026-01-05T08:00:00"))
    fired = [s for s in range(10) if table.due(at("2026-01-05T08:00:00") + timedelta(seconds=s))]
    assert fired == [0, 3, 6, 9]
    # A changed interval counts from the last fire; a removed schedule stops firing.
    every5 = due(1, {"interval": 5})
    table.replace({every5.schedule_id: every5}, at("2026-01-05T08:00:10"))
    assert table.due(at("2026-01-05T08:00:13")) == []
    assert table.due(at("2026-01-05T08:00:14")) == [every5]
    table.replace({}, at("2026-01-05T08:00:15"))
    assert table.due(at("2026-01-05T08:00:30")) == []


def test_a_one_shot_fires_once_when_its_time_has_come() -> None:
    table = ScheduleTable()
    once = due(1, {"at": "2026-01-05T08:00:30Z"})
    table.replace({once.schedule_id: once}, at("2026-01-05T08:00:00"))
    assert table.due(at("2026-01-05T08:00:29")) == []
    assert table.due(at("2026-01-05T08:00:30")) == [once]
    assert table.due(at("2026-01-05T08:00:31")) == []
    moved = due(1, {"at": "2026-01-05T08:00:40Z"})
    table.replace({moved.schedule_id: moved}, at("2026-01-05T08:00:35"))
    assert table.due(at("2026-01-05T08:00:40")) == [moved]

"""RedisStore on a real Redis: bulk reads, chunked writes, errors, taskiq-redis compatibility."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from taskiq import ScheduledTask
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from syncd.adapters.redis import (
    DeleteStatus,
    PutSchedule,
    RedisOp,
    RedisStore,
    RemoveSchedule,
    SetStatus,
)
from syncd.core.errors import StoreUnavailable
from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import TaskConfig
from syncd.core.payloads import build_schedule, index_key

LAYOUT = KeyLayout(prefix="synctest")
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        yield store


def cron_config(name: str = "nightly", timezone: str = "UTC") -> TaskConfig:
    return TaskConfig(
        name=name,
        task_type="reports.build",
        scheduler_type="cron",
        schedule_config={"cron": "30 2 * * *", "timezone": timezone},
        parameters={"region": "eu", "limit": 10},
        max_retries=3,
        retry_backoff_seconds=0.5,
        retry_backoff_max_seconds=30.0,
        timeout_seconds=600,
    )


def interval_config(name: str = "poll", seconds: int = 90) -> TaskConfig:
    return TaskConfig(
        name=name,
        task_type="feeds.poll",
        scheduler_type="interval",
        schedule_config={"interval": seconds},
    )


def at_config(when: datetime, name: str = "once") -> TaskConfig:
    return TaskConfig(
        name=name,
        task_type="ops.migrate",
        scheduler_type="date",
        schedule_config={"at": when.isoformat()},
    )


def payload_of(config_id: int, config: TaskConfig) -> dict[str, Any]:
    payload = build_schedule(config_id, config, "default")
    assert payload is not None
    return payload


def put(payload: dict[str, Any], current_lists: tuple[str, ...] = ()) -> PutSchedule:
    key = index_key(LAYOUT, payload)
    assert key is not None
    return PutSchedule(payload, key, current_lists)


def test_put_then_read_back(store: RedisStore) -> None:
    cron = payload_of(1, cron_config())
    interval = payload_of(2, interval_config())
    store.apply([put(cron), put(interval)])

    records = store.read_schedules()

    assert set(records) == {"task_1", "task_2"}
    assert records["task_1"].payload == cron
    assert records["task_1"].lists == (LAYOUT.cron_key,)
    assert records["task_2"].payload == interval
    assert records["task_2"].lists == (LAYOUT.interval_key,)


def test_data_is_compact_json(store: RedisStore, raw: redis.Redis) -> None:
    payload = payload_of(1, cron_config())
    store.apply([put(payload)])

    stored = raw.get(LAYOUT.data_key("task_1"))

    assert stored == json.dumps(payload, separators=(",", ":")).encode()


def test_a_put_repairs_the_duplicates_the_read_shows(store: RedisStore) -> None:
    payload = payload_of(1, cron_config())
    # Two puts that both say "listed nowhere" (what the read shows is the contract).
    store.apply([put(payload), put(payload)])
    assert store.read_schedules()["task_1"].lists == (LAYOUT.cron_key, LAYOUT.cron_key)
    store.apply([put(payload, store.read_schedules()["task_1"].lists)])

    assert store.read_schedules()["task_1"].lists == (LAYOUT.cron_key,)


def test_new_and_updated_schedules_scan_no_list(store: RedisStore, raw: redis.Redis) -> None:
    """LREM walks a whole list: a bulk of new schedules must not send one per schedule
    (quadratic at 100,000), nor an update of a schedule already listed right."""
    ops = [put(payload_of(i, cron_config(f"t{i}"))) for i in range(1, 501)]
    raw.config_resetstat()
    store.apply(ops)
    records = store.read_schedules()
    store.apply([put(payload_of(i, cron_config(f"u{i}")), records[schedule_id(i)].lists)
                 for i in range(1, 501)])  # fmt: skip

    assert "cmdstat_lrem" not in raw.info("commandstats")
    assert len(store.read_schedules()) == 500
    assert all(r.lists == (LAYOUT.cron_key,) for r in store.read_schedules().values())


def test_cron_to_interval_moves_the_id(store: RedisStore) -> None:
    store.apply([put(payload_of(1, cron_config()))])
    before = store.read_schedules()["task_1"]
    interval = payload_of(1, interval_config())

    store.apply([put(interval, before.lists)])

    after = store.read_schedules()["task_1"]
    assert after.payload == interval
    assert after.lists == (LAYOUT.interval_key,)


def test_one_shot_lands_in_its_utc_minute_key(store: RedisStore) -> None:
    utc = payload_of(1, at_config(datetime(2099, 3, 4, 5, 6, 59, tzinfo=UTC)))
    offset = datetime(2099, 3, 4, 7, 6, 0, tzinfo=timezone(timedelta(hours=2)))
    shifted = payload_of(2, at_config(offset, "other"))
    store.apply([put(utc), put(shifted)])

    records = store.read_schedules()

    assert records["task_1"].lists == ("synctest:time:2099-03-04T05:06",)
    assert records["task_2"].lists == ("synctest:time:2099-03-04T05:06",)
    assert records["task_1"].payload == utc


def test_moving_a_one_shot_to_another_minute(store: RedisStore) -> None:
    first = payload_of(1, at_config(datetime(2099, 1, 1, 0, 0, tzinfo=UTC)))
    store.apply([put(first)])
    second = payload_of(1, at_config(datetime(2099, 1, 1, 0, 1, tzinfo=UTC)))

    store.apply([put(second, store.read_schedules()["task_1"].lists)])

    assert store.read_schedules()["task_1"].lists == ("synctest:time:2099-01-01T00:01",)


def test_remove_deletes_data_and_every_index_entry(store: RedisStore, raw: redis.Redis) -> None:
    at = payload_of(1, at_config(datetime(2099, 1, 1, tzinfo=UTC)))
    store.apply([put(payload_of(2, cron_config())), put(at)])
    raw.rpush(LAYOUT.cron_key, "task_2", "task_1")  # stray duplicates
    raw.rpush(LAYOUT.interval_key, "task_2")
    lists_1 = store.read_schedules()["task_1"].lists

    store.apply([RemoveSchedule("task_2"), RemoveSchedule("task_1", lists_1)])

    assert store.read_schedules() == {}
    assert raw.keys("synctest:*") == [LAYOUT.version_key.encode()]  # the change marker only


def test_duplicates_and_dangling_entries_are_reported_faithfully(
    store: RedisStore, raw: redis.Redis
) -> None:
    payload = payload_of(1, cron_config())
    raw.set(LAYOUT.data_key("task_1"), json.dumps(payload))
    raw.rpush(LAYOUT.cron_key, "task_1", "task_1", "ghost")
    raw.rpush(LAYOUT.interval_key, "task_1")
    raw.set(LAYOUT.data_key("orphan"), json.dumps(payload_of(9, interval_config())))

    records = store.read_schedules()

    assert set(records) == {"task_1", "ghost", "orphan"}
    assert records["task_1"].lists == (LAYOUT.cron_key, LAYOUT.cron_key, LAYOUT.interval_key)
    assert records["task_1"].payload == payload
    assert records["ghost"].payload is None
    assert records["ghost"].lists == (LAYOUT.cron_key,)
    assert records["orphan"].lists == ()
    assert records["orphan"].payload == payload_of(9, interval_config())


def test_keys_outside_the_prefix_are_not_read(store: RedisStore, raw: redis.Redis) -> None:
    raw.set("other:data:task_1", "{}")
    raw.rpush("other:cron", "task_1")
    raw.rpush("synctestx:cron", "task_2")
    raw.set("synctest:time:2099-01-01T00:00", "not a list")  # wrong type: skipped, no error

    assert store.read_schedules() == {}


@pytest.mark.parametrize(
    "value",
    [
        pickle.dumps({"task_name": "x", "schedule_id": "task_1"}),
        b"\xff\xfe not utf-8",
        b"{truncated",
        b"[1, 2]",
    ],
    ids=["pickle", "binary", "broken-json", "not-an-object"],
)
def test_unreadable_data_does_not_crash(store: RedisStore, raw: redis.Redis, value: bytes) -> None:
    raw.set(LAYOUT.data_key("task_1"), value)
    raw.rpush(LAYOUT.cron_key, "task_1")

    record = store.read_schedules()["task_1"]

    assert record.payload == {"__unreadable__": True}
    assert record.lists == (LAYOUT.cron_key,)


def test_statuses_round_trip(store: RedisStore, raw: redis.Redis) -> None:
    store.apply([SetStatus(1, "active"), SetStatus(2, "paused"), SetStatus(3, "inactive")])
    store.set_status(4, "paused")
    store.apply([SetStatus(1, "paused"), DeleteStatus(3)])
    raw.set("schedule:status:abc", "active")
    raw.set("schedule:status:²", "active")
    raw.set("schedule:status:٥", "active")
    raw.set("schedule:status:7", "bogus")  # raw values are reported as they are

    assert store.read_statuses() == {1: "paused", 2: "paused", 4: "paused", 7: "bogus"}
    assert store.get_status(2) == "paused"
    assert store.get_status(3) is None


def test_status_must_be_known() -> None:
    with pytest.raises(ValueError, match="status 'stopped'"):
        SetStatus(1, "stopped")


def test_progress_and_chunked_apply_of_5000_ops(store: RedisStore) -> None:
    configs = {i: cron_config(f"t{i}") if i % 2 else interval_config(f"t{i}") for i in range(3000)}
    first: list[RedisOp] = [put(payload_of(i, c)) for i, c in configs.items()]
    first += [SetStatus(i, "active") for i in range(1000)]
    progress: list[int] = []
    store.apply(first, chunk_size=700, on_progress=progress.append)
    # second pass: remove 500, flip 500 from cron to interval, delete 0..99's statuses
    records = store.read_schedules()
    second: list[RedisOp] = [
        RemoveSchedule(schedule_id(i), records[schedule_id(i)].lists) for i in range(500)
    ]
    second += [
        put(payload_of(i, interval_config(f"t{i}")), records[schedule_id(i)].lists)
        for i in range(501, 1500, 2)
    ]
    second += [DeleteStatus(i) for i in range(100)]
    store.apply(second, chunk_size=333)

    assert progress == [700, 1400, 2100, 2800, 3500, 4000]
    records = store.read_schedules()
    assert set(records) == {schedule_id(i) for i in range(500, 3000)}
    for i in range(500, 3000):
        expected_key = LAYOUT.cron_key if i % 2 and i >= 1500 else LAYOUT.interval_key
        assert records[schedule_id(i)].lists == (expected_key,), i
    assert store.read_statuses() == dict.fromkeys(range(100, 1000), "active")


def test_10000_puts_are_fast(store: RedisStore) -> None:
    ops = [put(payload_of(i, cron_config(f"t{i}"))) for i in range(10_000)]

    started = time.perf_counter()
    store.apply(ops)
    elapsed = time.perf_counter() - started

    assert len(store.read_schedules()) == 10_000
    assert elapsed < 4.0  # about 1.1 s here (LREM on a growing list dominates); catches regressions


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ping(),
        lambda s: s.read_schedules(),
        lambda s: s.read_statuses(),
        lambda s: s.get_status(1),
        lambda s: s.set_status(1, "paused"),
        lambda s: s.apply([RemoveSchedule("task_1")]),
    ],
    ids=["ping", "read_schedules", "read_statuses", "get_status", "set_status", "apply"],
)
def test_unreachable_redis_raises_store_unavailable(call: Callable[[RedisStore], object]) -> None:
    with (
        RedisStore.from_url(UNREACHABLE, LAYOUT) as store,
        pytest.raises(StoreUnavailable) as caught,
    ):
        call(store)

    message = str(caught.value)
    assert message.startswith("Redis at redis://127.0.0.1:1/0: ")
    assert "s3cret" not in message
    assert isinstance(caught.value.__cause__, redis.RedisError)


def test_redis_error_reply_raises_store_unavailable(store: RedisStore, raw: redis.Redis) -> None:
    raw.set(LAYOUT.cron_key, "not a list")

    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.read_schedules()
    with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
        store.apply([put(payload_of(1, cron_config()))])


# -- compatibility with taskiq-redis ListRedisScheduleSource -------------------------------


@asynccontextmanager
async def taskiq_source(redis_url: str) -> AsyncIterator[ListRedisScheduleSource]:
    source = ListRedisScheduleSource(redis_url, prefix=LAYOUT.prefix, serializer=JSONSerializer())
    try:
        yield source
    finally:
        await source.shutdown()
        # shutdown() leaves the pool open (taskiq-redis 1.2.4): close it, or ResourceWarning.
        await source._connection_pool.disconnect()


def compat_payloads() -> dict[str, dict[str, Any]]:
    """cron with a time zone, interval, a one-shot due this minute, a one-shot far ahead."""
    end_of_minute = datetime.now(UTC).replace(second=59, microsecond=0)
    payloads = [
        payload_of(1, cron_config(timezone="Europe/Berlin")),
        payload_of(2, interval_config()),
        payload_of(3, at_config(end_of_minute, "soon")),
        payload_of(4, at_config(datetime(2099, 6, 1, 12, 30, tzinfo=UTC), "later")),
    ]
    return {p["schedule_id"]: p for p in payloads}


def test_build_schedule_matches_taskiq_model() -> None:
    payloads = compat_payloads()
    for payload in payloads.values():
        assert ScheduledTask.model_validate(payload).model_dump(mode="json") == payload
    # The backoff labels (a task with retries) survive taskiq's model as floats.
    labels = ScheduledTask.model_validate(payloads["task_1"]).labels
    assert (labels["retry_backoff"], labels["retry_backoff_max"]) == (0.5, 30.0)
    assert "retry_backoff" not in ScheduledTask.model_validate(payloads["task_2"]).labels


async def test_taskiq_reads_what_redis_store_writes(store: RedisStore, redis_url: str) -> None:
    payloads = compat_payloads()
    store.apply([put(p) for p in payloads.values()])
    async with taskiq_source(redis_url) as source:
        found = await source.get_schedules()

    by_id = {task.schedule_id: task for task in found}
    # taskiq returns one-shots only once due: task_4 (2099) is rightly absent.
    assert sorted(by_id) == ["task_1", "task_2", "task_3"]
    for sid, task in by_id.items():
        assert task.model_dump(mode="json") == payloads[sid]
    assert by_id["task_1"].cron_offset == "Europe/Berlin"
    assert by_id["task_2"].interval == 90


async def test_taskiq_delete_is_seen_by_redis_store(store: RedisStore, redis_url: str) -> None:
    payloads = compat_payloads()
    store.apply([put(p) for p in payloads.values()])
    async with taskiq_source(redis_url) as source:
        for sid in payloads:  # taskiq derives the list key from the payload: proves the layout
            await source.delete_schedule(sid)

    assert store.read_schedules() == {}


async def test_redis_store_reads_what_taskiq_writes(store: RedisStore, redis_url: str) -> None:
    payloads = compat_payloads()
    async with taskiq_source(redis_url) as source:
        for payload in payloads.values():
            await source.add_schedule(ScheduledTask.model_validate(payload))

    records = store.read_schedules()

    assert {sid: r.payload for sid, r in records.items()} == payloads
    assert {sid: r.lists for sid, r in records.items()} == {
        sid: (index_key(LAYOUT, p),) for sid, p in payloads.items()
    }


def test_every_apply_changes_the_version_key(store: RedisStore, raw: redis.Redis) -> None:
    store.apply([put(payload_of(1, cron_config()))])
    first = raw.get(LAYOUT.version_key)
    store.apply([SetStatus(1, "paused")])
    assert first is not None
    assert raw.get(LAYOUT.version_key) not in (None, first)


def test_junk_in_the_version_key_does_not_break_apply(store: RedisStore, raw: redis.Redis) -> None:
    raw.set(LAYOUT.version_key, "not a number")
    store.apply([put(payload_of(1, cron_config()))])
    assert store.read_schedules()["task_1"].payload == payload_of(1, cron_config())


def test_put_with_current_listing_updates_data_in_place(
    store: RedisStore, raw: redis.Redis
) -> None:
    payload = payload_of(1, cron_config())
    store.apply([put(payload)])
    changed = {**payload, "kwargs": {"changed": True}}
    store.apply([PutSchedule(changed, LAYOUT.cron_key, (LAYOUT.cron_key,))])
    record = store.read_schedules()["task_1"]
    assert record.payload == changed
    assert record.lists == (LAYOUT.cron_key,)

"""The worker's stream consumer on a real Redis: deaths counted from redeliveries, an
atomic hand-back, and retries that wait in Redis until they are due."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage, TaskiqMessage, TaskiqResult

from worker.consumer import StreamConsumer, delayed_key
from worker.labels import DEATHS_LABEL
from worker.retries import BackoffRetryMiddleware

STREAM = "syncd-queue:consumer-test"
GROUP = "syncd-workers"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def consumer(redis_url: str) -> AsyncIterator[StreamConsumer]:
    broker = StreamConsumer(
        url=redis_url,
        queue_name=STREAM,
        consumer_group_name=GROUP,
        consumer_id="0",
        idle_timeout=200,  # ms: a message pending this long belongs to a dead worker
        xread_block=100,
    )
    await broker.startup()
    yield broker
    await broker.shutdown()


def message(task_id: str, **labels: Any) -> TaskiqMessage:
    return TaskiqMessage(
        task_id=task_id, task_name="diagnostics.noop", labels=labels, args=[], kwargs={}
    )


async def send(consumer: StreamConsumer, client: Redis, msg: TaskiqMessage) -> None:
    await client.xadd(STREAM, {b"data": consumer.formatter.dumps(msg).message})


async def take(consumer: StreamConsumer, count: int) -> list[AckableMessage]:
    got: list[AckableMessage] = []
    stream = consumer.listen()
    try:
        async with asyncio.timeout(10):
            async for delivery in stream:
                got.append(delivery)
                if len(got) == count:
                    break
    finally:
        await stream.aclose()
    return got


def failure(error: BaseException) -> TaskiqResult[None]:
    return TaskiqResult(is_err=True, return_value=None, execution_time=0.1, error=error)


async def pending(client: Redis) -> int:
    summary: Any = await client.xpending(STREAM, GROUP)
    return int(summary["pending"])


async def test_a_message_whose_worker_died_comes_back_with_its_deaths(
    consumer: StreamConsumer, client: Redis
) -> None:
    await send(consumer, client, message("t1", **{DEATHS_LABEL: 1}))
    # A worker that will never ack takes it, twice (it died, its successor died too).
    await client.xreadgroup(GROUP, "dead-1", {STREAM: ">"})
    await asyncio.sleep(0.3)
    await client.xautoclaim(STREAM, GROUP, "dead-2", min_idle_time=200)
    await asyncio.sleep(0.3)

    (delivery,) = await take(consumer, 1)
    again = consumer.formatter.loads(delivery.data)
    assert again.task_id == "t1"
    assert again.labels[DEATHS_LABEL] == 3  # one from before, two deliveries without an outcome
    await delivery.ack()
    assert await pending(client) == 0


async def test_hand_back_sends_unfinished_messages_again_and_acks_them(
    consumer: StreamConsumer, client: Redis
) -> None:
    for task_id in ("a", "b", "c"):
        await send(consumer, client, message(task_id))
    first, *_ = await take(consumer, 3)
    await first.ack()
    assert await pending(client) == 2

    assert await consumer.hand_back() == 2
    assert await pending(client) == 0
    entries: Any = await client.xrange(STREAM)
    sent = [consumer.formatter.loads(fields[b"data"]).task_id for _, fields in entries]
    assert sent == ["a", "b", "c", "b", "c"]
    # Nothing more goes out from a worker that handed back, and a late ack is harmless.
    await consumer.send_later(STREAM, b"late", 0)
    assert await client.xlen(STREAM) == 5


async def test_a_retry_waits_in_redis_until_it_is_due(
    consumer: StreamConsumer, client: Redis
) -> None:
    await consumer.send_later(STREAM, b"later", 0.5)
    assert await client.zcard(delayed_key(STREAM)) == 1
    assert await consumer.move_due(client) == 0
    await asyncio.sleep(0.6)
    # Two workers racing: the script moves it once.
    moved = await asyncio.gather(consumer.move_due(client), consumer.move_due(client))
    assert sorted(moved) == [0, 1]
    entries: Any = await client.xrange(STREAM)
    assert [fields[b"data"] for _, fields in entries] == [b"later"]
    assert await client.zcard(delayed_key(STREAM)) == 0


async def test_a_failed_attempt_is_retried_later_with_its_attempt_number(
    consumer: StreamConsumer, client: Redis
) -> None:
    retry = BackoffRetryMiddleware()
    retry.set_broker(consumer)
    labels = {
        "max_retries": 4,
        "retry_on_error": True,
        "retry_backoff": 10.0,
        "retry_backoff_max": 15.0,
        "_retries": 1,
        DEATHS_LABEL: 2,
        "queue_name": STREAM,
    }
    failed = message("t9", **labels)
    error = RuntimeError("boom")
    result: TaskiqResult[None] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.1, error=error
    )
    before = time.time()
    await retry.on_error(failed, result, error)

    (entry,) = await client.zrange(delayed_key(STREAM), 0, -1, withscores=True)
    data, due = entry
    again = consumer.formatter.loads(data)
    assert again.task_id == "t9"
    assert again.labels["_retries"] == 2
    assert DEATHS_LABEL not in again.labels  # deaths count per attempt
    assert failed.labels["_retries"] == 1  # the failed attempt keeps its own labels
    # Retry 2: step min(15, 10 * 2) = 15 s, jittered into [7.5, 15].
    assert before + 7.5 <= due <= time.time() + 15


async def test_no_retry_once_the_attempts_are_used_up(
    consumer: StreamConsumer, client: Redis
) -> None:
    retry = BackoffRetryMiddleware()
    retry.set_broker(consumer)
    last = message("t2", max_retries=3, retry_on_error=True, _retries=2, queue_name=STREAM)
    error = RuntimeError("boom")
    result: TaskiqResult[None] = TaskiqResult(
        is_err=True, return_value=None, execution_time=0.1, error=error
    )
    await retry.on_error(last, result, error)
    assert await client.zcard(delayed_key(STREAM)) == 0
    assert await client.xlen(STREAM) == 0

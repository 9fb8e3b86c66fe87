"""Stream trimming on a real Redis (private db): consumed entries go, needed ones stay.

Consumer groups are driven with raw XREADGROUP/XACK so every test states exactly which
entries are delivered, pending or acked. Exact trimming (`approximate=False`) makes the
expected stream contents precise; one test checks the `~` form never cuts above the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage, InMemoryBroker
from taskiq.kicker import AsyncKicker
from taskiq.utils import maybe_awaitable

from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.streams import GroupState, StreamId, StreamTrimmer, safe_min_id, trim_stream
from worker.tasks import registry

STREAM = "syncd-queue:test"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield redis
    await redis.aclose()


async def add(client: Redis, count: int, stream: str = STREAM) -> list[str]:
    return [str(await client.xadd(stream, {"data": str(i)})) for i in range(count)]


async def read(client: Redis, group: str, count: int, stream: str = STREAM) -> list[str]:
    """Deliver the next `count` entries to `group` (they become pending)."""
    got: Any = await client.xreadgroup(group, "c1", {stream: ">"}, count=count)
    return [str(entry_id) for _, entries in got for entry_id, _ in entries]


async def ids(client: Redis, stream: str = STREAM) -> list[str]:
    entries: Any = await client.xrange(stream)
    return [str(entry_id) for entry_id, _ in entries]


async def trim(client: Redis) -> int:
    return await trim_stream(client, STREAM, approximate=False)


async def test_delivered_and_acked_entries_are_trimmed(client: Redis) -> None:
    await add(client, 10)
    await client.xgroup_create(STREAM, "g", id="0")
    await client.xack(STREAM, "g", *await read(client, "g", 10))
    assert await trim(client) == 10
    assert await ids(client) == []
    # The group survives an empty stream and keeps working.
    more = await add(client, 2)
    assert await read(client, "g", 10) == more


async def test_pending_entries_are_never_trimmed(client: Redis) -> None:
    sent = await add(client, 10)
    await client.xgroup_create(STREAM, "g", id="0")
    delivered = await read(client, "g", 6)
    await client.xack(STREAM, "g", delivered[0], delivered[1], delivered[3])
    assert await trim(client) == 2
    # From the oldest pending on everything stays, acked #4 included (no holes are cut).
    assert await ids(client) == sent[2:]


async def test_undelivered_entries_are_never_trimmed(client: Redis) -> None:
    sent = await add(client, 10)
    await client.xgroup_create(STREAM, "g", id="0")
    await client.xack(STREAM, "g", *await read(client, "g", 5))
    assert await trim(client) == 5
    assert await ids(client) == sent[5:]
    assert await read(client, "g", 10) == sent[5:]


async def test_the_slowest_group_bounds_the_trim(client: Redis) -> None:
    sent = await add(client, 10)
    for group in ("fast", "slow", "stuck"):
        await client.xgroup_create(STREAM, group, id="0")
    await client.xack(STREAM, "fast", *await read(client, "fast", 10))
    await client.xack(STREAM, "slow", *await read(client, "slow", 7))
    stuck = await read(client, "stuck", 8)
    await client.xack(STREAM, "stuck", *stuck[:4], *stuck[5:])  # #5 stays pending
    assert await trim(client) == 4
    assert await ids(client) == sent[4:]
    await client.xack(STREAM, "stuck", stuck[4])
    assert await trim(client) == 3  # now "slow" (7 consumed) is the slowest
    assert await ids(client) == sent[7:]


async def test_a_group_created_after_the_messages_waits_for_them(client: Redis) -> None:
    sent = await add(client, 5)
    await client.xgroup_create(STREAM, "early", id="$")
    await client.xgroup_create(STREAM, "late", id="0")
    assert await trim(client) == 0
    assert await read(client, "late", 10) == sent


async def test_without_a_group_nothing_is_trimmed(client: Redis) -> None:
    sent = await add(client, 10)
    assert await trim(client) == 0
    assert await trim_stream(client, STREAM) == 0
    assert await ids(client) == sent
    assert await trim_stream(client, "syncd-queue:missing") == 0


async def test_approximate_trimming_never_cuts_above_the_bound(client: Redis) -> None:
    sent = await add(client, 1000)
    await client.xgroup_create(STREAM, "g", id="0")
    delivered = await read(client, "g", 600)
    await client.xack(STREAM, "g", *delivered[:550])
    removed = await trim_stream(client, STREAM, approximate=True)
    left = await ids(client)
    assert 0 < removed <= 550  # whole nodes of consumed entries only
    assert left == sent[removed:]
    assert await trim(client) == 550 - removed  # the exact form takes the rest


async def test_with_the_real_broker_only_acked_messages_go(client: Redis, redis_url: str) -> None:
    broker = make_broker(registry, Settings(redis_url=redis_url))
    await broker.startup()  # creates the consumer groups, as a worker does
    stream = "syncd-queue:default"
    labels = {"queue_name": stream}
    for _ in range(5):
        await AsyncKicker("diagnostics.noop", broker, labels).kiq()
    listener = broker.listen()
    try:
        messages = [await anext(listener) for _ in range(5)]
        for message in messages[:3]:
            assert isinstance(message, AckableMessage)
            await maybe_awaitable(message.ack())
    finally:
        await listener.aclose()
        await broker.shutdown()
    assert await trim_stream(client, stream, approximate=False) == 3
    assert int(await client.xlen(stream)) == 2


def test_stream_ids_compare_numerically_and_step_over_the_sequence() -> None:
    assert StreamId.parse("9-5") < StreamId.parse("10-0")
    assert str(StreamId.parse("0-0").next()) == "0-1"
    assert StreamId(7, 2**64 - 1).next() == StreamId(8, 0)
    with pytest.raises(ValueError, match="not a stream id"):
        StreamId.parse("5")


def test_safe_min_id_takes_the_oldest_need_of_every_group() -> None:
    done = GroupState("done", StreamId(9, 0), None)
    pending = GroupState("pending", StreamId(9, 0), StreamId(3, 1))
    assert safe_min_id([]) is None
    assert safe_min_id([done]) == StreamId(9, 1)
    assert safe_min_id([done, pending]) == StreamId(3, 1)


async def test_the_middleware_trims_in_worker_processes_only(client: Redis, redis_url: str) -> None:
    await add(client, 3)
    await client.xgroup_create(STREAM, "g", id="0")
    await client.xack(STREAM, "g", *await read(client, "g", 3))
    assert not await _trimmed_by_middleware(redis_url, worker=False)
    assert await ids(client) != []
    assert await _trimmed_by_middleware(redis_url, worker=True)
    assert await ids(client) == []


async def _trimmed_by_middleware(redis_url: str, *, worker: bool) -> bool:
    broker = InMemoryBroker()
    broker.is_worker_process = worker
    trimmer = StreamTrimmer(redis_url, [STREAM], interval=0.05, approximate=False)
    broker.add_middlewares(trimmer)
    await trimmer.startup()
    await asyncio.sleep(0.5)
    await trimmer.shutdown()
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(await client.xlen(STREAM)) == 0
    finally:
        await client.aclose()


async def test_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    trimmer = StreamTrimmer("redis://127.0.0.1:1/0", [STREAM, "other"])
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        assert await trimmer.trim_all(unreachable) == 0
    finally:
        await unreachable.aclose()
    assert caplog.text.count("cannot trim") == 2


def test_make_broker_trims_every_served_stream() -> None:
    broker = make_broker(registry, Settings(redis_url="redis://127.0.0.1:1/0"))
    (trimmer,) = [m for m in broker.middlewares if isinstance(m, StreamTrimmer)]
    assert trimmer.streams == [f"syncd-queue:{q}" for q in registry.queues()]

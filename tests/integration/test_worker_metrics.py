"""The worker's queue gauges on a real Redis (private db), and its /metrics over HTTP.

Consumer groups are driven with raw XREADGROUP/XACK, and entries get explicit ids whose
millisecond part is Redis' own clock minus a known age, so backlog, pending count and lag
are exact.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from taskiq import InMemoryBroker

from syncd.core.settings import Settings
from worker.broker import CONSUMER_GROUP, make_broker
from worker.metrics import (
    MetricsMiddleware,
    QueueCollector,
    WorkerMetrics,
    metrics_from_settings,
    read_queue,
    serve_metrics,
)
from worker.outcomes import DeadLettered
from worker.tasks import registry

STREAM = "syncd-queue:metrics-test"
OTHER = "syncd-queue:metrics-other"
UNREACHABLE = "redis://127.0.0.1:1/0"
Samples = dict[tuple[str, str], float]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def collector(redis_url: str) -> Iterator[QueueCollector]:
    queues = QueueCollector(redis_url, [STREAM, OTHER], CONSUMER_GROUP)
    yield queues
    queues.close()


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def add(client: redis.Redis, *ages_seconds: float, stream: str = STREAM) -> list[str]:
    """Entries whose ids say they were added `age` seconds ago (oldest first)."""
    now = now_ms(client)
    return [
        str(client.xadd(stream, {"data": "x"}, id=f"{now - int(age * 1000)}-{i}"))
        for i, age in enumerate(ages_seconds)
    ]


def deliver(client: redis.Redis, count: int, stream: str = STREAM) -> list[str]:
    got: Any = client.xreadgroup(CONSUMER_GROUP, "c1", {stream: ">"}, count=count)
    return [str(entry_id) for _, entries in got for entry_id, _ in entries]


def collected(queues: QueueCollector) -> Samples:
    return {
        (s.name, s.labels["stream"]): s.value for family in queues.collect() for s in family.samples
    }


def test_backlog_pending_and_lag_of_a_stream(client: redis.Redis) -> None:
    add(client, 60, 50, 40, 30, 20)
    client.xgroup_create(STREAM, CONSUMER_GROUP, id="0")
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert (state.backlog, state.pending) == (5, 0)
    assert 60 <= state.lag_seconds < 62  # the first undelivered entry

    delivered = deliver(client, 2)  # not acknowledged: pending
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert (state.backlog, state.pending) == (3, 2)
    assert 60 <= state.lag_seconds < 62  # now the oldest pending one

    client.xack(STREAM, CONSUMER_GROUP, delivered[0])
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert (state.backlog, state.pending) == (3, 1)
    assert 50 <= state.lag_seconds < 52

    client.xack(STREAM, CONSUMER_GROUP, delivered[1])
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert (state.backlog, state.pending) == (3, 0)
    assert 40 <= state.lag_seconds < 42  # the first entry after the group's cursor

    client.xack(STREAM, CONSUMER_GROUP, *deliver(client, 10))
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert (state.backlog, state.pending, state.lag_seconds) == (0, 0, 0.0)


def test_a_pending_entry_trimmed_away_still_ages_the_queue(client: redis.Redis) -> None:
    add(client, 90, 10)
    client.xgroup_create(STREAM, CONSUMER_GROUP, id="0")
    first, _ = deliver(client, 2)
    client.xtrim(STREAM, minid=first.replace("-0", "-1"), approximate=False)
    assert client.xlen(STREAM) == 1
    state = read_queue(client, STREAM, CONSUMER_GROUP)
    assert state.pending == 2
    assert 90 <= state.lag_seconds < 92  # from the pending id, not from an entry


def test_collector_reports_every_stream(client: redis.Redis, collector: QueueCollector) -> None:
    add(client, 30, 20, 10)
    add(client, 5, stream=OTHER)
    for stream in (STREAM, OTHER):
        client.xgroup_create(stream, CONSUMER_GROUP, id="0")
    deliver(client, 1)

    got = collected(collector)
    assert got[("syncd_worker_queue_backlog", STREAM)] == 2
    assert got[("syncd_worker_queue_pending", STREAM)] == 1
    assert 30 <= got[("syncd_worker_queue_lag_seconds", STREAM)] < 32
    assert got[("syncd_worker_queue_backlog", OTHER)] == 1
    assert got[("syncd_worker_queue_pending", OTHER)] == 0
    assert 5 <= got[("syncd_worker_queue_lag_seconds", OTHER)] < 7
    assert got[("syncd_worker_queue_scrape_errors_total", STREAM)] == 0


def test_a_missing_stream_is_an_empty_queue(collector: QueueCollector) -> None:
    got = collected(collector)
    for stream in (STREAM, OTHER):
        assert got[("syncd_worker_queue_backlog", stream)] == 0
        assert got[("syncd_worker_queue_pending", stream)] == 0
        assert got[("syncd_worker_queue_lag_seconds", stream)] == 0


def test_a_stream_without_the_group_is_a_scrape_error(
    client: redis.Redis, collector: QueueCollector, caplog: pytest.LogCaptureFixture
) -> None:
    add(client, 1)
    client.xgroup_create(STREAM, "someone-else", id="0")
    with caplog.at_level(logging.WARNING, logger="worker.metrics"):
        got = collected(collector)
        collected(collector)  # still failing: no second warning
    assert ("syncd_worker_queue_backlog", STREAM) not in got
    assert ("syncd_worker_queue_backlog", OTHER) in got
    assert collected(collector)[("syncd_worker_queue_scrape_errors_total", STREAM)] == 3
    assert caplog.text.count("cannot read queue") == 1
    assert "no consumer group syncd-workers" in caplog.text


def test_redis_down_omits_the_gauges_and_never_raises() -> None:
    queues = QueueCollector(UNREACHABLE, [STREAM, OTHER], CONSUMER_GROUP, timeout=0.5)
    try:
        got = collected(queues)
        got = collected(queues)
    finally:
        queues.close()
    assert got == {
        ("syncd_worker_queue_scrape_errors_total", STREAM): 2,
        ("syncd_worker_queue_scrape_errors_total", OTHER): 2,
    }


def test_scrape_survives_redis_down_through_the_registry() -> None:
    metrics = WorkerMetrics()
    queues = QueueCollector(UNREACHABLE, [STREAM], CONSUMER_GROUP, timeout=0.5)
    metrics.registry.register(queues)
    try:
        text = metrics.render().decode()
    finally:
        queues.close()
    assert 'syncd_worker_queue_scrape_errors_total{stream="syncd-queue:metrics-test"} 1.0' in text
    assert "syncd_worker_queue_lag_seconds{" not in text


# -- over HTTP -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


async def test_a_worker_process_serves_metrics_and_queue_gauges(
    client: redis.Redis, redis_url: str
) -> None:
    add(client, 12)
    client.xgroup_create(STREAM, CONSUMER_GROUP, id="0")
    port = free_port()
    middleware = MetricsMiddleware(
        port=port,
        host="127.0.0.1",
        redis_url=redis_url,
        streams=[STREAM],
        consumer_group=CONSUMER_GROUP,  # an in-memory broker has none to take it from
    )
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.is_worker_process = True

    @broker.task(task_name="demo.ok")
    async def succeed() -> int:
        return 1

    @broker.task(task_name="demo.poison")
    async def poison() -> None:
        raise DeadLettered("worker died 3 times running it")

    await broker.startup()
    try:
        assert middleware.server is not None
        await succeed.kiq()
        await poison.kiq()
        await broker.wait_all()
        text = scrape(port)
    finally:
        await broker.shutdown()
    assert 'syncd_worker_attempts_total{result="ok",task_type="demo.ok"} 1.0' in text
    assert 'syncd_worker_dead_letters_total{task_type="demo.poison"} 1.0' in text
    assert 'syncd_worker_queue_backlog{stream="syncd-queue:metrics-test"} 1.0' in text
    assert 'syncd_worker_queue_pending{stream="syncd-queue:metrics-test"} 0.0' in text
    assert {"syncd_worker_queue_lag_seconds", "process_cpu_seconds"} <= families(text)
    # Stopped with the worker: the port can be listened on again (SO_REUSEADDR, as servers
    # do: the scrape's connection may linger in TIME_WAIT).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_streams_and_group_come_from_the_broker(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url, worker_metrics_port=0)
    broker = make_broker(registry, settings).with_middlewares(metrics_from_settings(settings))
    middleware = broker.middlewares[-1]
    assert isinstance(middleware, MetricsMiddleware)
    broker.is_worker_process = True
    await broker.startup()
    try:
        queues = middleware.queues
        assert queues is not None
        assert queues.group == CONSUMER_GROUP
        assert set(queues.streams) == {f"syncd-queue:{q}" for q in registry.queues()}
        assert middleware.server is None  # port 0: nothing served
        got = collected(queues)
    finally:
        await broker.shutdown()
    # The broker declared its group on every stream at startup: all readable, all empty.
    for stream in queues.streams:
        assert got[("syncd_worker_queue_backlog", stream)] == 0
        assert got[("syncd_worker_queue_scrape_errors_total", stream)] == 0


def test_process_i_listens_on_port_plus_i(monkeypatch: pytest.MonkeyPatch) -> None:
    base = free_port()
    while base + 2 > 65535:  # pragma: no cover
        base = free_port()

    class Named:
        name = "worker-2"

    monkeypatch.setattr("multiprocessing.current_process", Named)
    middleware = MetricsMiddleware(port=base, host="127.0.0.1")
    server = middleware._serve()
    assert server is not None
    try:
        assert server.port == base + 2
        assert "syncd_worker_attempts" in families(scrape(base + 2))
    finally:
        server.close()


def test_a_taken_port_is_a_warning_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with caplog.at_level(logging.WARNING, logger="worker.metrics"):
            server = serve_metrics(CollectorRegistry(), port, "127.0.0.1")
    assert server is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text

"""Prometheus metrics of a worker process: its attempts, how they ended, and its queues.

`MetricsMiddleware`, added to the broker by `worker.app` (`metrics_from_settings`), counts
every attempt by task type and result (ok, failed, timeout, memory, died, dead_letter),
times it, and keeps a gauge of the attempts running. In a worker process it serves
`/metrics` from a registry of its own on `SYNCD_WORKER_METRICS_PORT` (+ the process index
of `taskiq worker --workers N`) and `SYNCD_WORKER_METRICS_HOST` (loopback by default); a
port already taken is logged and the worker runs on without metrics.

The queue gauges (`QueueCollector`) are read from Redis at scrape time, in the HTTP
server's thread, through a sync client with a short timeout: how many entries of each
served stream the consumer group has not been delivered yet, how many are pending
(delivered, not acknowledged), and the age of the oldest of either. A Redis error omits
that stream's gauges and counts a scrape error; it never fails the scrape. Every process
serving a stream reports the same queue values: aggregate them with `max`, not `sum`.

Like the recorder, the hooks never raise: an exception in a hook would make taskiq deliver
the task again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError
from taskiq_redis import RedisStreamBroker

from syncd.core.settings import Settings
from worker.outcomes import DeadLettered
from worker.runner import ChildDied, MemoryLimitExceeded
from worker.streams import StreamId

logger = logging.getLogger("worker.metrics")

Result = Literal["ok", "failed", "timeout", "memory", "died", "dead_letter"]
RESULTS: tuple[Result, ...] = get_args(Result)
# From a no-op coroutine (~1 ms) to the default deadline of an hour.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
# Like other Prometheus exporters: reachable by the scraper. Restrict it with network policy.
LOOPBACK = "127.0.0.1"
QUEUE_TIMEOUT_SECONDS = 1.0
# Attempts whose post_execute never came (another middleware raised first) must not pile up.
MAX_IN_FLIGHT = 10_000
MAX_CAUSES = 10  # how far down `raise ... from` chains classify() looks
_WORKER_NAME = re.compile(r"worker-(\d+)")


def classify(error: BaseException) -> Result:
    """How a failed attempt ended, from the exception the task (or the runner) raised.

    The runner's own exceptions count also as the explicit cause (`raise ... from`) of what
    reached taskiq: a dead child re-raised as "sent again" is still `died`. TimeoutError
    counts only itself: the runner raises it at an attempt's deadline (and taskiq does for
    a coroutine past its `timeout` label). An exception a blocking task raised in its child
    arrives as a `RemoteError`, so a task's own socket timeout counts as `failed`.
    """
    cause: BaseException | None = error
    for _ in range(MAX_CAUSES):
        if cause is None:
            break
        if isinstance(cause, DeadLettered):
            return "dead_letter"
        if isinstance(cause, MemoryLimitExceeded):
            return "memory"
        if isinstance(cause, ChildDied):
            return "died"
        cause = cause.__cause__
    if isinstance(error, TimeoutError):
        return "timeout"
    return "failed"


def attempt_result(result: TaskiqResult[Any], seen: BaseException | None = None) -> Result:
    """The result label of a finished attempt; `seen` is the exception `on_error` got.

    The retry middleware swaps `result.error` for NoResultError, so the exception seen in
    `on_error` wins; without it `result.error` is the best guess.
    """
    if not result.is_err:
        return "ok"
    error = seen
    if error is None and not isinstance(result.error, NoResultError):
        error = result.error
    return "failed" if error is None else classify(error)


class WorkerMetrics:
    """The attempt metrics of one worker process, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # Counters are exposed with the `_total` suffix prometheus_client appends.
        self.attempts = Counter(
            "syncd_worker_attempts",
            "Finished attempts by task type and result",
            ["task_type", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "syncd_worker_attempt_duration_seconds",
            "Duration of an attempt, from its first to its last middleware hook",
            ["task_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.timeouts = Counter(
            "syncd_worker_timeouts", "Attempts stopped at their deadline", ["task_type"], registry=r
        )
        self.memory_kills = Counter(
            "syncd_worker_memory_kills",
            "Attempts that exceeded the per-attempt memory limit",
            ["task_type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "syncd_worker_dead_letters",
            "Messages given up after too many deliveries without an outcome",
            ["task_type"],
            registry=r,
        )
        self.running = Gauge(
            "syncd_worker_attempts_running",
            "Attempts running in this worker process",
            ["task_type"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_* (CPU, memory, open files), as exporters do

    def declare(self, task_types: Iterable[str]) -> None:
        """Create every series of these task types at 0, so rate() sees the first event."""
        for task_type in task_types:
            for result in RESULTS:
                self.attempts.labels(task_type, result)
            for metric in (self.duration, self.timeouts, self.memory_kills, self.dead_letters):
                metric.labels(task_type)
            self.running.labels(task_type)

    def started(self, task_type: str) -> None:
        self.running.labels(task_type).inc()

    def stopped(self, task_type: str) -> None:
        """An attempt left the running gauge (finished, or its end was never seen)."""
        self.running.labels(task_type).dec()

    def finished(self, task_type: str, result: Result, seconds: float | None) -> None:
        self.attempts.labels(task_type, result).inc()
        if seconds is not None:
            self.duration.labels(task_type).observe(seconds)
        if result == "timeout":
            self.timeouts.labels(task_type).inc()
        elif result == "memory":
            self.memory_kills.labels(task_type).inc()
        elif result == "dead_letter":
            self.dead_letters.labels(task_type).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


# -- the queues ------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueState:
    """One stream as the consumer group sees it."""

    stream: str
    backlog: int | None  # entries not delivered yet; None when Redis cannot tell (after XDEL)
    pending: int  # delivered, not acknowledged
    lag_seconds: float  # age of the oldest entry not acknowledged; 0 when there is none


class MissingGroupError(Exception):
    """The stream exists but the consumer group does not (yet)."""


def read_queue(client: redis.Redis, stream: str, group: str) -> QueueState:
    """Backlog, pending count and lag of `stream` for `group`; `client` decodes responses.

    Stream ids start with the Redis server's clock in milliseconds, and "now" is Redis'
    TIME too, so the lag does not depend on this host's clock. A stream that does not
    exist holds nothing: all zero.
    """
    try:
        groups: Any = client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return QueueState(stream, 0, 0, 0.0)
        raise
    info = next((g for g in groups if g["name"] == group), None)
    if info is None:
        raise MissingGroupError(f"stream {stream} has no consumer group {group}")
    cursor = StreamId.parse(info["last-delivered-id"])
    with client.pipeline(transaction=True) as pipe:
        pipe.xpending(stream, group)
        pipe.xrange(stream, min=str(cursor.next()), max="+", count=1)
        pipe.time()
        pending, undelivered, (seconds, micros) = pipe.execute()
    oldest = [StreamId.parse(entry_id).ms for entry_id, _ in undelivered]
    if pending["pending"]:
        oldest.append(StreamId.parse(pending["min"]).ms)
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    lag = max(0.0, (now_ms - min(oldest)) / 1000) if oldest else 0.0
    backlog = info.get("lag")
    if backlog is None and not undelivered:
        backlog = 0  # nothing after the cursor: certain even when Redis cannot count
    return QueueState(stream, None if backlog is None else int(backlog), pending["pending"], lag)


class QueueCollector(Collector):
    """Queue gauges read from Redis at each scrape; never raises into the scrape."""

    def __init__(
        self,
        redis_url: str,
        streams: Sequence[str],
        group: str,
        *,
        timeout: float = QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        self.streams, self.group = list(streams), group
        # No retries: a scrape should answer within about `timeout`, not after backoffs.
        self._client = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._lock = threading.Lock()  # scrapes may run concurrently, one thread each
        self._errors = dict.fromkeys(self.streams, 0)
        self._failing: set[str] = set()

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        backlog, pending, lag, errors = self._families()
        unreachable: BaseException | None = None
        for stream in self.streams:
            if unreachable is not None:
                self._failed(stream, unreachable)
                continue
            try:
                state = read_queue(self._client, stream, self.group)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                unreachable = exc  # the other streams would wait for the same timeout
                self._failed(stream, exc)
                continue
            except Exception as exc:
                self._failed(stream, exc)
                continue
            self._succeeded(stream)
            if state.backlog is not None:
                backlog.add_metric([stream], state.backlog)
            pending.add_metric([stream], state.pending)
            lag.add_metric([stream], state.lag_seconds)
        with self._lock:
            for stream, count in self._errors.items():
                errors.add_metric([stream], count)
        return [backlog, pending, lag, errors]

    def close(self) -> None:
        self._client.close()

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        labels = ["stream"]
        return (
            GaugeMetricFamily(
                "syncd_worker_queue_backlog",
                "Entries of the stream not delivered to the consumer group yet",
                labels=labels,
            ),
            GaugeMetricFamily(
                "syncd_worker_queue_pending",
                "Entries delivered to the consumer group and not acknowledged",
                labels=labels,
            ),
            GaugeMetricFamily(
                "syncd_worker_queue_lag_seconds",
                "Age of the oldest entry the consumer group has not acknowledged",
                labels=labels,
            ),
            CounterMetricFamily(
                "syncd_worker_queue_scrape_errors",
                "Scrapes that could not read the stream from Redis",
                labels=labels,
            ),
        )

    def _failed(self, stream: str, exc: BaseException) -> None:
        with self._lock:
            self._errors[stream] = self._errors.get(stream, 0) + 1
            first = stream not in self._failing
            self._failing.add(stream)
        level = logging.WARNING if first else logging.DEBUG
        logger.log(level, "worker metrics: cannot read queue %s: %r", stream, exc)

    def _succeeded(self, stream: str) -> None:
        with self._lock:
            if stream not in self._failing:
                return
            self._failing.discard(stream)
        logger.info("worker metrics: queue %s readable again", stream)


# -- the HTTP endpoint -----------------------------------------------------------------


def process_index(name: str | None = None) -> int:
    """Which process of `taskiq worker --workers N` this is: taskiq names them worker-<i>."""
    if name is None:
        name = multiprocessing.current_process().name
    match = _WORKER_NAME.fullmatch(name)
    return int(match.group(1)) if match else 0


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, port: int, host: str) -> MetricsServer | None:
    """Serve the registry on host:port in a daemon thread; None (logged) when it cannot."""
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        logger.warning(
            "worker metrics: cannot listen on %s:%d (%s); running without /metrics",
            host,
            port,
            reason,
        )
        return None
    return MetricsServer(server, thread)


# -- the middleware --------------------------------------------------------------------


@dataclass
class _Started:
    message: TaskiqMessage
    task_type: str
    clock: float
    error: BaseException | None = None


class MetricsMiddleware(TaskiqMiddleware):
    """Counts and times attempts; in a worker process serves them with the queue gauges.

    `port` 0 serves nothing. Process i of `taskiq worker --workers N` listens on
    `port + i`. The streams and the consumer group are those the broker reads, unless
    given (`streams`, `consumer_group`); without a Redis URL there are no queue gauges.
    """

    def __init__(
        self,
        metrics: WorkerMetrics | None = None,
        *,
        port: int = 0,
        host: str = LOOPBACK,
        redis_url: str | None = None,
        streams: Sequence[str] | None = None,
        consumer_group: str | None = None,
        queue_timeout: float = QUEUE_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__()
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.port, self.host = port, host
        self.redis_url, self.streams, self.consumer_group = redis_url, streams, consumer_group
        self.queue_timeout = queue_timeout
        # By message object, like the recorder: the retry middleware rewrites the labels.
        self._in_flight: dict[int, _Started] = {}
        self.server: MetricsServer | None = None
        self.queues: QueueCollector | None = None

    # taskiq hooks: each one catches everything, an exception here would redeliver the task.

    def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        try:
            started = _Started(message, message.task_name, time.monotonic())
            self._in_flight[id(message)] = started
            self.metrics.started(started.task_type)
            if len(self._in_flight) > MAX_IN_FLIGHT:
                lost = self._in_flight.pop(next(iter(self._in_flight)))
                self.metrics.stopped(lost.task_type)
        except Exception:
            logger.exception("worker metrics: pre_execute failed")
        return message

    def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        try:
            key = self._key(message)
            if key is not None:
                self._in_flight[key].error = exception
        except Exception:
            logger.exception("worker metrics: on_error failed")

    def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        try:
            key = self._key(message)
            started = None if key is None else self._in_flight.pop(key)
            if started is None:
                # pre_execute not seen: counted, without a duration.
                self.metrics.finished(message.task_name, attempt_result(result), None)
                return
            self.metrics.stopped(started.task_type)
            seconds = time.monotonic() - started.clock
            self.metrics.finished(started.task_type, attempt_result(result, started.error), seconds)
        except Exception:
            logger.exception("worker metrics: post_execute failed")

    async def startup(self) -> None:
        # Clients (kickers, the scheduler) load the same broker but run no tasks.
        if not self.broker.is_worker_process:
            return
        try:
            self.metrics.declare(self.broker.get_all_tasks())
            if self.queues is None:
                self.queues = self._queue_collector()
            if self.port and self.server is None:
                self.server = self._serve()
        except Exception:
            logger.exception("worker metrics: startup failed; running without /metrics")

    async def shutdown(self) -> None:
        server, self.server = self.server, None
        queues, self.queues = self.queues, None
        try:
            if server is not None:
                await asyncio.to_thread(server.close)
        except Exception:
            logger.exception("worker metrics: could not stop the HTTP server")
        if queues is not None:
            with contextlib.suppress(Exception):
                self.metrics.registry.unregister(queues)
            with contextlib.suppress(Exception):
                queues.close()

    def _key(self, message: TaskiqMessage) -> int | None:
        if id(message) in self._in_flight:
            return id(message)
        # A later middleware replaced the message in pre_execute: find it by task id.
        task_id = message.task_id
        return next((k for k, s in self._in_flight.items() if s.message.task_id == task_id), None)

    def _queue_collector(self) -> QueueCollector | None:
        streams, group = self.streams, self.consumer_group
        broker = self.broker
        if isinstance(broker, RedisStreamBroker):
            if streams is None:
                streams = [broker.queue_name, *broker.additional_streams]
            group = group or broker.consumer_group_name
        if not (self.redis_url and streams and group):
            return None
        collector = QueueCollector(self.redis_url, streams, group, timeout=self.queue_timeout)
        self.metrics.registry.register(collector)
        return collector

    def _serve(self) -> MetricsServer | None:
        port = self.port + process_index()
        if port > 65535:
            logger.warning("worker metrics: port %d is out of range; no /metrics", port)
            return None
        server = serve_metrics(self.metrics.registry, port, self.host)
        if server is not None:
            logger.info("worker metrics: serving /metrics on %s:%d", self.host, server.port)
        return server


def metrics_from_settings(settings: Settings, **options: Any) -> MetricsMiddleware:
    """The metrics middleware a worker adds to its broker: port and Redis from settings."""
    options = {
        "port": settings.worker_metrics_port,
        "host": settings.worker_metrics_host,
        "redis_url": settings.redis_url,
        **options,
    }
    return MetricsMiddleware(**options)

"""The worker's metrics: how attempts are classified, counted and exposed (no server, no Redis)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from taskiq import InMemoryBroker, SimpleRetryMiddleware, TaskiqMessage, TaskiqResult
from taskiq.exceptions import NoResultError

from syncd.core.settings import Settings
from worker.metrics import (
    RESULTS,
    MetricsMiddleware,
    WorkerMetrics,
    attempt_result,
    classify,
    metrics_from_settings,
    process_index,
)
from worker.outcomes import DeadLettered
from worker.runner import ChildDied, MemoryLimitExceeded, remote_error_type


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back: (name, sorted labels) -> value."""
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def attempts(metrics: WorkerMetrics, task_type: str, result: str) -> float | None:
    return value(metrics, "syncd_worker_attempts_total", task_type=task_type, result=result)


def message(task_name: str = "demo.task", task_id: str = "t1") -> TaskiqMessage:
    return TaskiqMessage(task_id=task_id, task_name=task_name, labels={}, args=[], kwargs={})


def ok() -> TaskiqResult[Any]:
    return TaskiqResult(is_err=False, return_value=1, execution_time=0.0)


def failed(error: BaseException) -> TaskiqResult[Any]:
    return TaskiqResult(is_err=True, return_value=None, execution_time=0.0, error=error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError("timed out after 5 s"), "timeout"),
        (MemoryLimitExceeded("exceeded its memory limit of 128 MiB"), "memory"),
        (ChildDied("worker process died"), "died"),
        (ValueError("boom"), "failed"),
        (MemoryError(), "failed"),  # the task's own, not the attempt's limit
        (remote_error_type("TimeoutError")("socket timed out"), "failed"),  # raised by the task
    ],
)
def test_errors_are_classified_by_type(error: BaseException, expected: str) -> None:
    assert classify(error) == expected


def caused_by(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:
        return raised


def test_the_runners_exceptions_count_as_causes_too() -> None:
    # A dead child re-raised as "sent again" (a NoResultError) is still a death.
    assert classify(caused_by(NoResultError(), ChildDied("killed"))) == "died"
    assert classify(caused_by(RuntimeError(), MemoryLimitExceeded())) == "memory"
    # A task wrapping its own timeout failed; only the attempt's deadline is a timeout.
    assert classify(caused_by(ValueError("upstream"), TimeoutError())) == "failed"


def test_the_exception_seen_in_on_error_beats_the_retry_middlewares_replacement() -> None:
    replaced = failed(NoResultError())
    assert attempt_result(replaced, TimeoutError()) == "timeout"
    assert attempt_result(replaced) == "failed"
    assert attempt_result(failed(ChildDied())) == "died"
    assert attempt_result(ok(), ValueError()) == "ok"


def test_exposition_names_every_metric() -> None:
    metrics = WorkerMetrics()
    metrics.declare(["demo.task"])
    metrics.finished("demo.task", "ok", 0.002)
    metrics.finished("demo.task", "timeout", 30.0)
    metrics.finished("demo.task", "memory", 1.5)
    metrics.finished("demo.task", "dead_letter", None)
    text = metrics.render().decode()

    assert 'syncd_worker_attempts_total{result="ok",task_type="demo.task"} 1.0' in text
    assert 'syncd_worker_attempts_total{result="died",task_type="demo.task"} 0.0' in text
    assert 'syncd_worker_timeouts_total{task_type="demo.task"} 1.0' in text
    assert 'syncd_worker_memory_kills_total{task_type="demo.task"} 1.0' in text
    assert 'syncd_worker_dead_letters_total{task_type="demo.task"} 1.0' in text
    assert 'syncd_worker_attempts_total{result="dead_letter",task_type="demo.task"} 1.0' in text
    assert 'syncd_worker_attempts_running{task_type="demo.task"} 0.0' in text
    assert 'syncd_worker_attempt_duration_seconds_count{task_type="demo.task"} 3.0' in text
    # Buckets from a millisecond to an hour.
    bucket = "syncd_worker_attempt_duration_seconds_bucket"
    assert value(metrics, bucket, task_type="demo.task", le="0.001") == 0
    assert value(metrics, bucket, task_type="demo.task", le="0.005") == 1
    assert value(metrics, bucket, task_type="demo.task", le="3600.0") == 3
    for result in RESULTS:
        assert attempts(metrics, "demo.task", result) is not None


def test_the_registry_is_private() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.finished("demo.task", "ok", 0.1)
    assert attempts(second, "demo.task", "ok") is None
    assert b"syncd_reconciles" not in first.render()


def test_hooks_count_time_and_track_running_attempts() -> None:
    middleware = MetricsMiddleware()
    metrics = middleware.metrics
    first, second = message(task_id="a"), message(task_id="b")
    middleware.pre_execute(first)
    middleware.pre_execute(second)
    assert value(metrics, "syncd_worker_attempts_running", task_type="demo.task") == 2

    middleware.post_execute(first, ok())
    error = MemoryLimitExceeded("too big")
    middleware.on_error(second, failed(error), error)
    middleware.post_execute(second, failed(NoResultError()))  # as the retry middleware leaves it

    assert value(metrics, "syncd_worker_attempts_running", task_type="demo.task") == 0
    assert attempts(metrics, "demo.task", "ok") == 1
    assert attempts(metrics, "demo.task", "memory") == 1
    assert value(metrics, "syncd_worker_memory_kills_total", task_type="demo.task") == 1
    count = "syncd_worker_attempt_duration_seconds_count"
    assert value(metrics, count, task_type="demo.task") == 2


def test_a_message_replaced_after_pre_execute_is_found_by_task_id() -> None:
    middleware = MetricsMiddleware()
    middleware.pre_execute(message(task_id="x"))
    middleware.post_execute(message(task_id="x"), failed(ChildDied()))
    assert attempts(middleware.metrics, "demo.task", "died") == 1
    running = value(middleware.metrics, "syncd_worker_attempts_running", task_type="demo.task")
    assert running == 0


def test_an_attempt_without_pre_execute_is_counted_without_duration() -> None:
    middleware = MetricsMiddleware()
    middleware.post_execute(message(), failed(TimeoutError()))
    assert attempts(middleware.metrics, "demo.task", "timeout") == 1
    count = "syncd_worker_attempt_duration_seconds_count"
    assert value(middleware.metrics, count, task_type="demo.task") is None


def test_hooks_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(WorkerMetrics):
        def finished(self, *args: Any) -> None:
            raise RuntimeError("bug")

    middleware = MetricsMiddleware(Broken())
    msg = message()
    with caplog.at_level(logging.ERROR, logger="worker.metrics"):
        assert middleware.pre_execute(msg) is msg
        middleware.post_execute(msg, ok())
    assert "post_execute failed" in caplog.text


def test_a_dead_lettered_attempt_counts_as_a_dead_letter_once() -> None:
    middleware = MetricsMiddleware()
    msg = message()
    middleware.pre_execute(msg)
    error = DeadLettered("worker died 3 times running it")
    middleware.on_error(msg, failed(error), error)
    middleware.post_execute(msg, failed(error))
    metrics = middleware.metrics
    assert attempts(metrics, "demo.task", "dead_letter") == 1
    assert attempts(metrics, "demo.task", "failed") is None
    assert value(metrics, "syncd_worker_dead_letters_total", task_type="demo.task") == 1
    assert value(metrics, "syncd_worker_attempts_running", task_type="demo.task") == 0


@pytest.mark.parametrize(
    ("name", "index"),
    [("worker-0", 0), ("worker-3", 3), ("worker-12", 12), ("MainProcess", 0), ("worker-x", 0)],
)
def test_process_index_from_taskiqs_process_names(name: str, index: int) -> None:
    assert process_index(name) == index


def test_settings_give_port_and_redis() -> None:
    settings = Settings(worker_metrics_port=9999, redis_url="redis://example:6379/3")
    middleware = metrics_from_settings(settings)
    assert (middleware.port, middleware.redis_url) == (9999, "redis://example:6379/3")
    assert Settings().worker_metrics_port == 9465
    assert metrics_from_settings(Settings(worker_metrics_port=0)).port == 0


# -- through a broker ------------------------------------------------------------------


@asynccontextmanager
async def worker(middleware: MetricsMiddleware) -> AsyncIterator[dict[str, Any]]:
    broker = InMemoryBroker()
    broker.is_worker_process = True
    broker.add_middlewares(SimpleRetryMiddleware(default_retry_count=1), middleware)

    @broker.task(task_name="demo.ok")
    async def succeed() -> int:
        await asyncio.sleep(0.01)
        return 1

    @broker.task(task_name="demo.fail")
    async def fail() -> None:
        raise ValueError("boom")

    @broker.task(task_name="demo.slow")
    async def slow() -> None:
        await asyncio.sleep(5)

    @broker.task(task_name="demo.big")
    async def big() -> None:
        raise MemoryLimitExceeded("exceeded its memory limit of 128 MiB")

    await broker.startup()
    try:
        yield {"ok": succeed, "fail": fail, "slow": slow, "big": big}
    finally:
        while broker._running_tasks:
            await broker.wait_all()
            await asyncio.sleep(0)
        await broker.shutdown()


async def test_attempts_through_a_broker_with_retries() -> None:
    middleware = MetricsMiddleware()  # port 0: nothing served
    async with worker(middleware) as tasks:
        await tasks["ok"].kiq()
        await tasks["fail"].kicker().with_labels(max_retries=3, retry_on_error=True).kiq()
        await tasks["slow"].kicker().with_labels(timeout=0.05).kiq()
        await tasks["big"].kiq()
    metrics = middleware.metrics
    assert middleware.server is None
    assert attempts(metrics, "demo.ok", "ok") == 1
    assert attempts(metrics, "demo.fail", "failed") == 3  # every attempt of the retries
    assert attempts(metrics, "demo.slow", "timeout") == 1
    assert value(metrics, "syncd_worker_timeouts_total", task_type="demo.slow") == 1
    assert attempts(metrics, "demo.big", "memory") == 1
    # Declared at startup: every task type has every series, at 0 when nothing happened.
    assert attempts(metrics, "demo.ok", "died") == 0
    assert value(metrics, "syncd_worker_dead_letters_total", task_type="demo.big") == 0
    for task_type in ("demo.ok", "demo.fail", "demo.slow", "demo.big"):
        assert value(metrics, "syncd_worker_attempts_running", task_type=task_type) == 0


async def test_a_client_process_serves_nothing() -> None:
    middleware = MetricsMiddleware(port=1, redis_url="redis://127.0.0.1:1/0")
    broker = InMemoryBroker().with_middlewares(middleware)
    assert not broker.is_worker_process
    await broker.startup()
    try:
        assert middleware.server is None
        assert middleware.queues is None
    finally:
        await broker.shutdown()

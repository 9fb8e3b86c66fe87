"""The TaskIQ broker: Redis streams, one per queue the registry declares, at-least-once.

`make_broker(registry, settings)` builds a `RedisStreamBroker` (the only Redis broker of
taskiq-redis with acks and redelivery) and registers every task of the registry under its task type.
Messages are routed to a queue's stream by the `queue_name` label syncd puts on every
schedule; a worker reads the streams of the queues it serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import (
    AckableMessage,
    AsyncBroker,
    Context,
    SimpleRetryMiddleware,
    TaskiqDepends,
    TaskiqEvents,
    TaskiqState,
)
from taskiq_redis import RedisStreamBroker

from syncd.core.keys import queue_stream
from syncd.core.settings import Settings
from worker.registry import TaskRegistry, TaskType
from worker.runner import Limits, Runner
from worker.streams import StreamTrimmer

logger = logging.getLogger("syncd.worker")
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
CONSUMER_GROUP = "syncd-workers"


class ResilientStreamBroker(RedisStreamBroker):
    """RedisStreamBroker whose `listen` survives Redis going away.

    taskiq-redis's `listen` lets a dropped connection escape, which ends the worker process
    (its tasks in flight are cancelled unrecorded, their messages pending until the idle
    timeout). Here the worker logs, backs off, reconnects, re-declares its consumer group
    (a restarted Redis may have lost it) and goes on; runs in flight finish and ack.
    """

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                async for message in super().listen():
                    delay = RECONNECT_MIN_SECONDS
                    yield message
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("lost Redis (%s); reconnecting in %.1f s", exc, delay)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                logger.warning("consumer group missing (Redis restarted empty?); recreating it")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)
            await self._redeclare_group()

    async def _redeclare_group(self) -> None:
        try:
            await self._declare_consumer_group()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            logger.debug("cannot declare the consumer group yet: %s", exc)


def make_broker(registry: TaskRegistry, settings: Settings | None = None) -> AsyncBroker:
    """A broker with every registered task, reading the configured queues."""
    settings = settings or Settings()
    queues = served_queues(registry, settings.queues)
    broker = ResilientStreamBroker(
        url=settings.redis_url,
        queue_name=queue_stream(queues[0]),
        additional_streams={queue_stream(q): ">" for q in queues[1:]},
        consumer_group_name=CONSUMER_GROUP,
        # "0", not "$": a group created after messages were sent still gets them.
        consumer_id="0",
        # No maxlen: trimming by length silently drops messages nobody consumed yet.
        maxlen=None,
        idle_timeout=settings.idle_timeout_seconds * 1000,
        xread_count=settings.xread_count,
        # Released automatically if the worker holding it dies.
        unacknowledged_lock_timeout=30,
    ).with_middlewares(
        SimpleRetryMiddleware(default_retry_count=1),
        # With maxlen=None this is what keeps the streams bounded: it trims consumed entries only.
        StreamTrimmer(settings.redis_url, [queue_stream(q) for q in queues]),
    )
    runner = Runner(
        Limits(
            concurrency=settings.worker_concurrency,
            per_type=settings.task_type_concurrency,
            memory_mb=settings.task_memory_mb,
            default_timeout=settings.default_timeout_seconds,
        )
    )

    async def stop_children(state: TaskiqState) -> None:
        runner.close()

    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, stop_children)
    for task_type in registry:
        register(broker, task_type, runner)
    return broker


def served_queues(registry: TaskRegistry, wanted: Sequence[str]) -> list[str]:
    declared = registry.queues()
    if not wanted:
        return declared
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; the registry declares {declared}")
    return sorted(set(wanted))


def register(broker: AsyncBroker, task_type: TaskType, runner: Runner) -> None:
    """Register a task type: the kwargs sent are validated into its parameter model.

    A coroutine task runs on the event loop (a timeout cancels it); a blocking one runs in
    a child process of the runner, which can stop it (worker.runner).
    """

    if task_type.is_async:

        async def run(context: Context = TaskiqDepends(), **kwargs: Any) -> Any:
            return await task_type.func(task_type.params.model_validate(kwargs))

    else:

        async def run(context: Context = TaskiqDepends(), **kwargs: Any) -> Any:
            # The child validates the kwargs, where the function runs.
            timeout = context.message.labels.get("timeout")
            return await runner.run(task_type.name, kwargs, timeout)

    run.__name__ = task_type.name.replace(".", "_")
    run.__doc__ = task_type.func.__doc__
    broker.register_task(run, task_name=task_type.name, queue=task_type.queue)

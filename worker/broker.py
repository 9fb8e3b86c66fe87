"""The TaskIQ broker: Redis streams, one per queue the registry declares, at-least-once.

`make_broker(registry, settings)` builds a `StreamConsumer` (worker.consumer: taskiq-redis's
stream broker, the only one with acks and redelivery, with syncd's redelivery, death
counting and hand-back) and registers every task of the registry under its task type.
Messages are routed to a queue's stream by the `queue_name` label syncd puts on every
schedule; a worker reads the streams of the queues it serves. Failed attempts are retried
with backoff (worker.retries); a stop signal gets a bounded, clean shutdown
(worker.shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from taskiq import Context, TaskiqDepends, TaskiqMessage

from syncd.core.keys import queue_stream
from syncd.core.settings import Settings
from worker.consumer import StreamConsumer
from worker.labels import DEATHS_LABEL, label_count
from worker.outcomes import DeadLettered, Requeued
from worker.policy import prepare
from worker.registry import TaskRegistry, TaskType
from worker.retries import BackoffRetryMiddleware
from worker.runner import ChildDied, Limits, Runner
from worker.secrets import redact, redacted_logs
from worker.shutdown import GracefulShutdown
from worker.streams import StreamTrimmer

logger = logging.getLogger("syncd.worker")
CONSUMER_GROUP = "syncd-workers"


def make_broker(registry: TaskRegistry, settings: Settings | None = None) -> StreamConsumer:
    """A broker with every registered task, reading the configured queues."""
    settings = settings or Settings()
    queues = served_queues(registry, settings.queues)
    broker = StreamConsumer(
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
    )
    broker.with_middlewares(
        BackoffRetryMiddleware(),
        # With maxlen=None this is what keeps the streams bounded: it trims consumed entries only.
        StreamTrimmer(settings.redis_url, broker.streams),
    )
    runner = Runner(
        Limits(
            concurrency=settings.worker_concurrency,
            per_type=settings.task_type_concurrency,
            memory_mb=settings.task_memory_mb,
            default_timeout=settings.default_timeout_seconds,
        )
    )
    GracefulShutdown(broker, runner, settings.shutdown_grace_seconds).attach()
    for task_type in registry:
        register(broker, task_type, runner, settings.max_deliveries)
    return broker


def served_queues(registry: TaskRegistry, wanted: Sequence[str]) -> list[str]:
    declared = registry.queues()
    if not wanted:
        return declared
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        raise ValueError(f"unknown queue(s) {unknown}; the registry declares {declared}")
    return sorted(set(wanted))


def register(broker: StreamConsumer, task_type: TaskType, runner: Runner, max_deaths: int) -> None:
    """Register a task type: the kwargs sent are validated into its parameter model.

    A coroutine task runs on the event loop (a timeout cancels it); a blocking one runs in
    a child process of the runner, which can stop it (worker.runner). A message that killed
    its worker `max_deaths` times is dead-lettered instead of run.
    """

    if task_type.is_async:

        async def run(context: Context = TaskiqDepends(), **kwargs: Any) -> Any:
            check_deaths(context.message, max_deaths)
            params, secrets = prepare(task_type.name, task_type.params, kwargs)
            with redacted_logs(secrets):
                return redact(await task_type.func(params), secrets)

    else:

        async def run(context: Context = TaskiqDepends(), **kwargs: Any) -> Any:
            deaths = check_deaths(context.message, max_deaths)
            timeout = context.message.labels.get("timeout")
            try:
                # The child validates the kwargs, where the function runs.
                return await runner.run(task_type.name, kwargs, timeout)
            except ChildDied as exc:
                await send_again(broker, context.message, deaths + 1, max_deaths, exc)
                raise Requeued from exc

    run.__name__ = task_type.name.replace(".", "_")
    run.__doc__ = task_type.func.__doc__
    broker.register_task(run, task_name=task_type.name, queue=task_type.queue)


def check_deaths(message: TaskiqMessage, max_deaths: int) -> int:
    """The deaths this message caused so far; raises DeadLettered at `max_deaths`."""
    deaths = label_count(message.labels, DEATHS_LABEL)
    if deaths >= max_deaths:
        logger.error(
            "task %s (%s) killed its worker %d times: dead-lettered",
            message.task_id,
            message.task_name,
            deaths,
        )
        raise DeadLettered(f"worker died {deaths} time{'s' * (deaths != 1)} running it")
    return deaths


async def send_again(
    broker: StreamConsumer, message: TaskiqMessage, deaths: int, max_deaths: int, exc: Exception
) -> None:
    """A dead child is a death of the attempt: the message goes back with the count raised."""
    logger.warning(
        "task %s (%s): %s; delivering it again (death %d of at most %d)",
        message.task_id,
        message.task_name,
        exc,
        deaths,
        max_deaths,
    )
    await broker.resend(message, 0, {DEATHS_LABEL: deaths})

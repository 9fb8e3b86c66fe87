"""Retries: a failed attempt with retries left is sent again later, with backoff and jitter.

`max_retries` in a taskdef counts retries after the first failure; the `max_retries` label
counts attempts in all (taskdef value + 1), as taskiq's retry middleware did. Retry n (n = 1
for the first) waits

    min(retry_backoff_max, retry_backoff * 2 ** (n - 1)) * uniform(0.5, 1)

("equal jitter": the waits still grow, and tasks that failed together do not all come back
together). The wait is kept in Redis (`StreamConsumer.send_later`), so a worker restart
loses no retry. Each attempt is its own message with the same task id and a higher
`_retries` label: the recorder writes one row per attempt.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from worker.consumer import StreamConsumer
from worker.labels import DEATHS_LABEL, RETRIES_LABEL, label_count, label_seconds
from worker.outcomes import NoRetry

logger = logging.getLogger("syncd.worker")

# Used when a message carries no backoff labels (sent before they existed, or by hand).
DEFAULT_BACKOFF_SECONDS = 5.0
DEFAULT_BACKOFF_MAX_SECONDS = 600.0


def retry_delay(
    retry: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `retry` (1 for the first)."""
    if base <= 0 or cap <= 0:
        return 0.0
    # The exponent is capped so huge retry numbers cannot overflow a float.
    full = min(cap, base * 2.0 ** min(max(retry, 1) - 1, 64))
    return full * (0.5 + 0.5 * rand())


class BackoffRetryMiddleware(TaskiqMiddleware):
    """Sends a failed attempt again after its backoff; never raises into taskiq."""

    async def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        # NoResultError: the attempt has no outcome (its message was sent again already).
        if isinstance(exception, NoResultError | NoRetry):
            return
        try:
            await self._retry(message)
        except Exception:
            logger.exception("could not schedule the retry of task %s", message.task_id)

    async def _retry(self, message: TaskiqMessage) -> None:
        labels = message.labels
        if not _flag(labels.get("retry_on_error")):
            return
        retry = label_count(labels, RETRIES_LABEL) + 1
        attempts = label_count(labels, "max_retries", default=1)
        if retry >= attempts:
            logger.warning("task %s (%s): no retries left", message.task_id, message.task_name)
            return
        base = label_seconds(labels, "retry_backoff", DEFAULT_BACKOFF_SECONDS)
        cap = label_seconds(labels, "retry_backoff_max", DEFAULT_BACKOFF_MAX_SECONDS)
        delay = retry_delay(retry, base, cap)
        consumer = self.broker
        assert isinstance(consumer, StreamConsumer)  # noqa: S101 - make_broker builds it so
        # Deaths count per attempt: the retry starts with none.
        await consumer.resend(message, delay, {RETRIES_LABEL: retry, DEATHS_LABEL: None})
        logger.info(
            "task %s (%s) failed; retry %d of %d in %.1f s",
            message.task_id,
            message.task_name,
            retry,
            attempts - 1,
            delay,
        )


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)

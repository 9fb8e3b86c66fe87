"""Notification tasks: tell people or systems that something happened."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import Field, JsonValue

from schemas.kinds import EgressURL
from worker.egress import post_json
from worker.policy import active_policy
from worker.registry import task
from worker.tasks.params import Params

logger = logging.getLogger("syncd.notification")


class WebhookParams(Params):
    url: EgressURL
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10


@task("notification.webhook", params=WebhookParams, queue="notifications")
def webhook(params: WebhookParams) -> dict[str, int]:
    """POST `payload` as JSON to `url`; anything but a 2xx answer fails the task (and so
    retries).

    The operator policy decides which addresses `url` may reach, here where the worker
    connects (worker.egress): redirects are not followed, and `timeout_seconds` bounds the
    whole request.
    """
    status = post_json(str(params.url), params.payload, params.timeout_seconds, active_policy())
    return {"status": status}


class LogMessageParams(Params):
    message: Annotated[str, Field(min_length=1, max_length=10_000)]
    level: Literal["debug", "info", "warning", "error"] = "info"


@task("notification.log", params=LogMessageParams, queue="notifications")
def log_message(params: LogMessageParams) -> dict[str, str]:
    """Write a message to the worker log (heartbeats, reminders), as one visible line."""
    # Logged as written: the worker's log formatter (syncd.core.logtext.SafeFormatter)
    # escapes it after the secret-redacting filter has seen it, so a secret with a line
    # break is still redacted, and no line break or escape sequence reaches the log.
    logger.log(logging.getLevelNamesMapping()[params.level.upper()], "%s", params.message)
    return {"logged": params.message[:200]}

"""Notification tasks: tell people or systems that something happened."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, JsonValue

from worker.registry import task
from worker.tasks.params import Params

logger = logging.getLogger("syncd.notification")


class WebhookParams(Params):
    url: AnyHttpUrl
    payload: dict[str, JsonValue] = Field(default_factory=dict)
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10


@task("notification.webhook", params=WebhookParams, queue="notifications")
def webhook(params: WebhookParams) -> dict[str, int]:
    """POST `payload` as JSON to `url`; a non-2xx answer fails the task (and so retries)."""
    return {"status": _post_json(str(params.url), params.payload, params.timeout_seconds)}


def _post_json(url: str, payload: dict[str, JsonValue], timeout: float) -> int:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by AnyHttpUrl
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return int(response.status)


class LogMessageParams(Params):
    message: Annotated[str, Field(min_length=1, max_length=10_000)]
    level: Literal["debug", "info", "warning", "error"] = "info"


@task("notification.log", params=LogMessageParams, queue="notifications")
def log_message(params: LogMessageParams) -> dict[str, str]:
    """Write a message to the worker log (heartbeats, reminders)."""
    logger.log(logging.getLevelNamesMapping()[params.level.upper()], "%s", params.message)
    return {"logged": params.message[:200]}

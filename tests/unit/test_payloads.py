"""Schedule payloads and labels: what the scheduler and `syncd run` send for a task."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.core.model import TaskConfig
from syncd.core.payloads import build_schedule, schedule_labels


def config(**overrides: Any) -> TaskConfig:
    base: dict[str, Any] = {
        "name": "nightly",
        "task_type": "reports.build",
        "scheduler_type": "cron",
        "schedule_config": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
        "parameters": {"region": "eu"},
    }
    return TaskConfig(**{**base, **overrides})


def test_labels_of_a_task_with_retries_carry_the_backoff_as_floats() -> None:
    labels = schedule_labels(7, config(max_retries=2, retry_backoff_seconds=0.5), "data")

    assert labels == {
        "config_id": 7,
        "task_name": "nightly",
        "priority": 5,
        "queue": "data",
        "queue_name": "syncd-queue:data",
        "max_retries": 3,
        "retry_on_error": True,
        "retry_backoff": 0.5,
        "retry_backoff_max": 600.0,
    }


def test_backoff_labels_are_floats_even_from_whole_numbers() -> None:
    # taskiq types each label by its Python type: the worker must read floats back.
    labels = schedule_labels(1, config(max_retries=1, retry_backoff_seconds=0), "default")
    labels_max = schedule_labels(1, config(max_retries=1, retry_backoff_max_seconds=90), "x")

    assert type(labels["retry_backoff"]) is float
    assert labels["retry_backoff"] == 0.0
    assert type(labels_max["retry_backoff_max"]) is float
    assert labels_max["retry_backoff_max"] == 90.0


def test_a_task_without_retries_has_no_backoff_labels_whatever_its_backoff() -> None:
    labels = schedule_labels(1, config(retry_backoff_seconds=1, retry_backoff_max_seconds=2), "q")

    assert "retry_backoff" not in labels
    assert "retry_backoff_max" not in labels
    assert labels["retry_on_error"] is False


# The exact bytes syncd registered for this task before the backoff fields existed: a task
# without retries must keep them, or an upgrade would rewrite every schedule.
PAYLOAD_BEFORE_BACKOFF = (
    '{"task_name":"reports.build","labels":{"config_id":3,"task_name":"nightly","priority":5,'
    '"queue":"default","queue_name":"syncd-queue:default","max_retries":1,'
    '"retry_on_error":false,"timeout":600},"args":[],"kwargs":{"region":"eu"},"task_id":null,'
    '"schedule_id":"task_3","cron":"30 2 * * *","cron_offset":"Europe/Berlin","time":null,'
    '"interval":null}'
)


def test_a_payload_without_retries_is_byte_identical_to_the_one_before_backoff() -> None:
    payload = build_schedule(3, config(timeout_seconds=600), "default")

    assert json.dumps(payload, separators=(",", ":")) == PAYLOAD_BEFORE_BACKOFF


@given(
    retries=st.integers(0, 100),
    first=st.floats(0, 86400, allow_nan=False),
    cap=st.floats(0, 86400, allow_nan=False),
)
def test_backoff_labels_exactly_when_retries(retries: int, first: float, cap: float) -> None:
    labels = schedule_labels(
        1,
        config(max_retries=retries, retry_backoff_seconds=first, retry_backoff_max_seconds=cap),
        "q",
    )

    backoff = {k: v for k, v in labels.items() if k.startswith("retry_backoff")}
    assert backoff == ({"retry_backoff": first, "retry_backoff_max": cap} if retries else {})
    assert labels["max_retries"] == retries + 1

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
        "config_hash": config(max_retries=2, retry_backoff_seconds=0.5).content_hash(),
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


REVISION = "0123456789abcdef0123456789abcdef01234567"
# The exact bytes syncd registers for this task: no backoff labels without retries (as
# before they existed), then the content hash and the row's revision (their addition
# rewrote every schedule once, at the first sync after the upgrade).
PAYLOAD = (
    '{"task_name":"reports.build","labels":{"config_id":3,"task_name":"nightly",'
    '"config_hash":"56e6ef679f754cf37b0272d53c8a311805d74da1d73f5b3f91a99d04f106db43",'
    '"priority":5,"queue":"default","queue_name":"syncd-queue:default","max_retries":1,'
    '"retry_on_error":false,"timeout":600,"git_revision":"' + REVISION + '"},"args":[],'
    '"kwargs":{"region":"eu"},"task_id":null,"schedule_id":"task_3","cron":"30 2 * * *",'
    '"cron_offset":"Europe/Berlin","time":null,"interval":null}'
)


def test_a_payload_is_byte_identical_to_the_one_registered() -> None:
    payload = build_schedule(3, config(timeout_seconds=600), "default", revision=REVISION)

    assert json.dumps(payload, separators=(",", ":")) == PAYLOAD


def test_the_labels_say_which_configuration_and_revision_fired() -> None:
    task = config(parameters={"region": "us"})
    labels = schedule_labels(3, task, "default", revision="abc-dirty")

    assert labels["config_hash"] == task.content_hash()
    assert labels["config_hash"] != config().content_hash()
    assert labels["git_revision"] == "abc-dirty"
    # Outside git (no revision) the label is absent, not null.
    assert "git_revision" not in schedule_labels(3, task, "default")


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

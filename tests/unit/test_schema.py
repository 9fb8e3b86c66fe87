"""The committed JSON Schema matches the models, and it accepts/rejects like the models do."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.taskdef import json_schema

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "taskdef.schema.json"


def test_committed_schema_is_current() -> None:
    committed = json.loads(COMMITTED.read_text())
    assert committed == json_schema(), "schemas/taskdef.schema.json is stale: run `make schema`"


def test_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["TaskDef"]["additionalProperties"] is False
    assert schema["$defs"]["CronSchedule"]["additionalProperties"] is False


def test_schema_bounds_priority_and_name() -> None:
    task = json_schema()["$defs"]["TaskDef"]["properties"]
    assert (task["priority"]["minimum"], task["priority"]["maximum"]) == (1, 10)
    assert task["name"]["maxLength"] == 200
    assert ":" not in task["name"]["pattern"]


def test_schema_describes_the_retry_backoff_in_seconds() -> None:
    task = json_schema()["$defs"]["TaskDef"]["properties"]
    first, cap = task["retry_backoff_seconds"], task["retry_backoff_max_seconds"]
    assert (first["type"], first["minimum"], first["maximum"], first["default"]) == (
        "number",
        0,
        86400,
        5.0,
    )
    assert (cap["type"], cap["minimum"], cap["maximum"], cap["default"]) == (
        "number",
        0,
        86400,
        600.0,
    )
    assert "twice as long" in first["description"]
    assert "[0.5, 1]" in first["description"]
    assert "at least retry_backoff_seconds" in cap["description"]


def test_committed_policy_schema_is_current() -> None:
    from schemas.policy import json_schema as policy_schema  # noqa: PLC0415 - this test only

    committed = json.loads((COMMITTED.parent / "policy.schema.json").read_text())
    assert committed == policy_schema(), "schemas/policy.schema.json is stale: run `make schema`"

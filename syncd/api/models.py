"""Pydantic models of the API's responses, for the OpenAPI document.

The routes return the views' JSON as it is (the same objects `syncd status`, `explain`,
`history` and `plan` print); these models describe it for clients and are checked against
real responses by the tests. `extra="allow"`: a view may add a field without breaking them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Reason(_Open):
    code: str
    message: str


class Execution(_Open):
    """One finished attempt, as `syncd history --format json` writes it."""

    id: int | None
    name: str | None
    config_id: int | None
    task_id: str
    attempt: int
    success: bool
    outcome: str
    started_at: str | None
    completed_at: str | None
    duration_seconds: float | None
    error_message: str | None


class RecentRuns(_Open):
    window: int
    runs: int
    ok: int
    success_rate: float | None


class TaskRow(_Open):
    """One task, as `syncd status --format json` writes it, plus configuration and runs."""

    name: str
    config_id: int | None
    location: str | None
    schedule: dict[str, Any]
    status: str | None
    sync_state: str
    sync_detail: list[Reason]
    next_fire: str | None
    next_fire_exact: bool
    next_fire_note: str | None
    last_run: Execution | None
    late: bool
    description: str
    task_type: str
    queue: str
    config: dict[str, Any]
    drift: list[str]
    recent_runs: RecentRuns


class TaskList(_Open):
    count: int
    plan_age_seconds: float
    tasks: list[TaskRow]


class TaskDetail(_Open):
    """`syncd explain NAME` as JSON."""

    name: str
    taskdef: dict[str, Any]
    row: dict[str, Any] | None
    redis: dict[str, Any] | None
    sync_state: str
    sync_detail: list[Reason]
    plan: dict[str, Any]
    schedule: dict[str, Any]
    timezone: str
    next_fire: str | None
    next_fires: list[dict[str, Any]]
    executions: list[Execution]
    audit: list[dict[str, Any]]


class ExecutionPage(_Open):
    executions: list[Execution]
    next: str | None  # the cursor of the next page; None on the last


class PlanReport(_Open):
    """`syncd plan --format json`."""

    format_version: int
    summary: dict[str, int]
    changes: list[dict[str, Any]]
    errors: list[Reason]
    pruning_suspended: bool


class ActionResult(_Open):
    name: str
    action: str
    result: str


class ErrorBody(_Open):
    error: Reason

"""The value types of syncd, and the domain rules that belong to them.

Plain frozen dataclasses, no I/O: the loader and the store adapters build them, the
planner compares them, the views show them. `TaskConfig` is exactly what git owns about
a task and what a `task_configs` row holds; its `content_hash` lets a no-op sync compare
hashes only. Two rules live here and nowhere else: which queue a task type runs on
(`queue_for`) and whether a one-shot's time has passed (`TaskConfig.has_passed`).
`Execution` is one `task_executions` row, written by the worker's recorder and read by
`syncd status`, `explain` and `history`; `AuditEntry` is one `audit_log` row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

from schemas.policy import DEFAULT_POLICY, Policy
from schemas.taskdef import (
    DEFAULT_RETRY_BACKOFF_MAX_SECONDS,
    DEFAULT_RETRY_BACKOFF_SECONDS,
    AtSchedule,
    CronSchedule,
    IntervalSchedule,
    SchedulerType,
    TaskDef,
)

Status = Literal["active", "paused", "inactive"]
DEFAULT_QUEUE = "default"

CONFIG_FIELDS = (
    "description",
    "task_type",
    "scheduler_type",
    "schedule_config",
    "parameters",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "timeout_seconds",
    "priority",
    "enabled",
)
# Fields added after rows were first written: hashed only when they differ from their
# default, so a task that does not use them keeps the content hash it had before they
# existed, and an upgrade is not a change to every task.
HASHED_UNLESS_DEFAULT: Mapping[str, Any] = {
    "retry_backoff_seconds": DEFAULT_RETRY_BACKOFF_SECONDS,
    "retry_backoff_max_seconds": DEFAULT_RETRY_BACKOFF_MAX_SECONDS,
}


@dataclass(frozen=True)
class TaskConfig:
    """A task's configuration as stored in `task_configs` (JSON-safe values only)."""

    name: str
    task_type: str
    scheduler_type: SchedulerType
    schedule_config: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    max_retries: int = 0
    retry_backoff_seconds: float = DEFAULT_RETRY_BACKOFF_SECONDS
    retry_backoff_max_seconds: float = DEFAULT_RETRY_BACKOFF_MAX_SECONDS
    timeout_seconds: int | None = None
    priority: int = 5
    enabled: bool = True

    def content_hash(self) -> str:
        """Stable digest of every field git owns; equal hashes mean nothing to apply."""
        return self._hash

    @cached_property
    def _hash(self) -> str:
        # Cached (the value is immutable) and built without `dataclasses.asdict`, whose deep
        # copies made hashing 10,000 configs the slowest step of a no-op reconcile.
        fields = {name: getattr(self, name) for name in ("name", *CONFIG_FIELDS)}
        for name, default in HASHED_UNLESS_DEFAULT.items():
            if fields[name] == default:
                del fields[name]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def field_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    def at_time(self) -> datetime | None:
        if self.scheduler_type != "date":
            return None
        return datetime.fromisoformat(self.schedule_config["at"])

    def has_passed(self, now: datetime) -> bool:
        """A one-shot whose `at` is not after `now`: it has fired (or never will) and is
        never registered again. Always False for other kinds."""
        at = self.at_time()
        return at is not None and at <= now

    @property
    def is_scheduled(self) -> bool:
        """Has a schedule that should be registered (ignoring expiry and pauses)."""
        return self.enabled and self.scheduler_type != "manual"


def config_from_taskdef(task: TaskDef) -> TaskConfig:
    """The row a taskdef becomes; cron is already normalised by the model."""
    return TaskConfig(
        name=task.name,
        description=task.description,
        task_type=task.task_type,
        scheduler_type=task.scheduler_type,
        schedule_config=schedule_config_of(task),
        parameters=dict(task.parameters),
        max_retries=task.max_retries,
        retry_backoff_seconds=task.retry_backoff_seconds,
        retry_backoff_max_seconds=task.retry_backoff_max_seconds,
        timeout_seconds=task.timeout_seconds,
        priority=task.priority,
        enabled=task.enabled,
    )


def schedule_config_of(task: TaskDef) -> dict[str, Any]:
    schedule = task.schedule
    if isinstance(schedule, CronSchedule):
        return {"cron": schedule.cron, "timezone": schedule.timezone}
    if isinstance(schedule, IntervalSchedule):
        return {"interval": schedule.interval}
    if isinstance(schedule, AtSchedule):
        return {"at": schedule.at.astimezone(UTC).isoformat()}
    return {}


@dataclass(frozen=True)
class DesiredTask:
    config: TaskConfig
    source: str  # file relative to the taskdefs root
    line: int
    path: str  # the file as the user named it

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Desired:
    """What git says, plus which files are broken (their tasks are frozen)."""

    tasks: Mapping[str, DesiredTask]
    broken_sources: frozenset[str] = frozenset()
    queues: Mapping[str, str] = field(default_factory=dict)  # task_type -> queue
    revision: str | None = None

    @property
    def can_prune(self) -> bool:
        """While any file is invalid, nothing at all is deleted (its tasks may only look gone)."""
        return not self.broken_sources

    def queue_for(self, task_type: str) -> str:
        return queue_for(self.queues, task_type)


@dataclass(frozen=True)
class Row:
    """A managed `task_configs` row as read back."""

    id: int
    config: TaskConfig
    stored_hash: str  # the hash written when syncd last applied this row
    source_file: str | None = None
    source_line: int | None = None
    git_revision: str | None = None


@dataclass(frozen=True)
class ScheduleRecord:
    """One schedule id as found in Redis: its data (None if the data key is missing) and
    every index list naming it (a list appears twice if the id is listed twice)."""

    schedule_id: str
    payload: dict[str, Any] | None
    lists: tuple[str, ...] = ()


@dataclass(frozen=True)
class Actual:
    """What PostgreSQL and Redis hold now."""

    rows: Mapping[str, Row]
    schedules: Mapping[str, ScheduleRecord]  # by schedule id, everything under our prefix
    statuses: Mapping[int, str]  # config id -> raw status value
    unmanaged_names: frozenset[str] = frozenset()  # rows syncd must never touch
    foreign_ids: frozenset[int] = frozenset()  # their ids: status keys syncd must not remove


@dataclass(frozen=True)
class TaskCatalog:
    """The worker's registry as data (parameter models and queues by task type), and the
    operator policy taskdefs are checked against."""

    params: Mapping[str, Any]  # task_type -> pydantic model class of its parameters
    queues: Mapping[str, str]
    policy: Policy = DEFAULT_POLICY

    def queue_for(self, task_type: str) -> str:
        return queue_for(self.queues, task_type)


def queue_for(queues: Mapping[str, str], task_type: str) -> str:
    """The queue a task type runs on: the registry's word, else the default queue (a task
    type unknown to this registry is still sent somewhere a worker reads)."""
    return queues.get(task_type, DEFAULT_QUEUE)


@dataclass(frozen=True)
class Execution:
    """One finished attempt: a `task_executions` row.

    The worker's recorder builds it (every field already bounded and storable) and inserts
    it; the read side fills `id` and `name` (the task's current name, joined from its row;
    None once the row is deleted: history is kept) and leaves `result` and the traceback out.
    `task_name`, `config_hash` and `git_revision` are the task as it was when it fired (the
    message's labels); None in rows recorded before they existed.
    """

    config_id: int | None
    task_id: str
    attempt: int
    is_success: bool
    started_at: datetime
    completed_at: datetime
    duration_seconds: float | None
    error_message: str | None
    result: Any = None
    error_traceback: str | None = None
    id: int | None = None
    name: str | None = None
    task_name: str | None = None
    config_hash: str | None = None
    git_revision: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One operator action as `audit_log` holds it: who, from where, what, on which task,
    and how it ended. Strings are as stored (cut to fit); showing them is the reader's job."""

    id: int
    at: datetime
    actor: str
    origin: str
    address: str | None
    action: str
    task_name: str
    result: str
    detail: str

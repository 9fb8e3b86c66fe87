"""The planner: `plan(desired, actual, now) -> Plan`, a pure function (no I/O, no clock).

It decides, per task, what git changed (create / update / delete, field by field), where
the stores drifted from the last applied state (a missing or altered schedule, a
hand-edited row, a missing status key, a stray schedule), and what the operator owns
(a pause is kept). Every write is decided here and carried in the Plan, schedule payloads
included, so rendering and applying are two consumers of one value: a dry run prints the
very value a real run applies. Each drift, note and error carries a stable `code` beside
its sentence; programs (and tests) read the code, people read the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from syncd.core.keys import KeyLayout, schedule_id
from syncd.core.model import (
    CONFIG_FIELDS,
    Actual,
    Desired,
    DesiredTask,
    Row,
    ScheduleRecord,
    TaskConfig,
)
from syncd.core.payloads import build_schedule, index_key

Action = Literal["create", "update", "delete", "noop"]
TaskState = Literal["active", "paused", "inactive", "expired", "frozen", "kept", "deleted"]
ScheduleOp = Literal["put", "remove"]
StatusOp = Literal["active", "paused", "inactive", "delete"]


class DriftCode(StrEnum):
    """How the stores differ from the state syncd last applied."""

    ROW_EDITED = "row_edited"
    SCHEDULE_MISSING = "schedule_missing"
    SCHEDULE_ALTERED = "schedule_altered"
    SCHEDULE_UNLISTED = "schedule_unlisted"
    SCHEDULE_LISTED_TWICE = "schedule_listed_twice"
    SCHEDULE_WRONG_INDEX = "schedule_wrong_index"
    SCHEDULE_UNEXPECTED = "schedule_unexpected"
    STATUS_MISSING = "status_missing"
    STATUS_WRONG = "status_wrong"


class NoteCode(StrEnum):
    """Facts about a task worth showing that are not changes."""

    MOVED = "moved"
    PAUSED = "paused_by_operator"
    AT_PASSED = "at_passed"
    CREATED_UNSCHEDULED = "created_unscheduled"
    FROZEN = "frozen"
    PRUNING_SUSPENDED = "pruning_suspended"


class ErrorCode(StrEnum):
    """Why a plan cannot be applied."""

    NAME_NOT_MANAGED = "name_not_managed"


@dataclass(frozen=True, slots=True)
class Reason:
    """A stable code for programs and the sentence for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, str]:
        return {"code": str(self.code), "message": self.message}


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """Everything that happens to one task; `action` is what git changed.

    Slotted: a plan holds one per task, and the daemon keeps each task's settled plan.

    The writes: `write_row` (with `after`, `source`, `line`), `schedule_op` (with `payload`
    and `current_lists`) and `status_op`. `payload` is None for a task this plan creates:
    its schedule id comes from the row id PostgreSQL assigns, so apply builds the payload
    with `schedule_payload(new_id)` from the same `after`, `queue` and `revision`.
    `revision` is the git revision the task's row holds once the plan is applied (the
    plan's for a row it writes, else the row's own): its payload carries it.
    """

    name: str
    action: Action
    state: TaskState
    config_id: int | None = None
    before: TaskConfig | None = None
    after: TaskConfig | None = None
    changes: tuple[FieldChange, ...] = ()  # an update's changed fields: see field_changes
    drift: tuple[Reason, ...] = ()
    notes: tuple[Reason, ...] = ()
    source: str | None = None
    path: str | None = None
    line: int | None = None
    write_row: bool = False
    schedule_op: ScheduleOp | None = None
    status_op: StatusOp | None = None
    current_lists: tuple[str, ...] = ()
    queue: str | None = None
    payload: dict[str, Any] | None = None
    revision: str | None = None

    @property
    def field_changes(self) -> tuple[FieldChange, ...]:
        """The fields to show: an update's changes, or every field of a created or deleted
        task, built when shown (a plan creating 100,000 tasks would otherwise hold over a
        million of them, about 110 MB)."""
        if self.action == "create" and self.after is not None:
            return tuple(FieldChange(f, None, v) for f, v in self.after.field_values().items())
        if self.action == "delete" and self.before is not None:
            return tuple(FieldChange(f, v, None) for f, v in self.before.field_values().items())
        return self.changes

    @property
    def has_changes(self) -> bool:
        return (
            self.action != "noop"
            or self.write_row
            or self.schedule_op is not None
            or self.status_op is not None
        )

    @property
    def is_drift_only(self) -> bool:
        return self.action == "noop" and self.has_changes

    def schedule_payload(self, config_id: int) -> dict[str, Any] | None:
        """The schedule to register under `config_id` (see the class docstring)."""
        if self.payload is not None:
            return self.payload
        if self.after is None or self.queue is None:
            return None
        return build_schedule(config_id, self.after, self.queue, revision=self.revision)


@dataclass(frozen=True, slots=True)
class StraySchedule:
    """A schedule under our prefix that no managed task owns."""

    schedule_id: str
    lists: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    tasks: tuple[TaskPlan, ...]
    strays: tuple[StraySchedule, ...] = ()
    # Status keys of config ids no row has (left by a sync killed after its PostgreSQL
    # commit, before its Redis writes, or written by hand).
    stray_statuses: tuple[int, ...] = ()
    broken_sources: tuple[str, ...] = ()
    errors: tuple[Reason, ...] = ()  # the plan cannot be applied
    managed_count: int = 0  # managed rows before the sync
    revision: str | None = None  # the git revision stamped on the rows written

    @property
    def changed(self) -> tuple[TaskPlan, ...]:
        return tuple(t for t in self.tasks if t.has_changes)

    @property
    def is_empty(self) -> bool:
        return not self.changed and not self.strays and not self.stray_statuses

    @property
    def pruning_suspended(self) -> bool:
        return bool(self.broken_sources)

    def count(self, action: Action) -> int:
        return sum(1 for t in self.tasks if t.action == action)

    def summary(self) -> dict[str, int]:
        # One pass: the daemon summarises a plan of every task after each reconcile.
        actions = dict.fromkeys(("create", "update", "delete", "noop"), 0)
        states = dict.fromkeys(("frozen", "paused", "expired"), 0)
        drift = 0
        for t in self.tasks:
            actions[t.action] += 1
            if t.state in states:
                states[t.state] += 1
            if t.action == "noop" and t.has_changes:
                drift += 1
        return {
            "create": actions["create"],
            "update": actions["update"],
            "delete": actions["delete"],
            "unchanged": actions["noop"],
            "drift": drift + len(self.strays) + len(self.stray_statuses),
            **states,
            "stray_schedules": len(self.strays),
            "stray_statuses": len(self.stray_statuses),
        }


def plan(desired: Desired, actual: Actual, now: datetime, layout: KeyLayout | None = None) -> Plan:
    """Compare what git wants with what the stores hold; decide every write. Pure."""
    layout = layout or KeyLayout()
    unmanaged = actual.unmanaged_names
    errors = tuple(
        Reason(
            ErrorCode.NAME_NOT_MANAGED,
            f"task name {name!r} belongs to a task_configs row syncd does not manage",
        )
        for name in sorted(desired.tasks)
        if name in unmanaged
    )
    tasks = [
        _plan_desired(task, actual.rows.get(name), actual, desired, now=now, layout=layout)
        for name, task in desired.tasks.items()
        if name not in unmanaged
    ]
    tasks += [
        _plan_absent(row, actual, desired)
        for name, row in actual.rows.items()
        if name not in desired.tasks
    ]
    return Plan(
        tasks=tuple(sorted(tasks, key=lambda t: t.name)),
        strays=_strays(actual, desired) if desired.can_prune else (),
        stray_statuses=_stray_statuses(actual) if desired.can_prune else (),
        broken_sources=tuple(sorted(desired.broken_sources)),
        errors=errors,
        managed_count=len(actual.rows),
        revision=desired.revision,
    )


def _plan_desired(
    task: DesiredTask,
    row: Row | None,
    actual: Actual,
    desired: Desired,
    *,
    now: datetime,
    layout: KeyLayout,
) -> TaskPlan:
    queue = desired.queue_for(task.config.task_type)
    if row is None:
        return _plan_create(task, queue, now, desired.revision)
    git_changed = task.config.content_hash() != row.stored_hash
    drift: list[Reason] = []
    notes: list[Reason] = []
    # Compare values, not hashes: JSONB may hand back 1e20 as an int, equal but hashed apart.
    row_edited = not git_changed and row.config != task.config
    if row_edited:
        edited = [c.field for c in diff_configs(row.config, task.config)]
        drift.append(
            Reason(
                DriftCode.ROW_EDITED, f"row edited in PostgreSQL ({', '.join(edited) or 'hash'})"
            )
        )
    moved = row.source_file is not None and row.source_file != task.source
    if moved:
        notes.append(Reason(NoteCode.MOVED, f"moved from {row.source_file}"))
    write_row = git_changed or row_edited or moved
    # A written row is stamped with the plan's revision, and its payload must carry the
    # same one, or the next sync would see the schedule as altered.
    revision = desired.revision if write_row else row.git_revision
    record = actual.schedules.get(schedule_id(row.id))
    # Drift is judged against the schedule as last applied (the row's own revision).
    applied = _expected_schedule(row.id, task.config, queue, now, row.git_revision)
    schedule_op, schedule_drift = _schedule_op(applied, record, task.config, now, layout)
    expected = applied
    if revision != row.git_revision:
        expected = _expected_schedule(row.id, task.config, queue, now, revision)
        if schedule_op is None and expected is not None:
            schedule_op = "put"  # only the revision label follows the rewritten row: no drift
    status_op, state, status_drift, status_notes = _status(
        task.config, actual.statuses.get(row.id), record, now
    )
    if not git_changed:
        drift += schedule_drift + status_drift
    return TaskPlan(
        name=task.name,
        action="update" if git_changed else "noop",
        state=state,
        config_id=row.id,
        before=row.config,
        after=task.config,
        changes=diff_configs(row.config, task.config) if git_changed else (),
        drift=tuple(drift),
        notes=tuple(notes + status_notes),
        source=task.source,
        path=task.path,
        line=task.line,
        write_row=write_row,
        schedule_op=schedule_op,
        status_op=status_op,
        current_lists=record.lists if record else (),
        queue=queue,
        payload=expected if schedule_op == "put" else None,
        revision=revision,
    )


def _plan_create(task: DesiredTask, queue: str, now: datetime, revision: str | None) -> TaskPlan:
    config = task.config
    expired = config.has_passed(now)
    scheduled = config.is_scheduled and not expired
    notes = (
        (Reason(NoteCode.CREATED_UNSCHEDULED, "'at' has passed: created without a schedule"),)
        if expired
        else ()
    )
    state: TaskState = "active" if scheduled else ("expired" if expired else "inactive")
    return TaskPlan(
        name=task.name,
        action="create",
        state=state,
        after=config,
        notes=notes,
        source=task.source,
        path=task.path,
        line=task.line,
        write_row=True,
        schedule_op="put" if scheduled else None,
        status_op="active" if scheduled else "inactive",
        queue=queue,
        revision=revision,
    )


def _plan_absent(row: Row, actual: Actual, desired: Desired) -> TaskPlan:
    """A managed row git no longer declares: frozen, kept, or deleted."""
    kept = TaskPlan(
        name=row.config.name,
        action="noop",
        state="kept",
        config_id=row.id,
        before=row.config,
        source=row.source_file,
        line=row.source_line,
    )
    if row.source_file in desired.broken_sources:
        note = f"frozen: {row.source_file} has errors; kept as last applied"
        return replace(kept, state="frozen", notes=(Reason(NoteCode.FROZEN, note),))
    if not desired.can_prune:
        note = "not deleted: pruning is suspended while a taskdef file has errors"
        return replace(kept, notes=(Reason(NoteCode.PRUNING_SUSPENDED, note),))
    record = actual.schedules.get(schedule_id(row.id))
    return replace(
        kept,
        action="delete",
        state="deleted",
        write_row=True,
        schedule_op="remove" if record else None,
        status_op="delete" if row.id in actual.statuses else None,
        current_lists=record.lists if record else (),
    )


def _expected_schedule(
    config_id: int, config: TaskConfig, queue: str, now: datetime, revision: str | None
) -> dict[str, Any] | None:
    if not config.is_scheduled or config.has_passed(now):
        return None
    return build_schedule(config_id, config, queue, revision=revision)


def _schedule_op(
    expected: dict[str, Any] | None,
    record: ScheduleRecord | None,
    config: TaskConfig,
    now: datetime,
    layout: KeyLayout,
) -> tuple[ScheduleOp | None, list[Reason]]:
    """What Redis needs for this task's schedule, and the drift that explains it."""
    if expected is None:
        if record is None or config.has_passed(now):
            # An expired one-shot still in Redis is about to be sent and deleted by the
            # scheduler: never drift, never touched.
            return None, []
        message = "schedule registered in Redis though the task is not scheduled"
        return "remove", [Reason(DriftCode.SCHEDULE_UNEXPECTED, message)]
    if record is None or record.payload is None:
        return "put", [Reason(DriftCode.SCHEDULE_MISSING, "schedule missing from Redis")]
    if record.payload != expected:
        return "put", [Reason(DriftCode.SCHEDULE_ALTERED, "schedule altered in Redis")]
    wanted = index_key(layout, expected)
    if record.lists != (wanted,):
        return "put", [_list_drift(record.lists, wanted)]
    return None, []


def _list_drift(lists: tuple[str, ...], wanted: str | None) -> Reason:
    if not lists:
        return Reason(DriftCode.SCHEDULE_UNLISTED, "schedule not listed in any schedule index")
    if lists.count(wanted) > 1 if wanted else False:
        return Reason(DriftCode.SCHEDULE_LISTED_TWICE, "schedule listed more than once")
    return Reason(DriftCode.SCHEDULE_WRONG_INDEX, "schedule listed in the wrong index")


def _status(
    config: TaskConfig,
    current: str | None,
    record: ScheduleRecord | None,
    now: datetime,
) -> tuple[StatusOp | None, TaskState, list[Reason], list[Reason]]:
    """(status to write, resulting state, drift, notes). A pause is the operator's."""
    if current == "paused":
        paused = Reason(NoteCode.PAUSED, "paused by operator: sync keeps it paused")
        return None, "paused", [], [paused]
    if config.has_passed(now):
        notes = [
            Reason(
                NoteCode.AT_PASSED, "'at' has passed: the one-shot schedule has fired (or will not)"
            )
        ]
        if current is None and record is None:
            return "inactive", "expired", [_STATUS_MISSING], notes
        return None, "expired", [], notes
    wanted: Literal["active", "inactive"] = "active" if config.is_scheduled else "inactive"
    state: TaskState = wanted
    if current == wanted:
        return None, state, [], []
    if current is None:
        return wanted, state, [_STATUS_MISSING], []
    wrong = Reason(DriftCode.STATUS_WRONG, f"status {current!r}, expected {wanted!r}")
    return wanted, state, [wrong], []


_STATUS_MISSING = Reason(DriftCode.STATUS_MISSING, "status key missing")


def _strays(actual: Actual, desired: Desired) -> tuple[StraySchedule, ...]:
    owned = {schedule_id(row.id) for row in actual.rows.values()}
    return tuple(
        StraySchedule(sid, record.lists)
        for sid, record in sorted(actual.schedules.items())
        if sid not in owned
    )


def _stray_statuses(actual: Actual) -> tuple[int, ...]:
    known = {row.id for row in actual.rows.values()} | actual.foreign_ids
    return tuple(sorted(cid for cid in actual.statuses if cid not in known))


def diff_configs(before: TaskConfig, after: TaskConfig) -> tuple[FieldChange, ...]:
    """Field-level differences, in a stable order."""
    old, new = before.field_values(), after.field_values()
    return tuple(FieldChange(f, old[f], new[f]) for f in CONFIG_FIELDS if old[f] != new[f])

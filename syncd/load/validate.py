"""Validate one parsed taskdef document and point every error at its line and column.

The file is validated once against the pydantic model of the format (schemas.taskdef);
each task's `task_type` and `parameters` are then checked against the worker's registry,
passed in as data. Errors come back as (line, col, message) using the marks the YAML
parser recorded. A file with any problem yields no tasks (its tasks are frozen).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from schemas.cron import never_fires
from schemas.kinds import validation_context
from schemas.policy import DEFAULT_POLICY, LimitsPolicy, Policy
from schemas.secrets import credential_hints, secret_refs
from schemas.taskdef import CronSchedule, TaskDef, TaskdefFile
from schemas.text import quoted, visible
from syncd.load.yamlsafe import Marks, Position

Loc = tuple[int | str, ...]


@dataclass
class Found:
    problems: list[tuple[int, int, str]] = field(default_factory=list)
    tasks: list[tuple[TaskDef, int]] = field(default_factory=list)
    warnings: list[tuple[int, int, str]] = field(default_factory=list)


def validate_document(
    data: Any,
    marks: Marks,
    task_types: Mapping[str, type[BaseModel]] | None,
    policy: Policy = DEFAULT_POLICY,
) -> Found:
    """Validate a whole file in one pass; a file with any problem yields no tasks.

    The operator policy applies to the parameters (through their kinds, schemas.kinds) and
    to the limits (`limit_problems`)."""
    found = Found()
    if not isinstance(data, dict):
        found.problems.append((1, 1, "a taskdef file is a mapping with 'version: 1' and 'tasks:'"))
        return found
    if (too_big := _oversized(data, marks)) is not None:
        found.problems.append(too_big)
        return found
    try:
        document: TaskdefFile | None = TaskdefFile.model_validate(data)
        errors: list[ErrorDetails] = []
    except ValidationError as exc:
        document, errors = None, exc.errors()
    found.problems.extend(locate(data, marks, (), error) for error in errors)
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list) or any(e["loc"][:1] != ("tasks",) for e in errors):
        return found
    for index, raw in enumerate(raw_tasks):
        found.problems.extend(_check_task_type(index, raw, data, marks, (task_types, policy)))
        found.warnings.extend(_credential_warnings(index, raw, data, marks))
    if document is not None:
        found.problems.extend(limit_problems(document, data, marks, policy.limits))
        found.warnings.extend(_never_firing(document, data, marks))
    if document is not None and not found.problems:
        task_items = marks.items.get(id(raw_tasks), [])
        found.tasks.extend(
            (task, task_items[index].line + 1 if index < len(task_items) else 1)
            for index, task in enumerate(document.tasks)
        )
    return found


# Validation reports every error, and pydantic builds them all: a 1 MB file of 100,000 bad
# items took 550 MB and 6 s. Shapes far beyond any real taskdef are refused up front, once.
MAX_TASKS_PER_FILE = 5_000
MAX_KEYS = 50  # in the file's top mapping and in one task (far beyond the format's keys)
MAX_PARAMETER_KEYS = 1_000


def _oversized(data: dict[Any, Any], marks: Marks) -> tuple[int, int, str] | None:
    if len(data) > MAX_KEYS:
        return 1, 1, f"the file's top mapping has {len(data)} keys; a taskdef file has 2"
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        return None
    if len(tasks) > MAX_TASKS_PER_FILE:
        return (
            _line_of(marks, tasks),
            1,
            (f"{len(tasks)} tasks in one file; at most {MAX_TASKS_PER_FILE}: split the file"),
        )
    for task in tasks:
        if isinstance(task, dict) and (problem := _oversized_task(task, marks)) is not None:
            return problem
    return None


def _oversized_task(task: dict[Any, Any], marks: Marks) -> tuple[int, int, str] | None:
    parameters = task.get("parameters")
    if len(task) > MAX_KEYS:
        allowed = len(TaskDef.model_fields)
        return (
            _line_of(marks, task),
            1,
            f"a task with {len(task)} keys; a task has at most {allowed}",
        )
    if isinstance(parameters, dict) and len(parameters) > MAX_PARAMETER_KEYS:
        return (
            _line_of(marks, parameters),
            1,
            (f"parameters with {len(parameters)} keys; at most {MAX_PARAMETER_KEYS}"),
        )
    return None


def _line_of(marks: Marks, container: object) -> int:
    position = marks.containers.get(id(container))
    return position.line + 1 if position else 1


def _check_task_type(
    index: int,
    raw: Any,
    data: Any,
    marks: Marks,
    rules: tuple[Mapping[str, type[BaseModel]] | None, Policy],
) -> list[tuple[int, int, str]]:
    """Check task_type and parameters against the registry and the policy, even when other
    fields are bad."""
    task_types, policy = rules
    if task_types is None or not isinstance(raw, dict) or not isinstance(raw.get("task_type"), str):
        return []
    base: Loc = ("tasks", index)
    task_type = raw["task_type"]
    model = task_types.get(task_type)
    if model is None:
        known = ", ".join(sorted(task_types)) or "none"
        hint = _did_you_mean(task_type, task_types)
        message = f"unknown task_type {quoted(task_type)}{hint} (known: {known})"
        return [
            _at(data, marks, (*base, "task_type"), _label(base, data) + ".task_type: " + message)
        ]
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        return []  # the format check already says parameters must be a mapping
    try:
        model.model_validate(parameters, context=validation_context(policy, task_type))
    except ValidationError as exc:
        # A secret reference stands for a value only the worker knows: it checks it then.
        refs = [loc for loc, _ in secret_refs(parameters)]
        return [
            locate(data, marks, (*base, "parameters"), e)
            for e in exc.errors()
            if not any(tuple(e["loc"][: len(ref)]) == ref for ref in refs)
        ]
    return []


def _credential_warnings(
    index: int, raw: Any, data: Any, marks: Marks
) -> list[tuple[int, int, str]]:
    parameters = raw.get("parameters") if isinstance(raw, dict) else None
    if not isinstance(parameters, dict):
        return []
    base: Loc = ("tasks", index, "parameters")
    return [
        _at(
            data,
            marks,
            (*base, *loc),
            f"{_label((*base, *loc), data)}: looks like a credential ({why}); put it in a "
            "secret and write {secret: NAME} here (the worker reads SYNCD_SECRET_NAME)",
        )
        for loc, why in credential_hints(parameters)
    ]


def _never_firing(document: TaskdefFile, data: Any, marks: Marks) -> list[tuple[int, int, str]]:
    """A cron no date satisfies (30 February) is valid cron, and almost surely a mistake."""
    warnings = []
    for index, task in enumerate(document.tasks):
        if isinstance(task.schedule, CronSchedule) and (why := never_fires(task.schedule.cron)):
            loc: Loc = ("tasks", index, "schedule", "cron")
            warnings.append(_at(data, marks, loc, f"{_label(loc, data)}: never fires: {why}"))
    return warnings


def limit_problems(
    document: TaskdefFile, data: Any, marks: Marks, limits: LimitsPolicy
) -> list[tuple[int, int, str]]:
    """The operator policy's limits, each at the value that passes it."""
    problems = []
    for index, task in enumerate(document.tasks):
        base: Loc = ("tasks", index)
        for key, message in _over_limits(task, limits):
            loc = (*base, *key)
            problems.append(_at(data, marks, loc, f"{_label(loc, data)}: {message}"))
    return problems


def _over_limits(task: TaskDef, limits: LimitsPolicy) -> list[tuple[Loc, str]]:
    hint = "(operator policy limits.{})"
    found: list[tuple[Loc, str]] = []
    interval = getattr(task.schedule, "interval", None)
    if interval is not None and interval < limits.min_interval_seconds:
        found.append(
            (
                ("schedule", "interval"),
                f"interval {interval} s is below the minimum of {limits.min_interval_seconds} s "
                + hint.format("min_interval_seconds"),
            )
        )
    if task.max_retries > limits.max_retries:
        found.append(
            (
                ("max_retries",),
                f"{task.max_retries} retries; at most {limits.max_retries} "
                + hint.format("max_retries"),
            )
        )
    if task.timeout_seconds is not None and task.timeout_seconds > limits.max_timeout_seconds:
        found.append(
            (
                ("timeout_seconds",),
                f"{task.timeout_seconds} s; at most {limits.max_timeout_seconds} s "
                + hint.format("max_timeout_seconds"),
            )
        )
    size = len(json.dumps(task.parameters, ensure_ascii=False).encode())
    if size > limits.max_parameters_bytes:
        found.append(
            (
                ("parameters",),
                f"parameters are {size} bytes as JSON; at most {limits.max_parameters_bytes} "
                + hint.format("max_parameters_bytes"),
            )
        )
    return found


def locate(data: Any, marks: Marks, prefix: Loc, error: ErrorDetails) -> tuple[int, int, str]:
    loc = _without_schedule_tag((*prefix, *error["loc"]))
    message = _message(error)
    # A missing key is reported at its mapping; naming the key twice reads badly.
    label = _label(loc[:-1] if error["type"] == "missing" else loc, data)
    return _at(data, marks, loc, f"{label}: {message}", on_key=error["type"] == "extra_forbidden")


def _without_schedule_tag(loc: Loc) -> Loc:
    """Drop the discriminator tag pydantic puts after `schedule` (tasks, 0, schedule, cron, ...)."""
    if len(loc) > 3 and loc[0] == "tasks" and loc[2] == "schedule" and loc[3] in SCHEDULE_KINDS:
        return (*loc[:3], *loc[4:])
    return loc


SCHEDULE_KINDS = ("cron", "interval", "at")
FRIENDLY = {
    (
        "name",
        "string_pattern_mismatch",
    ): "a name may hold only letters, digits, '.', '_' and '-', starting with a letter or digit",
    (
        "task_type",
        "string_pattern_mismatch",
    ): "a task_type is a dotted Python-style name such as cleanup.temp_files",
    ("at", "timezone_aware"): "a date-time needs an offset, e.g. 2026-12-01T09:00:00+02:00 or …Z",
}


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    field_name = error["loc"][-1] if error["loc"] else ""
    if kind == "missing":
        return f"missing required key {quoted(field_name)}"
    if kind == "extra_forbidden":
        return f"unknown key {quoted(field_name)}"
    if (friendly := FRIENDLY.get((str(field_name), kind))) is not None:
        return friendly
    if kind == "invalid-json-value":
        found = type(error["input"]).__name__
        return f"a {found} is not a JSON value: quote it to pass it as a string"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _at(
    data: Any, marks: Marks, loc: Loc, message: str, on_key: bool = False
) -> tuple[int, int, str]:
    position = _position_of(data, marks, loc, on_key)
    if on_key and isinstance(loc[-1], str):
        container = _container_at(data, loc[:-1])
        hint = _did_you_mean(loc[-1], _allowed_keys(loc[:-1], container))
        message += hint
    return position.line + 1, position.col + 1, message


def _position_of(data: Any, marks: Marks, loc: Loc, on_key: bool) -> Position:
    """The deepest recorded mark along `loc` (a missing key points at its mapping)."""
    best = marks.containers.get(id(data), Position(0, 0))
    node = data
    for step in loc:
        if isinstance(node, dict) and step in node:
            key_mark, value_mark = marks.keys.get(id(node), {}).get(step, (best, best))
            best = key_mark if on_key and step == loc[-1] else value_mark
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            items = marks.items.get(id(node), [])
            best = items[step] if step < len(items) else best
            node = node[step]
    return best


def _container_at(data: Any, loc: Loc) -> Any:
    node = data
    for step in loc:
        if _has_step(node, step):
            node = node[step]
    return node


def _has_step(node: Any, step: int | str) -> bool:
    if isinstance(node, dict):
        return step in node
    return isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)


LABEL_LIMIT = 60  # characters of a name or key shown in a location label


def _label(loc: Loc, data: Any) -> str:
    """`tasks[2] (nightly-cleanup).schedule.cron`: the path a person can find in the file."""
    parts: list[str] = []
    node = data
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
            node = node[step] if isinstance(node, list) and 0 <= step < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts.append(f" ({visible(node['name'], LABEL_LIMIT)})")
        else:
            key = visible(str(step), LABEL_LIMIT)
            parts.append(f".{key}" if parts else key)
            node = node.get(step) if isinstance(node, dict) else None
    return "".join(parts) or "file"


_KEYS: dict[str, Sequence[str]] = {
    "file": tuple(TaskdefFile.model_fields),
    "task": tuple(TaskDef.model_fields),
    "schedule": ("cron", "timezone", "interval", "at"),
}


def _allowed_keys(loc: Loc, container: Any) -> Sequence[str]:
    if not loc:
        return _KEYS["file"]
    if loc[-1] == "schedule" or (len(loc) >= 2 and loc[-2] == "schedule"):
        return _KEYS["schedule"]
    if isinstance(loc[-1], int) and len(loc) == 2:
        return _KEYS["task"]
    return ()


def _did_you_mean(word: str, choices: Mapping[str, Any] | Sequence[str]) -> str:
    if len(word) > LABEL_LIMIT:  # no key or type is that long; difflib is quadratic
        return ""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {matches[0]!r}?)" if matches else ""

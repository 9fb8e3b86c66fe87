"""Render a Plan for people and programs: terminal text, a pull-request comment, JSON.

Pure functions of the Plan value (DESIGN §2): no I/O, no clock, no environment; colour and
`now` (for the next fire times of changed schedules) are parameters. The JSON shape is the
`--format json` contract of DESIGN §9.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from syncd.firetimes import (
    Instant,
    format_local,
    format_utc,
    is_approximate,
    next_fire_times,
    timezone_of,
)
from syncd.plans import FieldChange, Plan, StraySchedule, TaskPlan
from syncd.state import TaskConfig

FORMAT_VERSION = 1

_NOTED_STATES = frozenset({"frozen", "kept", "paused", "expired"})
_TEXT_VALUE_MAX = 60
_MD_VALUE_MAX = 120
_MAX_KEY_ROWS = 10  # a dict field with more changed keys is shown whole
_MAX_LISTED = 20  # names listed in one markdown warning
_MAX_STRAYS_LISTED = 50
_VERBS = {"create": "create", "update": "update", "delete": "destroy", "noop": "drift"}
_SYMBOLS = {"create": "+", "update": "~", "delete": "-", "noop": "!"}
_COLORS = {"create": "32", "update": "33", "delete": "31", "noop": "35"}
_BOLD, _RED, _YELLOW = "1", "31", "33"
# C0/C1 controls (ESC, CSI, newlines...) and bidi overrides: never reach a terminal or a table.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&@#])")
_MD_STATE_WARNINGS = (
    ("frozen", "Frozen tasks"),
    ("expired", "Expired one-shots, not registered again"),
    ("paused", "Paused by operator, kept paused by sync"),
)
_SUMMARY_COLUMNS = ("create", "update", "delete", "drift", "frozen", "paused", "expired")
FIRE_COUNT = 5  # next fire times shown per side of a schedule change
_SCHEDULE_FIELDS = frozenset({"scheduler_type", "schedule_config", "enabled"})


class _Absent:
    """A dict key present on one side of a change only."""


_ABSENT = _Absent()
Row = tuple[str, Any, Any]  # (label, before, after)


# ---------------------------------------------------------------- shared helpers


def _clean(text: str) -> str:
    """Replace control characters so that no value can move a cursor or break a line."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    except TypeError:  # keys of mixed types cannot be sorted
        return json.dumps(value, ensure_ascii=False, default=str)


def _value(value: Any, limit: int) -> str:
    """A value as compact one-line JSON, shortened to `limit` characters."""
    if isinstance(value, _Absent):
        return "(absent)"
    return _shorten(_clean(_dumps(value)), limit)


def _location(task: TaskPlan) -> str:
    where = task.path or task.source
    if where is None:
        return ""
    return _clean(where if task.line is None else f"{where}:{task.line}")


def _rows(change: FieldChange) -> list[Row]:
    """One row per changed key of a dict field (when few), else one row for the field."""
    before, after = change.before, change.after
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted({*before, *after}, key=str)
        changed = [k for k in keys if before.get(k, _ABSENT) != after.get(k, _ABSENT)]
        if 0 < len(changed) <= _MAX_KEY_ROWS:
            return [
                (f"{change.field}.{k}", before.get(k, _ABSENT), after.get(k, _ABSENT))
                for k in changed
            ]
    return [(change.field, before, after)]


def _config_values(task: TaskPlan, config: TaskConfig | None, side: str) -> dict[str, Any]:
    """The fields of a created (side='after') or deleted (side='before') task."""
    if config is not None:
        return config.field_values()
    return {c.field: getattr(c, side) for c in task.changes}


def _schedule(values: dict[str, Any]) -> str:
    kind, conf = values.get("scheduler_type"), values.get("schedule_config") or {}
    if not isinstance(conf, dict):
        return _value(conf, _TEXT_VALUE_MAX)
    if kind == "cron":
        return f"cron {_value(conf.get('cron'), 40)} ({_clean(str(conf.get('timezone', 'UTC')))})"
    if kind == "interval":
        return f"every {_value(conf.get('interval'), 20)}s"
    if kind == "date":
        return f"once at {_clean(str(conf.get('at')))}"
    if kind == "manual":
        return "manual (no schedule)"
    return _value(conf, _TEXT_VALUE_MAX)


def _key_fields(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("task_type", _value(values.get("task_type"), _TEXT_VALUE_MAX)),
        ("schedule", _schedule(values)),
        ("enabled", _value(values.get("enabled"), _TEXT_VALUE_MAX)),
    ]


def _ops(task: TaskPlan) -> list[str]:
    deleting = task.action == "delete"
    ops = [("delete row" if deleting else "write row")] if task.write_row else []
    if task.schedule_op is not None:
        ops.append(f"{task.schedule_op} schedule")
    if task.status_op == "delete":
        ops.append("delete status key")
    elif task.status_op is not None:
        ops.append(f"status → {task.status_op}")
    return ops


def _no_changes(plan: Plan) -> str:
    tasks = f"{len(plan.tasks)} task{'' if len(plan.tasks) == 1 else 's'}"
    if plan.broken_sources or plan.errors:
        return f"No changes to apply ({tasks}); see the warnings and errors."
    return f"No changes. Taskdefs, PostgreSQL and Redis agree ({tasks})."


def _by_name(tasks: Iterable[TaskPlan]) -> list[TaskPlan]:
    return sorted(tasks, key=lambda t: t.name)


def _with_state(plan: Plan, state: str) -> list[TaskPlan]:
    return _by_name(t for t in plan.tasks if t.state == state)


FireSide = tuple[str, TaskConfig, list[Instant]]  # (before | after, config, fire times)


def _fire_sides(task: TaskPlan, now: Instant | None) -> list[FireSide]:
    """Fire times of a created task, or before and after an update of its schedule.

    Empty when there is no `now`, no schedule change, or neither side is ever scheduled.
    """
    if now is None or task.after is None:
        return []
    if task.action == "create":
        configs = [("after", task.after)]
    elif task.action == "update" and task.before is not None and _schedule_changed(task):
        configs = [("before", task.before), ("after", task.after)]
    else:
        return []
    if not any(config.is_scheduled for _, config in configs):
        return []
    return [(side, c, next_fire_times(c, now, FIRE_COUNT)) for side, c in configs]


def _schedule_changed(task: TaskPlan) -> bool:
    return any(change.field in _SCHEDULE_FIELDS for change in task.changes)


def _never(config: TaskConfig) -> str:
    """Why a side has no fire time at all."""
    if config.scheduler_type == "manual":
        return "never (manual task)"
    if not config.enabled:
        return "never (disabled)"
    if config.scheduler_type == "date":
        return "never ('at' has passed)"
    return "never (the cron expression matches no date)"


def _side_title(side: str, config: TaskConfig) -> str:
    zone = timezone_of(config)
    approx = ", approximate" if is_approximate(config) else ""
    return f"{side} ({zone}{approx})" if zone != "UTC" else f"{side} (UTC{approx})"


def _fire_label(when: Instant, config: TaskConfig) -> str:
    zone = timezone_of(config)
    return format_utc(when) if zone == "UTC" else f"{format_utc(when)} = {format_local(when, zone)}"


def _approx_note(sides: Sequence[FireSide], now: Instant) -> str:
    if not any(is_approximate(config) for _, config, _ in sides):
        return ""
    return (
        f"interval times are estimates counted from {format_utc(now)}: the scheduler counts "
        "from its own last send"
    )


# ---------------------------------------------------------------- text


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def render_text(
    plan: Plan, *, color: bool = False, verbose: bool = False, now: Instant | None = None
) -> str:
    """A terminal report in the spirit of `terraform plan`.

    With `verbose` and `now`, a schedule change lists the next fire times before and after.
    """
    fire_now = now if verbose else None
    blocks = [_text_block(t, color, verbose, fire_now) for t in _by_name(plan.changed)]
    sections = [
        _text_frozen(plan, color),
        _text_kept(plan, color),
        _text_paused(plan, color, verbose),
        _text_expired(plan, color),
        _text_strays(plan, color),
        _text_errors(plan, color),
    ]
    parts = [*blocks, *(s for s in sections if s), _text_summary(plan, color)]
    return "\n\n".join(parts) + "\n"


def _text_block(task: TaskPlan, color: bool, verbose: bool, now: Instant | None = None) -> str:
    code = _COLORS[task.action]
    head = (
        f"{_paint(_SYMBOLS[task.action], code, color)} "
        f"{_paint(f'{_VERBS[task.action]:<7}', code, color)} "
        f"{_paint(_clean(task.name), _BOLD, color)}"
    )
    where = _location(task)
    lines = [f"{head}  ({where})" if where else head]
    lines += [f"    {line}" for line in _text_details(task, verbose)]
    lines += [f"    drift: {_clean(d)}" for d in task.drift]
    lines += [f"    note: {_clean(n)}" for n in task.notes]
    if verbose and _ops(task):
        lines.append(f"    applies: {', '.join(_ops(task))}")
    lines += [f"    {line}" for line in _text_fire_times(task, now)]
    return "\n".join(lines)


def _text_fire_times(task: TaskPlan, now: Instant | None) -> list[str]:
    sides = _fire_sides(task, now)
    lines: list[str] = []
    for side, config, times in sides:
        lines.append(f"next {FIRE_COUNT} fire times {_clean(_side_title(side, config))}:")
        lines += [f"  {_clean(_fire_label(t, config))}" for t in times] or [f"  {_never(config)}"]
    if sides and now is not None and (note := _approx_note(sides, now)):
        lines.append(f"note: {note}")
    return lines


def _text_details(task: TaskPlan, verbose: bool) -> list[str]:
    if task.action == "update":
        return [
            f"{label}: {_value(b, _TEXT_VALUE_MAX)} → {_value(a, _TEXT_VALUE_MAX)}"
            for change in task.changes
            for label, b, a in _rows(change)
        ]
    if task.action not in ("create", "delete"):
        return []
    config, side = (task.after, "after") if task.action == "create" else (task.before, "before")
    values = _config_values(task, config, side)
    if verbose:
        return [f"{field}: {_value(v, _TEXT_VALUE_MAX)}" for field, v in values.items()]
    return [f"{field}: {shown}" for field, shown in _key_fields(values)]


def _text_list(title: str, lines: Sequence[str], code: str, color: bool) -> str:
    if not lines:
        return ""
    return "\n".join([_paint(title, code, color), *(f"  {line}" for line in lines)])


def _named(task: TaskPlan) -> str:
    where = _location(task)
    return f"{_clean(task.name)}  ({where})" if where else _clean(task.name)


def _text_frozen(plan: Plan, color: bool) -> str:
    lines = [
        f"* {_named(t)}: {'; '.join(_clean(n) for n in t.notes)}"
        for t in _with_state(plan, "frozen")
    ]
    files = ", ".join(_clean(f) for f in plan.broken_sources) or "see notes"
    title = f"Frozen (taskdef files with errors: {files}; last applied configuration kept):"
    return _text_list(title, lines, _YELLOW, color)


def _text_kept(plan: Plan, color: bool) -> str:
    kept = _with_state(plan, "kept")
    if not kept and not plan.pruning_suspended:
        return ""
    lines = [f"* {_named(t)}" for t in kept] or ["(no task would have been deleted)"]
    title = "Not deleted: pruning is suspended while a taskdef file has errors:"
    return _text_list(title, lines, _YELLOW, color)


def _text_paused(plan: Plan, color: bool, verbose: bool) -> str:
    paused = _with_state(plan, "paused")
    if not paused:
        return ""
    title = "Paused by operator (sync keeps them paused; `syncd resume` lifts a pause):"
    if verbose:
        return _text_list(title, [f"* {_named(t)}" for t in paused], _BOLD, color)
    return f"{_paint(title, _BOLD, color)} {', '.join(_clean(t.name) for t in paused)}"


def _text_expired(plan: Plan, color: bool) -> str:
    return "\n".join(
        f"{_paint('Warning:', _YELLOW, color)} {_named(t)}: expired one-shot; "
        f"{'; '.join(_clean(n) for n in t.notes) or 'its time has passed'}"
        for t in _with_state(plan, "expired")
    )


def _text_strays(plan: Plan, color: bool) -> str:
    lines = [f"{_paint('-', _COLORS['delete'], color)} {_stray_line(s)}" for s in plan.strays]
    lines += [
        f"{_paint('-', _COLORS['delete'], color)} status key of config {cid} (no such task)"
        for cid in plan.stray_statuses
    ]
    title = "Stray schedules and status keys to remove (no managed task owns them):"
    return _text_list(title, lines, _BOLD, color)


def _stray_line(stray: StraySchedule) -> str:
    lists = ", ".join(_clean(x) for x in stray.lists) or "no index list"
    return f"{_clean(stray.schedule_id)}  (in {lists})"


def _text_errors(plan: Plan, color: bool) -> str:
    return "\n".join(f"{_paint('Error:', _RED, color)} {_clean(e)}" for e in plan.errors)


def _text_summary(plan: Plan, color: bool) -> str:
    s = plan.summary()
    if plan.is_empty:
        line = _no_changes(plan)
    else:
        line = (
            f"{_paint('Plan:', _BOLD, color)} {s['create']} to create, "
            f"{s['update']} to update, {s['delete']} to delete, {s['drift']} drifted."
        )
    if plan.errors:
        line += "\n" + _paint(
            f"The plan has {len(plan.errors)} error(s) and cannot be applied.", _RED, color
        )
    return line


# ---------------------------------------------------------------- markdown

Item = tuple[str, int]  # (markdown, number of changes it shows)


def render_markdown(
    plan: Plan, *, max_chars: int = 60_000, title: str = "syncd plan", now: Instant | None = None
) -> str:
    """A pull-request comment: summary table, warnings, collapsible details; ≤ max_chars.

    With `now`, each created or rescheduled task shows its next fire times before and after.
    """
    head = _md_head(plan, title)
    warnings = _md_section(
        "### ⚠️ Warnings\n\n", _md_warnings(plan), (max_chars - len(head)) // 3, _more_warnings
    )
    details = _md_section(
        "### Changes\n\n",
        _md_items(plan, now),
        max_chars - len(head) - len(warnings),
        _more_changes,
    )
    return _clip((head + warnings + details).rstrip("\n") + "\n", max_chars)


def _md_head(plan: Plan, title: str) -> str:
    counts = plan.summary()
    table = (
        f"| {' | '.join(_SUMMARY_COLUMNS)} |\n"
        f"|{'---:|' * len(_SUMMARY_COLUMNS)}\n"
        f"| {' | '.join(str(counts[c]) for c in _SUMMARY_COLUMNS)} |\n"
    )
    head = f"## {_md_text(_shorten(title, 200))}\n\n{table}\n"
    if plan.is_empty:
        head += f"{_no_changes(plan)}\n\n"
    return head


def _md_section(heading: str, items: Sequence[Item], room: int, more: Callable[[int], str]) -> str:
    if not items:
        return ""
    body = _fill(items, room - len(heading), more)
    return f"{heading}{body}\n" if body else ""


def _fill(items: Sequence[Item], room: int, more: Callable[[int], str]) -> str:
    """As many items as fit in `room` characters, then a line counting the rest.

    The text ends with one newline once rendered, so the last item costs its stripped length.
    """
    total = sum(n for _, n in items)
    reserve = len(more(max(total, 1)))
    out: list[str] = []
    used = shown = 0
    for index, (text, count) in enumerate(items):
        last = index == len(items) - 1
        cost = len(text.rstrip("\n")) + 1 if last else len(text) + reserve
        if used + cost > room:
            return "".join(out) + more(total - shown)
        out.append(text)
        used, shown = used + len(text), shown + count
    return "".join(out)


def _more_changes(count: int) -> str:
    return f"… and {count} more changes not shown\n"


def _more_warnings(count: int) -> str:
    return f"- … and {count} more warnings not shown\n"


def _clip(text: str, max_chars: int) -> str:
    """Last resort when even the fixed parts do not fit (a tiny max_chars)."""
    if len(text) <= max_chars:
        return text
    marker = "\n… (truncated)\n"
    return text[: max(0, max_chars - len(marker))] + marker[:max_chars]


def _md_text(text: str) -> str:
    """Plain text safe in markdown: no formatting, links, HTML or table breaks."""
    return _MD_SPECIAL.sub(r"\\\1", _clean(text))


def _code(text: str) -> str:
    """A code span that holds any text, backticks included."""
    text = _clean(text)
    runs = [len(r) for r in re.findall("`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if not text or text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    """A code span inside a table cell: GFM splits cells on `|` even inside code spans."""
    return _code(text).replace("|", "\\|")


def _md_names(tasks: Sequence[TaskPlan]) -> str:
    names = ", ".join(_code(_shorten(t.name, 80)) for t in tasks[:_MAX_LISTED])
    extra = len(tasks) - _MAX_LISTED
    return names + (f" and {extra} more" if extra > 0 else "")


def _md_warnings(plan: Plan) -> list[Item]:
    items = [
        f"- **Frozen:** {_code(_shorten(f, 200))} has errors; its tasks keep their last "
        f"applied configuration.\n"
        for f in plan.broken_sources
    ]
    if plan.pruning_suspended:
        kept = _with_state(plan, "kept")
        items.append(
            "- **Pruning suspended** while a taskdef file has errors: nothing is "
            f"deleted ({len(kept)} task(s) kept). {_md_names(kept)}\n"
        )
    for state, label in _MD_STATE_WARNINGS:
        tasks = _with_state(plan, state)
        if tasks:
            items.append(f"- **{label} ({len(tasks)}):** {_md_names(tasks)}\n")
    items += [f"- ❌ **Error:** {_md_text(_shorten(e, 500))}\n" for e in plan.errors]
    return [(text, 1) for text in items]


def _md_items(plan: Plan, now: Instant | None = None) -> list[Item]:
    items = [(_md_block(t, now), 1) for t in _by_name(plan.changed)]
    if plan.strays:
        items.append((_md_strays(plan.strays), len(plan.strays)))
    return items


def _md_block(task: TaskPlan, now: Instant | None = None) -> str:
    where = _location(task)
    summary = (
        f"<code>{_SYMBOLS[task.action]}</code> {_VERBS[task.action]} "
        f"<b>{html.escape(_shorten(_clean(task.name), 200))}</b>"
    )
    if where:
        summary += f" — <code>{html.escape(_shorten(where, 200))}</code>"
    bullets = [f"- drift: {_md_text(_shorten(d, 300))}" for d in task.drift]
    bullets += [f"- note: {_md_text(_shorten(n, 300))}" for n in task.notes]
    parts = [
        _md_table(task),
        _md_fire_times(task, now),
        "\n".join(bullets) + "\n" if bullets else "",
    ]
    if _ops(task):
        parts.append(f"Applies: {', '.join(_ops(task))}.\n")
    inner = "\n".join(part for part in parts if part)
    return f"<details><summary>{summary}</summary>\n\n{inner}\n</details>\n\n"


def _md_table(task: TaskPlan) -> str:
    if task.action == "update":
        rows = [(label, b, a) for change in task.changes for label, b, a in _rows(change)]
        if not rows:
            return ""
        lines = ["| field | before | after |", "|---|---|---|"]
        lines += [
            f"| {_cell(label)} | {_cell(_value(b, _MD_VALUE_MAX))} | "
            f"{_cell(_value(a, _MD_VALUE_MAX))} |"
            for label, b, a in rows
        ]
        return "\n".join(lines) + "\n"
    if task.action not in ("create", "delete"):
        return ""
    config, side = (task.after, "after") if task.action == "create" else (task.before, "before")
    values = _config_values(task, config, side)
    lines = ["| field | value |", "|---|---|"]
    lines += [f"| {_cell(f)} | {_cell(_value(v, _MD_VALUE_MAX))} |" for f, v in values.items()]
    return "\n".join(lines) + "\n" if values else ""


def _md_fire_times(task: TaskPlan, now: Instant | None) -> str:
    """A table of the next fire times: one UTC column per side, plus its declared zone's."""
    sides = _fire_sides(task, now)
    if not sides or now is None:
        return ""
    headers: list[str] = []
    columns: list[list[str]] = []
    for side, config, times in sides:
        zone = timezone_of(config)
        approx = ", approximate" if is_approximate(config) else ""
        headers.append(f"{side}, UTC{approx}")
        columns.append([format_utc(t) for t in times] or [_never(config)])
        if zone != "UTC":
            headers.append(f"{side}, {zone}")
            columns.append([format_local(t, zone) for t in times] or [""])
    rows = [
        f"| {i + 1} | " + " | ".join(_md_text(c[i]) if i < len(c) else "" for c in columns) + " |"
        for i in range(max(len(c) for c in columns))
    ]
    lines = [
        f"Next {FIRE_COUNT} fire times (from {format_utc(now)}):",
        "",
        "| # | " + " | ".join(_md_text(h) for h in headers) + " |",
        "|---:|" + "---|" * len(headers),
        *rows,
    ]
    if note := _approx_note(sides, now):
        lines += ["", f"_{_md_text(note)}_"]
    return "\n".join(lines) + "\n"


def _md_strays(strays: Sequence[StraySchedule]) -> str:
    lines = [
        f"- {_code(_shorten(s.schedule_id, 100))} in "
        f"{', '.join(_code(_shorten(x, 100)) for x in s.lists) or 'no index list'}"
        for s in strays[:_MAX_STRAYS_LISTED]
    ]
    if len(strays) > _MAX_STRAYS_LISTED:
        lines.append(f"- … and {len(strays) - _MAX_STRAYS_LISTED} more")
    summary = f"<code>-</code> remove {len(strays)} stray schedule(s) no managed task owns"
    return f"<details><summary>{summary}</summary>\n\n" + "\n".join(lines) + "\n\n</details>\n\n"


# ---------------------------------------------------------------- json


def render_json(plan: Plan) -> dict[str, Any]:
    """The `--format json` object of DESIGN §9 (JSON-safe; the caller dumps it)."""
    return {
        "format_version": FORMAT_VERSION,
        "summary": plan.summary(),
        "changes": [_json_task(t) for t in _by_name(plan.tasks) if _reported(t)],
        "frozen_files": list(plan.broken_sources),
        "strays": [{"schedule_id": s.schedule_id, "lists": list(s.lists)} for s in plan.strays],
        "stray_statuses": list(plan.stray_statuses),
        "errors": list(plan.errors),
        "pruning_suspended": plan.pruning_suspended,
    }


def _reported(task: TaskPlan) -> bool:
    return task.has_changes or bool(task.notes) or task.state in _NOTED_STATES


def _json_task(task: TaskPlan) -> dict[str, Any]:
    return {
        "name": task.name,
        "action": task.action,
        "state": task.state,
        "config_id": task.config_id,
        "source": task.source,
        "path": task.path,
        "line": task.line,
        "changes": [
            {"field": c.field, "before": _json_safe(c.before), "after": _json_safe(c.after)}
            for c in task.changes
        ],
        "drift": list(task.drift),
        "notes": list(task.notes),
        "schedule_op": task.schedule_op,
        "status_op": task.status_op,
    }


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return str(value)

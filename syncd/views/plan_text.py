"""A Plan as a terminal report, in the spirit of `terraform plan`: `render_text(plan)`.

Pure: colour, verbosity and `now` (for the fire times of changed schedules) are
parameters. Every user string goes through `views.text.clean`.
"""

from __future__ import annotations

from collections.abc import Sequence

from syncd.core.firetimes import Instant
from syncd.core.plan import Plan, StraySchedule, TaskPlan
from syncd.views.plan_parts import (
    FIRE_COUNT,
    SYMBOLS,
    TEXT_VALUE_MAX,
    VERBS,
    approx_note,
    by_name,
    change_rows,
    config_values,
    fire_label,
    fire_sides,
    key_fields,
    never,
    no_changes,
    ops,
    side_title,
    value_text,
    where_text,
    with_state,
)
from syncd.views.text import clean

COLORS = {"create": "32", "update": "33", "delete": "31", "noop": "35"}
_BOLD, _RED, _YELLOW = "1", "31", "33"


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def render_text(
    plan: Plan, *, color: bool = False, verbose: bool = False, now: Instant | None = None
) -> str:
    """A terminal report in the spirit of `terraform plan`.

    With `verbose` and `now`, a schedule change lists the next fire times before and after.
    """
    fire_now = now if verbose else None
    blocks = [_text_block(t, color, verbose, fire_now) for t in by_name(plan.changed)]
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
    code = COLORS[task.action]
    head = (
        f"{_paint(SYMBOLS[task.action], code, color)} "
        f"{_paint(f'{VERBS[task.action]:<7}', code, color)} "
        f"{_paint(clean(task.name), _BOLD, color)}"
    )
    where = where_text(task)
    lines = [f"{head}  ({where})" if where else head]
    lines += [f"    {line}" for line in _text_details(task, verbose)]
    lines += [f"    drift: {clean(d.message)}" for d in task.drift]
    lines += [f"    note: {clean(n.message)}" for n in task.notes]
    if verbose and ops(task):
        lines.append(f"    applies: {', '.join(ops(task))}")
    lines += [f"    {line}" for line in _text_fire_times(task, now)]
    return "\n".join(lines)


def _text_fire_times(task: TaskPlan, now: Instant | None) -> list[str]:
    sides = fire_sides(task, now)
    lines: list[str] = []
    for side, config, times in sides:
        lines.append(f"next {FIRE_COUNT} fire times {clean(side_title(side, config))}:")
        lines += [f"  {clean(fire_label(t, config))}" for t in times] or [f"  {never(config)}"]
    if sides and now is not None and (note := approx_note(sides, now)):
        lines.append(f"note: {note}")
    return lines


def _text_details(task: TaskPlan, verbose: bool) -> list[str]:
    if task.action == "update":
        return [
            # a label names a key of a dict field: the taskdef's key, so cleaned too
            f"{clean(label)}: {value_text(b, TEXT_VALUE_MAX)} → {value_text(a, TEXT_VALUE_MAX)}"
            for change in task.field_changes
            for label, b, a in change_rows(change)
        ]
    if task.action not in ("create", "delete"):
        return []
    config, side = (task.after, "after") if task.action == "create" else (task.before, "before")
    values = config_values(task, config, side)
    if verbose:
        return [f"{field}: {value_text(v, TEXT_VALUE_MAX)}" for field, v in values.items()]
    return [f"{field}: {shown}" for field, shown in key_fields(values)]


def _text_list(title: str, lines: Sequence[str], code: str, color: bool) -> str:
    if not lines:
        return ""
    return "\n".join([_paint(title, code, color), *(f"  {line}" for line in lines)])


def _named(task: TaskPlan) -> str:
    where = where_text(task)
    return f"{clean(task.name)}  ({where})" if where else clean(task.name)


def _text_frozen(plan: Plan, color: bool) -> str:
    lines = [
        f"* {_named(t)}: {'; '.join(clean(n.message) for n in t.notes)}"
        for t in with_state(plan, "frozen")
    ]
    files = ", ".join(clean(f) for f in plan.broken_sources) or "see notes"
    title = f"Frozen (taskdef files with errors: {files}; last applied configuration kept):"
    return _text_list(title, lines, _YELLOW, color)


def _text_kept(plan: Plan, color: bool) -> str:
    kept = with_state(plan, "kept")
    if not kept and not plan.pruning_suspended:
        return ""
    lines = [f"* {_named(t)}" for t in kept] or ["(no task would have been deleted)"]
    title = "Not deleted: pruning is suspended while a taskdef file has errors:"
    return _text_list(title, lines, _YELLOW, color)


def _text_paused(plan: Plan, color: bool, verbose: bool) -> str:
    paused = with_state(plan, "paused")
    if not paused:
        return ""
    title = "Paused by operator (sync keeps them paused; `syncd resume` lifts a pause):"
    if verbose:
        return _text_list(title, [f"* {_named(t)}" for t in paused], _BOLD, color)
    return f"{_paint(title, _BOLD, color)} {', '.join(clean(t.name) for t in paused)}"


def _text_expired(plan: Plan, color: bool) -> str:
    return "\n".join(
        f"{_paint('Warning:', _YELLOW, color)} {_named(t)}: expired one-shot; "
        f"{'; '.join(clean(n.message) for n in t.notes) or 'its time has passed'}"
        for t in with_state(plan, "expired")
    )


def _text_strays(plan: Plan, color: bool) -> str:
    lines = [f"{_paint('-', COLORS['delete'], color)} {_stray_line(s)}" for s in plan.strays]
    lines += [
        f"{_paint('-', COLORS['delete'], color)} status key of config {cid} (no such task)"
        for cid in plan.stray_statuses
    ]
    title = "Stray schedules and status keys to remove (no managed task owns them):"
    return _text_list(title, lines, _BOLD, color)


def _stray_line(stray: StraySchedule) -> str:
    lists = ", ".join(clean(x) for x in stray.lists) or "no index list"
    return f"{clean(stray.schedule_id)}  (in {lists})"


def _text_errors(plan: Plan, color: bool) -> str:
    return "\n".join(f"{_paint('Error:', _RED, color)} {clean(e.message)}" for e in plan.errors)


def _text_summary(plan: Plan, color: bool) -> str:
    s = plan.summary()
    if plan.is_empty:
        line = no_changes(plan)
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

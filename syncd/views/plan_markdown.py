"""A Plan as a pull-request comment: summary table, warnings, collapsible details.

`render_markdown(plan, max_chars=...)` never exceeds `max_chars` (a comment has a size
limit): what does not fit is counted, not cut mid-line. Every user string is escaped for
markdown and HTML (`_md_text`, `_code`, `_cell`) after `views.text.clean`. Pure.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence

from syncd.core.firetimes import Instant, is_approximate, timezone_of
from syncd.core.plan import Plan, StraySchedule, TaskPlan
from syncd.core.problems import Problem
from syncd.views.plan_parts import (
    FIRE_COUNT,
    MD_VALUE_MAX,
    SYMBOLS,
    VERBS,
    approx_note,
    by_name,
    change_rows,
    config_values,
    fire_sides,
    never,
    no_changes,
    ops,
    value_text,
    where_text,
    with_state,
)
from syncd.views.text import clean, format_local, format_minute, shorten

_MAX_LISTED = 20  # names listed in one markdown warning
_MAX_STRAYS_LISTED = 50
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&@#])")
_MD_STATE_WARNINGS = (
    ("frozen", "Frozen tasks"),
    ("expired", "Expired one-shots, not registered again"),
    ("paused", "Paused by operator, kept paused by sync"),
)
_SUMMARY_COLUMNS = ("create", "update", "delete", "drift", "frozen", "paused", "expired")

Item = tuple[str, int]  # (markdown, number of changes it shows)


def render_markdown(
    plan: Plan,
    *,
    max_chars: int = 60_000,
    title: str = "syncd plan",
    now: Instant | None = None,
    problems: Sequence[Problem] = (),
) -> str:
    """A pull-request comment: summary table, taskdef problems, warnings, collapsible
    details; ≤ max_chars.

    With `now`, each created or rescheduled task shows its next fire times before and after.
    `problems` (the loader's, policy violations included) are listed where they are.
    """
    head = _md_head(plan, title)
    if problems:
        head += _md_section(
            "### ❌ Taskdef problems\n\n",
            [(_md_problem(p), 1) for p in problems],
            (max_chars - len(head)) // 3,
            _more_warnings,
        )
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
    head = f"## {_md_text(shorten(title, 200))}\n\n{table}\n"
    if plan.is_empty:
        head += f"{no_changes(plan)}\n\n"
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
    return _MD_SPECIAL.sub(r"\\\1", clean(text))


def _code(text: str) -> str:
    """A code span that holds any text, backticks included."""
    text = clean(text)
    runs = [len(r) for r in re.findall("`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if not text or text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    """A code span inside a table cell: GFM splits cells on `|` even inside code spans."""
    return _code(text).replace("|", "\\|")


def _md_names(tasks: Sequence[TaskPlan]) -> str:
    names = ", ".join(_code(shorten(t.name, 80)) for t in tasks[:_MAX_LISTED])
    extra = len(tasks) - _MAX_LISTED
    return names + (f" and {extra} more" if extra > 0 else "")


def _md_problem(problem: Problem) -> str:
    where = f"{shorten(problem.path, 200)}:{problem.line}:{problem.col}"
    label = "warning: " if problem.severity == "warning" else ""
    return f"- {_code(where)} {label}{_md_text(shorten(problem.message, 500))}\n"


def _md_warnings(plan: Plan) -> list[Item]:
    items = [
        f"- **Frozen:** {_code(shorten(f, 200))} has errors; its tasks keep their last "
        f"applied configuration.\n"
        for f in plan.broken_sources
    ]
    if plan.pruning_suspended:
        kept = with_state(plan, "kept")
        items.append(
            "- **Pruning suspended** while a taskdef file has errors: nothing is "
            f"deleted ({len(kept)} task(s) kept). {_md_names(kept)}\n"
        )
    for state, label in _MD_STATE_WARNINGS:
        tasks = with_state(plan, state)
        if tasks:
            items.append(f"- **{label} ({len(tasks)}):** {_md_names(tasks)}\n")
    items += [f"- ❌ **Error:** {_md_text(shorten(e.message, 500))}\n" for e in plan.errors]
    return [(text, 1) for text in items]


def _md_items(plan: Plan, now: Instant | None = None) -> list[Item]:
    items = [(_md_block(t, now), 1) for t in by_name(plan.changed)]
    if plan.strays:
        items.append((_md_strays(plan.strays), len(plan.strays)))
    return items


def _md_block(task: TaskPlan, now: Instant | None = None) -> str:
    where = where_text(task)
    summary = (
        f"<code>{SYMBOLS[task.action]}</code> {VERBS[task.action]} "
        f"<b>{html.escape(shorten(clean(task.name), 200))}</b>"
    )
    if where:
        summary += f" — <code>{html.escape(shorten(where, 200))}</code>"
    bullets = [f"- drift: {_md_text(shorten(d.message, 300))}" for d in task.drift]
    bullets += [f"- note: {_md_text(shorten(n.message, 300))}" for n in task.notes]
    parts = [
        _md_table(task),
        _md_fire_times(task, now),
        "\n".join(bullets) + "\n" if bullets else "",
    ]
    if ops(task):
        parts.append(f"Applies: {', '.join(ops(task))}.\n")
    inner = "\n".join(part for part in parts if part)
    return f"<details><summary>{summary}</summary>\n\n{inner}\n</details>\n\n"


def _md_table(task: TaskPlan) -> str:
    if task.action == "update":
        rows = [
            (label, b, a) for change in task.field_changes for label, b, a in change_rows(change)
        ]
        if not rows:
            return ""
        lines = ["| field | before | after |", "|---|---|---|"]
        lines += [
            f"| {_cell(label)} | {_cell(value_text(b, MD_VALUE_MAX))} | "
            f"{_cell(value_text(a, MD_VALUE_MAX))} |"
            for label, b, a in rows
        ]
        return "\n".join(lines) + "\n"
    if task.action not in ("create", "delete"):
        return ""
    config, side = (task.after, "after") if task.action == "create" else (task.before, "before")
    values = config_values(task, config, side)
    lines = ["| field | value |", "|---|---|"]
    lines += [f"| {_cell(f)} | {_cell(value_text(v, MD_VALUE_MAX))} |" for f, v in values.items()]
    return "\n".join(lines) + "\n" if values else ""


def _md_fire_times(task: TaskPlan, now: Instant | None) -> str:
    """A table of the next fire times: one UTC column per side, plus its declared zone's."""
    sides = fire_sides(task, now)
    if not sides or now is None:
        return ""
    headers: list[str] = []
    columns: list[list[str]] = []
    for side, config, times in sides:
        zone = timezone_of(config)
        approx = ", approximate" if is_approximate(config) else ""
        headers.append(f"{side}, UTC{approx}")
        columns.append([format_minute(t) for t in times] or [never(config)])
        if zone != "UTC":
            headers.append(f"{side}, {zone}")
            columns.append([format_local(t, zone) for t in times] or [""])
    rows = [
        f"| {i + 1} | " + " | ".join(_md_text(c[i]) if i < len(c) else "" for c in columns) + " |"
        for i in range(max(len(c) for c in columns))
    ]
    lines = [
        f"Next {FIRE_COUNT} fire times (from {format_minute(now)}):",
        "",
        "| # | " + " | ".join(_md_text(h) for h in headers) + " |",
        "|---:|" + "---|" * len(headers),
        *rows,
    ]
    if note := approx_note(sides, now):
        lines += ["", f"_{_md_text(note)}_"]
    return "\n".join(lines) + "\n"


def _md_strays(strays: Sequence[StraySchedule]) -> str:
    lines = [
        f"- {_code(shorten(s.schedule_id, 100))} in "
        f"{', '.join(_code(shorten(x, 100)) for x in s.lists) or 'no index list'}"
        for s in strays[:_MAX_STRAYS_LISTED]
    ]
    if len(strays) > _MAX_STRAYS_LISTED:
        lines.append(f"- … and {len(strays) - _MAX_STRAYS_LISTED} more")
    summary = f"<code>-</code> remove {len(strays)} stray schedule(s) no managed task owns"
    return f"<details><summary>{summary}</summary>\n\n" + "\n".join(lines) + "\n\n</details>\n\n"

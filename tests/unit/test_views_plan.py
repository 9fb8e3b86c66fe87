"""Rendering a Plan as terminal text, a pull-request comment (markdown) and JSON."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import syncd.views
from syncd.core.model import CONFIG_FIELDS, TaskConfig
from syncd.core.plan import (
    DriftCode,
    ErrorCode,
    FieldChange,
    Plan,
    Reason,
    StraySchedule,
    TaskPlan,
    diff_configs,
)
from syncd.views.plan_json import FORMAT_VERSION, render_json
from syncd.views.plan_markdown import render_markdown
from syncd.views.plan_text import render_text

ANSI = re.compile(r"\x1b\[")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def config(name: str, **fields: Any) -> TaskConfig:
    base: dict[str, Any] = {
        "task_type": "cleanup.temp_files",
        "scheduler_type": "cron",
        "schedule_config": {"cron": "0 3 * * *", "timezone": "Europe/Berlin"},
    }
    return TaskConfig(name=name, **{**base, **fields})


def create(name: str, **fields: Any) -> TaskPlan:
    after = config(name, **fields)
    return TaskPlan(
        name=name, action="create", state="active", after=after,
        changes=tuple(FieldChange(f, None, v) for f, v in after.field_values().items()),
        source=f"{name}.yaml", path=f"taskdefs/{name}.yaml", line=3,
        write_row=True, schedule_op="put", status_op="active",
    )  # fmt: skip


def update(name: str, *changes: FieldChange, state: str = "active") -> TaskPlan:
    return TaskPlan(
        name=name, action="update", state=state, config_id=4, changes=changes,  # type: ignore[arg-type]
        source="reports.yaml", path="taskdefs/reports.yaml", line=12, write_row=True,
    )  # fmt: skip


def delete(name: str) -> TaskPlan:
    before = config(name, scheduler_type="interval", schedule_config={"interval": 300})
    return TaskPlan(
        name=name, action="delete", state="deleted", config_id=2, before=before,
        changes=tuple(FieldChange(f, v, None) for f, v in before.field_values().items()),
        source="legacy.yaml", line=1, write_row=True, schedule_op="remove", status_op="delete",
    )  # fmt: skip


def drifted(name: str, *reasons: Reason) -> TaskPlan:
    return TaskPlan(
        name=name, action="noop", state="active", config_id=7, drift=reasons,
        source="ops.yaml", line=20, schedule_op="put",
    )  # fmt: skip


def noted(name: str, state: str, note: str) -> TaskPlan:
    return TaskPlan(
        name=name, action="noop", state=state, config_id=9,  # type: ignore[arg-type]
        source=f"{name}.yaml", line=4, notes=(Reason("note", note),),
    )  # fmt: skip


def unchanged(name: str) -> TaskPlan:
    return TaskPlan(name=name, action="noop", state="active", config_id=1, source="a.yaml", line=1)


CRON_CHANGE = FieldChange(
    "schedule_config",
    {"cron": "0 6 * * *", "timezone": "UTC"},
    {"cron": "0 7 * * *", "timezone": "UTC"},
)
FROZEN = noted("etl", "frozen", "frozen: etl.yaml has errors; kept as last applied")
KEPT = noted("old", "kept", "not deleted: pruning is suspended while a taskdef file has errors")
PAUSED = noted("billing-export", "paused", "paused by operator: sync keeps it paused")
EXPIRED = noted("launch-mail", "expired", "'at' has passed: the one-shot schedule has fired")
STRAY = StraySchedule("task_99", ("syncd:cron",))
ERROR = Reason(
    ErrorCode.NAME_NOT_MANAGED, "task name 'x' belongs to a task_configs row syncd does not manage"
)
SCHEDULE_MISSING = Reason(DriftCode.SCHEDULE_MISSING, "schedule missing from Redis")
STATUS_MISSING = Reason(DriftCode.STATUS_MISSING, "status key missing")


def mixed_plan() -> Plan:
    tasks = [
        create("nightly-cleanup"),
        update("report", CRON_CHANGE, FieldChange("priority", 5, 8)),
        delete("legacy-sync"),
        drifted("heartbeat", SCHEDULE_MISSING, STATUS_MISSING),
        PAUSED,
        EXPIRED,
        unchanged("quiet"),
    ]
    return Plan(tasks=tuple(sorted(tasks, key=lambda t: t.name)), strays=(STRAY,))


def broken_plan() -> Plan:
    return Plan(tasks=(FROZEN, KEPT), broken_sources=("etl.yaml",), errors=(ERROR,))


# ---------------------------------------------------------------- text


def test_text_create_shows_symbol_location_and_key_fields() -> None:
    text = render_text(Plan(tasks=(create("nightly-cleanup"),)))
    assert "+ create  nightly-cleanup  (taskdefs/nightly-cleanup.yaml:3)" in text
    assert 'task_type: "cleanup.temp_files"' in text
    assert "schedule: cron 0 3 * * * (Europe/Berlin)" in text
    assert "enabled: true" in text
    assert "parameters" not in text  # only the key fields unless verbose
    assert "parameters: {}" in render_text(Plan(tasks=(create("n"),)), verbose=True)


def test_text_update_shows_changed_fields_and_only_changed_dict_keys() -> None:
    text = render_text(Plan(tasks=(update("report", CRON_CHANGE, FieldChange("priority", 5, 8)),)))
    assert "~ update  report  (taskdefs/reports.yaml:12)" in text
    assert 'schedule_config.cron: "0 6 * * *" → "0 7 * * *"' in text
    assert "timezone" not in text
    assert "priority: 5 → 8" in text


def test_text_update_marks_added_and_removed_keys_and_shortens_long_values() -> None:
    change = FieldChange("parameters", {"old": 1}, {"new": "x" * 500})
    text = render_text(Plan(tasks=(update("p", change),)))
    assert "parameters.old: 1 → (absent)" in text
    assert "parameters.new: (absent) → " in text
    assert "x" * 500 not in text
    assert "…" in text


def test_text_delete_drift_and_summary_line() -> None:
    text = render_text(mixed_plan())
    assert "- destroy legacy-sync  (legacy.yaml:1)" in text
    assert "! drift   heartbeat  (ops.yaml:20)" in text
    assert "drift: schedule missing from Redis" in text
    assert "drift: status key missing" in text
    assert text.rstrip().endswith("Plan: 1 to create, 1 to update, 1 to delete, 2 drifted.")


def test_text_blocks_are_sorted_by_name_and_unchanged_tasks_are_not_shown() -> None:
    text = render_text(mixed_plan())
    order = [text.index(name) for name in ("heartbeat", "legacy-sync", "nightly-cleanup", "report")]
    assert order == sorted(order)
    assert "quiet" not in text


def test_text_paused_names_on_one_line_unless_verbose() -> None:
    plan = Plan(tasks=(PAUSED, noted("z-paused", "paused", "paused by operator")))
    line = next(x for x in render_text(plan).splitlines() if x.startswith("Paused by operator"))
    assert line.endswith(": billing-export, z-paused")
    verbose = render_text(plan, verbose=True)
    assert "  * billing-export  (billing-export.yaml:4)" in verbose
    assert "  * z-paused  (z-paused.yaml:4)" in verbose


def test_text_expired_one_shots_are_warnings() -> None:
    text = render_text(mixed_plan())
    assert (
        "Warning: launch-mail  (launch-mail.yaml:4): expired one-shot; "
        "'at' has passed: the one-shot schedule has fired"
    ) in text


def test_text_strays_are_listed_for_removal() -> None:
    text = render_text(mixed_plan())
    assert "Stray schedules and status keys to remove" in text
    assert "- task_99  (in syncd:cron)" in text


def test_text_frozen_kept_and_errors() -> None:
    text = render_text(broken_plan())
    assert "Frozen (taskdef files with errors: etl.yaml" in text
    assert "* etl  (etl.yaml:4): frozen: etl.yaml has errors; kept as last applied" in text
    assert "Not deleted: pruning is suspended" in text
    assert "* old  (old.yaml:4)" in text
    assert f"Error: {ERROR.message}" in text
    assert "1 error(s) and cannot be applied" in text
    assert "agree" not in text  # frozen files: the stores may well not agree


def test_text_empty_plan_says_no_changes() -> None:
    plan = Plan(tasks=(unchanged("a"), unchanged("b"), unchanged("c")))
    assert render_text(plan) == "No changes. Taskdefs, PostgreSQL and Redis agree (3 tasks).\n"
    assert render_text(Plan(tasks=())).startswith("No changes.")


def test_text_verbose_shows_what_is_applied() -> None:
    text = render_text(mixed_plan(), verbose=True)
    assert "applies: delete row, remove schedule, delete status key" in text
    assert "applies: write row, put schedule, status → active" in text


def test_text_color_only_when_asked() -> None:
    plan = mixed_plan()
    assert not ANSI.search(render_text(plan))
    assert not ANSI.search(render_text(broken_plan(), verbose=True))
    colored = render_text(plan, color=True)
    for code in ("32m+", "33m~", "31m-", "35m!", "1mnightly-cleanup"):
        assert f"\x1b[{code}" in colored


def test_text_never_passes_control_characters_through() -> None:
    evil = "x\x1b[31mred\nline\x9b"
    plan = Plan(
        tasks=(update(evil, FieldChange("description", "a", evil)),), errors=(Reason("evil", evil),)
    )
    text = render_text(plan)
    assert "\x1b" not in text
    assert "\x9b" not in text
    assert "\nline" not in text


def backoff_plan() -> Plan:
    before = config("report", max_retries=2)
    after = config(
        "report", max_retries=3, retry_backoff_seconds=0.5, retry_backoff_max_seconds=90.0
    )
    return Plan(tasks=(update("report", *diff_configs(before, after)),))


def test_backoff_changes_show_like_max_retries_in_every_format() -> None:
    plan = backoff_plan()
    text = render_text(plan)
    assert "max_retries: 2 → 3" in text
    assert "retry_backoff_seconds: 5.0 → 0.5" in text
    assert "retry_backoff_max_seconds: 600.0 → 90.0" in text
    md = render_markdown(plan)
    assert "| `max_retries` | `2` | `3` |" in md
    assert "| `retry_backoff_seconds` | `5.0` | `0.5` |" in md
    assert "| `retry_backoff_max_seconds` | `600.0` | `90.0` |" in md
    data = json.loads(json.dumps(render_json(plan)))
    assert data["changes"][0]["changes"] == [
        {"field": "max_retries", "before": 2, "after": 3},
        {"field": "retry_backoff_seconds", "before": 5.0, "after": 0.5},
        {"field": "retry_backoff_max_seconds", "before": 600.0, "after": 90.0},
    ]


def test_text_verbose_create_lists_the_backoff() -> None:
    text = render_text(Plan(tasks=(create("n", retry_backoff_seconds=0.25),)), verbose=True)
    assert "retry_backoff_seconds: 0.25" in text
    assert "retry_backoff_max_seconds: 600.0" in text


# ---------------------------------------------------------------- markdown


def test_markdown_summary_table_comes_first() -> None:
    md = render_markdown(mixed_plan(), title="syncd plan for #42")
    lines = md.splitlines()
    assert lines[0] == "## syncd plan for \\#42"
    assert "| create | update | delete | drift | frozen | paused | expired |" in lines
    assert "| 1 | 1 | 1 | 2 | 0 | 1 | 1 |" in lines
    table = md.index("| create |")
    assert table < md.index("### ⚠️ Warnings") < md.index("### Changes") < md.index("<details>")


def test_markdown_details_are_collapsible_blocks_per_change() -> None:
    md = render_markdown(mixed_plan())
    assert md.count("<details><summary>") == 5  # 4 changed tasks + the strays
    assert md.count("</details>") == 5
    assert "<code>~</code> update <b>report</b> — <code>taskdefs/reports.yaml:12</code>" in md
    assert '| `schedule_config.cron` | `"0 6 * * *"` | `"0 7 * * *"` |' in md
    assert "| `priority` | `5` | `8` |" in md
    assert "<code>-</code> destroy <b>legacy-sync</b>" in md
    assert "- drift: schedule missing from Redis" in md
    assert "`task_99` in `syncd:cron`" in md
    assert "quiet" not in md


def test_markdown_pipes_and_backticks_do_not_break_table_rows() -> None:
    change = FieldChange("parameters", {"sep": "a|b"}, {"sep": "`x` | y\\|"})
    md = render_markdown(Plan(tasks=(update("pipes|name", change),)))
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert rows
    for row in rows:
        assert len(UNESCAPED_PIPE.findall(row)) in (4, 8), row  # 3 columns, or the summary
    assert '| `"a\\|b"` |' in md
    assert '``"`x` \\| y\\\\\\|"``' in md  # longer fence around a value holding backticks


def test_markdown_escapes_html_in_names() -> None:
    md = render_markdown(Plan(tasks=(create("<script>alert(1)</script>"),)))
    assert "<script>" not in md
    assert "&lt;script&gt;" in md


def test_markdown_warnings_for_frozen_files_pruning_and_errors() -> None:
    md = render_markdown(broken_plan())
    warnings = md[md.index("### ⚠️ Warnings") :]
    assert "**Frozen:** `etl.yaml` has errors" in warnings
    assert "**Frozen tasks (1):** `etl`" in warnings
    assert "**Pruning suspended**" in warnings
    assert "task\\_configs row syncd does not manage" in warnings
    assert "<details>" not in md


def test_markdown_empty_plan() -> None:
    md = render_markdown(Plan(tasks=(unchanged("a"),)))
    assert "| 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in md
    assert "No changes. Taskdefs, PostgreSQL and Redis agree (1 task)." in md
    assert "<details>" not in md
    assert "Warnings" not in md


def test_markdown_of_5000_changes_is_bounded_and_counts_what_it_omits() -> None:
    tasks = [
        update(f"task-{i:05d}", CRON_CHANGE, FieldChange("priority", 5, i)) for i in range(5000)
    ]
    plan = Plan(tasks=tuple(tasks))
    for max_chars in (60_000, 65_536, 10_000, 1_000):
        md = render_markdown(plan, max_chars=max_chars)
        assert len(md) <= max_chars
        assert "| 0 | 5000 | 0 | 0 | 0 | 0 | 0 |" in md
        shown = md.count("<details>")
        assert md.count("</details>") == shown
        assert md.rstrip().endswith(f"… and {5000 - shown} more changes not shown")
    assert render_markdown(plan).count("<details>") > 100


def test_markdown_everything_fits_when_there_is_room() -> None:
    md = render_markdown(mixed_plan(), max_chars=len(render_markdown(mixed_plan())))
    assert "more changes not shown" not in md


def test_markdown_tiny_limit_is_still_respected() -> None:
    for max_chars in (0, 5, 50, 200):
        assert len(render_markdown(mixed_plan(), max_chars=max_chars)) <= max_chars


# ---------------------------------------------------------------- json


def test_json_round_trips_with_the_documented_keys_and_counts() -> None:
    data = json.loads(json.dumps(render_json(mixed_plan()), allow_nan=False))
    assert data["format_version"] == FORMAT_VERSION == 2
    assert data["summary"] == {
        "create": 1, "update": 1, "delete": 1, "unchanged": 4, "drift": 2,
        "frozen": 0, "paused": 1, "expired": 1, "stray_schedules": 1, "stray_statuses": 0,
    }  # fmt: skip
    names = [c["name"] for c in data["changes"]]
    assert names == [
        "billing-export", "heartbeat", "launch-mail", "legacy-sync", "nightly-cleanup", "report",
    ]  # fmt: skip
    keys = {"name", "action", "state", "config_id", "source", "line", "changes", "drift",
            "notes", "schedule_op", "status_op"}  # fmt: skip
    assert all(keys <= item.keys() for item in data["changes"])
    report = data["changes"][names.index("report")]
    assert report["action"] == "update"
    assert {"field": "priority", "before": 5, "after": 8} in report["changes"]
    heartbeat = data["changes"][names.index("heartbeat")]
    assert heartbeat["action"] == "noop"
    assert heartbeat["drift"] == [
        {"code": "schedule_missing", "message": "schedule missing from Redis"},
        {"code": "status_missing", "message": "status key missing"},
    ]
    assert heartbeat["schedule_op"] == "put"
    assert data["strays"] == [{"schedule_id": "task_99", "lists": ["syncd:cron"]}]
    assert data["errors"] == []
    assert data["frozen_files"] == []
    assert data["pruning_suspended"] is False


def test_json_frozen_kept_and_errors() -> None:
    data = json.loads(json.dumps(render_json(broken_plan())))
    assert [(c["name"], c["state"]) for c in data["changes"]] == [
        ("etl", "frozen"),
        ("old", "kept"),
    ]
    assert data["summary"]["frozen"] == 1
    assert data["frozen_files"] == ["etl.yaml"]
    assert data["errors"] == [{"code": "name_not_managed", "message": ERROR.message}]
    assert data["pruning_suspended"] is True


def test_json_empty_plan_and_unsafe_values() -> None:
    assert render_json(Plan(tasks=(unchanged("a"),)))["changes"] == []
    odd = FieldChange("parameters", {1: (1, 2), "f": float("nan")}, {"s": {3}})
    data = json.loads(json.dumps(render_json(Plan(tasks=(update("o", odd),))), allow_nan=False))
    assert data["changes"][0]["changes"][0]["before"] == {"1": [1, 2], "f": "nan"}


# ---------------------------------------------------------------- purity


@pytest.mark.parametrize("module", sorted(Path(syncd.views.__file__).parent.glob("*.py")))
def test_views_import_no_io_library_and_no_clock(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    banned = ("redis", "sqlalchemy", "taskiq", "psycopg", "os", "sys", "time")
    assert not {m for m in imported if m.split(".")[0] in banned}
    if module.name.startswith("plan_"):  # plans render with the `now` they are given
        assert "datetime" not in {m.split(".")[0] for m in imported}


# ---------------------------------------------------------------- properties

TEXT = st.text(max_size=24)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
REASONS = st.builds(Reason, TEXT, TEXT)
TASK_PLANS = st.builds(
    TaskPlan,
    name=TEXT,
    action=st.sampled_from(["create", "update", "delete", "noop"]),
    state=st.sampled_from(["active", "paused", "inactive", "expired", "frozen", "kept", "deleted"]),
    config_id=st.none() | st.integers(1, 10**6),
    changes=st.lists(
        st.builds(FieldChange, st.sampled_from(CONFIG_FIELDS), JSON_VALUES, JSON_VALUES), max_size=4
    ).map(tuple),
    drift=st.lists(REASONS, max_size=2).map(tuple),
    notes=st.lists(REASONS, max_size=2).map(tuple),
    source=st.none() | TEXT,
    path=st.none() | TEXT,
    line=st.none() | st.integers(1, 10**6),
    write_row=st.booleans(),
    schedule_op=st.none() | st.sampled_from(["put", "remove"]),
    status_op=st.none() | st.sampled_from(["active", "paused", "inactive", "delete"]),
)
PLANS = st.builds(
    Plan,
    tasks=st.lists(TASK_PLANS, max_size=40).map(tuple),
    strays=st.lists(
        st.builds(StraySchedule, TEXT, st.lists(TEXT, max_size=2).map(tuple)), max_size=4
    ).map(tuple),
    broken_sources=st.lists(TEXT, max_size=3).map(tuple),
    errors=st.lists(REASONS, max_size=3).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(plan=PLANS, max_chars=st.integers(2_000, 20_000))
def test_property_markdown_bounded_and_json_counts_match(plan: Plan, max_chars: int) -> None:
    md = render_markdown(plan, max_chars=max_chars)
    assert len(md) <= max_chars
    assert "| create | update | delete | drift | frozen | paused | expired |" in md
    for row in (line for line in md.splitlines() if line.startswith("|")):
        assert len(UNESCAPED_PIPE.findall(row)) in (3, 4, 8), row

    data = json.loads(json.dumps(render_json(plan), allow_nan=False))
    summary = data["summary"]
    for action in ("create", "update", "delete"):
        assert summary[action] == sum(1 for t in plan.tasks if t.action == action)
    assert summary["unchanged"] == sum(1 for t in plan.tasks if t.action == "noop")
    drift_only = sum(1 for t in plan.tasks if t.action == "noop" and t.has_changes)
    assert summary["drift"] == drift_only + len(plan.strays)
    assert summary["stray_schedules"] == len(plan.strays)
    assert all({"name", "action"} <= item.keys() for item in data["changes"])
    assert all(isinstance(v, int) for v in summary.values())

    assert not ANSI.search(render_text(plan, verbose=True))

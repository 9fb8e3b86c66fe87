"""No output shows hostile user text raw: generated names, keys, file names and messages
made of newlines, line separators, escape sequences, bidi overrides and `::error`
commands go through `validate`, the plan views, the daemon's log formatters and the
worker's, and every line that comes out is syncd's own or holds that text escaped."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.core.keys import KeyLayout
from syncd.core.lateness import Activity, FailingSince, Lateness
from syncd.core.logtext import SafeFormatter
from syncd.core.model import Execution, TaskCatalog, TaskConfig
from syncd.core.offline import applied_state
from syncd.core.plan import FieldChange, Plan, Reason, StraySchedule, TaskPlan, plan
from syncd.core.problems import Problem
from syncd.daemon.observe import JsonFormatter, TextFormatter, fields
from syncd.load.loader import LoadResult, build_desired, load_taskdef_blobs, load_taskdefs
from syncd.load.policy import load_policy
from syncd.views.explain import Explanation, explain_text
from syncd.views.history import history_text
from syncd.views.plan_json import render_json
from syncd.views.plan_markdown import render_markdown
from syncd.views.plan_text import render_text
from syncd.views.status import status_json, status_rows, status_text
from syncd.views.validation import Validation, validation_report, validation_summary
from tests.services import TEST_POLICY
from tests.unit.test_text import raw_controls
from worker.tasks import registry

NOW = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
POLICY = load_policy(TEST_POLICY)
CATALOG = TaskCatalog(registry.params_models(), {t.name: t.queue for t in registry}, POLICY)
TASKIQ_FORMAT = "[%(asctime)s][%(name)s][%(levelname)-7s][%(processName)s] %(message)s"

# Whole attacks (a line break, then what a forged line would start with) and single
# characters that break lines, move the cursor or reorder text, mixed with plain text.
ATTACKS = [
    "\n::error file=taskdefs/ok.yaml,line=1::FORGED",
    "\nok: 7 task(s) in 1 file(s)",
    "\r\n[CRITICAL] FORGED",
    "\u2028  ::warning::FORGED",
    "::error::FORGED",
    "\x1b[2J",
    "\x1b]8;;http://x\x07",
]
BREAKERS = "\n\r\x0b\x0c\x1b\x1c\x85\x9b\u2028\u2029\u202e\u2066\u200f\ufeff\t\x7f"
PLAIN = "ab :-_.|`*<>&é😀 "
FORGED_STARTS = ("::", "ok:", "[CRITICAL]")
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def hostile(alphabet: str = BREAKERS + PLAIN, min_size: int = 1) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(ATTACKS), st.text(alphabet=alphabet, max_size=4))
    return st.lists(piece, min_size=min_size, max_size=5).map("".join)


# Lone surrogates (undecodable bytes) reach the views from the stores, not from files.
STORE_TEXT = hostile(BREAKERS + PLAIN + "\ud800\udfff")
# A file name holds anything but '/' and NUL (and must fit the file system's 255 bytes).
# A leading '.' hides a file from the loader: kept out, so every file is read.
FILE_NAMES = hostile().map(lambda s: (s.replace("/", "|")[:60].lstrip(".") or "f") + ".yaml")


def assert_safe(output: str, own_starts: tuple[str, ...] = ()) -> None:
    """Each line is free of raw controls and does not begin as a forged line would."""
    for line in output.split("\n"):
        assert raw_controls(line) == [], repr(line)
        start = line.lstrip()
        forged = [
            s for s in FORGED_STARTS if start.startswith(s) and not start.startswith(own_starts)
        ]
        assert forged == [], repr(line)


def assert_json_safe(value: object) -> None:
    """Dumped as the CLI does (and without \\u escapes): still no raw control anywhere."""
    for text in (
        json.dumps(value, indent=2, default=str),
        json.dumps(value, ensure_ascii=False, indent=2),
    ):
        assert_safe(text)
        assert json.loads(text) == json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------- validate and the offline plan


def yaml_quoted(text: str) -> str:
    """`text` as a YAML double-quoted scalar: printable ASCII and astral characters as
    they are (YAML reads no surrogate pair), anything else as a `\\u` escape."""
    chars = [
        "\\" + c if c in '"\\' else c if " " <= c <= "~" or ord(c) > 0xFFFF else f"\\u{ord(c):04x}"
        for c in text
    ]
    return '"' + "".join(chars) + '"'


def invalid_task(name: str, key: str) -> str:
    """A file whose task is named `name` and holds the unknown key `key`: two problems."""
    return (
        f"version: 1\ntasks:\n  - name: {yaml_quoted(name)}\n    task_type: diagnostics.noop\n"
        f"    {yaml_quoted(key)}: 1\n"
    )


def valid_task(key: str, text: str) -> str:
    """A valid task quoting `text` in its description and payload, under the key `key`."""
    return (
        "version: 1\ntasks:\n  - name: ok-task\n    task_type: notification.webhook\n"
        f"    description: {yaml_quoted(text)}\n"
        '    parameters: {url: "http://127.0.0.1:9/hook", payload: '
        f"{{{yaml_quoted(key)}: {yaml_quoted(text)}}}}}\n"
    )


def validate_outputs(result: LoadResult) -> None:
    validation = Validation(
        result.problems, len(result.files), len(result.tasks), len(result.broken_sources)
    )
    assert_safe("\n".join(str(p) for p in result.problems))
    assert_safe(validation_summary(validation), own_starts=("ok:",))
    assert_json_safe(validation_report(validation))


@EXAMPLES
@given(name=hostile(), key=hostile(), text=hostile(), file_name=FILE_NAMES)
def test_validate_and_plan_show_hostile_taskdefs_escaped(
    name: str, key: str, text: str, file_name: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "taskdefs")
        root.mkdir()
        (root / file_name).write_text(valid_task(key, text))
        (root / f"broken-{file_name}").write_text(invalid_task(name, key))
        head = load_taskdefs(root, CATALOG.params, now=NOW, policy=POLICY)
    assert len(head.tasks) == 1  # the valid one; the hostile name and key are problems
    assert head.problems
    validate_outputs(head)
    made = (Problem(file_name, 1, 2, text), Problem(text, 0, 0, name, "warning"))
    validate_outputs(replace(head, problems=made))
    # What git held before: the same task with other values, so the plan updates it.
    old = valid_task(key, "old").encode()
    base = load_taskdef_blobs({file_name: old}, "taskdefs", CATALOG.params, NOW, POLICY)
    layout = KeyLayout()
    the_plan = plan(
        build_desired(head, CATALOG, None),
        applied_state(build_desired(base, CATALOG, None), NOW, layout),
        NOW,
        layout,
    )
    assert [t.action for t in the_plan.changed] == ["update"]
    assert_plan_safe(the_plan, tuple(head.problems))


def assert_plan_safe(the_plan: Plan, problems: tuple[Problem, ...] = ()) -> None:
    for verbose in (False, True):
        assert_safe(render_text(the_plan, verbose=verbose, now=NOW))
    assert_safe(render_markdown(the_plan, now=NOW, problems=problems))
    assert_json_safe(render_json(the_plan))


# ---------------------------------------------------------------- plans from hostile stores


def config(name: str, text: str, key: str) -> TaskConfig:
    return TaskConfig(
        name=name,
        task_type="notification.log",
        scheduler_type="cron",
        schedule_config={"cron": "0 3 * * *", "timezone": "Europe/Berlin"},
        parameters={"message": text, key: text},
        description=text,
    )


def hostile_plan(name: str, key: str, text: str, path: str) -> Plan:
    before, after = config(name, "old", key), config(name, text, key)
    changes = (
        FieldChange("parameters", {key: "old"}, {key: text}),
        FieldChange("description", "old", text),
    )
    created = tuple(FieldChange(f, None, v) for f, v in after.field_values().items())
    kept: dict[str, Any] = {"before": before, "source": path, "line": 1}
    tasks = (
        TaskPlan(name, "update", "active", 4, after=after, changes=changes, **kept),
        TaskPlan(f"{name}2", "create", "active", None, None, after, created, path=path),
        TaskPlan(f"{name}3", "noop", "frozen", 5, notes=(Reason("frozen", text),), **kept),
        TaskPlan(f"{name}4", "noop", "paused", 6, drift=(Reason("drift", text),), **kept),
        TaskPlan(f"{name}5", "noop", "expired", 7, notes=(Reason("expired", text),), **kept),
        TaskPlan(f"{name}6", "noop", "kept", 8, **kept),
    )
    return Plan(
        tasks=tasks,
        strays=(StraySchedule(text, (key, text)),),
        stray_statuses=(12,),
        broken_sources=(path,),
        errors=(Reason("error", text),),
    )


@EXAMPLES
@given(name=STORE_TEXT, key=STORE_TEXT, text=STORE_TEXT, path=STORE_TEXT)
def test_every_plan_view_escapes_names_keys_values_and_paths(
    name: str, key: str, text: str, path: str
) -> None:
    assert_plan_safe(hostile_plan(name, key, text, path))


@EXAMPLES
@given(name=STORE_TEXT, text=STORE_TEXT)
def test_status_and_history_tables_escape_what_the_stores_hold(name: str, text: str) -> None:
    the_plan = hostile_plan(name, text, text, text)
    assert_safe(status_text(status_rows(the_plan.tasks, {4: text}, {}, NOW)))
    # Late (a daily cron registered days ago, never run): its line under the table too.
    activity = {5: Activity(NOW - timedelta(days=3))}
    late = status_rows(the_plan.tasks, {5: "active"}, {}, NOW, activity=activity)
    assert any(row.lateness.late for row in late)
    assert_safe(status_text(late))
    assert_json_safe(status_json(late))
    run = Execution(4, text, 1, False, NOW, NOW, 1.0, text, name=name, git_revision=text)
    deleted = Execution(None, "t", 2, True, NOW, NOW, None, None, task_name=name)
    assert_safe(history_text([run, deleted, Execution(None, "t", 2, True, NOW, NOW, None, None)]))


@EXAMPLES
@given(name=STORE_TEXT, text=STORE_TEXT)
def test_explain_escapes_the_name_its_location_and_the_last_errors(name: str, text: str) -> None:
    task, frozen = hostile_plan(name, text, text, text).tasks[:3:2]
    run = Execution(4, text, 1, False, NOW, NOW, 1.0, text, name=name, git_revision=text)
    # A revision comes back from the database, where anyone may have written anything.
    failing = FailingSince(2, 3, text, NOW, True, text + "x")
    late = Lateness(True, NOW, 3, 60.0)
    for shown, declared in ((task, f"{text}:3"), (frozen, None)):
        view = Explanation(
            shown, declared, None, None, None, None, None, None, [run], NOW, failing, late
        )
        assert_safe(explain_text(view))


# ---------------------------------------------------------------- log formatters


def log_record(message: str, arg: str, value: str, error: str) -> logging.LogRecord:
    try:
        raise RuntimeError(error)
    except RuntimeError as exc:
        record = logging.LogRecord(
            "syncd.test", logging.ERROR, __file__, 1, message + " %s", (arg,),
            (type(exc), exc, exc.__traceback__),
        )  # fmt: skip
    record.__dict__.update(fields(name=value, path=value, count=3))
    return record


@EXAMPLES
@given(message=STORE_TEXT, arg=STORE_TEXT, value=STORE_TEXT, error=STORE_TEXT)
def test_log_formatters_keep_each_record_to_its_own_lines(
    message: str, arg: str, value: str, error: str
) -> None:
    record = log_record(message.replace("%", "%%"), arg, value, error)
    text = TextFormatter().format(record)
    assert_safe(text)
    head, *traceback = text.split("\n")
    assert head.endswith(" count=3")  # the fields stay on the message's line
    assert traceback[0] == "Traceback (most recent call last):"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert_safe(line)
    assert json.loads(line)["count"] == 3
    worker_text = SafeFormatter(logging.Formatter(TASKIQ_FORMAT)).format(record)
    assert_safe(worker_text)
    assert worker_text.startswith("[")
    assert worker_text.split("\n")[1] == "Traceback (most recent call last):"

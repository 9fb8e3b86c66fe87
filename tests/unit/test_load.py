"""The loader: parsing, validation messages with file:line:col, and the safety bounds."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from syncd.load.loader import MAX_FILE_BYTES, LoadCache, load_taskdefs
from syncd.load.policy import load_policy
from tests.conftest import WriteTaskdef
from tests.services import TEST_POLICY
from worker.tasks import registry

TYPES = registry.params_models()
POLICY = load_policy(TEST_POLICY)
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def messages(root: Path) -> list[str]:
    result = load_taskdefs(root, TYPES, now=NOW, policy=POLICY)
    return [str(p) for p in result.problems]


def only_message(root: Path) -> str:
    found = messages(root)
    assert len(found) == 1, found
    return found[0]


def test_valid_file_yields_tasks_with_lines(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: one
            task_type: diagnostics.noop
            schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
          - name: two
            task_type: diagnostics.noop
            schedule: {interval: 30}
        """,
    )
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert result.problems == ()
    assert [(t.name, t.line, t.source) for t in result.tasks] == [
        ("one", 3, "a.yaml"),
        ("two", 6, "a.yaml"),
    ]
    assert result.tasks[0].config.scheduler_type == "cron"
    assert result.tasks[1].config.scheduler_type == "interval"


def test_files_are_found_recursively_in_stable_order(taskdefs: Path, write: WriteTaskdef) -> None:
    for name in ("b/z.yml", "a.yaml", "b/a.yaml", ".hidden/x.yaml", "notes.txt"):
        write(name, "version: 1\ntasks: []\n")
    result = load_taskdefs(taskdefs, TYPES, policy=POLICY)
    assert [f.source for f in result.files] == ["a.yaml", "b/a.yaml", "b/z.yml"]


def test_cron_is_normalised(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: sunday
            task_type: diagnostics.noop
            schedule: {cron: "0 0 * * 7"}
        """,
    )
    (task,) = load_taskdefs(taskdefs, TYPES, policy=POLICY).tasks
    assert task.config.schedule_config["cron"] == "0 0 * * 0"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n    colour: red\n",
            "a.yaml:5:5: tasks[0] (x).colour: unknown key 'colour'",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n    priorty: 3\n",
            "(did you mean 'priority'?)",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {cron: '61 * * * *'}\n",
            "a.yaml:5:22: tasks[0] (x).schedule.cron: minute: 61 is out of range 0-59",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {cron: '0 0 * * *', timezone: Mars/Base}\n",
            "unknown time zone 'Mars/Base'",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {interval: 0}\n",
            "a.yaml:5:26: tasks[0] (x).schedule.interval",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {interval: '60'}\n",
            "schedule.interval: Input should be a valid integer",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {every: 5}\n",
            "schedule needs exactly one of 'cron', 'interval' or 'at'",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    schedule: {at: 2030-01-01T00:00:00}\n",
            "schedule.at: a date-time needs an offset",
        ),
        (
            "version: 1\ntasks:\n  - name: 'a:b'\n    task_type: diagnostics.noop\n",
            "a.yaml:3:11: tasks[0] (a:b).name: a name may hold only",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n    priority: 11\n",
            "a.yaml:5:15: tasks[0] (x).priority: Input should be less than or equal to 10",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    max_retries: -1\n",
            "max_retries: Input should be greater than or equal to 0",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    timeout_seconds: 0\n",
            "timeout_seconds: Input should be greater than 0",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_seconds: -0.5\n",
            "a.yaml:5:28: tasks[0] (x).retry_backoff_seconds: "
            "Input should be greater than or equal to 0",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_seconds: 86401\n    retry_backoff_max_seconds: 90000\n",
            "retry_backoff_seconds: Input should be less than or equal to 86400",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_seconds: '5'\n",
            "retry_backoff_seconds: Input should be a valid number",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_max_seconds: .inf\n",
            "retry_backoff_max_seconds: Input should be a finite number",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_seconds: 20\n    retry_backoff_max_seconds: 10\n",
            "a.yaml:6:32: tasks[0] (x).retry_backoff_max_seconds: 10 is less than "
            "retry_backoff_seconds (20); the longest delay must be at least the first",
        ),
        (
            # The cap left at its default: located at the task, named all the same.
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_seconds: 700\n",
            "a.yaml:3:5: tasks[0] (x).retry_backoff_max_seconds: 600 (the default) is less than "
            "retry_backoff_seconds (700)",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    retry_backoff_max_seconds: 2.5\n",
            "a.yaml:5:32: tasks[0] (x).retry_backoff_max_seconds: 2.5 is less than "
            "retry_backoff_seconds (5)",
        ),
        (
            "version: 1\ntasks:\n  - task_type: diagnostics.noop\n",
            "a.yaml:3:5: tasks[0]: missing required key 'name'",
        ),
        ("version: 2\ntasks: []\n", "a.yaml:1:10: version: Input should be 1"),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: cleanup.tmp_files\n",
            "unknown task_type 'cleanup.tmp_files' (did you mean 'cleanup.temp_files'?)",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: cleanup.temp_files\n"
            "    parameters:\n      path: /tmp\n      older_than_days: -1\n",
            "a.yaml:7:24: tasks[0] (x).parameters.older_than_days: Input should be greater than 0",
        ),
        (
            "version: 1\ntasks:\n  - name: x\n    task_type: diagnostics.noop\n"
            "    parameters: {when: 2026-01-01}\n",
            "a.yaml:5:24: tasks[0] (x).parameters.when: a date is not a JSON value",
        ),
        ("- just\n- a list\n", "a.yaml:1:1: a taskdef file is a mapping"),
        ("version: 1\nversion: 1\ntasks: []\n", "a.yaml:2:1: duplicate key 'version'"),
        ("version: 1\ntasks: [\n", "a.yaml:3:1: YAML syntax:"),
        ("version: 1\n---\nversion: 1\n", "YAML syntax: expected a single document"),
        (
            "version: 1\ntasks: !!python/object/apply:os.system ['true']\n",
            "a.yaml:2:8: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
        ),
        ("", "a.yaml:1:1: file is empty"),
        ("# only a comment\n", "a.yaml:1:1: file has no content"),
    ],
)
def test_problem_messages(taskdefs: Path, write: WriteTaskdef, body: str, expected: str) -> None:
    (taskdefs / "a.yaml").write_text(body)
    found = messages(taskdefs)
    assert any(expected in line for line in found), found
    assert all(line.startswith(f"{taskdefs}/a.yaml:") for line in found), found


def test_retry_backoff_is_read_as_float_seconds_with_defaults(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: tuned
            task_type: diagnostics.noop
            max_retries: 4
            retry_backoff_seconds: 2
            retry_backoff_max_seconds: 7.5
          - name: at-once
            task_type: diagnostics.noop
            max_retries: 1
            retry_backoff_seconds: 0
            retry_backoff_max_seconds: 0
          - name: defaults
            task_type: diagnostics.noop
        """,
    )
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert result.problems == ()
    backoff = {
        t.config.name: (t.config.retry_backoff_seconds, t.config.retry_backoff_max_seconds)
        for t in result.tasks
    }
    assert backoff == {"tuned": (2.0, 7.5), "at-once": (0.0, 0.0), "defaults": (5.0, 600.0)}
    assert all(type(value) is float for pair in backoff.values() for value in pair)


def test_every_problem_in_every_file_is_reported_sorted(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    write("b.yaml", "version: 1\ntasks:\n  - name: x\n    task_type: nope\n    priority: 0\n")
    write("a.yaml", "version: 3\ntasks: []\n")
    found = messages(taskdefs)
    assert len(found) == 3, found
    assert found == sorted(found)
    assert found[0].startswith(f"{taskdefs}/a.yaml:1:10")


def test_duplicate_names_across_files_name_both_places(taskdefs: Path, write: WriteTaskdef) -> None:
    write("a.yaml", "version: 1\ntasks:\n  - name: same\n    task_type: diagnostics.noop\n")
    write(
        "b.yaml",
        "version: 1\ntasks:\n  - {name: other, task_type: diagnostics.noop}\n"
        "  - {name: same, task_type: diagnostics.noop}\n",
    )
    result = load_taskdefs(taskdefs, TYPES, policy=POLICY)
    lines = [str(p) for p in result.problems]
    assert lines == [
        f"{taskdefs}/a.yaml:3:1: duplicate task name 'same' (also declared at {taskdefs}/b.yaml:4)",
        f"{taskdefs}/b.yaml:4:1: duplicate task name 'same' (also declared at {taskdefs}/a.yaml:3)",
    ]
    assert result.broken_sources == {"a.yaml", "b.yaml"}
    assert result.tasks == ()


def test_a_broken_file_contributes_no_tasks_but_others_do(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    write("good.yaml", "version: 1\ntasks:\n  - {name: ok, task_type: diagnostics.noop}\n")
    write(
        "bad.yaml",
        "version: 1\ntasks:\n  - {name: fine, task_type: diagnostics.noop}\n"
        "  - {name: broken, task_type: diagnostics.noop, priority: 99}\n",
    )
    result = load_taskdefs(taskdefs, TYPES, policy=POLICY)
    assert [t.name for t in result.tasks] == ["ok"]
    assert result.broken_sources == {"bad.yaml"}


def test_alias_bomb_is_refused_quickly(taskdefs: Path) -> None:
    lines = ["version: 1", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    (taskdefs / "a.yaml").write_text("\n".join(lines) + "\ntasks: []\n")
    assert "refusing a possible alias bomb" in only_message(taskdefs)


def test_modest_anchor_reuse_is_allowed(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: one
            task_type: cleanup.temp_files
            parameters: &common {path: /tmp/x, older_than_days: 3}
          - name: two
            task_type: cleanup.temp_files
            parameters:
              <<: *common
              older_than_days: 9
        """,
    )
    result = load_taskdefs(taskdefs, TYPES, policy=POLICY)
    assert result.problems == ()
    assert result.tasks[1].config.parameters == {"path": "/tmp/x", "older_than_days": 9}


def test_recursive_alias_is_refused(taskdefs: Path) -> None:
    (taskdefs / "a.yaml").write_text("version: 1\ntasks: &t [*t]\n")
    assert "recursive alias" in only_message(taskdefs)


def test_deep_nesting_is_refused(taskdefs: Path) -> None:
    (taskdefs / "a.yaml").write_text("version: 1\ntasks: " + "[" * 500 + "]" * 500 + "\n")
    assert "nesting deeper than" in only_message(taskdefs)


def test_oversized_file_is_refused_without_reading(taskdefs: Path) -> None:
    with (taskdefs / "a.yaml").open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    assert f"the limit is {MAX_FILE_BYTES}" in only_message(taskdefs)


def test_binary_garbage_is_not_utf8(taskdefs: Path) -> None:
    (taskdefs / "a.yaml").write_bytes(b"version: 1\n\xff\xfe" + os.urandom(100))
    assert only_message(taskdefs).startswith(f"{taskdefs}/a.yaml:2:1: not UTF-8 text (byte 0xff)")


def test_control_characters_are_a_yaml_error(taskdefs: Path) -> None:
    (taskdefs / "a.yaml").write_text("version: 1\ntasks: []\x00\n")
    assert "a.yaml:2:10: control character U+0000 is not allowed" in only_message(taskdefs)


def test_past_at_is_a_warning_not_an_error(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        "version: 1\ntasks:\n  - name: once\n    task_type: diagnostics.noop\n"
        "    schedule: {at: 2020-01-01T00:00:00Z}\n",
    )
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert result.errors == ()
    (warning,) = result.warnings
    assert "has passed" in warning.message
    assert [t.name for t in result.tasks] == ["once"]


def test_missing_directory_is_a_problem(tmp_path: Path) -> None:
    result = load_taskdefs(tmp_path / "nope", TYPES, policy=POLICY)
    assert "does not exist" in result.errors[0].message


def test_cache_reuses_unchanged_files(taskdefs: Path, write: WriteTaskdef) -> None:
    write("a.yaml", "version: 1\ntasks:\n  - {name: a, task_type: diagnostics.noop}\n")
    write("b.yaml", "version: 1\ntasks:\n  - {name: b, task_type: diagnostics.noop}\n")
    cache = LoadCache()
    first = load_taskdefs(taskdefs, TYPES, cache=cache, policy=POLICY)
    write("b.yaml", "version: 1\ntasks:\n  - {name: b2, task_type: diagnostics.noop}\n")
    second = load_taskdefs(taskdefs, TYPES, cache=cache, policy=POLICY)
    assert second.files[0] is first.files[0]  # a.yaml: not parsed again
    assert second.files[1] is not first.files[1]
    assert [t.name for t in second.tasks] == ["a", "b2"]


def test_absurd_shapes_are_refused_before_validation(taskdefs: Path) -> None:
    task = "  - {name: t, task_type: diagnostics.noop}\n"
    (taskdefs / "a.yaml").write_text("version: 1\ntasks:\n" + task * 5001)
    assert "5001 tasks in one file; at most 5000" in only_message(taskdefs)


def test_a_cron_that_never_fires_is_a_warning(taskdefs: Path, write: WriteTaskdef) -> None:
    write(
        "a.yaml",
        "version: 1\ntasks:\n  - name: feb30\n    task_type: diagnostics.noop\n"
        '    schedule: {cron: "0 0 30 2 *"}\n',
    )
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert result.errors == ()
    (warning,) = result.warnings
    assert warning.line == 5
    assert "never fires: day-of-month 30 never occurs in February" in warning.message
    assert [t.name for t in result.tasks] == ["feb30"]


def test_a_step_beyond_the_range_registers_its_first_value(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    write(
        "a.yaml",
        "version: 1\ntasks:\n  - name: s\n    task_type: diagnostics.noop\n"
        '    schedule: {cron: "05 17-22/30 * * 1-5"}\n',
    )
    (task,) = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY).tasks
    assert task.config.schedule_config["cron"] == "5 17 * * 1-5"


def test_a_quoted_instant_means_the_same_as_an_unquoted_one(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    body = (
        "version: 1\ntasks:\n  - name: {}\n    task_type: diagnostics.noop\n"
        "    schedule: {{at: {}}}\n"
    )
    write("a.yaml", body.format("q", '"2030-12-01T09:00:00+02:00"'))
    write("b.yaml", body.format("u", "2030-12-01T09:00:00+02:00"))
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert result.problems == ()
    quoted, unquoted = (t.config.at_time() for t in result.tasks)
    assert quoted == unquoted


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+400", "[1, .inf]"])
def test_non_finite_numbers_are_refused_where_they_are(
    taskdefs: Path, write: WriteTaskdef, value: str
) -> None:
    write(
        "a.yaml",
        "version: 1\ntasks:\n  - name: n\n    task_type: notification.webhook\n"
        f"    parameters: {{url: 'http://127.0.0.1:9/', payload: {{deep: {{x: {value}}}}}}}\n",
    )
    message = only_message(taskdefs)
    assert ":5:" in message
    assert "not a finite number" in message
    assert "payload.deep.x" in message


def test_duplicate_names_settle_on_the_applied_owner(taskdefs: Path, write: WriteTaskdef) -> None:
    body = "version: 1\ntasks:\n  - name: {}\n    task_type: diagnostics.noop\n"
    write("owner.yaml", body.format("shared"))
    write("newcomer.yaml", body.format("shared"))
    result = load_taskdefs(taskdefs, TYPES, now=NOW, policy=POLICY)
    assert {p.path.rsplit("/", 1)[-1] for p in result.errors} == {"owner.yaml", "newcomer.yaml"}
    settled = result.settle_duplicates({"shared": "owner.yaml"})
    (error,) = settled.errors
    assert error.path.endswith("newcomer.yaml")
    assert "already applied from" in error.message
    assert [t.source for t in settled.tasks] == ["owner.yaml"]
    # An owner unknown to the files (or none): both stay in error, as without stores.
    assert len(result.settle_duplicates({"shared": "gone.yaml"}).errors) == 2


def test_a_huge_name_is_cut_in_every_message(taskdefs: Path, write: WriteTaskdef) -> None:
    huge = "x" * 100_000
    write("a.yaml", f"version: 1\ntasks:\n  - name: {huge}\n    task_type: nope\n    bogus: 1\n")
    found = messages(taskdefs)
    assert len(found) >= 2
    assert all(len(line) < 500 for line in found), [len(line) for line in found]

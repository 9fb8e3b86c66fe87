"""Which change broke it, and what is late, without stores: the recorder's reading of the
task labels, the history/explain/status views of revisions, streaks and lateness, and
the daemon's per-task series."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncd.core.lateness import Activity, FailingSince, Lateness
from syncd.core.model import Execution, TaskConfig
from syncd.core.plan import Plan, TaskPlan
from syncd.daemon.observe import Metrics, TaskSample, task_samples
from syncd.load.loader import LoadResult
from syncd.reconcile import ApplyResult, Outcome
from syncd.views.explain import Explanation, explain_text, failing_text
from syncd.views.history import execution_json, history_text, short_revision, task_label
from syncd.views.status import status_json, status_rows, status_text
from worker.labels import label_text
from worker.recording.records import (
    CONFIG_HASH_CHARS,
    GIT_REVISION_CHARS,
    TASK_NAME_CHARS,
    TaskLabels,
    record_from_json,
    record_json,
)

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
REVISION = "0123456789abcdef0123456789abcdef01234567"


def run(ok: bool = False, **changes: Any) -> Execution:
    values: dict[str, Any] = {
        "config_id": 3,
        "task_id": "t1",
        "attempt": 1,
        "is_success": ok,
        "started_at": NOW - timedelta(minutes=5),
        "completed_at": NOW - timedelta(minutes=4),
        "duration_seconds": 60.0,
        "error_message": None if ok else "ValueError: bad",
        "name": "job",
        "task_name": "job",
        "config_hash": "ab" * 32,
        "git_revision": REVISION,
    }
    return Execution(**{**values, **changes})


# ---------------------------------------------------------------- labels into rows


def test_the_three_labels_become_the_three_columns() -> None:
    labels = {"task_name": "job", "config_hash": "ab" * 32, "git_revision": f"{REVISION}-dirty"}
    assert TaskLabels.of(labels) == TaskLabels("job", "ab" * 32, f"{REVISION}-dirty")
    assert TaskLabels.of({}) == TaskLabels(None, None, None)


@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.text(max_size=300),
        st.lists(st.text(max_size=3)),
        st.dictionaries(st.text(max_size=3), st.integers()),
    )
)
def test_a_weird_label_is_null_never_an_error(value: Any) -> None:
    for name, limit in (
        ("task_name", TASK_NAME_CHARS),
        ("config_hash", CONFIG_HASH_CHARS),
        ("git_revision", GIT_REVISION_CHARS),
    ):
        text = label_text({name: value}, name, limit)
        if text is None:
            continue
        assert text == value
        assert 0 < len(text) <= limit
        assert "\x00" not in text
        text.encode("utf-8")  # storable: no lone surrogate


def test_a_long_or_unstorable_label_is_null_not_cut() -> None:
    assert label_text({"n": "x" * 65}, "n", 64) is None
    assert label_text({"n": "a\x00b"}, "n", 64) is None
    assert label_text({"n": "a\ud800"}, "n", 64) is None
    assert label_text({"n": "名前"}, "n", 64) == "名前"


def test_a_record_keeps_the_labels_through_its_json_form() -> None:
    record = run(name=None, id=None)
    row = record_json(record)
    assert (row["task_name"], row["config_hash"], row["git_revision"]) == (
        "job",
        "ab" * 32,
        REVISION,
    )
    assert record_from_json(json.loads(json.dumps(row))) == record


def test_a_spool_line_from_an_older_worker_still_reads() -> None:
    row = record_json(run(name=None, id=None))
    for added in ("task_name", "config_hash", "git_revision"):
        del row[added]
    old = record_from_json(row)
    assert (old.task_name, old.config_hash, old.git_revision) == (None, None, None)


# ---------------------------------------------------------------- history and explain


def test_revisions_are_shown_short_and_dirty_stays_visible() -> None:
    assert short_revision(REVISION) == "0123456"
    assert short_revision(f"{REVISION}-dirty") == "0123456-dirty"
    assert short_revision(None) is None
    assert short_revision("") is None


def test_history_shows_the_revision_and_a_deleted_tasks_recorded_name() -> None:
    deleted = run(config_id=None, name=None, task_name="old-job", git_revision=None)
    text = history_text([run(), deleted])
    header, first, second = text.splitlines()
    assert header.split()[:7] == ["COMPLETED", "(UTC)", "TASK", "ATTEMPT", "RESULT", "REVISION",
                                  "DURATION"]  # fmt: skip
    assert first.split()[2:6] == ["job", "1", "FAILED", "0123456"]
    assert "old-job (deleted)" in second
    assert task_label(run(config_id=None, name=None, task_name=None)) == "(deleted task ?)"


def test_history_json_carries_the_whole_revision_hash_and_recorded_name() -> None:
    shown = execution_json(run())
    assert (shown["task_name"], shown["config_hash"], shown["git_revision"]) == (
        "job",
        "ab" * 32,
        REVISION,
    )
    old = execution_json(run(task_name=None, config_hash=None, git_revision=None))
    assert (old["task_name"], old["config_hash"], old["git_revision"]) == (None, None, None)


def streak(**changes: Any) -> FailingSince:
    values: dict[str, Any] = {
        "failures": 3,
        "runs": 3,
        "revision": REVISION,
        "since": NOW,
        "succeeded_before": False,
    }
    return FailingSince(**{**values, **changes})


def test_failing_since_says_which_revision_and_what_the_run_before_says() -> None:
    assert failing_text(streak()) == "failing since revision 0123456 (3 of the last 3 runs)"
    blamed = streak(runs=5, succeeded_before=True, previous_revision="fedcba9876")
    assert failing_text(blamed) == (
        "failing since revision 0123456 (3 of the last 5 runs); the run before succeeded on"
        " fedcba9: the change is the likely cause"
    )
    same = streak(runs=5, succeeded_before=True, previous_revision=REVISION)
    assert failing_text(same).endswith("; the run before succeeded on the same revision")
    unknown = streak(revision=None)
    assert failing_text(unknown) == "failing since 2026-06-10 12:00:00 UTC (3 of the last 3 runs)"


def view(**changes: Any) -> Explanation:
    config = TaskConfig("job", "x.y", "interval", {"interval": 60})
    values: dict[str, Any] = {
        "task": TaskPlan("job", "noop", "active", 3, before=config, after=config),
        "declared": "taskdefs/a.yaml:2",
        "row": None,
        "row_times": None,
        "data_key": None,
        "record": None,
        "status_key": None,
        "status": "active",
        "executions": [run()],
        "now": NOW,
    }
    return Explanation(**{**values, **changes})


def test_explain_shows_the_streak_the_lateness_and_each_runs_revision() -> None:
    late = Lateness(True, NOW - timedelta(minutes=3), 2, 60.0)
    text = explain_text(view(failing=streak(), lateness=late))
    assert "  failing since revision 0123456 (3 of the last 3 runs)" in text
    assert "  late: no run since the fire due at 2026-06-10 11:57:00 UTC (2 missed)" in text
    (line,) = [x for x in text.splitlines() if x.strip().startswith("attempt ")]
    assert line.rstrip().endswith("rev 0123456  ValueError: bad")


def test_explain_of_a_healthy_task_and_of_one_never_run() -> None:
    on_time = Lateness(False, NOW - timedelta(minutes=1), 0, 60.0)
    healthy = explain_text(view(executions=[run(ok=True)], lateness=on_time))
    assert "  the newest run succeeded" in healthy
    assert "  on time: the fire due at 2026-06-10 11:59:00 UTC has a run" in healthy
    assert "  no runs recorded" in explain_text(view(executions=[]))


# ---------------------------------------------------------------- status


def test_status_marks_a_late_task_in_text_and_json() -> None:
    config = TaskConfig("job", "x.y", "interval", {"interval": 60})
    quiet = TaskConfig("quiet", "x.y", "interval", {"interval": 60})
    tasks = [
        TaskPlan("job", "noop", "active", 3, before=config, after=config),
        TaskPlan("quiet", "noop", "active", 4, before=quiet, after=quiet),
    ]
    activity = {
        3: Activity(NOW - timedelta(hours=1), NOW - timedelta(minutes=10)),
        4: Activity(NOW - timedelta(hours=1), NOW - timedelta(seconds=30)),
    }
    rows = status_rows(tasks, {3: "active", 4: "active"}, {}, NOW, activity=activity)

    shown = {row["name"]: row for row in status_json(rows)}
    assert (shown["job"]["late"], shown["job"]["missed_fires"]) == (True, 9)
    assert shown["job"]["expected_at"] == "2026-06-10T11:59:00+00:00"
    assert (shown["quiet"]["late"], shown["quiet"]["expected_at"]) == (False, None)
    text = status_text(rows)
    assert "active LATE" in text.splitlines()[1]
    assert "  job: late: no run since the fire due at 2026-06-10 11:59:00 UTC (9 missed)" in text
    # The grace can be set: with an hour, nobody is late.
    relaxed = status_rows(tasks, {3: "active"}, {}, NOW, activity=activity, grace_seconds=3600)
    assert not any(row.lateness.late for row in relaxed)


# ---------------------------------------------------------------- the daemon's series


def outcome(*tasks: TaskPlan, applied: bool = True) -> Outcome:
    result = ApplyResult(0, 0, 0) if applied else None
    return Outcome(LoadResult("t", (), ()), Plan(tasks=tasks), result)


def test_task_samples_follow_the_plan_and_one_activity_read() -> None:
    every = TaskConfig("a", "x.y", "interval", {"interval": 60})
    at = TaskConfig("once", "x.y", "date", {"at": (NOW - timedelta(hours=1)).isoformat()})
    tasks = (
        TaskPlan("a", "noop", "active", 1, before=every, after=every),
        TaskPlan("b", "noop", "paused", 2, before=every, after=every),
        TaskPlan("new", "create", "active", None, after=every),
        TaskPlan("gone", "delete", "deleted", 3, before=every),
        # Past its time, never run: the plan calls it expired, Redis still says active.
        TaskPlan("once", "noop", "expired", 4, before=at, after=at),
        TaskPlan("frozen", "noop", "frozen", 5, before=every),  # paused by its operator
    )
    success = NOW - timedelta(hours=2)
    activity = {
        1: Activity(NOW - timedelta(days=1), NOW - timedelta(hours=1), 1.0, success),
        2: Activity(NOW - timedelta(days=1)),
        4: Activity(NOW - timedelta(days=1)),
        5: Activity(NOW - timedelta(days=1)),
    }
    statuses = {1: "active", 2: "paused", 3: "active", 4: "active", 5: "paused"}
    samples = task_samples(outcome(*tasks), statuses, activity, NOW)
    assert samples == [
        TaskSample("a", success.timestamp(), True, 58),
        TaskSample("b", None, False, 0),  # paused: never late
        TaskSample("once", None, True, 1),
        TaskSample("frozen", None, False, 0),
    ]


def test_task_series_are_set_and_dropped_with_their_tasks() -> None:
    metrics = Metrics()
    sample = metrics.registry.get_sample_value
    metrics.record_tasks([TaskSample("a", 100.0, True, 3), TaskSample("b", None, False, 0)])
    assert sample("syncd_task_last_success_timestamp_seconds", {"task": "a"}) == 100.0
    assert sample("syncd_task_last_success_timestamp_seconds", {"task": "b"}) is None
    assert sample("syncd_task_missed_fires", {"task": "a"}) == 3
    assert sample("syncd_task_late", {"task": "a"}) == 1
    assert sample("syncd_task_late", {"task": "b"}) == 0

    metrics.record_tasks([TaskSample("b", 200.0, False, 0)])  # a deleted, b succeeded
    assert sample("syncd_task_missed_fires", {"task": "a"}) is None
    assert sample("syncd_task_late", {"task": "a"}) is None
    assert sample("syncd_task_last_success_timestamp_seconds", {"task": "b"}) == 200.0

    metrics.clear_tasks()  # leadership lost
    assert b"syncd_task_late{" not in metrics.render()

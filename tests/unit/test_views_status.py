"""The status, history and explain views: how an attempt's outcome is named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from syncd.core.model import Execution, Row, TaskConfig
from syncd.core.plan import TaskPlan
from syncd.views.explain import Explanation, explain_text
from syncd.views.history import execution_json, history_text, outcome

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def attempt(ok: bool, error: str | None = None) -> Execution:
    return Execution(
        config_id=1,
        task_id="t",
        attempt=1,
        is_success=ok,
        started_at=START,
        completed_at=START + timedelta(seconds=3),
        duration_seconds=3.0,
        error_message=error,
        id=9,
        name="job",
    )


@pytest.mark.parametrize(
    ("ok", "error", "word"),
    [
        (True, None, "ok"),
        (False, "TimeoutError: timed out after 3 s", "TIMEOUT"),
        (False, "MemoryLimitExceeded: exceeded its memory limit of 256 MiB", "MEMORY"),
        (False, "ChildDied: worker process died running the task (exit code 3)", "DIED"),
        (False, "DeadLettered: worker died 3 times running it", "DEAD"),
        (False, "ValueError: bad", "FAILED"),
        (False, "TimeoutError: the remote was slow", "FAILED"),  # the task's own TimeoutError
        (False, None, "FAILED"),
    ],
)
def test_outcome_names_how_an_attempt_ended(ok: bool, error: str | None, word: str) -> None:
    run = attempt(ok, error)
    assert outcome(run) == word
    assert execution_json(run)["outcome"] == word.lower()


def test_history_shows_a_timeout_as_such() -> None:
    text = history_text([attempt(False, "TimeoutError: timed out after 3 s")])
    header, row = text.splitlines()
    assert header.split()[:5] == ["COMPLETED", "(UTC)", "TASK", "ATTEMPT", "RESULT"]
    assert row.split()[2:5] == ["job", "1", "TIMEOUT"]


def test_explain_shows_the_rows_retry_backoff() -> None:
    config = TaskConfig(
        name="job",
        task_type="data.export",
        scheduler_type="manual",
        max_retries=4,
        retry_backoff_seconds=0.5,
        retry_backoff_max_seconds=120.0,
    )
    row = Row(id=3, config=config, stored_hash="ab" * 32, source_file="a.yaml", source_line=2)
    view = Explanation(
        task=TaskPlan(name="job", action="noop", state="inactive", config_id=3, before=config),
        declared="taskdefs/a.yaml:2",
        row=row,
        row_times=(START, None),
        data_key="syncd:data:task_3",
        record=None,
        status_key="schedule:status:3",
        status="inactive",
        executions=[],
        now=START,
    )

    lines = [line.strip() for line in explain_text(view).splitlines()]

    assert "priority 5, max_retries 4, timeout_seconds —" in lines
    assert "retry_backoff_seconds 0.5, retry_backoff_max_seconds 120" in lines

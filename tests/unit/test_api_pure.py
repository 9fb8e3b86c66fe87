"""The API's pure parts: cursors, task filters, the error mapping, the chart, redirects."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from syncd.api.errors import BadRequest, Forbidden, TooManyStreams, Unauthenticated, http_status
from syncd.api.presenters import CHART_HEIGHT, duration_chart, percent, rate_class, utc
from syncd.api.queries import Cursor
from syncd.api.reads import TaskQuery
from syncd.api.routes_console import _local
from syncd.core.errors import (
    ConflictError,
    NotFound,
    SchemaMissing,
    StoreUnavailable,
    SyncdError,
    UsageError,
)
from syncd.operate import NotPausable


def test_a_cursor_survives_its_round_trip() -> None:
    cursor = Cursor(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), 12345)
    text = cursor.encode()
    assert "=" not in text
    assert Cursor.decode(text) == cursor


@pytest.mark.parametrize(
    "text",
    ["", "!!!", base64.urlsafe_b64encode(b"[1, 2]").decode(),
     base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", 1]').decode(),  # naive: not ours
     base64.urlsafe_b64encode(b'{"a": 1}').decode(), "bm90LWEtY3Vyc29y"],
)  # fmt: skip
def test_a_cursor_it_did_not_give_out_is_a_bad_request(text: str) -> None:
    with pytest.raises(BadRequest):
        Cursor.decode(text)


ROW = {
    "name": "Nightly-Cleanup",
    "description": "Remove temp files",
    "task_type": "cleanup.temp_files",
    "queue": "data",
    "status": None,
    "sync_state": "changed in git",
}


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        (TaskQuery(), True),
        (TaskQuery(states=("missing",)), True),
        (TaskQuery(states=("changed_in_git",)), True),
        (TaskQuery(states=("Changed in git",)), True),
        (TaskQuery(states=("active", "missing")), True),
        (TaskQuery(states=("active",)), False),
        (TaskQuery(queue="data"), True),
        (TaskQuery(queue="default"), False),
        (TaskQuery(task_type="cleanup.temp_files"), True),
        (TaskQuery(task_type="cleanup"), False),
        (TaskQuery(text="nightly"), True),
        (TaskQuery(text="TEMP FILES"), True),
        (TaskQuery(text="temp_files"), True),
        (TaskQuery(text="report"), False),
    ],
)
def test_task_filters(query: TaskQuery, matches: bool) -> None:
    assert query.matches(ROW) is matches


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Unauthenticated("x"), 401, "unauthenticated"),
        (Forbidden("x"), 403, "forbidden"),
        (NotFound("x"), 404, "not_found"),
        (NotPausable("x"), 409, "not_pausable"),
        (ConflictError("x"), 409, "conflict"),
        (BadRequest("x"), 400, "bad_request"),
        (UsageError("x"), 400, "bad_request"),
        (TooManyStreams("x"), 503, "too_many_streams"),
        (SchemaMissing("x"), 503, "schema_missing"),
        (StoreUnavailable("x"), 503, "store_unavailable"),
        (SyncdError("x"), 500, "error"),
    ],
)
def test_every_error_has_one_status(error: SyncdError, status: int, code: str) -> None:
    assert http_status(error) == (status, code)


def run(seconds: float | None, ok: bool = True) -> dict[str, object]:
    return {"duration_seconds": seconds, "success": ok, "outcome": "ok" if ok else "failed",
            "completed_at": "2026-01-02T03:04:05+00:00"}  # fmt: skip


def test_the_chart_puts_the_oldest_run_left_and_scales_to_the_longest() -> None:
    chart = duration_chart([run(2.0, ok=False), run(1.0), run(None)])  # newest first
    assert chart is not None
    assert [bar.ok for bar in chart.bars] == [True, True, False]
    assert [bar.x for bar in chart.bars] == sorted(bar.x for bar in chart.bars)
    tallest = chart.bars[-1]
    assert tallest.y + tallest.height == CHART_HEIGHT
    assert tallest.height > chart.bars[1].height > chart.bars[0].height  # None drawn as 2 px
    assert chart.longest == "2.000s"
    assert duration_chart([]) is None


def test_one_run_is_a_bar_not_the_whole_chart() -> None:
    chart = duration_chart([run(1.0)])
    assert chart is not None
    assert chart.bars[0].width < chart.width / 10


def test_small_formatters() -> None:
    assert utc("2026-01-02T03:04:05+01:00") == "2026-01-02 02:04:05 UTC"
    assert utc(None) == "—"
    assert percent(0.956) == "96 %"
    assert percent(None) == "—"
    assert [rate_class(r) for r in (None, 1.0, 0.8, 0.1)] == ["none", "good", "fair", "poor"]


@pytest.mark.parametrize(
    ("asked", "went"),
    [("/tasks/a?x=1", "/tasks/a?x=1"), ("//evil.example/", "/tasks"),
     ("/\\evil.example", "/tasks"), ("https://evil.example/", "/tasks"), ("", "/tasks")],
)  # fmt: skip
def test_login_redirects_only_within_the_site(asked: str, went: str) -> None:
    assert _local(asked) == went

"""The recorder's record forms: the JSON row names exactly the written columns and reads back
to the same record; small plain results are stored as they are, others go through JSON."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.core.model import Execution
from worker.recording.records import (
    MAX_RESULT_BYTES,
    WRITTEN,
    clean_text,
    json_result,
    record_from_json,
    record_json,
)


def execution(**changes: Any) -> Execution:
    start = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "config_id": 7,
        "task_id": "abc",
        "attempt": 2,
        "is_success": False,
        "started_at": start,
        "completed_at": start + timedelta(seconds=1.5),
        "duration_seconds": 1.5,
        "error_message": "ValueError: bad",
        "result": None,
        "error_traceback": "Traceback ...",
    }
    return Execution(**{**values, **changes})


def test_the_json_row_has_exactly_the_written_columns_and_reads_back() -> None:
    record = execution(result={"rows": [1, 2]})
    row = record_json(record)
    assert tuple(row) == WRITTEN
    assert row["started_at"] == "2026-12-02T09:00:00+00:00"
    assert record_from_json(row) == record


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=80,
)


@given(json_values)
def test_a_result_is_what_a_json_round_trip_would_store(value: Any) -> None:
    import json  # noqa: PLC0415 - only this test needs the reference path

    stored = json_result(value)
    text = json.dumps(stored, allow_nan=False, ensure_ascii=False)  # storable as is
    assert "\\u0000" not in text
    assert len(text.encode()) <= MAX_RESULT_BYTES + 2 * 1024
    if isinstance(stored, dict) and stored.get("truncated") is True:
        return
    try:
        reference = json.loads(json.dumps(value, allow_nan=False, ensure_ascii=False))
    except ValueError:
        return  # NaN or infinity: stored as text, checked above
    if "\x00" not in json.dumps(value) and "\\u0000" not in json.dumps(value):
        assert stored == reference


@pytest.mark.parametrize("value", [{"ok": True}, [1, 2.5, None, "x"], "done", 3, None])
def test_small_plain_results_are_kept_as_they_are(value: Any) -> None:
    assert json_result(value) is value


def test_plain_text_is_kept_and_nul_is_replaced() -> None:
    text = "a" * 64
    assert clean_text(text, 64) is text
    assert clean_text("a\x00b", 64) == "a\ufffdb"
    assert clean_text("é" * 70, 64) == "é" * 64

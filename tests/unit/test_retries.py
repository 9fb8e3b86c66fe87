"""Retry delays: exponential, capped, jittered within [half, full] of the exponential step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.retries import retry_delay

bases = st.floats(min_value=0.01, max_value=86400, allow_nan=False)
caps = st.floats(min_value=0.01, max_value=86400, allow_nan=False)
rolls = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(st.integers(min_value=1, max_value=10_000), bases, caps, rolls)
def test_a_delay_lies_between_half_and_all_of_the_capped_step(
    retry: int, base: float, cap: float, roll: float
) -> None:
    step = min(cap, base * 2.0 ** min(retry - 1, 64))
    delay = retry_delay(retry, base, cap, lambda: roll)
    assert step / 2 <= delay <= step
    assert delay <= cap


@given(st.integers(min_value=1, max_value=60), bases, caps)
def test_the_bounds_of_the_next_retry_never_fall_below_this_one(
    retry: int, base: float, cap: float
) -> None:
    # Equal jitter keeps the waits growing: the shortest next wait is at least the
    # shortest wait now, and the longest next wait at least the longest now.
    assert retry_delay(retry + 1, base, cap, lambda: 0.0) >= retry_delay(
        retry, base, cap, lambda: 0.0
    )
    assert retry_delay(retry + 1, base, cap, lambda: 0.999) >= retry_delay(
        retry, base, cap, lambda: 0.999
    )


@pytest.mark.parametrize(("retry", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)])
def test_the_steps_double_up_to_the_cap(retry: int, expected: float) -> None:
    assert retry_delay(retry, 1.0, 10.0, lambda: 1.0) == expected


def test_no_backoff_means_at_once() -> None:
    assert retry_delay(3, 0.0, 600.0) == 0.0
    assert retry_delay(1, 5.0, 0.0) == 0.0

"""The labels the worker's machinery reads on a message, and reading them defensively.

A label is whatever the sender wrote (syncd, or anyone who can write Redis): a reader
never raises, and falls back to a default for a missing, non-numeric or non-finite value,
or to None for a text label that is not a short, storable string.
"""

from __future__ import annotations

import math
from typing import Any

RETRIES_LABEL = "_retries"  # earlier attempts of this task id (taskiq's retry convention)
DEATHS_LABEL = "_deaths"  # deliveries of this attempt that killed their process


def label_number(labels: dict[str, Any], name: str) -> float | None:
    """The label as a float, or None."""
    try:
        return float(labels[name])
    except (KeyError, TypeError, ValueError):
        return None


def label_count(labels: dict[str, Any], name: str, default: int = 0) -> int:
    """The label as a count (a finite number, truncated, at least 0), else `default`."""
    number = label_number(labels, name)
    if number is None or not math.isfinite(number):
        return default
    return max(0, int(number))


def label_seconds(labels: dict[str, Any], name: str, default: float) -> float:
    """The label as a duration (finite, at least 0), else `default`."""
    number = label_number(labels, name)
    return number if number is not None and 0 <= number < math.inf else default


def label_text(labels: dict[str, Any], name: str, limit: int) -> str | None:
    """The label as a string of at most `limit` characters that PostgreSQL stores as is
    (no NUL, no lone surrogate), else None: never cut, a cut name or hash would mislead."""
    value = labels.get(name)
    if type(value) is not str or not value or len(value) > limit or "\x00" in value:
        return None
    if value.isascii():
        return value  # the common case: names, hashes and revisions are ASCII
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value

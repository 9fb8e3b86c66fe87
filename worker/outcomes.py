"""Exceptions that end an attempt other than by the task's own success or failure.

They are raised by the worker's machinery, not by tasks, and read by the middlewares:
the retry middleware does not retry a `NoRetry`; the recorder records no outcome for a
`NoResultError` (`Requeued`); metrics count a `DeadLettered` as a dead letter.
"""

from __future__ import annotations

from taskiq.exceptions import NoResultError


class NoRetry(Exception):
    """Base of failures that another attempt cannot cure."""


class DeadLettered(NoRetry):
    """The message killed its worker too often: recorded as failed, never delivered again."""


class Requeued(NoResultError):
    """The attempt's process died; the message was sent again (no outcome to record)."""

    __template__ = "the process running the attempt died; its message was sent again"

"""Output lines that user text cannot forge: log records, tracebacks, `key=value` fields.

`schemas.text.visible` turns one string into one safe line. This module applies that rule
where lines are put together, for the daemon (`syncd.daemon.observe`) and the worker
processes alike (`worker.app`, `worker.runner`):

- `line_head`: text that begins a line, which must not read as a CI workflow command.
- `exception_text`: a traceback. Its frames come from code and keep their lines; what an
  exception says about itself (its message and notes) is the task's, and is escaped.
- `SafeFormatter`: wraps any logging formatter so each record it formats has a visible
  message and a safe traceback; `make_handlers_safe` puts it on the root handlers.
- `field_text` and `visible_json`: values of `key=value` fields and of JSON log lines.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any

from schemas.text import visible

__all__ = [
    "EscapingFormatter",
    "SafeFormatter",
    "exc_info_text",
    "exception_text",
    "field_text",
    "line_head",
    "make_handlers_safe",
    "reads_as_command",
    "safe_record",
    "visible_json",
]

# GitHub Actions reads a log line whose text, once leading blanks are trimmed, starts with
# this as a workflow command (`::error file=...::message` becomes an annotation).
COMMAND_MARK = "::"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
Redact = Callable[[str], str]


def reads_as_command(text: str) -> bool:
    """Whether a line beginning with `text` would be read as a workflow command."""
    return text.lstrip().startswith(COMMAND_MARK)


def line_head(text: str) -> str:
    """`text` made visible and safe to begin a line: a leading colon is escaped
    (`\\x3a:error` instead of `::error`). One colon is enough, since the text that follows
    it on the line (`NAME: reason`) may bring the second. Applying it twice changes nothing."""
    shown = visible(text)
    if not shown.lstrip().startswith(":"):
        return shown
    lead = len(shown) - len(shown.lstrip())
    return f"{shown[:lead]}\\x3a{shown[lead + 1 :]}"


# -- tracebacks ----------------------------------------------------------------------


def exception_text(exc: BaseException, redact: Redact | None = None) -> str:
    """The traceback of `exc` and of the exceptions chained to it, laid out as Python
    prints it, except that each exception's message and notes are escaped onto their
    own line(s). `redact` (secrets out) runs on that text before it is escaped, so a
    secret holding a newline still matches."""
    return "".join(_chained(exc, set(), redact or _same)).rstrip("\n")


def exc_info_text(ei: ExcInfo) -> str:
    """`exception_text` for a record's `exc_info` (`exc_info=True` outside an `except`
    gives a tuple of Nones, which logging prints as `NoneType: None`)."""
    return "NoneType: None" if ei[1] is None else exception_text(ei[1])


def _same(text: str) -> str:
    return text


def _chained(exc: BaseException, seen: set[int], redact: Redact) -> list[str]:
    seen.add(id(exc))  # a cycle of causes and contexts is shown once
    cause, context = exc.__cause__, exc.__context__
    lines: list[str] = []
    if cause is not None and id(cause) not in seen:
        lines += [*_chained(cause, seen, redact), _CAUSE]
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += [*_chained(context, seen, redact), _CONTEXT]
    return lines + _own(exc, seen, redact)


def _own(exc: BaseException, seen: set[int], redact: Redact) -> list[str]:
    lines: list[str] = []
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += _kept_lines("".join(traceback.format_tb(exc.__traceback__)))
    # The one place a task's words reach a traceback: one line each, whatever they hold.
    lines.append(line_head(redact(_headline(exc))) + "\n")
    for note in _notes(exc):
        lines += _kept_lines(redact(note))
    if isinstance(exc, BaseExceptionGroup):
        for index, member in enumerate(exc.exceptions, 1):
            lines.append(f"  +---- {index} ----\n")
            lines += [
                f"  | {line}" for line in _kept_lines("".join(_chained(member, seen, redact)))
            ]
    return lines


def _kept_lines(text: str) -> list[str]:
    """Multi-line text that keeps its line breaks (frames, notes), each line made safe.

    Notes keep theirs because code adds them: the runner's note is the child's traceback,
    itself built by `exception_text` in the child, where its message could be told apart."""
    return [line_head(line) + "\n" for line in text.rstrip("\n").split("\n")]


def _headline(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ not in ("__main__", "builtins"):
        name = f"{kind.__module__}.{name}"
    text = _text_of(exc)
    return f"{name}: {text}" if text else name


def _text_of(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a __str__ that raises must not lose the whole log line
        return f"<{type(value).__name__} str() failed>"


def _notes(exc: BaseException) -> list[str]:
    notes = getattr(exc, "__notes__", None)
    if not isinstance(notes, list | tuple):
        return []
    return [note if isinstance(note, str) else _text_of(note) for note in notes]


# -- log records ---------------------------------------------------------------------


def safe_record(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of `record` whose message is one visible line and whose traceback is
    `exception_text`'s (the original stays as it is for any other handler)."""
    copy = logging.makeLogRecord(vars(record))
    copy.msg, copy.args = line_head(record.getMessage()), None
    if record.exc_info:
        copy.exc_text = exc_info_text(record.exc_info)
    elif record.exc_text:  # formatted elsewhere: its line breaks cannot be told apart
        copy.exc_text = "".join(_kept_lines(record.exc_text)).rstrip("\n")
    return copy


class SafeFormatter(logging.Formatter):
    """Formats what `inner` would, from `safe_record(record)`.

    A formatter, not a filter: it runs after every filter of the handler, so a filter
    that redacts secrets (worker.secrets) still sees the message as the task wrote it.
    """

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        # How a worker hands its log format to its children (worker.runner reads _fmt).
        self._fmt = self.inner._fmt
        self.datefmt = self.inner.datefmt

    def format(self, record: logging.LogRecord) -> str:
        return self.inner.format(safe_record(record))


def make_handlers_safe(logger: logging.Logger | None = None) -> None:
    """Wrap the formatter of each handler of `logger` (default: the root) in a
    SafeFormatter, once: calling it again changes nothing."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, SafeFormatter):
            handler.setFormatter(SafeFormatter(handler.formatter))


class EscapingFormatter(logging.Formatter):
    """A base for formatters that build their own line: tracebacks as `exception_text`."""

    def formatException(self, ei: Any) -> str:
        return exc_info_text(ei)


# -- field values --------------------------------------------------------------------


def field_text(value: object) -> str:
    """A `key=value` field's value on one line that cannot pass for more fields: quoted
    JSON-style when it is empty or holds a blank, `=` or `"`."""
    text = visible(_text_of(value))
    if text and not any(c.isspace() or c in '="' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def visible_json(value: Any) -> Any:
    """`value` with every string in it (keys too) made visible; other JSON values as they
    are, anything else as its visible str()."""
    if isinstance(value, str):
        return visible(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {visible(_text_of(k)): visible_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [visible_json(item) for item in value]
    return visible(_text_of(value))

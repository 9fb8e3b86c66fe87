"""Log lines user text cannot forge: the daemon's formatters, the worker's SafeFormatter,
tracebacks whose exception messages are escaped, and the `::` rule for line starts."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from syncd.core.logtext import (
    SafeFormatter,
    exception_text,
    field_text,
    line_head,
    make_handlers_safe,
    reads_as_command,
)
from syncd.core.problems import Problem
from syncd.daemon.observe import JsonFormatter, TextFormatter, fields
from worker.runner import parent_log_setup
from worker.secrets import redacted_logs

FORGED = "boom\n[CRITICAL] forged\r\x1b[2J\u2028::error file=a.yaml::x\u202eok"
TASKIQ_FORMAT = "[%(asctime)s][%(name)s][%(levelname)-7s][%(processName)s] %(message)s"


class HostileError(RuntimeError):
    pass


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def record(
    msg: str, *args: object, exc: BaseException | None = None, **extra: object
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    made = logging.LogRecord("syncd.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    made.__dict__.update(extra)
    return made


def assert_no_forged_line(text: str) -> None:
    for line in text.split("\n"):
        assert not line.lstrip().startswith(("[CRITICAL]", "::")), line
        assert [c for c in "\x1b\r\u2028\u202e" if c in line] == [], line


# ---------------------------------------------------------------- line starts


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("::error::x", "\\x3a:error::x"),
        ("  ::warning file=a::b", "  \\x3a:warning file=a::b"),
        ("\u3000::notice::x", "\u3000\\x3a:notice::x"),
        ("a::error::x", "a::error::x"),
        (":", "\\x3a"),  # `NAME: reason` would begin `::`
        ("\n::error::x", "\\n::error::x"),
    ],
)
def test_line_head_never_begins_with_a_workflow_command(text: str, shown: str) -> None:
    assert line_head(text) == shown
    assert not reads_as_command(line_head(text))
    assert line_head(line_head(text)) == line_head(text)  # no double escape


def test_a_problem_whose_path_reads_as_a_command_is_shown_as_a_relative_path() -> None:
    problem = Problem("::error file=x.yaml::pwned.yaml", 2, 9, "bad\n::error::again")
    assert str(problem) == "./::error file=x.yaml::pwned.yaml:2:9: bad\\n::error::again"
    assert problem.to_json()["path"] == "::error file=x.yaml::pwned.yaml"  # JSON: not a line
    assert str(Problem("taskdefs/a.yaml", 1, 1, "ok")) == "taskdefs/a.yaml:1:1: ok"


def test_a_problem_is_one_line_and_its_json_has_no_raw_control_character() -> None:
    problem = Problem("dir/a\nb\u202e.yaml", 3, 1, "name 'x\r\n ok: 7 task(s)'\x1b[2J")
    assert str(problem) == "dir/a\\nb\\u202e.yaml:3:1: name 'x\\r\\n ok: 7 task(s)'\\x1b[2J"
    assert problem.to_json() == {
        "path": "dir/a\\nb\\u202e.yaml",
        "line": 3,
        "col": 1,
        "severity": "error",
        "message": "name 'x\\r\\n ok: 7 task(s)'\\x1b[2J",
    }


# ---------------------------------------------------------------- tracebacks


def test_a_traceback_keeps_its_frames_and_escapes_the_message() -> None:
    text = exception_text(raised(HostileError(FORGED)))
    lines = text.split("\n")
    assert lines[0] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') and "in raised" in line for line in lines)
    assert lines[-1].startswith("tests.unit.test_logtext.HostileError: boom\\n[CRITICAL] forged")
    assert_no_forged_line(text)


def test_a_chain_of_causes_and_notes_is_escaped_throughout() -> None:
    try:
        try:
            raise ValueError("first\n::error::cause")
        except ValueError as inner:
            outer = HostileError("second\n[CRITICAL] forged")
            outer.add_note("note one\x1b[31m")
            outer.add_note("::error::from a note")
            raise outer from inner
    except HostileError as caught:
        text = exception_text(caught)
    assert "ValueError: first\\n::error::cause" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert "note one\\x1b[31m" in text
    assert "\\x3a:error::from a note" in text
    assert text.index("ValueError") < text.index("HostileError")  # Python's order
    assert_no_forged_line(text)


def test_context_cycles_and_groups_are_formatted_once_and_safely() -> None:
    first, second = HostileError("a\n[CRITICAL] one"), ValueError("b\n::error::two")
    first.__context__, second.__context__ = second, first  # a cycle must not recurse
    text = exception_text(first)
    assert "During handling of the above exception" in text
    group = raised(ExceptionGroup("many\nlines", [HostileError("x\n[CRITICAL] y"), second]))
    text = exception_text(group)
    assert "ExceptionGroup: many\\nlines (2 sub-exceptions)" in text
    assert "  | tests.unit.test_logtext.HostileError: x\\n[CRITICAL] y" in text
    assert_no_forged_line(text)


def test_a_str_that_raises_does_not_lose_the_traceback() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert "Unprintable: <Unprintable str() failed>" in exception_text(raised(Unprintable()))


def test_redaction_runs_before_escaping_so_a_secret_with_a_newline_still_matches() -> None:
    secret = "line1\nline2"
    text = exception_text(
        raised(HostileError(f"token {secret} leaked")), lambda s: s.replace(secret, "***")
    )
    assert "token *** leaked" in text
    assert "line1" not in text


# ---------------------------------------------------------------- the worker's formatter


@pytest.fixture
def root_log() -> Iterator[io.StringIO]:
    """The root logger as taskiq's command line leaves it: one stream handler, its format."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(TASKIQ_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_the_worker_log_shows_a_task_message_on_one_line(root_log: io.StringIO) -> None:
    make_handlers_safe()
    make_handlers_safe()  # idempotent: wrapped once
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler.formatter, SafeFormatter)
    assert not isinstance(handler.formatter.inner, SafeFormatter)
    logging.getLogger("syncd.notification").warning("%s", FORGED)
    out = root_log.getvalue()
    assert out.count("\n") == 1
    assert "[syncd.notification][WARNING]" in out
    assert "boom\\n[CRITICAL] forged\\r\\x1b[2J\\u2028::error" in out
    assert_no_forged_line(out)


def test_the_worker_log_escapes_an_exception_and_keeps_the_record(root_log: io.StringIO) -> None:
    make_handlers_safe()
    original = record("Exception found while executing function.", exc=raised(HostileError(FORGED)))
    logging.getLogger().handlers[0].handle(original)
    out = root_log.getvalue()
    assert "Traceback (most recent call last):" in out
    assert "HostileError: boom\\n[CRITICAL] forged" in out
    assert_no_forged_line(out)
    assert original.exc_text is None  # another handler still formats its own way


def test_secrets_are_redacted_before_the_message_is_escaped(root_log: io.StringIO) -> None:
    make_handlers_safe()
    with redacted_logs(["pem\nkey"]):
        logging.getLogger("syncd.notification").info("leaked: %s", "pem\nkey")
    out = root_log.getvalue()
    assert "leaked: ***" in out
    assert "pem" not in out


def test_children_get_the_format_string_through_the_wrapper(root_log: io.StringIO) -> None:
    make_handlers_safe()
    assert parent_log_setup() == (logging.INFO, TASKIQ_FORMAT)


def test_a_preformatted_traceback_keeps_its_lines_without_raw_controls() -> None:
    made = record("failed")
    made.exc_text = "Traceback\n  File x\nValueError: a\x1b[2J"
    out = SafeFormatter(logging.Formatter("%(message)s")).format(made)
    assert out == "failed\nTraceback\n  File x\nValueError: a\\x1b[2J"


# ---------------------------------------------------------------- the daemon's formatters


def test_text_fields_cannot_forge_a_field_or_a_line() -> None:
    made = record(
        "task %s failed",
        "x\n2026-01-01T00:00:00Z INFO forged",
        **fields(name="a b=c", path="p\nq", empty="", plain="ok", count=3),
    )
    line = TextFormatter().format(made)
    assert "\n" not in line
    assert line.endswith(
        ': task x\\n2026-01-01T00:00:00Z INFO forged failed name="a b=c" path=p\\nq '
        'empty="" plain=ok count=3'
    )


def test_field_text_quotes_what_could_split_a_field() -> None:
    assert field_text('say "hi"') == '"say \\"hi\\""'
    assert field_text("tab\there") == "tab\\there"
    assert field_text("nbsp\u00a0x") == '"nbsp\u00a0x"'
    assert field_text(None) == "None"


def test_text_formatter_tracebacks_escape_the_exception_message() -> None:
    made = record("reconcile failed", exc=raised(HostileError(FORGED)), **fields(trigger="t"))
    text = TextFormatter().format(made)
    first, *rest = text.split("\n")
    assert first.endswith("reconcile failed trigger=t")
    assert rest[0] == "Traceback (most recent call last):"
    assert_no_forged_line(text)


def test_json_lines_stay_one_valid_object_with_visible_strings() -> None:
    made = record(
        "problem %s",
        "a\u2028b\u202e",
        exc=raised(HostileError(FORGED)),
        **fields(path="x\n::error::y", nested={"k\x1b": ["v\x85"]}, count=2),
    )
    line = JsonFormatter().format(made)
    assert [c for c in "\n\u2028\u202e" if c in line] == []
    entry = json.loads(line)
    assert entry["message"] == "problem a\\u2028b\\u202e"
    assert entry["path"] == "x\\n::error::y"
    assert entry["nested"] == {"k\\x1b": ["v\\x85"]}
    assert entry["count"] == 2
    assert "HostileError: boom\\n[CRITICAL] forged" in entry["exception"]
    assert_no_forged_line(entry["exception"])


def test_json_formatter_handles_exc_info_true_outside_an_except() -> None:
    made = record("no exception")
    made.exc_info = sys.exc_info()
    assert json.loads(JsonFormatter().format(made))["exception"] == "NoneType: None"

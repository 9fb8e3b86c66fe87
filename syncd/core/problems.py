"""Problems found in taskdefs: where (`path:line:col`) and what, sortable and printable.

A Problem is a value, not an exception: the loader collects every one of them across all
files so the user sees them all at once, then the caller decides whether to raise. Its
path and message hold what the author wrote (a file name, a task name, a key), so both are
shown with `visible`: one Problem is always one line, whatever they contain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.text import visible
from syncd.core.logtext import reads_as_command

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Problem:
    """One finding in one file; `line` and `col` are 1-based (0 when unknown)."""

    path: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{shown_path(self.path)}:{self.line}:{self.col}: {prefix}{visible(self.message)}"

    def to_json(self) -> dict[str, object]:
        return {
            "path": visible(self.path),
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "message": visible(self.message),
        }


def shown_path(path: str) -> str:
    """`path` as the start of a line: visible, and `./`-prefixed when the line would
    otherwise read as a CI workflow command (a file named `::error ...yaml`, or `:` whose
    line would begin `::0:0`); still a valid path."""
    shown = visible(path)
    return f"./{shown}" if reads_as_command(f"{shown}:") else shown

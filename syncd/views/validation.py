"""What `syncd validate` prints besides the problems: a one-line summary, or the JSON report.

Pure functions of the problems found and a few counts. The JSON report is the
`validate --format json` contract (`format_version` 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from syncd.core.problems import Problem

REPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Validation:
    """The outcome of loading one taskdefs directory, as the views need it."""

    problems: Sequence[Problem]
    files: int
    tasks: int  # valid tasks (of files without errors)
    broken_files: int

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> int:
        return len(self.problems) - self.errors


def validation_report(result: Validation) -> dict[str, Any]:
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "valid": not result.errors,
        "files": result.files,
        "tasks": result.tasks,
        "errors": result.errors,
        "warnings": result.warnings,
        "problems": [p.to_json() for p in result.problems],
    }


def validation_summary(result: Validation) -> str:
    if result.errors:
        return (
            f"{result.errors} error(s), {result.warnings} warning(s) "
            f"in {result.broken_files} of {result.files} file(s)"
        )
    return f"ok: {result.tasks} task(s) in {result.files} file(s)"

"""Data tasks: summarise files into small reports other systems can pick up."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

from pydantic import Field

from worker.registry import task
from worker.tasks.params import Params


class CsvSummaryParams(Params):
    source: Annotated[str, Field(min_length=1, description="CSV file with a header row")]
    column: Annotated[str, Field(min_length=1, description="numeric column to aggregate")]
    output: Annotated[str | None, Field(description="write the summary here as JSON")] = None


@task("data.csv_summary", params=CsvSummaryParams, queue="data")
def csv_summary(params: CsvSummaryParams) -> dict[str, float | int]:
    """Count rows and sum / min / max one numeric column of a CSV file."""
    summary = _summarise(Path(params.source), params.column)
    if params.output:
        Path(params.output).write_text(json.dumps(summary))
    return summary


def _summarise(source: Path, column: str) -> dict[str, float | int]:
    rows, total = 0, 0.0
    low, high = float("inf"), float("-inf")
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise KeyError(f"column {column!r} not in {source}")
        for row in reader:
            value = float(row[column])
            rows += 1
            total += value
            low, high = min(low, value), max(high, value)
    if not rows:
        return {"rows": 0, "sum": 0.0}
    return {"rows": rows, "sum": total, "min": low, "max": high, "mean": total / rows}


class DirectoryUsageParams(Params):
    path: Annotated[str, Field(min_length=1)]
    pattern: str = "*"


@task("data.directory_usage", params=DirectoryUsageParams, queue="data")
def directory_usage(params: DirectoryUsageParams) -> dict[str, int]:
    """Count files and bytes under a directory (capacity reports)."""
    return _usage(Path(params.path), params.pattern)


def _usage(root: Path, pattern: str) -> dict[str, int]:
    files = total = 0
    for path in root.rglob(pattern):
        if path.is_file() and not path.is_symlink():
            files += 1
            total += path.stat().st_size
    return {"files": files, "bytes": total}

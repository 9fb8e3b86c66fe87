"""Data tasks: summarise files into small reports other systems can pick up.

Files are read and written below the operator policy's allowed roots only, never through a
link (worker/confine.py). A CSV that cannot be parsed fails with the row and the column,
never with what the row holds: the error is recorded, and the file may not be the
author's to read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

from schemas.kinds import ConfinedPath, GlobPattern
from worker.confine import open_dir, open_file, walk_files, write_atomic
from worker.policy import active_policy
from worker.registry import task
from worker.tasks.params import Params


class CsvSummaryParams(Params):
    source: Annotated[ConfinedPath, Field(description="CSV file with a header row")]
    column: Annotated[str, Field(min_length=1, description="numeric column to aggregate")]
    output: Annotated[ConfinedPath | None, Field(description="write the summary here as JSON")] = (
        None
    )


class CsvProblem(ValueError):
    """The CSV file cannot be summarised (the message names the row, never its content)."""


@task("data.csv_summary", params=CsvSummaryParams, queue="data")
def csv_summary(params: CsvSummaryParams) -> dict[str, float | int]:
    """Count rows and sum / min / max one numeric column of a CSV file."""
    roots = active_policy().paths.allow
    with open_file(params.source, roots) as raw:
        summary = _summarise(_values(raw, params.source, params.column))
    if params.output:
        write_atomic(params.output, roots, json.dumps(summary).encode())
    return summary


def _summarise(values: Iterator[float]) -> dict[str, float | int]:
    rows, total = 0, 0.0
    low, high = float("inf"), float("-inf")
    for value in values:
        rows += 1
        total += value
        low, high = min(low, value), max(high, value)
    if not rows:
        return {"rows": 0, "sum": 0.0}
    return {"rows": rows, "sum": total, "min": low, "max": high, "mean": total / rows}


def _values(raw: io.BufferedReader, source: str, column: str) -> Iterator[float]:
    """The column's value in each row; every error says where, none says what was read."""
    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
    reader = csv.DictReader(text)
    where = "the header row"
    try:
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise CsvProblem(f"{source}: no column {column!r} in the header row")
        for row, record in enumerate(reader, start=1):
            yield _number(record.get(column), f"{source}: row {row}", column)
            where = f"row {row + 1}"
    except UnicodeDecodeError:
        raise CsvProblem(f"{source}: {where} is not UTF-8 text") from None
    except csv.Error:
        raise CsvProblem(f"{source}: {where} is not valid CSV") from None
    finally:
        text.detach()  # the caller closes the file


def _number(value: str | None, where: str, column: str) -> float:
    if value is None:
        raise CsvProblem(f"{where}: column {column!r} is missing")
    try:
        return float(value)
    except ValueError:
        raise CsvProblem(f"{where}: column {column!r} is not a number") from None


class DirectoryUsageParams(Params):
    path: Annotated[ConfinedPath, Field(description="directory to measure")]
    pattern: Annotated[
        GlobPattern, Field(description="files to count, relative to `path`, at any depth")
    ] = "*"


@task("data.directory_usage", params=DirectoryUsageParams, queue="data")
def directory_usage(params: DirectoryUsageParams) -> dict[str, int]:
    """Count regular files and bytes under a directory (capacity reports)."""
    files = total = 0
    with open_dir(params.path, active_policy().paths.allow) as top:
        for found in walk_files(top, params.pattern, params.path):
            files += 1
            total += found.stat.st_size
    return {"files": files, "bytes": total}

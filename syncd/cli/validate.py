"""`syncd validate [DIR]` and `syncd schema`: offline, no store touched (not even imported)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from schemas.policy import json_schema as policy_json_schema
from schemas.taskdef import json_schema
from syncd.cli.common import catalog, print_json
from syncd.load.loader import LoadResult, load_taskdefs
from syncd.views.validation import Validation, validation_report, validation_summary


def cmd_validate(args: argparse.Namespace) -> int:
    tasks = catalog()
    result = load_taskdefs(args.dir, tasks.params, now=datetime.now(UTC), policy=tasks.policy)
    validation = validation_of(result)
    if args.format == "json":
        print_json(validation_report(validation))
    else:
        for problem in result.problems:
            print(problem)
        print(validation_summary(validation), file=sys.stderr)
    return 1 if result.errors else 0


def validation_of(result: LoadResult) -> Validation:
    return Validation(
        result.problems, len(result.files), len(result.tasks), len(result.broken_sources)
    )


def cmd_schema(args: argparse.Namespace) -> int:
    print_json(policy_json_schema() if args.policy else json_schema())
    return 0

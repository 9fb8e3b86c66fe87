"""`syncd plan` and `syncd sync`: one reconcile, printed as text, markdown or JSON.

`plan` is a dry run against the live stores (drift included); `plan --against REF` is
offline, from git alone: the taskdefs at REF stand in for the stores, as a perfect sync
of them would have left them, and the working tree is planned against that with the same
planner. Exit codes: 0 done, 1 an error, 2 changes (with `--detailed-exitcode`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from schemas.text import visible
from syncd.adapters.git import files_at
from syncd.cli.common import catalog, print_json, progress_printer
from syncd.cli.options import guard_options, settings_from
from syncd.core.guards import SyncOptions
from syncd.core.offline import applied_state
from syncd.core.plan import Plan, plan
from syncd.core.problems import Problem
from syncd.load.loader import build_desired, load_taskdef_blobs, load_taskdefs
from syncd.views.plan_json import render_json
from syncd.views.plan_markdown import render_markdown
from syncd.views.plan_text import render_text


def cmd_plan(args: argparse.Namespace) -> int:
    if args.against:
        return _plan_against(args)
    return _reconcile(args, SyncOptions(dry_run=True))


def cmd_sync(args: argparse.Namespace) -> int:
    return _reconcile(args, guard_options(args, settings_from(args), dry_run=args.dry_run))


def _reconcile(args: argparse.Namespace, options: SyncOptions) -> int:
    # Imported here, not above: `plan --against` is offline and must not load the drivers.
    from syncd.reconcile import open_stores, reconcile_once  # noqa: PLC0415

    with open_stores(settings_from(args)) as stores:
        outcome = reconcile_once(
            Path(args.dir),
            stores,
            catalog(),
            datetime.now(UTC),
            options=options,
            progress=progress_printer(),
        )
    for problem in outcome.loaded.problems:
        print(problem, file=sys.stderr)
    print_plan(outcome.plan, args, outcome.loaded.problems)
    for reason in outcome.refusals:
        print(f"error: {visible(str(reason))}", file=sys.stderr)
    if outcome.applied is not None:
        applied = outcome.applied
        print(
            f"Applied: {applied.rows_written} row(s) written, {applied.rows_deleted} deleted, "
            f"{applied.redis_ops} Redis operation(s).",
            file=sys.stderr,
        )
    if outcome.loaded.errors or (outcome.refusals and not options.dry_run) or outcome.plan.errors:
        return 1
    return 2 if args.detailed_exitcode and not outcome.plan.is_empty else 0


def _plan_against(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    tasks = catalog()
    root = Path(args.dir)
    base_loaded = load_taskdef_blobs(
        files_at(args.against, root), args.dir, tasks.params, now, tasks.policy
    )
    head_loaded = load_taskdefs(root, tasks.params, now=now, policy=tasks.policy)
    # A name REF already declares stays with REF's file; a newcomer reusing it is the error.
    head_loaded = head_loaded.settle_duplicates({t.name: t.source for t in base_loaded.tasks})
    for problem in head_loaded.problems:
        print(problem, file=sys.stderr)
    layout = settings_from(args).layout
    base = build_desired(base_loaded, tasks, None)
    the_plan = plan(
        build_desired(head_loaded, tasks, None), applied_state(base, now, layout), now, layout
    )
    print_plan(the_plan, args, head_loaded.problems)
    if head_loaded.errors:
        return 1
    return 2 if args.detailed_exitcode and not the_plan.is_empty else 0


def print_plan(the_plan: Plan, args: argparse.Namespace, problems: Sequence[Problem] = ()) -> None:
    """The plan in the chosen format; a markdown comment also lists the taskdef problems
    (the other formats leave them to stderr)."""
    if args.format == "json":
        print_json(render_json(the_plan))
    elif args.format == "markdown":
        print(render_markdown(the_plan, now=datetime.now(UTC), problems=problems))
    else:
        color = sys.stdout.isatty() and not args.no_color
        print(render_text(the_plan, color=color, verbose=args.verbose, now=datetime.now(UTC)))

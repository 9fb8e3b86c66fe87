"""The `syncd` command line: parse arguments, wire adapters, print, and map errors to exit codes.

One plain function per command. Only `SyncdError` is caught: it becomes one line per
problem on stderr and exit code 1. Anything else is a bug and shows its traceback with
`--debug`; without it, a one-line message asks for a bug report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from syncd.errors import SyncdError
from syncd.load import LoadResult, load_taskdefs
from syncd.plans import Plan
from syncd.reconcile import SyncOptions
from syncd.settings import Settings
from syncd.state import TaskCatalog

DEFAULT_DIR = "taskdefs"

Command = Callable[[argparse.Namespace], int]


def catalog() -> TaskCatalog:
    """The worker's registry as data (DESIGN §3: passed in, not imported all over syncd)."""
    from worker.tasks import registry

    return TaskCatalog(registry.params_models(), {t.name: t.queue for t in registry})


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k in ("database_url", "redis_url") if (v := getattr(args, k, None))}
    return Settings(**overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    result = load_taskdefs(args.dir, catalog().params, now=datetime.now(UTC))
    if args.format == "json":
        _print_json(validation_report(result))
    else:
        for problem in result.problems:
            print(problem)
        print(validation_summary(result), file=sys.stderr)
    return 1 if result.errors else 0


def validation_report(result: LoadResult) -> dict[str, Any]:
    return {
        "format_version": 1,
        "valid": not result.errors,
        "files": len(result.files),
        "tasks": len(result.tasks),
        "errors": len(result.errors),
        "warnings": len(result.warnings),
        "problems": [p.to_json() for p in result.problems],
    }


def validation_summary(result: LoadResult) -> str:
    if result.errors:
        return (
            f"{len(result.errors)} error(s), {len(result.warnings)} warning(s) "
            f"in {len(result.broken_sources)} of {len(result.files)} file(s)"
        )
    return f"ok: {len(result.tasks)} task(s) in {len(result.files)} file(s)"


def cmd_migrate(args: argparse.Namespace) -> int:
    from syncd.migrate import migrate

    result = migrate(settings_from(args).database_url)
    if result.created_database:
        print("created database", file=sys.stderr)
    if result.from_revision == result.to_revision:
        print(f"database schema is up to date (revision {result.to_revision})", file=sys.stderr)
    else:
        print(
            f"upgraded database schema {result.from_revision or 'empty'} -> {result.to_revision}",
            file=sys.stderr,
        )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.against:
        return _plan_against(args)
    return _reconcile(args, SyncOptions(dry_run=True))


def cmd_sync(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    max_deletes = settings.max_deletes if args.max_deletes is None else args.max_deletes
    options = SyncOptions(
        dry_run=args.dry_run, allow_empty=args.allow_empty, max_deletes=max_deletes
    )
    return _reconcile(args, options)


def _reconcile(args: argparse.Namespace, options: SyncOptions) -> int:
    from syncd.reconcile import open_stores, reconcile_once

    with open_stores(settings_from(args)) as stores:
        outcome = reconcile_once(
            Path(args.dir),
            stores,
            catalog(),
            datetime.now(UTC),
            options=options,
            progress=_progress_printer() if sys.stderr.isatty() else None,
        )
    for problem in outcome.loaded.problems:
        print(problem, file=sys.stderr)
    _print_plan(outcome.plan, args)
    for reason in outcome.refusals:
        print(f"error: {reason}", file=sys.stderr)
    if outcome.applied is not None:
        applied = outcome.applied
        print(
            f"Applied: {applied.rows_written} row(s) written, {applied.rows_deleted} deleted, "
            f"{applied.redis_ops} Redis operation(s).",
            file=sys.stderr,
        )
    if outcome.loaded.errors or (outcome.refusals and not options.dry_run) or outcome.plan.errors:
        return 1
    return 2 if getattr(args, "detailed_exitcode", False) and not outcome.plan.is_empty else 0


def _plan_against(args: argparse.Namespace) -> int:
    from syncd.gitinfo import files_at
    from syncd.load import load_taskdef_blobs
    from syncd.offline import applied_state
    from syncd.plans import plan
    from syncd.reconcile import build_desired

    now = datetime.now(UTC)
    tasks = catalog()
    root = Path(args.dir)
    base_loaded = load_taskdef_blobs(files_at(args.against, root), args.dir, tasks.params, now)
    head_loaded = load_taskdefs(root, tasks.params, now=now)
    for problem in head_loaded.problems:
        print(problem, file=sys.stderr)
    layout = settings_from(args).layout
    base = build_desired(base_loaded, tasks, None)
    the_plan = plan(
        build_desired(head_loaded, tasks, None), applied_state(base, now, layout), now, layout
    )
    _print_plan(the_plan, args)
    if head_loaded.errors:
        return 1
    return 2 if args.detailed_exitcode and not the_plan.is_empty else 0


def _print_plan(the_plan: Plan, args: argparse.Namespace) -> None:
    from syncd.render import render_json, render_markdown, render_text

    if args.format == "json":
        _print_json(render_json(the_plan))
    elif args.format == "markdown":
        print(render_markdown(the_plan, now=datetime.now(UTC)))
    else:
        color = sys.stdout.isatty() and not args.no_color
        print(render_text(the_plan, color=color, verbose=args.verbose, now=datetime.now(UTC)))


def _progress_printer() -> Callable[[str, int, int], None]:
    def show(phase: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{phase}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def cmd_run(args: argparse.Namespace) -> int:
    from syncd.reconcile import open_stores
    from syncd.trigger import trigger
    from worker.broker import WorkerSettings, make_broker
    from worker.tasks import registry

    settings = settings_from(args)
    broker = make_broker(registry, WorkerSettings(redis_url=settings.redis_url))
    with open_stores(settings) as stores:
        task_id = trigger(stores.db, broker, dict(catalog().queues), args.name)
    print(f"enqueued {args.name} as task {task_id}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    from syncd.operate import pause
    from syncd.reconcile import open_stores

    with open_stores(settings_from(args)) as stores:
        previous = pause(stores.db, stores.redis, args.name)
    print(f"paused {args.name} (was {previous}); `syncd resume {args.name}` lifts it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from syncd.operate import resume
    from syncd.reconcile import open_stores

    with open_stores(settings_from(args)) as stores:
        status = resume(stores.db, stores.redis, args.name, datetime.now(UTC))
    print(f"resumed {args.name}: {status}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from syncd.devstack import up

    return up(args.dir, args.http_port)


def cmd_schema(args: argparse.Namespace) -> int:
    from schemas.taskdef import json_schema

    _print_json(json_schema())
    return 0


def _print_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=out or sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd", description="GitOps sync for scheduled background tasks."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check taskdefs offline")
    validate.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    validate.add_argument("--format", choices=("text", "json"), default="text")
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the taskdef format")
    schema.set_defaults(func=cmd_schema)

    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    _store_flags(migrate)
    migrate.set_defaults(func=cmd_migrate)

    plan = commands.add_parser("plan", help="show what sync would change")
    _plan_flags(plan)
    plan.add_argument(
        "--against",
        metavar="REF",
        help="offline: plan the working tree against the taskdefs at git REF",
    )
    plan.set_defaults(func=cmd_plan)

    sync = commands.add_parser("sync", help="make PostgreSQL and Redis match the taskdefs")
    _plan_flags(sync)
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    add_guard_flags(sync)
    sync.set_defaults(func=cmd_sync)

    run = commands.add_parser("run", help="enqueue a task now (manual tasks, ad-hoc runs)")
    run.add_argument("name")
    _store_flags(run)
    run.set_defaults(func=cmd_run)

    up = commands.add_parser(
        "up", help="run daemon, scheduler and a worker in the foreground (demo, development)"
    )
    up.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    up.add_argument("--http-port", type=int, default=9464)
    up.set_defaults(func=cmd_up)

    for name, func, text in (
        ("pause", cmd_pause, "pause a task's schedule (sync keeps it paused)"),
        ("resume", cmd_resume, "lift a pause (missed runs are not sent)"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name")
        _store_flags(sub)
        sub.set_defaults(func=func)

    from syncd.inspect_cli import add_inspect_commands
    from syncd.watch import add_watch_command

    add_watch_command(commands)
    add_inspect_commands(commands)
    return parser


def add_guard_flags(parser: argparse.ArgumentParser) -> None:
    """The safety-rule overrides (DESIGN §7), shared by `sync` and `watch`."""
    parser.add_argument(
        "--allow-empty", action="store_true", help="allow a sync that deletes every managed task"
    )
    parser.add_argument(
        "--max-deletes",
        type=int,
        default=None,
        metavar="N",
        help="refuse to delete more than N tasks (default 10, or SYNCD_MAX_DELETES)",
    )


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: $SYNCD_DATABASE_URL)")
    parser.add_argument("--redis-url", help="redis:// URL (default: $SYNCD_REDIS_URL)")


def _plan_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when there are changes (0: none, 1: error)",
    )
    parser.add_argument("--no-color", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    _store_flags(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except SyncdError as exc:
        if args.debug:
            raise
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

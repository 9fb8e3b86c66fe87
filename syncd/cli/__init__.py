"""The `syncd` command line: the only place that parses argv, prints, exits or imports worker.

This module builds the parser and dispatches; each command lives in a module of this
package, imported only when that command runs, so `syncd validate` (and the pre-commit
hook) never load SQLAlchemy, psycopg or redis. Only `SyncdError` is caught: it becomes
one line per problem on stderr and its exit code. Anything else is a bug and shows its
traceback with `--debug`; without it, a one-line message asks for a bug report. Either
line may quote a name or a path, so it is printed with `visible`: one line, no control codes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import TypeAlias

from pydantic import ValidationError

from schemas.text import visible
from syncd.cli.options import settings_problem
from syncd.core.errors import SyncdError, UsageError

DEFAULT_DIR = "taskdefs"
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_HTTP_PORT = 9464  # the daemon's /healthz and /metrics
DEFAULT_CONSOLE_PORT = 8080  # `syncd serve`

Command = Callable[[argparse.Namespace], int]
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd", description="GitOps sync for scheduled background tasks."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = _command(commands, "validate", "validate:cmd_validate", "check taskdefs offline")
    validate.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    validate.add_argument("--format", choices=("text", "json"), default="text")

    schema = _command(
        commands, "schema", "validate:cmd_schema", "print the JSON Schema of a taskdef file"
    )
    schema.add_argument(
        "--policy", action="store_true", help="the JSON Schema of the operator policy file instead"
    )

    migrate = _command(
        commands, "migrate", "operate:cmd_migrate", "create or upgrade the database schema"
    )
    store_flags(migrate)

    plan = _command(commands, "plan", "plan:cmd_plan", "show what sync would change")
    plan_flags(plan)
    plan.add_argument(
        "--against",
        metavar="REF",
        help="offline: plan the working tree against the taskdefs at git REF",
    )

    sync = _command(
        commands, "sync", "plan:cmd_sync", "make PostgreSQL and Redis match the taskdefs"
    )
    plan_flags(sync)
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    guard_flags(sync)

    _watch_command(commands)
    _inspect_commands(commands)

    run = _command(
        commands, "run", "operate:cmd_run", "enqueue a task now (manual tasks, ad-hoc runs)"
    )
    run.add_argument("name")
    store_flags(run)
    for name, text in (
        ("pause", "pause a task's schedule (sync keeps it paused)"),
        ("resume", "lift a pause (missed runs are not sent)"),
    ):
        sub = _command(commands, name, f"operate:cmd_{name}", text)
        sub.add_argument("name")
        store_flags(sub)

    _token_commands(commands)
    _serve_command(commands)

    up = _command(
        commands,
        "up",
        "up:cmd_up",
        "run daemon, scheduler and a worker in the foreground (demo, development)",
    )
    up.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    up.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    up.add_argument(
        "--console-port",
        type=int,
        default=DEFAULT_CONSOLE_PORT,
        help=f"port of `syncd serve` (default {DEFAULT_CONSOLE_PORT}; 0: no console)",
    )
    return parser


def _serve_command(commands: _Commands) -> None:
    serve = _command(
        commands, "serve", "serve:cmd_serve", "the HTTP API (/api/v1) and the web console"
    )
    serve.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_CONSOLE_PORT)
    serve.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark the session cookie Secure (TLS ends at a proxy in front of syncd)",
    )
    serve.add_argument(
        "--max-streams", type=_positive, default=32, help="concurrent event streams (default 32)"
    )
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="warning"
    )
    store_flags(serve)


def _watch_command(commands: _Commands) -> None:
    watch = _command(
        commands, "watch", "watch:cmd_watch", "the daemon: reconcile on every change and resync"
    )
    watch.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    watch.add_argument(
        "--resync-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="reconcile at least this often, to repair drift (default 60)",
    )
    watch.add_argument("--http-host", default="127.0.0.1", help="address for /healthz, /metrics")
    watch.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"port for /healthz and /metrics (default {DEFAULT_HTTP_PORT}; 0 disables)",
    )
    watch.add_argument("--log-format", choices=("text", "json"), default="text")
    watch.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    guard_flags(watch)
    store_flags(watch)


def _inspect_commands(commands: _Commands) -> None:
    status = _command(
        commands,
        "status",
        "inspect:cmd_status",
        "each task's schedule, status, sync state, next fire and last run",
    )
    status.add_argument("name", nargs="?", help="one task (default: all)")
    status.add_argument(
        "dir", nargs="?", help=f"taskdefs directory (default {DEFAULT_DIR}); alone, give it a '/'"
    )
    status.add_argument("--format", choices=("text", "json"), default="text")
    store_flags(status)

    explain = _command(
        commands,
        "explain",
        "inspect:cmd_explain",
        "one task: taskdef, row, Redis schedule, plan and last executions",
    )
    explain.add_argument("name")
    explain.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    store_flags(explain)

    history = _command(
        commands, "history", "inspect:cmd_history", "recent executions, newest first"
    )
    history.add_argument("name", nargs="?", help="one task (default: all)")
    history.add_argument("--failed", action="store_true", help="failed attempts only")
    history.add_argument("--since", metavar="WHEN", help="30m, 1h, 2d, 1w or an ISO timestamp")
    history.add_argument(
        "--limit", type=_positive, default=DEFAULT_HISTORY_LIMIT, metavar="N",
        help=f"at most N executions (default {DEFAULT_HISTORY_LIMIT})",
    )  # fmt: skip
    history.add_argument("--format", choices=("text", "json"), default="text")
    store_flags(history)


def _token_commands(commands: _Commands) -> None:
    token = commands.add_parser("token", help="bearer tokens of the HTTP API and console")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = _command(
        actions, "create", "tokens:cmd_create", "make a token and print it (shown only once)"
    )
    create.add_argument("name", help="1-100 of A-Z a-z 0-9 . _ @ -")
    create.add_argument(
        "--role",
        required=True,
        choices=("viewer", "operator"),  # schemas.tables.API_ROLES, which loads SQLAlchemy
        help="viewer: read only; operator: also pause, resume and run",
    )
    listing = _command(actions, "list", "tokens:cmd_list", "every token, revoked ones too")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    revoke = _command(actions, "revoke", "tokens:cmd_revoke", "revoke a token for good")
    revoke.add_argument("name")
    for sub in (create, listing, revoke):  # PostgreSQL only
        sub.add_argument("--database-url", help="SQLAlchemy URL (default: $SYNCD_DATABASE_URL)")


def _command(commands: _Commands, name: str, handler: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose function is `handler` ("module:function" in this package)."""
    sub: argparse.ArgumentParser = commands.add_parser(name, help=text)
    sub.set_defaults(handler=handler)
    return sub


def guard_flags(parser: argparse.ArgumentParser) -> None:
    """The safety-rule overrides, shared by `sync` and `watch`."""
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


def store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: $SYNCD_DATABASE_URL)")
    parser.add_argument("--redis-url", help="redis:// URL (default: $SYNCD_REDIS_URL)")


def plan_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR)
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    parser.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when there are changes (0: none, 1: error)",
    )
    parser.add_argument("--no-color", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    store_flags(parser)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def load_command(handler: str) -> Command:
    """Import the command's module now: a command pays only for the libraries it uses."""
    module_name, _, function = handler.partition(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    command: Command = getattr(module, function)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return load_command(args.handler)(args)
    except SyncdError as exc:
        if args.debug:
            raise
        for line in exc.lines():
            print(visible(line), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, ValidationError) and exc.title == "Settings":
            # Settings are read wherever a module needs them (the task registry, at import).
            print(f"error: {settings_problem(exc)}", file=sys.stderr)
            return UsageError.exit_code
        print(
            visible(
                f"internal error: {type(exc).__name__}: {exc} (run with --debug and report it)"
            ),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

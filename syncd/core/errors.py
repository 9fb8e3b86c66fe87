"""The one exception tree of syncd; the CLI turns any of these into one line and an exit code.

    SyncdError                      base: everything syncd raises on purpose
    ├── TaskdefError                the YAML has problems (carries every `path:line:col: message`)
    │   └── PolicyError             the operator policy file has problems (same form)
    ├── StoreUnavailable            PostgreSQL or Redis cannot be reached or answered with an error
    ├── StoreRefused                a store refused a value it was sent (its file is frozen)
    ├── SchemaMissing               the database has no (or an old) schema: run `syncd migrate`
    ├── SyncRefused                 a safety rule stopped the sync (mass delete, empty taskdefs...)
    ├── ConflictError               another writer holds the lock
    ├── NotFound                    a task name that no taskdef / row knows
    └── UsageError                  a command-line value the parser could not check (exit 2)

Driver exceptions never escape `syncd.adapters`: they are re-raised as one of these
with `raise ... from exc`, so `--debug` still shows the cause.
"""

from __future__ import annotations

from collections.abc import Sequence

from syncd.core.problems import Problem


class SyncdError(Exception):
    """Base of every error syncd raises deliberately."""

    exit_code = 1

    def lines(self) -> list[str]:
        """What the CLI prints, one line each."""
        return [f"error: {self}"]


class TaskdefError(SyncdError):
    """The taskdefs have problems; `problems` holds every one of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in taskdefs")

    def lines(self) -> list[str]:
        return [str(problem) for problem in self.problems]


class PolicyError(TaskdefError):
    """The operator policy file (SYNCD_POLICY) is missing or invalid."""

    def __str__(self) -> str:
        return "; ".join(str(problem) for problem in self.problems)


class StoreUnavailable(SyncdError):
    """PostgreSQL or Redis could not be reached, or failed mid-operation."""


class StoreRefused(SyncdError):
    """A store reached fine refused a value (a data error): the write is at fault, not the
    store, so a sync applies file by file and freezes only the file that carried it."""


class SchemaMissing(SyncdError):
    """The database exists but its schema is missing or behind: `syncd migrate` fixes it."""


class SyncRefused(SyncdError):
    """A safety rule refused the sync; the message says which flag overrides it."""


class ConflictError(SyncdError):
    """Another syncd holds the write lock."""


class NotFound(SyncdError):
    """No task of that name."""


class UsageError(SyncdError):
    """A command-line value is wrong (like argparse's own errors, exit code 2)."""

    exit_code = 2

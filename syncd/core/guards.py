"""The safety rules a plan must pass before anything is written, and their overrides.

Pure: `check_guards(plan, options)` returns the reasons a plan is refused (empty when it
may be applied). A refused plan is never applied in part. The rules: a plan with errors
is refused; deleting every managed task needs `--allow-empty` (an empty or unreadable
directory must not mean "delete everything"); deleting more than `--max-deletes` tasks
needs that limit raised. (A broken file never deletes anything: the planner freezes it.)
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.core.plan import Plan


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    allow_empty: bool = False
    max_deletes: int = 10
    lock_wait_seconds: float = 30.0


def check_guards(plan_: Plan, options: SyncOptions) -> tuple[str, ...]:
    """Why this plan may not be applied as it is; empty when it may."""
    reasons = [error.message for error in plan_.errors]
    deletes = plan_.count("delete")
    if deletes and deletes == plan_.managed_count and not options.allow_empty:
        reasons.append(
            f"refusing to delete all {deletes} managed task(s): is the taskdefs directory "
            "empty or unreadable? Pass --allow-empty to confirm"
        )
    elif deletes > options.max_deletes:
        reasons.append(
            f"refusing to delete {deletes} tasks (more than --max-deletes {options.max_deletes}); "
            f"pass --max-deletes {deletes} to confirm"
        )
    return tuple(reasons)

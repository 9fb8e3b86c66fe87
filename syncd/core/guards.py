"""The safety rules a plan must pass before anything is written, and their overrides.

Pure: `check_guards(plan, options)` returns the reasons a plan is refused (empty when it
may be applied). A refused plan is never applied in part. The rules: a plan with errors
is refused; deleting every managed task while the taskdefs declare none needs
`--allow-empty` (an empty or unreadable directory must not mean "delete everything");
deleting more than `--max-deletes` tasks — a full replacement included — needs that
limit raised. (A broken file never deletes anything: the planner freezes it.)
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
    deletes_all = bool(deletes) and deletes == plan_.managed_count
    desired_empty = all(t.action == "delete" for t in plan_.tasks)
    if deletes_all and desired_empty and not options.allow_empty:
        reasons.append(
            f"refusing to delete all {deletes} managed task(s): is the taskdefs directory "
            "empty or unreadable? Pass --allow-empty to confirm"
        )
    elif deletes > options.max_deletes:
        reasons.append(_too_many_deletes(plan_, deletes, options.max_deletes, deletes_all))
    return tuple(reasons)


def _too_many_deletes(plan_: Plan, deletes: int, limit: int, deletes_all: bool) -> str:
    confirm = f"pass --max-deletes {deletes} to confirm"
    if deletes_all:
        # Every task goes and others come: a rename of everything, or a replaced tree.
        return (
            f"refusing to replace all {deletes} managed tasks: this sync deletes every one "
            f"and creates {plan_.count('create')} (renamed?), more than --max-deletes "
            f"{limit}; {confirm}"
        )
    return f"refusing to delete {deletes} tasks (more than --max-deletes {limit}); {confirm}"

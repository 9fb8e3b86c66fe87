"""The reads behind `syncd explain NAME`: one task followed through git, the plan and both
stores into a `views.explain.Explanation`.

The CLI prints that value as text (`views.explain`), the HTTP API as JSON
(`api.reads.explain_json`); both get it from `explanation` here, so they never read
different things. Read-only: a handful of queries for the one task, plus the one bulk
schedule read the plan also does (it finds the id in every index list).
"""

from __future__ import annotations

from datetime import datetime

from syncd.adapters.audit import AuditStore
from syncd.core.errors import NotFound
from syncd.core.keys import schedule_id
from syncd.core.lateness import STREAK_WINDOW, failing_since, lateness
from syncd.core.plan import TaskPlan
from syncd.reconcile import Outcome, Stores
from syncd.views.explain import Explanation
from syncd.views.status import live_config

EXPLAIN_EXECUTIONS = 10
EXPLAIN_AUDIT_ENTRIES = 20


def planned_task(outcome: Outcome, name: str, where: str) -> TaskPlan:
    """The plan's item for `name`; NotFound when git and PostgreSQL both lack it."""
    task = next((t for t in outcome.plan.tasks if t.name == name), None)
    if task is None:
        raise NotFound(f"no task named {name!r} in {where} or among the rows syncd manages")
    return task


def explanation(
    stores: Stores, outcome: Outcome, task: TaskPlan, now: datetime, grace: float | None
) -> Explanation:
    """Everything `syncd explain` shows about `task`, read from the stores now; `grace`
    overrides the default grace period of lateness."""
    row = stores.db.get_row(task.name)
    sid = schedule_id(row.id) if row else None
    status = stores.redis.get_status(row.id) if row else None
    # One read serves both the runs shown and the failure streak, which looks further back.
    runs = stores.db.executions.recent(
        task.name, False, None, max(EXPLAIN_EXECUTIONS, STREAK_WINDOW)
    )
    activity = stores.db.executions.activity([row.id]).get(row.id) if row else None
    return Explanation(
        task=task,
        declared=outcome.loaded.declared_at(task.name),
        row=row,
        row_times=stores.db.row_times(row.id) if row else None,
        data_key=stores.layout.data_key(sid) if sid else None,
        record=stores.redis.read_schedules().get(sid) if sid else None,
        status_key=stores.layout.status_key(row.id) if row else None,
        status=status,
        executions=runs[:EXPLAIN_EXECUTIONS],
        now=now,
        failing=failing_since(runs),
        lateness=lateness(live_config(task), status, activity, now, grace) if row else None,
        audit=AuditStore(stores.db.engine).for_task(task.name, EXPLAIN_AUDIT_ENTRIES),
    )

"""The per-task metrics, refreshed in a thread of their own after a reconcile.

Each task's lateness walks its cron back to its last fires: about two seconds at 10,000
tasks, which on the main loop would hold up every edit that arrives meanwhile. So the
loop hands a slim copy of the plan to `TaskRefresher.start` and goes back to watching;
the thread reads every task's runs (one query), computes the samples and records them.
One refresh at a time; a refresh that ends after the lease was lost records nothing
(only the leader exports these series). The thread works in small chunks and waits while
the loop reconciles (`quiet`): sharing the interpreter lock with it would make each of the
reconcile's round trips wait for its turn, and an edit's reconcile several times slower.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime

from syncd.core.errors import SyncdError
from syncd.core.lateness import Activity
from syncd.core.plan import Plan, TaskPlan
from syncd.daemon.observe import Metrics, TaskSample, running_config, task_samples
from syncd.load.loader import LoadResult
from syncd.reconcile import Outcome, Stores

log = logging.getLogger("syncd.watch")
CHUNK_TASKS = 200  # about 40 ms of lateness walks: the longest an edit waits for it


class TaskRefresher:
    """Starts refreshes, and drops the series when the daemon stops leading."""

    def __init__(self, metrics: Metrics, wall: Callable[[], datetime], grace: float | None) -> None:
        self._metrics = metrics
        self._wall = wall
        self._grace = grace
        self._lock = threading.Lock()  # orders a thread's record against `clear`
        self._generation = 0
        self._thread: threading.Thread | None = None
        self.quiet = threading.Event()  # set while the loop is not reconciling
        self.quiet.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, outcome: Outcome, stores: Stores) -> bool:
        """Refresh from `outcome` in the background; False if one is still running."""
        if self.running:
            return False
        args = (slim(outcome), stores, self._generation)
        self._thread = threading.Thread(
            target=self._refresh, args=args, name="syncd-task-metrics", daemon=True
        )
        self._thread.start()
        return True

    def clear(self) -> None:
        """No task series: a refresh still running records nothing."""
        with self._lock:
            self._generation += 1
            self._metrics.clear_tasks()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _refresh(self, outcome: Outcome, stores: Stores, generation: int) -> None:
        ids = [task.config_id for task in outcome.plan.tasks if task.config_id is not None]
        try:
            statuses = outcome.statuses
            self.quiet.wait()
            if statuses is None:
                statuses = stores.redis.read_statuses()
            activity = stores.db.executions.activity(ids)
            samples = self._samples(outcome, statuses, activity)
        except SyncdError as exc:  # the previous values stay: the reconcile itself succeeded
            log.warning("task metrics not refreshed: %s", exc)
            return
        except Exception:  # a bug here must not end the thread silently
            log.exception("task metrics not refreshed")
            return
        with self._lock:
            if generation == self._generation:
                self._metrics.record_tasks(samples)

    def _samples(
        self, outcome: Outcome, statuses: Mapping[int, str], activity: Mapping[int, Activity]
    ) -> list[TaskSample]:
        now = self._wall()
        tasks = outcome.plan.tasks
        samples: list[TaskSample] = []
        for start in range(0, len(tasks), CHUNK_TASKS):
            self.quiet.wait()
            part = replace(outcome, plan=Plan(tasks[start : start + CHUNK_TASKS]))
            samples += task_samples(part, statuses, activity, now, self._grace)
        return samples


def slim(outcome: Outcome) -> Outcome:
    """What the samples need of an outcome: each task's name, id, action and the config
    the scheduler runs. The thread may outlive the reconcile, and must not keep its plan's
    bulk alive (payloads, and every row's config as read back from PostgreSQL)."""
    applied = outcome.applied is not None
    tasks = tuple(_slim_task(task, applied) for task in outcome.plan.tasks)
    loaded = LoadResult(outcome.loaded.root, (), ())
    return Outcome(loaded, Plan(tasks), outcome.applied, (), outcome.statuses)


def _slim_task(task: TaskPlan, applied: bool) -> TaskPlan:
    config = running_config(task, applied)
    if task.after is not None and config == task.after:
        config = task.after  # the loaded object, not its copy read back from PostgreSQL
    return TaskPlan(task.name, task.action, task.state, task.config_id, before=config, after=config)

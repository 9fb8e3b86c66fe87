"""TaskBoard: every task's `syncd status` row, kept current without re-planning per request.

A row is what `syncd status --format json` prints for the task (`views.status`, fed by a
dry-run `reconcile_once`: the same read path), plus the fields the console adds: the
live configuration, drift codes, queue and the success rate of its last runs.

Computing every row is a dry-run plan (PostgreSQL rows, every Redis schedule, the plan)
and a next-fire time per task; at 10,000 tasks that is seconds, too slow for each
request. So the board keeps the rows and refreshes them in parts:

- the plan (sync state, drift) is recomputed in the background when a request finds it
  older than `plan_max_age` or the stores' version key changed; meanwhile requests get
  the previous rows at once (stale-while-revalidate);
- statuses and executions arrive from the 1 s poller (`events.Poller`): only the rows
  they touch are rendered again;
- a row whose next fire has passed is rendered again by the poller's `tick`.

A row is rendered again only when its inputs changed (`_RowKey`), so a refresh after a
one-file edit costs the plan, not 10,000 fire-time computations.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from syncd.api.queries import max_execution_id, recent_outcomes
from syncd.core.errors import SyncdError
from syncd.core.guards import SyncOptions
from syncd.core.lateness import Activity
from syncd.core.logtext import visible_json
from syncd.core.model import Execution, TaskCatalog
from syncd.core.plan import TaskPlan
from syncd.load.loader import LoadCache
from syncd.reconcile import Outcome, Stores, reconcile_once
from syncd.views.history import outcome as run_outcome
from syncd.views.status import StatusRow, live_config, next_fire_cell, status_json, status_rows
from syncd.views.text import EMPTY, describe_config, format_duration, format_time

log = logging.getLogger("syncd.api")
Clock = Callable[[], datetime]
NEWS_KEPT_SECONDS = 300.0  # longer than any plan takes to read and render


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _RowKey:
    """Everything a rendered row depends on besides the clock."""

    plan: TaskPlan
    status: str | None
    last_run_id: int | None
    outcomes: tuple[bool, ...]
    activity: Activity | None


@dataclass
class _Row:
    key: _RowKey
    json: dict[str, Any]
    due: datetime | None  # when the row's next fire passes and it must be rendered again
    # The row as JSON text, made once: a list of 10,000 rows is then joined, not encoded.
    encoded: bytes = b""

    def __post_init__(self) -> None:
        self.encoded = encode(self.json)


def encode(value: Any) -> bytes:
    """Compact JSON, as every API response is written."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


@dataclass
class Snapshot:
    """The board's state after one plan; rows are updated in place as news arrives."""

    outcome: Outcome
    planned_at: float  # monotonic
    tasks: dict[str, TaskPlan]
    statuses: dict[int, str]
    last_runs: dict[int, Execution]
    outcomes: dict[int, list[bool]]
    activity: dict[int, Activity]
    seen_up_to: int = 0  # the highest execution id when the runs were read
    rows: dict[str, _Row] = field(default_factory=dict)

    @property
    def names_by_id(self) -> dict[int, str]:
        return {t.config_id: name for name, t in self.tasks.items() if t.config_id is not None}


class TaskBoard:
    """The task list of the API and the console (see the module docstring)."""

    def __init__(
        self,
        stores: Stores,
        taskdefs: Path,
        catalog: TaskCatalog,
        *,
        plan_max_age: float = 10.0,
        recent_runs: int = 20,
        grace_seconds: float | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._grace = grace_seconds  # SYNCD_LATE_GRACE_SECONDS, as `syncd status` reads it
        self._stores = stores
        self._taskdefs = taskdefs
        self._catalog = catalog
        self._plan_max_age = plan_max_age
        self.recent_runs = recent_runs
        self._clock = clock
        self._cache = LoadCache()
        self._plan_lock = threading.Lock()  # one dry run at a time: LoadCache is not shared
        self._lock = threading.Lock()  # guards the snapshot
        self._snapshot: Snapshot | None = None
        # The statuses and last execution id of the first snapshot: the oldest rows a page
        # can show (see `baseline`).
        self._first_shown: tuple[dict[int, str | None], int] | None = None
        self._stale = False
        self._refreshing = False
        # (when, statuses, runs) the poller brought: replayed onto a plan read meanwhile.
        self._news: list[tuple[float, dict[int, str | None], list[Execution]]] = []
        self.last_used = 0.0  # monotonic time of the last reader (the poller idles after)

    # -- reading -------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every task's row, by name (the first call plans synchronously)."""
        snapshot = self._current()
        with self._lock:
            return [snapshot.rows[name].json for name in sorted(snapshot.rows)]

    def encoded_rows(self, wanted: Callable[[dict[str, Any]], bool]) -> list[bytes]:
        """The JSON text of the rows `wanted` accepts, by name."""
        snapshot = self._current()
        with self._lock:
            rows = [snapshot.rows[name] for name in sorted(snapshot.rows)]
        return [row.encoded for row in rows if wanted(row.json)]

    def row(self, name: str) -> dict[str, Any] | None:
        """One task's current row, None before the first plan or for an unknown name."""
        snapshot = self._snapshot
        if snapshot is None:
            return None
        with self._lock:
            found = snapshot.rows.get(name)
            return None if found is None else found.json

    def plan_age(self) -> float:
        snapshot = self._snapshot
        return 0.0 if snapshot is None else time.monotonic() - snapshot.planned_at

    def config_ids(self) -> dict[int, str]:
        """Config id -> name of every task with a row (what the poller watches)."""
        snapshot = self._snapshot
        if snapshot is None:
            return {}
        with self._lock:
            return snapshot.names_by_id

    def baseline(self) -> tuple[dict[int, str | None], int] | None:
        """Where the poller starts: each task's status and the last execution id as the
        board's first snapshot had them; None before the first plan.

        The first, not the current one: a page may show rows from any snapshot since, and a
        later snapshot may already hold a change no page was told of (a pause made in the
        console re-plans at once). Starting from the oldest, the poller announces every
        change a page may have missed; one a page already shows is announced again, which
        is harmless.
        """
        return self._first_shown

    def fresh_outcome(self) -> Outcome:
        """A dry-run plan of now (for the plan page and explain); the board keeps it too."""
        now = self._clock()
        outcome = self._dry_run(now)
        self._adopt(outcome, now)
        return outcome

    # -- news from the poller ------------------------------------------------------

    def on_statuses(self, statuses: Mapping[int, str | None]) -> list[dict[str, Any]]:
        """Apply new status values; return the rows that changed."""
        return self._on_news(dict(statuses), [])

    def on_executions(self, executions: Iterable[Execution]) -> list[dict[str, Any]]:
        """Apply newly recorded attempts (oldest first); return the rows that changed."""
        runs = list(executions)
        ids = sorted({run.config_id for run in runs if run.config_id is not None})
        activity = self._stores.db.executions.activity(ids) if ids else {}
        return self._on_news({}, runs, activity)

    def _on_news(
        self,
        statuses: dict[int, str | None],
        runs: list[Execution],
        activity: Mapping[int, Activity] | None = None,
    ) -> list[dict[str, Any]]:
        snapshot = self._snapshot
        if snapshot is None:
            return []
        with self._lock:
            snapshot = self._snapshot
            assert snapshot is not None  # noqa: S101 - never unset once set
            at = time.monotonic()
            self._news = [news for news in self._news if news[0] > at - NEWS_KEPT_SECONDS]
            self._news.append((at, statuses, runs))
            snapshot.activity.update(activity or {})
            touched = self._apply_statuses(snapshot, statuses) | self._apply_runs(snapshot, runs)
            names = [n for i, n in snapshot.names_by_id.items() if i in touched]
            return self._render(snapshot, names, self._clock())

    @staticmethod
    def _apply_statuses(snapshot: Snapshot, statuses: Mapping[int, str | None]) -> set[int]:
        for config_id, status in statuses.items():
            if status is None:
                snapshot.statuses.pop(config_id, None)
            else:
                snapshot.statuses[config_id] = status
        return set(statuses)

    def _apply_runs(self, snapshot: Snapshot, runs: Iterable[Execution]) -> set[int]:
        touched: set[int] = set()
        for run in runs:
            # A run the snapshot's own reads included (the poller may start from an older
            # id) is announced again but must not be counted twice.
            if run.config_id is None or (run.id or 0) <= snapshot.seen_up_to:
                continue
            latest = snapshot.last_runs.get(run.config_id)
            if latest is None or _order(run) >= _order(latest):
                snapshot.last_runs[run.config_id] = run
            kept = snapshot.outcomes.setdefault(run.config_id, [])
            kept.insert(0, run.is_success)
            del kept[self.recent_runs :]
            touched.add(run.config_id)
        return touched

    def tick(self) -> list[dict[str, Any]]:
        """Render again the rows whose next fire has passed; return them."""
        snapshot = self._snapshot
        if snapshot is None:
            return []
        now = self._clock()
        with self._lock:
            due = [n for n, row in snapshot.rows.items() if row.due is not None and row.due <= now]
            return self._render(snapshot, due, now, force=True)

    def mark_stale(self) -> None:
        """The stores changed (the version key moved): plan again at the next read."""
        self._stale = True

    # -- planning ------------------------------------------------------------------

    def _current(self) -> Snapshot:
        self.last_used = time.monotonic()
        snapshot = self._snapshot
        if snapshot is None:
            self.fresh_outcome()
            snapshot = self._snapshot
            assert snapshot is not None  # noqa: S101 - fresh_outcome just set it
        elif self._stale or self.plan_age() > self._plan_max_age:
            self._refresh_in_background()
        return snapshot

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._background_refresh, name="board-refresh", daemon=True).start()

    def _background_refresh(self) -> None:
        try:
            self.fresh_outcome()
        except SyncdError as exc:  # the old rows stay; the next read tries again
            log.warning("task list not refreshed: %s", exc)
        finally:
            self._refreshing = False

    def _dry_run(self, now: datetime) -> Outcome:
        with self._plan_lock:
            self._stale = False
            return reconcile_once(
                self._taskdefs,
                self._stores,
                self._catalog,
                now,
                options=SyncOptions(dry_run=True),
                cache=self._cache,
            )

    def _adopt(self, outcome: Outcome, now: datetime) -> None:
        """Read statuses and runs for `outcome`'s tasks and make it the snapshot.

        News the poller brings while this reads and renders is applied to the old snapshot
        and kept in `_news`; it is applied again to the new one before it is published."""
        started = time.monotonic()
        tasks = {t.name: t for t in outcome.plan.tasks}
        ids = [t.config_id for t in tasks.values() if t.config_id is not None]
        seen_up_to = max_execution_id(self._stores.db.engine)
        statuses = self._stores.redis.read_statuses()
        last_runs = self._stores.db.executions.last_of(ids)
        outcomes = recent_outcomes(self._stores.db.engine, ids, self.recent_runs)
        activity = self._stores.db.executions.activity(ids)
        fresh = Snapshot(
            outcome, started, tasks, statuses, last_runs, outcomes, activity, seen_up_to
        )
        with self._lock:
            old = self._snapshot
            if old is not None:
                fresh.rows = {n: r for n, r in old.rows.items() if n in tasks}
        self._render(fresh, list(tasks), now)
        with self._lock:
            old = self._snapshot
            if old is not None and old.planned_at > fresh.planned_at:
                return  # a later plan won the race
            touched: set[int] = set()
            for at, statuses_news, runs_news in self._news:
                if at >= started:
                    touched |= self._apply_statuses(fresh, statuses_news)
                    later = [r for r in runs_news if (r.id or 0) > seen_up_to]
                    touched |= self._apply_runs(fresh, later)
            self._news = [news for news in self._news if news[0] >= started]
            names = [n for i, n in fresh.names_by_id.items() if i in touched]
            self._render(fresh, names, now)
            self._snapshot = fresh
            if self._first_shown is None:
                self._first_shown = ({i: fresh.statuses.get(i) for i in fresh.names_by_id},
                                     fresh.seen_up_to)  # fmt: skip

    def _render(
        self, snapshot: Snapshot, names: Iterable[str], now: datetime, *, force: bool = False
    ) -> list[dict[str, Any]]:
        """Render the named rows whose inputs changed (all of them with `force`)."""
        changed = []
        for name in names:
            task = snapshot.tasks.get(name)
            if task is None:
                continue
            key = _key(task, snapshot)
            old = snapshot.rows.get(name)
            if not force and old is not None and old.key == key and not _passed(old.due, now):
                continue
            row = self._row(task, key, snapshot, now, old.due if old else None)
            snapshot.rows[name] = row
            changed.append(row.json)
        return changed

    def _row(
        self,
        task: TaskPlan,
        key: _RowKey,
        snapshot: Snapshot,
        now: datetime,
        old_due: datetime | None,
    ) -> _Row:
        (status_row,) = status_rows(
            [task],
            snapshot.statuses,
            snapshot.last_runs,
            now,
            activity=snapshot.activity,
            grace_seconds=self._grace,
        )
        (shown,) = status_json([status_row])
        shown.update(self._extras(task, key.outcomes))
        shown["display"] = visible_json(_display(status_row))
        return _Row(key, shown, _due(status_row, old_due, now))

    def _extras(self, task: TaskPlan, outcomes: tuple[bool, ...]) -> dict[str, Any]:
        config = live_config(task)
        extras = {
            "description": config.description,
            "task_type": config.task_type,
            "queue": task.queue or self._catalog.queue_for(config.task_type),
            "config": {
                "task_type": config.task_type,
                "description": config.description,
                "parameters": config.parameters,
                "max_retries": config.max_retries,
                "retry_backoff_seconds": config.retry_backoff_seconds,
                "retry_backoff_max_seconds": config.retry_backoff_max_seconds,
                "timeout_seconds": config.timeout_seconds,
                "priority": config.priority,
                "enabled": config.enabled,
            },
            "drift": [reason.code for reason in task.drift],
            "recent_runs": {
                "window": self.recent_runs,
                "runs": len(outcomes),
                "ok": sum(outcomes),
                "success_rate": round(sum(outcomes) / len(outcomes), 3) if outcomes else None,
            },
        }
        shown: dict[str, Any] = visible_json(extras)
        return shown


def _key(task: TaskPlan, snapshot: Snapshot) -> _RowKey:
    ident = task.config_id
    if ident is None:
        return _RowKey(task, None, None, (), None)
    last = snapshot.last_runs.get(ident)
    return _RowKey(
        task,
        snapshot.statuses.get(ident),
        None if last is None else last.id,
        tuple(snapshot.outcomes.get(ident, ())),
        snapshot.activity.get(ident),
    )


def _display(row: StatusRow) -> dict[str, str]:
    """The cells of `syncd status` for this row, as its table prints them (pages show
    these; their scripts only put text into place)."""
    last = row.last_run
    ran = "" if last is None else f"{run_outcome(last)} {format_time(last.started_at)}"
    return {
        "schedule": describe_config(row.config),
        "next_fire": next_fire_cell(row.next_fire),
        "last_run": ran or EMPTY,
        "last_run_duration": "" if last is None else format_duration(last.duration_seconds),
    }


def _due(row: StatusRow, old_due: datetime | None, now: datetime) -> datetime | None:
    """When the row must be rendered again: its next fire, or, sooner, when the fire just
    passed becomes late (its grace ends) if no run starts by then."""
    times = [row.next_fire.at]
    if old_due is not None and old_due <= now:
        times.append(old_due + timedelta(seconds=row.lateness.grace_seconds))
    later = [t for t in times if t is not None and t > now]
    return min(later, default=None)


def _order(run: Execution) -> tuple[datetime, int]:
    return run.completed_at, run.id or 0


def _passed(due: datetime | None, now: datetime) -> bool:
    return due is not None and due <= now

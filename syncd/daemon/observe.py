"""What an operator sees of the daemon: log lines (text or JSON), metrics, the health verdict.

Used by `daemon.watch`. The health decision (`decide_health`) and the metric update from
an Outcome (`Metrics.record_outcome`) are plain code that unit tests call without a
server; `daemon.http` serves them. So are the per-task series (`task_samples`,
`Metrics.record_tasks`): each task's last success and its missed fires
(`core.lateness`), for alerts on a task that stopped running. Nothing here talks to
PostgreSQL or Redis, and nothing here decides when to reconcile.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TextIO, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.text import visible
from syncd.core.lateness import Activity, lateness
from syncd.core.logtext import EscapingFormatter, field_text, visible_json
from syncd.core.model import TaskConfig
from syncd.core.plan import Plan, TaskPlan, TaskState
from syncd.core.problems import Problem
from syncd.reconcile import Outcome

Result = Literal["ok", "error", "refused"]
RESULTS: tuple[Result, ...] = get_args(Result)
# How a reconcile ran: only the changed files' tasks re-planned, or everything read and planned.
ReconcilePath = Literal["incremental", "full"]
PATHS: tuple[ReconcilePath, ...] = get_args(ReconcilePath)
TASK_STATES: tuple[TaskState, ...] = get_args(TaskState)
MAX_PROBLEM_LINES = 50  # the rest are one `syncd validate` away
# From a no-op on a few tasks (~10 ms) to a first sync of 10,000 (~10 s) and beyond.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# -- logging -------------------------------------------------------------------------

# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for structured fields: nested, since names like `created` are taken by
    LogRecord itself (logging raises KeyError on a clash)."""
    return {"fields": values}


def log_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: `extra=fields(...)` and any other `extra=` key."""
    extras = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
    nested = extras.pop("fields", None)
    return {**extras, **nested} if isinstance(nested, dict) else extras


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(EscapingFormatter):
    """`2026-01-02T03:04:05.678Z INFO syncd.watch: message key=value ...` for people.

    The message and each field are one visible line (a value with a blank is quoted), so
    a name or path in them can forge neither a line nor a field; tracebacks escape what
    the exceptions say (EscapingFormatter)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(f" {field_text(k)}={field_text(v)}" for k, v in log_fields(record).items())
        message = visible(record.getMessage())
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        if record.exc_info:
            return f"{line}{fields}\n{self.formatException(record.exc_info)}"
        return line + fields


class JsonFormatter(EscapingFormatter):
    """One JSON object per line: ts, level, logger, message, then the extra fields; every
    string visible (JSON would let a line separator or a bidi override through raw)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": visible(record.getMessage()),
            **visible_json(log_fields(record)),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(
    fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route every logger to one stderr handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # watchfiles logs every batch at INFO ("N changes detected"), alembic its setup at every
    # schema check: our own lines say what matters.
    for chatty in ("watchfiles", "alembic"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))


class ReconcileLog:
    """The daemon's lines about reconciles: a summary each, one line per failure, every
    refusal, and taskdef problems only when they change (not at every resync)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._last_problems: tuple[Problem, ...] = ()

    def outcome(
        self,
        outcome: Outcome,
        seconds: float,
        trigger: str,
        path: ReconcilePath = "full",
        fallback: str | None = None,
    ) -> None:
        self._problems(outcome)
        for reason in outcome.refusals:
            self._log.error("sync refused: %s", reason, extra=fields(trigger=trigger))
        if not outcome.refusals:
            self._reconciled(outcome, seconds, trigger, path, fallback)

    def failure(
        self,
        exc: BaseException,
        *,
        kind: str,
        seconds: float,
        trigger: str,
        attempt: int,
        retry_in: float,
        expected: bool,
    ) -> None:
        extra = fields(
            trigger=trigger,
            kind=kind,
            duration_ms=round(seconds * 1000),
            attempt=attempt,
            retry_in_s=retry_in,
        )
        if expected:  # a store down, the lock held: one line, no traceback
            self._log.error("reconcile failed: %s; retrying in %.1f s", exc, retry_in, extra=extra)
        else:
            self._log.error(
                "reconcile failed unexpectedly; retrying in %.1f s",
                retry_in,
                exc_info=exc,
                extra=extra,
            )

    def _reconciled(
        self,
        outcome: Outcome,
        seconds: float,
        trigger: str,
        path: ReconcilePath,
        fallback: str | None,
    ) -> None:
        summary = outcome.plan.summary()
        # `fallback`: why a change was reconciled in full rather than incrementally.
        more = {} if fallback is None else {"fallback": fallback}
        extra = fields(
            trigger=trigger,
            path=path,
            **more,
            duration_ms=round(seconds * 1000),
            created=summary["create"],
            updated=summary["update"],
            deleted=summary["delete"],
            drift=summary["drift"],
            frozen=summary["frozen"],
            redis_ops=outcome.applied.redis_ops if outcome.applied else 0,
        )
        if outcome.applied is None:
            self._log.info("reconciled: no changes", extra=extra)
            return
        self._log.info(
            "reconciled: %d created, %d updated, %d deleted, %d drift repaired",
            summary["create"],
            summary["update"],
            summary["delete"],
            summary["drift"],
            extra=extra,
        )

    def _problems(self, outcome: Outcome) -> None:
        problems = outcome.loaded.problems
        if problems == self._last_problems:
            return
        self._last_problems = problems
        if not problems:
            self._log.info("taskdef problems resolved")
            return
        errors = sum(1 for p in problems if p.severity == "error")
        frozen = len(outcome.loaded.broken_sources)
        self._log.warning(
            "taskdefs: %d error(s), %d warning(s); %d file(s) frozen at their last applied state",
            errors,
            len(problems) - errors,
            frozen,
            extra=fields(errors=errors, warnings=len(problems) - errors, frozen_files=frozen),
        )
        for problem in problems[:MAX_PROBLEM_LINES]:
            level = logging.ERROR if problem.severity == "error" else logging.WARNING
            self._log.log(level, "%s", problem)
        if len(problems) > MAX_PROBLEM_LINES:
            more = len(problems) - MAX_PROBLEM_LINES
            self._log.warning("... and %d more (run `syncd validate`)", more)


# -- metrics -------------------------------------------------------------------------


def outcome_result(outcome: Outcome) -> Result:
    """A refused plan is not a success: nothing was applied and a human must act."""
    return "refused" if outcome.refusals else "ok"


def task_state_counts(plan: Plan) -> dict[TaskState, int]:
    """Tasks per state in a plan, every known state present (0 when none)."""
    counts = dict.fromkeys(TASK_STATES, 0)
    for task in plan.tasks:
        counts[task.state] += 1
    return counts


@dataclass(frozen=True)
class TaskSample:
    """One task's series: the end of its newest success (Unix time; None: none recorded),
    whether it is late and how many fires it missed."""

    name: str
    last_success: float | None
    late: bool
    missed: int


def task_samples(
    outcome: Outcome,
    statuses: Mapping[int, str],
    activity: Mapping[int, Activity],
    now: datetime,
    grace_seconds: float | None = None,
) -> list[TaskSample]:
    """The series of every task with a row after the reconcile (a task created by it has
    no id in the plan yet: it gets its series at the next refresh, it cannot be late yet).
    `statuses` are read from Redis, as `syncd status` reads them: a frozen task may be
    paused, and a one-shot past its time is still active."""
    applied = outcome.applied is not None
    samples = []
    for task in outcome.plan.tasks:
        if task.config_id is None or (applied and task.action == "delete"):
            continue
        runs = activity.get(task.config_id)
        status = statuses.get(task.config_id)
        late = lateness(running_config(task, applied), status, runs, now, grace_seconds)
        success = runs.last_success if runs is not None else None
        samples.append(
            TaskSample(
                task.name, None if success is None else success.timestamp(), late.late, late.missed
            )
        )
    return samples


def running_config(task: TaskPlan, applied: bool) -> TaskConfig:
    """The configuration the scheduler has: git's once applied, else the row's."""
    config = (task.after if applied else task.before) or task.before or task.after
    if config is None:  # a plan always carries one side
        raise ValueError(f"task plan {task.name!r} has no configuration")
    return config


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own (not the global one)."""

    def __init__(self, is_leader: Callable[[], bool] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "syncd_reconciles", "Reconciles by result", ["result"], registry=r
        )
        self.paths = Counter(
            "syncd_reconcile_paths",
            "Reconciles run to the end, by path (incremental: only changed files re-planned)",
            ["path"],
            registry=r,
        )
        self.errors = Counter(
            "syncd_reconcile_errors", "Failed reconciles by error kind", ["kind"], registry=r
        )
        self.drift_repaired = Counter(
            "syncd_drift_repaired", "Drifted tasks and stray schedules repaired", registry=r
        )
        self.duration = Histogram(
            "syncd_reconcile_duration_seconds",
            "Duration of a reconcile (load, read, plan, apply)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.tasks = Gauge("syncd_tasks", "Tasks by state in the last plan", ["state"], registry=r)
        self.frozen_files = Gauge(
            "syncd_frozen_files", "Taskdef files with errors (their tasks are frozen)", registry=r
        )
        self.last_success = Gauge(
            "syncd_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile",
            registry=r,
        )
        self.is_leader = Gauge(
            "syncd_is_leader", "1 while this daemon holds the leader lease", registry=r
        )
        self.task_series = TaskSeries()
        r.register(self.task_series)
        if is_leader is not None:
            # Read at scrape time: true even while a long reconcile blocks the main loop.
            self.is_leader.set_function(lambda: float(is_leader()))
        for result in RESULTS:  # every series exists from the start, so rate() sees the first
            self.reconciles.labels(result)
        for path in PATHS:
            self.paths.labels(path)
        for state in TASK_STATES:
            self.tasks.labels(state)

    def record_outcome(
        self, outcome: Outcome, seconds: float, wall_time: float, path: ReconcilePath = "full"
    ) -> Result:
        """Count a reconcile that ran to the end (applied, nothing to do, or refused)."""
        result = outcome_result(outcome)
        self.reconciles.labels(result).inc()
        self.paths.labels(path).inc()
        self.duration.observe(seconds)
        for state, count in task_state_counts(outcome.plan).items():
            self.tasks.labels(state).set(count)
        self.frozen_files.set(len(outcome.loaded.broken_sources))
        if result == "ok":
            self.last_success.set(wall_time)
            if outcome.applied is not None:
                self.drift_repaired.inc(outcome.plan.summary()["drift"])
        return result

    def record_tasks(self, samples: Sequence[TaskSample]) -> None:
        """Set every task's series; those of tasks no longer there are gone."""
        new = tuple(samples)
        if new != self.task_series.samples:  # else keep the older objects (see TaskSeries)
            self.task_series.samples = new

    def clear_tasks(self) -> None:
        """No task series: only the leader, which reads the tasks, exports them."""
        self.task_series.samples = ()

    def record_failure(self, kind: str, seconds: float) -> None:
        """Count a reconcile that raised (a store down, the lock held, a bug)."""
        self.reconciles.labels("error").inc()
        self.errors.labels(kind).inc()
        self.duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TaskSeries(Collector):
    """The per-task gauges, rendered from the last samples at scrape time.

    Three labelled `Gauge`s would keep a child object per task and series (about 21 MB at
    10,000 tasks); a tuple of samples costs a hundredth of that. Replaced whole, never
    mutated, so a scrape in the HTTP thread always sees one consistent set. Equal samples
    keep the older tuple: a refresh then leaves nothing of its own allocated."""

    def __init__(self) -> None:
        self.samples: tuple[TaskSample, ...] = ()

    def collect(self) -> Iterable[Metric]:
        samples = self.samples
        success = GaugeMetricFamily(
            "syncd_task_last_success_timestamp_seconds",
            "Unix time the newest successful run of a task ended",
            labels=["task"],
        )
        missed = GaugeMetricFamily(
            "syncd_task_missed_fires",
            "Fires of a task due (past the grace) with no run since its last one",
            labels=["task"],
        )
        late = GaugeMetricFamily(
            "syncd_task_late", "1 while a task's due fire has no run", labels=["task"]
        )
        for sample in samples:
            if sample.last_success is not None:
                success.add_metric([sample.name], sample.last_success)
            missed.add_metric([sample.name], sample.missed)
            late.add_metric([sample.name], float(sample.late))
        return [success, missed, late]


# -- health --------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthInputs:
    """What /healthz decides from; ages in seconds, None when it never happened."""

    is_leader: bool
    leader_elsewhere: bool  # another daemon held the lease when we last looked
    last_result: Result | None
    last_success_age: float | None
    max_age: float  # max(3 x resync interval, 30 s)
    last_error: str | None = None
    lease_error: str | None = None


def decide_health(h: HealthInputs) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body): 200 for a leader whose last reconcile succeeded recently,
    or for a follower while some other daemon leads; 503 with the reason otherwise."""
    if not h.is_leader:
        if h.leader_elsewhere:
            return 200, {"status": "ok", "role": "follower"}
        reason = "no daemon holds the leader lease"
        if h.lease_error:
            reason = f"{reason}: {visible(h.lease_error)}"
        return 503, {"status": "unhealthy", "role": "follower", "reason": reason}
    body: dict[str, Any] = {"role": "leader", "last_success_age_seconds": h.last_success_age}
    if h.last_result is None:
        return 503, {**body, "status": "unhealthy", "reason": "no reconcile finished yet"}
    if h.last_result != "ok":
        reason = f"last reconcile {h.last_result}: {visible(h.last_error or 'unknown error')}"
        return 503, {**body, "status": "unhealthy", "reason": reason}
    if h.last_success_age is None or h.last_success_age > h.max_age:
        reason = f"no successful reconcile in the last {h.max_age:.0f} s"
        return 503, {**body, "status": "unhealthy", "reason": reason}
    return 200, {**body, "status": "ok"}


def health_max_age(resync_interval: float) -> float:
    return max(3 * resync_interval, 30.0)

"""The daemon's pure decisions: backoff, when a reconcile is due, which file events matter,
/healthz, metrics from an Outcome, error kinds and the JSON log line; no servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from watchfiles import Change

from syncd.core.errors import ConflictError, SchemaMissing, StoreUnavailable, SyncdError
from syncd.core.plan import Plan, TaskPlan
from syncd.core.problems import Problem
from syncd.daemon.incremental import Fallback, changed_sources
from syncd.daemon.observe import HealthInputs, JsonFormatter, Metrics, decide_health, fields
from syncd.daemon.triggers import (
    Timing,
    backoff_delay,
    error_kind,
    has_relevant,
    is_relevant,
    relevant_files,
)
from syncd.load.loader import FileResult, LoadResult
from syncd.reconcile import ApplyResult, Outcome

ROOT = Path("/srv/taskdefs")


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (10_000, 30.0)],
)
def test_backoff_doubles_from_half_a_second_up_to_30(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def test_timing_first_reconcile_is_due_at_once_then_every_resync_interval() -> None:
    timing = Timing(resync_interval=60)
    assert timing.is_due(0.0)
    assert timing.trigger == "start"
    timing.finished(10.0)
    assert not timing.is_due(69.9)
    assert timing.is_due(70.0)
    assert timing.trigger == "resync"


def test_timing_a_change_is_due_at_once() -> None:
    timing = Timing(resync_interval=60)
    timing.finished(10.0)
    timing.mark_dirty("change")
    assert timing.is_due(10.1)
    assert timing.trigger == "change"


def test_timing_failures_back_off_and_success_resets() -> None:
    timing = Timing(resync_interval=60)
    assert timing.failed(100.0) == 0.5
    assert timing.failed(100.5) == 1.0
    assert not timing.is_due(101.4)
    timing.mark_dirty("change")  # an edit does not bypass the backoff of a store outage
    assert not timing.is_due(101.4)
    assert timing.is_due(101.5)
    assert timing.trigger == "retry"
    timing.finished(102.0)
    assert timing.failures == 0
    assert timing.failed(200.0) == 0.5


def test_timing_a_new_leader_reconciles_at_once_whatever_the_backoff() -> None:
    timing = Timing(resync_interval=60)
    for now in range(6):
        timing.failed(float(now))
    assert not timing.is_due(6.0)
    timing.became_leader()
    assert timing.is_due(6.0)
    assert timing.trigger == "leader"


DIRS = {str(ROOT / "team-a"), str(ROOT / "team.v2")}


@pytest.mark.parametrize(
    ("change", "path", "relevant"),
    [
        (Change.modified, "a.yaml", True),
        (Change.added, "sub/b.yml", True),
        (Change.deleted, "a.yaml", True),
        (Change.modified, "README.md", False),
        (Change.modified, "a.yaml~", False),
        (Change.added, ".a.yaml.swp", False),
        (Change.added, ".a.yaml.tmp", False),  # an atomic save's temp file; the rename counts
        (Change.modified, ".git/index", False),
        (Change.modified, "sub/.hidden/c.yaml", False),  # the loader skips hidden dirs too
        (Change.added, "team-a", True),  # a directory moved in: no event for its files
        (Change.added, "team.v2", True),
        (Change.deleted, "team-b", True),  # gone, no suffix: possibly a directory moved out
        (Change.deleted, "notes.txt", False),
        (Change.deleted, "", True),  # the root itself
    ],
)
def test_which_events_matter(change: Change, path: str, relevant: bool) -> None:
    full = str(ROOT / path) if path else str(ROOT)
    assert is_relevant(change, full, ROOT, is_dir=DIRS.__contains__) is relevant


def test_events_outside_the_root_do_not_matter() -> None:
    assert not is_relevant(Change.modified, "/srv/other/a.yaml", ROOT, is_dir=DIRS.__contains__)


def test_a_batch_matters_if_any_event_does() -> None:
    noise = {(Change.modified, str(ROOT / ".git/HEAD")), (Change.added, str(ROOT / "x.txt"))}
    assert not has_relevant(noise, ROOT, is_dir=DIRS.__contains__)
    assert has_relevant(noise | {(Change.modified, str(ROOT / "a.yaml"))}, ROOT)
    assert not has_relevant(set(), ROOT)


def health(**overrides: object) -> tuple[int, dict[str, object]]:
    values: dict[str, object] = {
        "is_leader": True,
        "leader_elsewhere": False,
        "last_result": "ok",
        "last_success_age": 5.0,
        "max_age": 30.0,
    }
    values.update(overrides)
    return decide_health(HealthInputs(**values))  # type: ignore[arg-type]


def test_health_of_a_leader() -> None:
    assert health()[0] == 200
    assert health(last_success_age=31.0)[0] == 503
    assert health(last_result=None, last_success_age=None)[0] == 503
    status, body = health(last_result="error", last_error="store_unavailable: Redis down")
    assert status == 503
    assert "Redis down" in str(body["reason"])
    assert health(last_result="refused", last_error="refusing to delete all")[0] == 503


def test_health_of_a_follower_depends_on_someone_leading() -> None:
    status, body = health(is_leader=False, leader_elsewhere=True, last_result=None)
    assert (status, body["role"]) == (200, "follower")
    status, body = health(is_leader=False, lease_error="Connection refused")
    assert status == 503
    assert "Connection refused" in str(body["reason"])


BAD = Problem("t/bad.yaml", 3, 5, "boom")


def outcome(*, refusals: tuple[str, ...] = (), applied: bool = True) -> Outcome:
    files = (
        FileResult("good.yaml", "t/good.yaml", "d1"),
        FileResult("bad.yaml", "t/bad.yaml", "d2", problems=(BAD,)),
    )
    plan = Plan(
        tasks=(
            TaskPlan("a", "create", "active"),
            TaskPlan("b", "noop", "active", schedule_op="put"),  # drift repaired
            TaskPlan("c", "noop", "paused"),
            TaskPlan("d", "noop", "frozen"),
            TaskPlan("e", "noop", "frozen"),
        )
    )
    result = ApplyResult(2, 0, 3) if applied and not refusals else None
    return Outcome(LoadResult("t", files, (BAD,)), plan, result, refusals)


def test_metrics_from_an_applied_outcome() -> None:
    metrics = Metrics()
    assert metrics.record_outcome(outcome(), 0.25, 1_700_000_000.0) == "ok"
    sample = metrics.registry.get_sample_value
    assert sample("syncd_reconciles_total", {"result": "ok"}) == 1
    assert sample("syncd_reconciles_total", {"result": "error"}) == 0
    assert sample("syncd_drift_repaired_total") == 1
    assert sample("syncd_tasks", {"state": "active"}) == 2
    assert sample("syncd_tasks", {"state": "frozen"}) == 2
    assert sample("syncd_tasks", {"state": "paused"}) == 1
    assert sample("syncd_tasks", {"state": "deleted"}) == 0
    assert sample("syncd_frozen_files") == 1
    assert sample("syncd_last_success_timestamp_seconds") == 1_700_000_000.0
    assert sample("syncd_reconcile_duration_seconds_count") == 1
    assert sample("syncd_reconcile_duration_seconds_bucket", {"le": "0.25"}) == 1


def test_metrics_from_a_refused_outcome_and_a_failure() -> None:
    metrics = Metrics(is_leader=lambda: True)
    assert metrics.record_outcome(outcome(refusals=("too many",)), 0.1, 5.0) == "refused"
    metrics.record_failure("store_unavailable", 0.5)
    sample = metrics.registry.get_sample_value
    assert sample("syncd_reconciles_total", {"result": "refused"}) == 1
    assert sample("syncd_reconciles_total", {"result": "error"}) == 1
    assert sample("syncd_reconcile_errors_total", {"kind": "store_unavailable"}) == 1
    assert sample("syncd_drift_repaired_total") == 0  # nothing applied, nothing repaired
    assert sample("syncd_last_success_timestamp_seconds") == 0
    assert sample("syncd_is_leader") == 1
    assert b"syncd_reconcile_duration_seconds_count 2.0" in metrics.render()


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (StoreUnavailable("x"), "store_unavailable"),
        (SchemaMissing("x"), "schema_missing"),
        (ConflictError("x"), "conflict"),
        (SyncdError("x"), "syncd"),
        (ValueError("x"), "internal"),
    ],
)
def test_error_kinds(exc: Exception, kind: str) -> None:
    assert error_kind(exc) == kind


def test_json_log_line_carries_fields_even_names_logrecord_owns() -> None:
    record = logging.getLogger("syncd.daemon.watch").makeRecord(
        "syncd.daemon.watch",
        logging.INFO,
        __file__,
        1,
        "reconciled: %d created",
        (1,),
        None,
        extra=fields(created=1, duration_ms=12),
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "reconciled: 1 created"
    assert (line["level"], line["logger"]) == ("INFO", "syncd.daemon.watch")
    assert (line["created"], line["duration_ms"]) == (1, 12)
    assert line["ts"].endswith("Z")


def test_timing_only_a_change_may_be_reconciled_incrementally() -> None:
    timing = Timing(resync_interval=60)
    assert timing.wants_full(0.0)  # the start reads everything
    timing.finished(10.0)
    assert timing.wants_full(20.0)  # nothing changed: a resync when due
    timing.mark_dirty("change")
    assert not timing.wants_full(20.0)
    assert not timing.wants_full(70.5)  # a change pending at the resync goes first...
    timing.finished(70.5, full=False)
    assert timing.is_due(70.6)  # ...and leaves the resync due
    assert timing.trigger == "resync"
    timing.mark_dirty("change")
    assert timing.wants_full(70.6)  # once only: changes never starve the resync
    timing.finished(71.0)
    timing.mark_dirty("change")
    assert not timing.wants_full(71.1)
    timing.failed(71.2)
    assert timing.wants_full(72.0)  # a retry reads everything
    timing.finished(72.5)
    timing.became_leader()
    assert timing.wants_full(72.6)


def test_relevant_files_counts_distinct_relevant_paths() -> None:
    changes = {
        (Change.modified, f"{ROOT}/a.yaml"),
        (Change.added, f"{ROOT}/a.yaml"),
        (Change.modified, f"{ROOT}/b.yml"),
        (Change.added, f"{ROOT}/.git/index"),
        (Change.modified, f"{ROOT}/notes.txt"),
    }
    assert relevant_files(changes, ROOT, is_dir=lambda _: False) == 2


def test_changed_sources_needs_the_same_files_and_no_errors() -> None:
    def result(*files: tuple[str, str], problems: tuple[Problem, ...] = ()) -> LoadResult:
        found = tuple(FileResult(source, f"/t/{source}", digest) for source, digest in files)
        return LoadResult("/t", found, problems)

    before = result(("a.yaml", "1"), ("b.yaml", "2"))
    assert changed_sources(before, result(("a.yaml", "1"), ("b.yaml", "3"))) == {"b.yaml"}
    assert changed_sources(before, before) == frozenset()
    moved = changed_sources(before, result(("a.yaml", "1"), ("c.yaml", "2")))
    assert moved == Fallback("files added or removed")
    broken = result(("a.yaml", "1"), ("b.yaml", "3"), problems=(BAD,))
    assert changed_sources(before, broken) == Fallback("taskdef errors")

"""The pure planner: create/update/delete/no-op, drift, operator pauses, expiry, freezing,
and the properties "apply(plan) then plan again is empty" and "a state planned against
itself is empty" (hypothesis), using the real Redis op builder on an in-memory store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.adapters.redis import DeleteStatus, PutSchedule, RemoveSchedule, SetStatus
from syncd.core.guards import SyncOptions, check_guards
from syncd.core.keys import KeyLayout, config_id_of, schedule_id
from syncd.core.model import Actual, Desired, DesiredTask, Row, ScheduleRecord, TaskConfig
from syncd.core.offline import applied_state
from syncd.core.plan import Plan, Reason, plan
from syncd.reconcile import redis_ops

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LAYOUT = KeyLayout()


def codes(reasons: tuple[Reason, ...]) -> list[str]:
    return [str(reason.code) for reason in reasons]


def cfg(name: str, **overrides: Any) -> TaskConfig:
    base: dict[str, Any] = {
        "name": name,
        "task_type": "diagnostics.noop",
        "scheduler_type": "interval",
        "schedule_config": {"interval": 60},
        "parameters": {},
    }
    base.update(overrides)
    return TaskConfig(**base)


def desired(
    *configs: TaskConfig,
    broken: frozenset[str] = frozenset(),
    source: str = "a.yaml",
    revision: str | None = None,
) -> Desired:
    tasks = {c.name: DesiredTask(c, source, 1, source) for c in configs}
    return Desired(tasks, broken, revision=revision)


def empty() -> Actual:
    return Actual({}, {}, {})


# -- an in-memory store that applies plans with the real op builder -------------------------


def simulate(the_plan: Plan, want: Desired, actual: Actual) -> Actual:
    """Apply a plan the way apply_plan does, on plain dicts (Redis semantics emulated)."""
    rows = dict(actual.rows)
    next_id = max((r.id for r in rows.values()), default=0) + 1
    ids: dict[str, int] = {}
    for task in the_plan.tasks:
        if task.action == "delete":
            del rows[task.name]
        elif task.action == "create":
            ids[task.name], next_id = next_id, next_id + 1
            rows[task.name] = _row(ids[task.name], want.tasks[task.name], the_plan.revision)
        elif task.write_row and task.config_id is not None:
            rows[task.name] = _row(task.config_id, want.tasks[task.name], the_plan.revision)
    schedules = {k: list(v.lists) for k, v in actual.schedules.items()}
    payloads = {k: v.payload for k, v in actual.schedules.items() if v.payload is not None}
    statuses = dict(actual.statuses)
    for op in redis_ops(the_plan, ids, LAYOUT):
        if isinstance(op, PutSchedule):
            sid = op.payload["schedule_id"]
            payloads[sid] = op.payload
            schedules[sid] = [op.index_key]
        elif isinstance(op, RemoveSchedule):
            payloads.pop(op.schedule_id, None)
            schedules.pop(op.schedule_id, None)
        elif isinstance(op, SetStatus):
            statuses[op.config_id] = op.status
        elif isinstance(op, DeleteStatus):
            statuses.pop(op.config_id, None)
    records = {
        sid: ScheduleRecord(sid, payloads.get(sid), tuple(schedules.get(sid, ())))
        for sid in set(schedules) | set(payloads)
    }
    return Actual(rows, records, statuses, actual.unmanaged_names, actual.foreign_ids)


def _row(config_id: int, task: DesiredTask, revision: str | None) -> Row:
    """The row DbStore.apply writes: stamped with the plan's revision."""
    config = task.config
    return Row(config_id, config, config.content_hash(), task.source, task.line, revision)


def converge(want: Desired, actual: Actual) -> tuple[Plan, Actual]:
    first = plan(want, actual, NOW, LAYOUT)
    return first, simulate(first, want, actual)


# -- table tests ---------------------------------------------------------------------------


def test_create_registers_schedule_and_active_status() -> None:
    the_plan = plan(desired(cfg("a")), empty(), NOW, LAYOUT)
    (task,) = the_plan.tasks
    assert (task.action, task.state, task.schedule_op, task.status_op) == (
        "create",
        "active",
        "put",
        "active",
    )
    assert the_plan.summary()["create"] == 1


def test_noop_after_apply() -> None:
    want = desired(
        cfg("a"), cfg("b", enabled=False), cfg("m", scheduler_type="manual", schedule_config={})
    )
    _, after = converge(want, empty())
    again = plan(want, after, NOW, LAYOUT)
    assert again.is_empty, again.changed
    assert {t.name: t.state for t in again.tasks} == {
        "a": "active",
        "b": "inactive",
        "m": "inactive",
    }


def test_update_lists_field_changes() -> None:
    _, after = converge(desired(cfg("a")), empty())
    the_plan = plan(
        desired(cfg("a", priority=9, schedule_config={"interval": 30})), after, NOW, LAYOUT
    )
    (task,) = the_plan.tasks
    assert task.action == "update"
    assert [(c.field, c.before, c.after) for c in task.changes] == [
        ("schedule_config", {"interval": 60}, {"interval": 30}),
        ("priority", 5, 9),
    ]
    assert task.schedule_op == "put"
    assert task.drift == ()


def test_backoff_changes_are_field_changes_and_reach_the_schedule_of_a_retrying_task() -> None:
    _, after = converge(desired(cfg("a", max_retries=2), cfg("b")), empty())
    changed = desired(
        cfg("a", max_retries=2, retry_backoff_seconds=0.5, retry_backoff_max_seconds=30.0),
        cfg("b", retry_backoff_seconds=1.0),
    )

    the_plan, applied = converge(changed, after)

    a, b = the_plan.tasks
    assert (a.action, b.action) == ("update", "update")
    assert [(c.field, c.before, c.after) for c in a.changes] == [
        ("retry_backoff_seconds", 5.0, 0.5),
        ("retry_backoff_max_seconds", 600.0, 30.0),
    ]
    assert a.schedule_op == "put"
    assert a.payload is not None
    assert (a.payload["labels"]["retry_backoff"], a.payload["labels"]["retry_backoff_max"]) == (
        0.5,
        30.0,
    )
    # b has no retries: its row changes, its schedule only by the content hash it carries.
    assert [c.field for c in b.changes] == ["retry_backoff_seconds"]
    assert (b.write_row, b.schedule_op) == (True, "put")
    assert b.payload is not None
    assert "retry_backoff" not in b.payload["labels"]
    assert b.payload["labels"]["config_hash"] == changed.tasks["b"].config.content_hash()
    assert plan(changed, applied, NOW, LAYOUT).is_empty


# What the content hash of cfg("a") was before the retry backoff fields existed.
HASH_BEFORE_BACKOFF = "c71a3acca61c574bcf866602bdb0dbc07fb594d4f777b92d64c620315dc4d4e8"


def test_backoff_at_its_defaults_keeps_the_content_hash_from_before_the_fields() -> None:
    assert cfg("a").content_hash() == HASH_BEFORE_BACKOFF
    # Defaults written out (as YAML integers, even) are still the defaults.
    assert (
        cfg("a", retry_backoff_seconds=5, retry_backoff_max_seconds=600).content_hash()
        == HASH_BEFORE_BACKOFF
    )
    changed = {
        cfg("a", retry_backoff_seconds=4.0).content_hash(),
        cfg("a", retry_backoff_max_seconds=601.0).content_hash(),
        cfg("a", retry_backoff_seconds=4.0, retry_backoff_max_seconds=601.0).content_hash(),
    }
    assert len(changed) == 3
    assert HASH_BEFORE_BACKOFF not in changed


def test_upgrade_rewrites_only_the_schedules_of_tasks_with_retries() -> None:
    """State left by a syncd without backoff: same rows and hashes, payloads without the
    backoff labels. Only tasks with retries need a put; no row is written."""
    want = desired(cfg("plain"), cfg("retrying", max_retries=3))
    _, current = converge(want, empty())
    old_schedules = {}
    for sid, record in current.schedules.items():
        assert record.payload is not None
        labels = {
            k: v for k, v in record.payload["labels"].items() if not k.startswith("retry_backoff")
        }
        old_schedules[sid] = replace(record, payload={**record.payload, "labels": labels})
    before_upgrade = Actual(current.rows, old_schedules, current.statuses)

    the_plan = plan(want, before_upgrade, NOW, LAYOUT)

    by_name = {t.name: t for t in the_plan.tasks}
    assert by_name["plain"].has_changes is False
    retrying = by_name["retrying"]
    assert (retrying.action, retrying.write_row, retrying.schedule_op) == ("noop", False, "put")
    assert codes(retrying.drift) == ["schedule_altered"]
    assert the_plan.summary()["update"] == 0


def configs_of(want: Desired) -> tuple[TaskConfig, ...]:
    return tuple(task.config for task in want.tasks.values())


def labels_of(actual: Actual, name: str) -> dict[str, Any]:
    record = actual.schedules[schedule_id(actual.rows[name].id)]
    assert record.payload is not None
    labels: dict[str, Any] = record.payload["labels"]
    return labels


def test_payloads_carry_the_revision_their_row_was_written_at_not_head() -> None:
    configs = (cfg("a"), cfg("b"))
    _, at_one = converge(desired(*configs, revision="rev1"), empty())
    assert labels_of(at_one, "a")["git_revision"] == "rev1"
    assert labels_of(at_one, "a")["config_hash"] == cfg("a").content_hash()

    # A commit that leaves both tasks alone rewrites nothing.
    assert plan(desired(*configs, revision="rev2"), at_one, NOW, LAYOUT).is_empty

    # A commit that changes b: b's row and payload get rev3, a keeps rev1.
    want = desired(cfg("a"), cfg("b", priority=9), revision="rev3")
    the_plan, at_three = converge(want, at_one)
    assert [t.name for t in the_plan.changed] == ["b"]
    assert (labels_of(at_three, "a")["git_revision"], at_three.rows["a"].git_revision) == (
        "rev1",
        "rev1",
    )
    assert (labels_of(at_three, "b")["git_revision"], at_three.rows["b"].git_revision) == (
        "rev3",
        "rev3",
    )
    assert plan(desired(*configs_of(want), revision="rev4"), at_three, NOW, LAYOUT).is_empty


def test_a_created_task_is_labelled_with_the_plan_revision() -> None:
    the_plan = plan(desired(cfg("a"), revision="rev1"), empty(), NOW, LAYOUT)
    (task,) = the_plan.tasks
    payload = task.schedule_payload(42)
    assert payload is not None
    assert payload["labels"]["git_revision"] == "rev1"
    assert payload["labels"]["config_id"] == 42


def test_a_moved_task_follows_its_rewritten_row_without_drift() -> None:
    _, current = converge(desired(cfg("a"), revision="rev1"), empty())
    moved = desired(cfg("a"), source="b.yaml", revision="rev2")

    the_plan, after = converge(moved, current)

    (task,) = the_plan.tasks
    assert (task.action, task.write_row, task.schedule_op) == ("noop", True, "put")
    assert task.drift == ()
    assert codes(task.notes) == ["moved"]
    assert after.rows["a"].git_revision == labels_of(after, "a")["git_revision"] == "rev2"
    assert plan(moved, after, NOW, LAYOUT).is_empty


def test_a_hand_edited_row_is_rewritten_with_the_revision_its_payload_gets() -> None:
    _, current = converge(desired(cfg("a"), revision="rev1"), empty())
    edited = replace(current.rows["a"], config=cfg("a", priority=2))
    current = replace(current, rows={"a": edited})
    want = desired(cfg("a"), revision="rev2")

    the_plan, after = converge(want, current)

    (task,) = the_plan.tasks
    assert codes(task.drift) == ["row_edited"]  # the payload's rewrite is no drift of its own
    assert labels_of(after, "a")["git_revision"] == after.rows["a"].git_revision == "rev2"
    assert plan(want, after, NOW, LAYOUT).is_empty


def test_upgrade_rewrites_every_schedule_once_with_hash_and_revision() -> None:
    """State left by a syncd before attribution: rows stamped with their revision, payloads
    without `config_hash` and `git_revision`. Each schedule is put once (drift), no row is
    written, and the next plan is empty."""
    want = desired(cfg("a"), cfg("b", max_retries=1), cfg("m", enabled=False), revision="rev1")
    _, current = converge(want, empty())
    old = {}
    for sid, record in current.schedules.items():
        assert record.payload is not None
        labels = dict(record.payload["labels"])
        del labels["config_hash"], labels["git_revision"]
        old[sid] = replace(record, payload={**record.payload, "labels": labels})
    before_upgrade = replace(current, schedules=old)
    head = desired(*configs_of(want), revision="rev2")

    the_plan, after = converge(head, before_upgrade)

    assert [(t.name, t.write_row, t.schedule_op) for t in the_plan.changed] == [
        ("a", False, "put"),
        ("b", False, "put"),
    ]
    assert all(codes(t.drift) == ["schedule_altered"] for t in the_plan.changed)
    assert labels_of(after, "a")["git_revision"] == "rev1"  # the row's, not HEAD's
    assert plan(head, after, NOW, LAYOUT).is_empty


def test_delete_removes_row_schedule_and_status() -> None:
    _, after = converge(desired(cfg("a"), cfg("b")), empty())
    the_plan = plan(desired(cfg("a")), after, NOW, LAYOUT)
    deleted = [t for t in the_plan.tasks if t.action == "delete"]
    assert [(t.name, t.schedule_op, t.status_op) for t in deleted] == [("b", "remove", "delete")]


def test_disable_keeps_row_and_removes_schedule() -> None:
    _, after = converge(desired(cfg("a")), empty())
    the_plan = plan(desired(cfg("a", enabled=False)), after, NOW, LAYOUT)
    (task,) = the_plan.tasks
    assert (task.action, task.schedule_op, task.status_op, task.state) == (
        "update",
        "remove",
        "inactive",
        "inactive",
    )


def test_change_of_kind_moves_between_lists() -> None:
    _, after = converge(desired(cfg("a")), empty())
    cron = cfg("a", scheduler_type="cron", schedule_config={"cron": "0 3 * * *", "timezone": "UTC"})
    the_plan, moved = converge(desired(cron), after)
    assert the_plan.tasks[0].current_lists == (LAYOUT.interval_key,)
    assert moved.schedules[schedule_id(1)].lists == (LAYOUT.cron_key,)


def test_drift_missing_schedule_and_status_are_repaired() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    broken = Actual(after.rows, {}, {})
    the_plan = plan(want, broken, NOW, LAYOUT)
    (task,) = the_plan.tasks
    assert task.action == "noop"
    assert codes(task.drift) == ["schedule_missing", "status_missing"]
    assert [d.message for d in task.drift] == ["schedule missing from Redis", "status key missing"]
    assert (task.schedule_op, task.status_op) == ("put", "active")
    assert the_plan.summary()["drift"] == 1


def test_drift_altered_schedule_and_duplicate_listing() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    sid = schedule_id(1)
    record = after.schedules[sid]
    assert record.payload is not None
    altered = Actual(
        after.rows,
        {sid: replace(record, payload={**record.payload, "interval": 1})},
        after.statuses,
    )
    assert codes(plan(want, altered, NOW, LAYOUT).tasks[0].drift) == ["schedule_altered"]
    twice = Actual(after.rows, {sid: replace(record, lists=record.lists * 2)}, after.statuses)
    assert codes(plan(want, twice, NOW, LAYOUT).tasks[0].drift) == ["schedule_listed_twice"]


def test_hand_edited_row_is_drift() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    row = after.rows["a"]
    edited = Actual(
        {"a": replace(row, config=replace(row.config, priority=1))}, after.schedules, after.statuses
    )
    (task,) = plan(want, edited, NOW, LAYOUT).tasks
    assert task.action == "noop"
    assert task.write_row
    assert codes(task.drift) == ["row_edited"]
    assert task.drift[0].message == "row edited in PostgreSQL (priority)"


def test_stray_schedule_under_prefix_is_removed() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    stray = ScheduleRecord("task_999", {"x": 1}, (LAYOUT.cron_key,))
    the_plan = plan(
        want,
        Actual(after.rows, {**after.schedules, "task_999": stray}, after.statuses),
        NOW,
        LAYOUT,
    )
    assert [s.schedule_id for s in the_plan.strays] == ["task_999"]


def test_operator_pause_is_kept() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    paused = Actual(after.rows, after.schedules, {1: "paused"})
    the_plan = plan(want, paused, NOW, LAYOUT)
    (task,) = the_plan.tasks
    assert task.state == "paused"
    assert task.status_op is None
    assert codes(task.notes) == ["paused_by_operator"]
    assert "paused by operator" in task.notes[0].message
    assert the_plan.is_empty


def test_future_at_is_registered_past_at_is_expired_not_drift() -> None:
    future = cfg(
        "once",
        scheduler_type="date",
        schedule_config={"at": (NOW + timedelta(hours=1)).isoformat()},
    )
    past = cfg(
        "gone",
        scheduler_type="date",
        schedule_config={"at": (NOW - timedelta(hours=1)).isoformat()},
    )
    the_plan, after = converge(desired(future, past), empty())
    states = {t.name: (t.state, t.schedule_op) for t in the_plan.tasks}
    assert states == {"once": ("active", "put"), "gone": ("expired", None)}
    # Later, the scheduler has sent `once` and deleted its schedule: expired, no repair.
    later = NOW + timedelta(hours=2)
    fired = Actual(after.rows, {}, after.statuses)
    again = plan(desired(future, past), fired, later, LAYOUT)
    assert again.is_empty
    assert {t.state for t in again.tasks} == {"expired"}


def test_broken_file_freezes_its_tasks_and_suspends_pruning() -> None:
    _, after = converge(desired(cfg("a"), cfg("b")), empty())
    after = Actual(
        {n: replace(r, source_file=f"{n}.yaml") for n, r in after.rows.items()},
        after.schedules,
        after.statuses,
    )
    want = Desired({"c": DesiredTask(cfg("c"), "c.yaml", 1, "c.yaml")}, frozenset({"a.yaml"}))
    the_plan = plan(want, after, NOW, LAYOUT)
    by_name = {t.name: t for t in the_plan.tasks}
    assert (by_name["a"].state, by_name["a"].has_changes) == ("frozen", False)
    assert (by_name["b"].state, by_name["b"].action) == ("kept", "noop")
    assert by_name["c"].action == "create"
    assert the_plan.pruning_suspended


def test_guards_refuse_mass_and_total_deletes() -> None:
    _, after = converge(desired(*(cfg(f"t{i}") for i in range(12))), empty())
    everything = plan(desired(), after, NOW, LAYOUT)
    assert "--allow-empty" in check_guards(everything, SyncOptions())[0]
    assert check_guards(everything, SyncOptions(allow_empty=True, max_deletes=12)) == ()
    most = plan(desired(cfg("t0")), after, NOW, LAYOUT)
    assert "more than --max-deletes 10" in check_guards(most, SyncOptions())[0]
    assert check_guards(most, SyncOptions(max_deletes=11)) == ()


def test_replacing_every_task_falls_under_max_deletes_not_allow_empty() -> None:
    _, after = converge(desired(*(cfg(f"old{i}") for i in range(3))), empty())
    renamed = plan(desired(*(cfg(f"new{i}") for i in range(3))), after, NOW, LAYOUT)
    assert check_guards(renamed, SyncOptions(max_deletes=3)) == ()
    (reason,) = check_guards(renamed, SyncOptions(max_deletes=2))
    assert "replace all 3 managed tasks" in reason
    assert "creates 3" in reason
    assert "--allow-empty" not in reason


def test_unmanaged_name_is_an_error() -> None:
    the_plan = plan(desired(cfg("a")), Actual({}, {}, {}, frozenset({"a"})), NOW, LAYOUT)
    assert the_plan.errors
    assert codes(the_plan.errors) == ["name_not_managed"]
    assert "does not manage" in the_plan.errors[0].message
    assert the_plan.tasks == ()


# -- properties ----------------------------------------------------------------------------

names = st.sampled_from([f"task-{i}" for i in range(8)])
schedule_kinds = st.one_of(
    st.builds(lambda s: ("interval", {"interval": s}), st.integers(1, 3600)),
    st.builds(
        lambda m: ("cron", {"cron": f"{m} * * * *", "timezone": "Europe/Berlin"}),
        st.integers(0, 59),
    ),
    st.builds(
        lambda h: ("date", {"at": (NOW + timedelta(hours=h)).isoformat()}), st.integers(-48, 48)
    ),
    st.just(("manual", {})),
)
backoffs = st.sampled_from([(5.0, 600.0), (0.0, 0.0), (0.5, 30.0), (60.0, 60.0)])
configs = st.builds(
    lambda name, kind, priority, enabled, retries, backoff: cfg(
        name,
        scheduler_type=kind[0],
        schedule_config=kind[1],
        priority=priority,
        enabled=enabled,
        max_retries=retries,
        retry_backoff_seconds=backoff[0],
        retry_backoff_max_seconds=backoff[1],
    ),
    names,
    schedule_kinds,
    st.integers(1, 10),
    st.booleans(),
    st.integers(0, 3),
    backoffs,
)
desired_states = st.lists(configs, max_size=8, unique_by=lambda c: c.name).map(
    lambda cs: desired(*cs)
)


@settings(max_examples=200, deadline=None)
@given(
    start=desired_states,
    goal=desired_states,
    pause=st.sets(st.integers(1, 8)),
    drop=st.sets(st.integers(1, 8)),
)
def test_apply_then_plan_again_is_empty(
    start: Desired, goal: Desired, pause: set[int], drop: set[int]
) -> None:
    _, actual = converge(start, empty())
    # Operator pauses and hand-deleted schedules before the next sync.
    statuses = {i: ("paused" if i in pause else s) for i, s in actual.statuses.items()}
    schedules = {k: v for k, v in actual.schedules.items() if config_id_of(k) not in drop}
    actual = Actual(actual.rows, schedules, statuses)
    _, after = converge(goal, actual)
    again = plan(goal, after, NOW, LAYOUT)
    assert again.is_empty, [(t.name, t.action, t.drift) for t in again.changed]
    assert set(after.rows) == set(goal.tasks)
    for name, row in after.rows.items():
        assert row.config == goal.tasks[name].config
        if row.id in pause and row.id in statuses:
            assert after.statuses[row.id] == "paused"  # sync never undoes a pause


revisions = st.sampled_from([None, "rev1", "rev2", "rev3-dirty"])


def relocated(want: Desired, moved: set[str], revision: str | None) -> Desired:
    tasks = {
        name: replace(task, source="b.yaml", path="b.yaml") if name in moved else task
        for name, task in want.tasks.items()
    }
    return replace(want, tasks=tasks, revision=revision)


@settings(max_examples=200, deadline=None)
@given(
    start=desired_states,
    goal=desired_states,
    revs=st.tuples(revisions, revisions, revisions),
    moved=st.sets(names),
)
def test_across_commits_and_moves_payloads_follow_their_rows_and_converge(
    start: Desired,
    goal: Desired,
    revs: tuple[str | None, str | None, str | None],
    moved: set[str],
) -> None:
    _, actual = converge(replace(start, revision=revs[0]), empty())
    want = relocated(goal, moved, revs[1])
    _, after = converge(want, actual)
    assert plan(want, after, NOW, LAYOUT).is_empty
    # A later commit that changes no task rewrites nothing.
    assert plan(replace(want, revision=revs[2]), after, NOW, LAYOUT).is_empty
    for row in after.rows.values():
        record = after.schedules.get(schedule_id(row.id))
        # An expired one-shot's schedule is the scheduler's to send and delete: left alone.
        live = row.config.is_scheduled and not row.config.has_passed(NOW)
        if live and record is not None and record.payload is not None:
            labels = record.payload["labels"]
            assert labels.get("git_revision") == row.git_revision
            assert labels["config_hash"] == row.stored_hash


@settings(max_examples=200, deadline=None)
@given(state=desired_states)
def test_a_state_planned_against_itself_is_empty(state: Desired) -> None:
    assert plan(state, applied_state(state, NOW, LAYOUT), NOW, LAYOUT).is_empty


def test_status_key_without_a_row_is_removed_unless_someone_else_owns_the_id() -> None:
    want = desired(cfg("a"))
    _, after = converge(want, empty())
    statuses = {**after.statuses, 41: "active", 42: "paused"}
    leftover = Actual(after.rows, after.schedules, statuses, foreign_ids=frozenset({42}))
    the_plan, repaired = converge(want, leftover)
    assert the_plan.stray_statuses == (41,)
    assert the_plan.summary()["stray_statuses"] == 1
    assert set(repaired.statuses) == {1, 42}
    assert plan(want, repaired, NOW, LAYOUT).is_empty

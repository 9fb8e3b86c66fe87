"""One hostile file among valid ones costs only itself: every valid file's edits apply,
and the hostile file's tasks keep their last applied state (real PostgreSQL and Redis).

Generated trees (hypothesis): a few valid files, each edited between two syncs, and one
file that turns hostile in the same change — non-finite numbers, instants no store or
clock handles, an alias bomb, a header cut short, a link out of the tree, a name another
file owns, bytes that are not UTF-8, a name forging output lines, a row PostgreSQL refuses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.cli.common import catalog
from syncd.core.guards import SyncOptions
from syncd.core.settings import Settings
from syncd.reconcile import Outcome, reconcile_once
from syncd.reconcile import Stores as SyncdStores
from tests.reliability.convergence import LAYOUT, libpq_url
from tests.reliability.support import Stores

TASK = "  - name: {name}\n    task_type: diagnostics.noop\n    schedule: {{interval: {interval}}}\n"


def taskfile(tasks: dict[str, int]) -> str:
    return "version: 1\ntasks:\n" + "".join(
        TASK.format(name=name, interval=interval) for name, interval in tasks.items()
    )


def _webhook(value: str) -> Callable[[Path, str], None]:
    def write(path: Path, own: str) -> None:
        path.write_text(
            f"version: 1\ntasks:\n  - name: {own}\n    task_type: notification.webhook\n"
            f"    parameters: {{url: 'http://127.0.0.1:9/', payload: {{x: {value}}}}}\n"
        )

    return write


def _at(instant: str) -> Callable[[Path, str], None]:
    def write(path: Path, own: str) -> None:
        path.write_text(
            f"version: 1\ntasks:\n  - name: {own}\n    task_type: diagnostics.noop\n"
            f"    schedule: {{at: {instant}}}\n"
        )

    return write


def _alias_bomb(path: Path, own: str) -> None:
    uses = "".join("  - {name: *s, task_type: diagnostics.noop}\n" for _ in range(300))
    path.write_text(f"version: 1\ntasks:\n  - {{name: &s {own}{'n' * 20_000}}}\n{uses}")


def _header_only(path: Path, own: str) -> None:
    path.write_text("version: 1\n")


def _link_outside(path: Path, own: str) -> None:
    outside = path.parent.parent / "outside.yaml"
    outside.write_text(taskfile({own: 5, "smuggled": 5}))
    path.unlink()
    path.symlink_to(outside)


def _steals_a_name(path: Path, own: str) -> None:
    path.write_text(taskfile({own: 7, "v0-0": 7}))  # v0-0 belongs to a valid file


def _not_utf8(path: Path, own: str) -> None:
    path.write_bytes(b"version: 1\ntasks:\n  - name: \xff\xfe\n")


def _refused_by_the_store(path: Path, own: str) -> None:
    # Valid YAML; PostgreSQL refuses the row named "poison" (see REFUSE_POISON).
    path.write_text(taskfile({own: 43, "poison": 5}))


# A value a store refuses, though validation passed it: PostgreSQL itself says no.
REFUSE_POISON = """
CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'poison' THEN
        RAISE EXCEPTION 'value refused' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON task_configs
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


def _forging_name(path: Path, own: str) -> None:
    name = json.dumps(f"{own}\n::error file=a.yaml,line=1::x\nok: 7 task(s)")
    path.write_text(f"version: 1\ntasks:\n  - name: {name}\n    task_type: diagnostics.noop\n")


HOSTILE: dict[str, Callable[[Path, str], None]] = {
    "inf": _webhook(".inf"),
    "minus-inf": _webhook("-.inf"),
    "nan": _webhook(".nan"),
    "overflowing-float": _webhook("1.0e+400"),
    "far-future": _at("9999-12-31T23:00:00-12:00"),
    "far-past": _at("0001-01-01T00:00:00+01:00"),
    "alias-bomb": _alias_bomb,
    "header-only": _header_only,
    "link-outside": _link_outside,
    "steals-a-name": _steals_a_name,
    "not-utf8": _not_utf8,
    "forging-name": _forging_name,
    "refused-by-the-store": _refused_by_the_store,
}

valid_trees = st.lists(
    st.lists(st.integers(min_value=10, max_value=99), min_size=1, max_size=3),
    min_size=1,
    max_size=4,
)


def sync(root: Path, stores: Stores) -> Outcome:
    settings_ = Settings(database_url=stores.database_url, redis_url=stores.redis_url)
    opened = SyncdStores.open(settings_)
    try:
        return reconcile_once(
            root, opened, catalog(), datetime.now(UTC), options=SyncOptions(max_deletes=1000)
        )
    finally:
        opened.close()


def registered(stores: Stores) -> dict[str, object]:
    """name -> the schedule payload Redis holds for it (None when it has none)."""
    with psycopg.connect(libpq_url(stores.database_url)) as conn:
        ids = dict(conn.execute("SELECT name, id FROM task_configs").fetchall())
    with redis.Redis.from_url(stores.redis_url, decode_responses=True) as client:
        return {
            name: json.loads(raw) if (raw := client.get(LAYOUT.data_key(f"task_{i}"))) else None
            for name, i in ids.items()
        }


def after_names(stores: Stores) -> set[str]:
    return set(registered(stores))


def wipe(stores: Stores, root: Path) -> None:
    with psycopg.connect(libpq_url(stores.database_url)) as conn:
        conn.execute("DELETE FROM task_configs")
        conn.execute(REFUSE_POISON)
    with redis.Redis.from_url(stores.redis_url) as client:
        client.flushdb()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=valid_trees, edits=st.data())
def test_one_hostile_file_costs_only_itself(
    stores: Stores, tmp_path: Path, tree: list[list[int]], edits: st.DataObject, hostile: str
) -> None:
    root = tmp_path / "tree" / "taskdefs"
    wipe(stores, root)
    files = {
        f"v{f}.yaml": {f"v{f}-{t}": interval for t, interval in enumerate(intervals)}
        for f, intervals in enumerate(tree)
    }
    for name, tasks in files.items():
        (root / name).write_text(taskfile(tasks))
    (root / "hostile.yaml").write_text(taskfile({"h-own": 42}))
    first = sync(root, stores)
    assert not first.loaded.errors, first.loaded.errors
    before = registered(stores)

    edited = {
        name: {task: edits.draw(st.integers(100, 999)) for task in tasks}
        for name, tasks in files.items()
    }
    for name, tasks in edited.items():
        (root / name).write_text(taskfile(tasks))
    HOSTILE[hostile](root / "hostile.yaml", "h-own")
    second = sync(root, stores)

    assert {Path(p.path).name for p in second.loaded.errors} == {"hostile.yaml"}
    assert "poison" not in after_names(stores)
    assert second.applied is not None or second.plan.is_empty
    after = registered(stores)
    for tasks in edited.values():
        for task, interval in tasks.items():
            found = after[task]
            assert isinstance(found, dict), (task, found)
            assert found["interval"] == interval
    assert after["h-own"] == before["h-own"]  # frozen as last applied
    assert set(after) == set(before)  # nothing smuggled in, nothing pruned

"""One bad file, value or name costs only itself: `syncd sync`, `plan`, `validate` and the
daemon on real PostgreSQL and Redis, with the inputs that used to stop every sync."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_sync_cli import rows, taskfile
from tests.e2e.test_watch import payload, wait_for, watching

PARAM_TASK = """\
version: 1
tasks:
  - name: {name}
    task_type: notification.webhook
    schedule: {{interval: 60}}
    parameters: {{url: "http://127.0.0.1:9/hook", payload: {{threshold: {value}}}}}
"""


def payloads(cli: Cli) -> dict[str, dict[str, Any] | None]:
    with cli.redis() as client:
        return {name: payload(client, row[0]) for name, row in rows(cli).items()}


def sync_expecting_problems(cli: Cli) -> str:
    """A sync with a broken file: it applies the rest, then exits 1 naming the problems."""
    proc = cli.run("sync", str(cli.taskdefs))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "internal error" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1.0e+400"])
def test_a_non_finite_number_freezes_only_its_file(cli: Cli, value: str) -> None:
    cli.write("hostile.yaml", PARAM_TASK.format(name="h", value=1.5))
    cli.write("other.yaml", taskfile({"name": "o"}))
    cli.run("sync", str(cli.taskdefs), check=True)
    applied = payloads(cli)["h"]
    cli.write("hostile.yaml", PARAM_TASK.format(name="h", value=value))
    cli.write("other.yaml", taskfile({"name": "o", "priority": 2}, {"name": "new"}))
    stderr = sync_expecting_problems(cli)
    assert "hostile.yaml:6:" in stderr
    assert "not a finite number" in stderr
    assert set(rows(cli)) == {"h", "o", "new"}
    assert payloads(cli)["h"] == applied  # frozen at what was applied
    assert payloads(cli)["new"] is not None


@pytest.mark.parametrize("instant", ["9999-12-31T23:00:00-12:00", "0001-01-01T00:00:00+01:00"])
def test_an_instant_out_of_range_is_an_error_at_its_line(cli: Cli, instant: str) -> None:
    cli.write("far.yaml", taskfile({"name": "far", "schedule": "{at: 2030-01-01T00:00:00Z}"}))
    cli.run("sync", str(cli.taskdefs), check=True)
    cli.write("far.yaml", taskfile({"name": "far", "schedule": f"{{at: {instant}}}"}))
    cli.write("other.yaml", taskfile({"name": "new"}))
    plan = cli.run("plan", str(cli.taskdefs))
    assert plan.returncode == 1
    assert "internal error" not in plan.stderr
    assert "far.yaml:5:" in plan.stderr
    assert "out of range" in plan.stderr
    sync_expecting_problems(cli)
    assert "new" in rows(cli)
    assert payloads(cli)["far"] is not None  # the applied `at` stays registered


def test_a_quoted_iso_instant_is_registered_like_an_unquoted_one(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "q", "schedule": '{at: "2030-12-01T09:00:00+02:00"}'}))
    cli.write("b.yaml", taskfile({"name": "u", "schedule": "{at: 2030-12-01T09:00:00+02:00}"}))
    cli.run("sync", str(cli.taskdefs), check=True)
    registered = payloads(cli)
    quoted, unquoted = registered["q"], registered["u"]
    assert quoted is not None
    assert unquoted is not None
    assert quoted["time"] == unquoted["time"]


def test_a_file_cut_to_its_header_keeps_its_tasks(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a1"}, {"name": "a2"}))
    cli.write("b.yaml", taskfile({"name": "b"}))
    cli.run("sync", str(cli.taskdefs), check=True)
    cli.write("a.yaml", "version: 1\n")
    stderr = sync_expecting_problems(cli)
    assert "a.yaml:1:1: file: missing required key 'tasks'" in stderr
    assert set(rows(cli)) == {"a1", "a2", "b"}
    cli.write("a.yaml", "version: 1\ntasks: []\n")  # an explicit empty list deletes them
    cli.run("sync", str(cli.taskdefs), check=True)
    assert set(rows(cli)) == {"b"}


def test_an_aliased_huge_name_is_refused_fast_with_short_output(cli: Cli) -> None:
    huge = "n" * 1_000_000
    tasks = "".join("  - {name: *s, task_type: diagnostics.noop, a: 1, b: 2}\n" for _ in range(500))
    cli.write("bomb.yaml", f"version: 1\ntasks:\n  - {{name: &s {huge}, task_type: x}}\n{tasks}")
    proc = cli.run("validate", str(cli.taskdefs), timeout=60)
    assert proc.returncode == 1
    assert "refusing a possible alias bomb" in proc.stdout + proc.stderr
    assert len(proc.stdout) + len(proc.stderr) < 5_000


def test_messages_about_a_huge_value_are_short(cli: Cli) -> None:
    huge = "t" * 300_000
    tasks = "".join(f"  - {{name: x{i}, task_type: *s, z: 1}}\n" for i in range(3))
    cli.write("big.yaml", f"version: 1\ntasks:\n  - {{name: x, task_type: &s {huge}}}\n{tasks}")
    proc = cli.run("validate", str(cli.taskdefs), timeout=60)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert output.count("\n") >= 4  # every problem is reported...
    assert len(output) < 10_000  # ...each without the 300 kB value


def test_a_link_leaving_the_taskdefs_root_is_refused(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "credentials.yaml"
    secret.write_text("version: 1\ntasks:\n  - {name: x, task_type: t, AWS_SECRET: hunter2}\n")
    (cli.taskdefs / "creds.yaml").symlink_to(secret)
    cli.write("real/inside.yaml", taskfile({"name": "inside"}))
    (cli.taskdefs / "alias.yaml").symlink_to(cli.taskdefs / "real" / "inside.yaml")
    proc = cli.run("validate", str(cli.taskdefs))
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "creds.yaml:1:1: symbolic link to a file outside the taskdefs directory" in output
    assert "hunter2" not in output
    assert "AWS_SECRET" not in output
    # A link that stays inside is read (here: a duplicate of the file it points at).
    assert "alias.yaml" in output
    assert "duplicate task name 'inside'" in output


def test_a_reused_name_stays_with_the_file_already_applied(cli: Cli) -> None:
    cli.write("owner.yaml", taskfile({"name": "shared"}, {"name": "mine"}))
    cli.run("sync", str(cli.taskdefs), check=True)
    owner_id = rows(cli)["shared"][0]
    cli.write("newcomer.yaml", taskfile({"name": "shared", "priority": 9}, {"name": "fresh"}))
    cli.write("owner.yaml", taskfile({"name": "shared"}, {"name": "mine", "priority": 3}))
    stderr = sync_expecting_problems(cli)
    lines = stderr.splitlines()
    assert any(line.startswith(str(cli.taskdefs / "newcomer.yaml")) for line in lines)
    # The owner's file is not in error.
    assert not any(line.startswith(str(cli.taskdefs / "owner.yaml")) for line in lines)
    assert "already applied from" in stderr
    registered = payloads(cli)
    mine = registered["mine"]
    assert mine is not None
    assert mine["labels"]["priority"] == 3  # the owner's unrelated edit applied
    assert rows(cli)["shared"][0] == owner_id
    assert "fresh" not in rows(cli)  # the newcomer's file is frozen whole


def test_renaming_every_task_is_a_replacement_under_max_deletes(cli: Cli) -> None:
    cli.write("a.yaml", taskfile(*({"name": f"old{i}"} for i in range(3))))
    cli.run("sync", str(cli.taskdefs), check=True)
    cli.write("a.yaml", taskfile(*({"name": f"new{i}"} for i in range(3))))
    proc = cli.run("sync", str(cli.taskdefs), "--max-deletes", "2")
    assert proc.returncode == 1
    assert "refusing to replace all 3 managed tasks" in proc.stderr
    assert "creates 3" in proc.stderr
    assert "empty or unreadable" not in proc.stderr
    assert "--max-deletes 3" in proc.stderr
    cli.run("sync", str(cli.taskdefs), "--max-deletes", "3", check=True)
    assert set(rows(cli)) == {"new0", "new1", "new2"}


def test_the_daemon_applies_valid_files_beside_hostile_ones(cli: Cli) -> None:
    cli.write("inf.yaml", PARAM_TASK.format(name="i", value=1))
    cli.write("far.yaml", taskfile({"name": "far", "schedule": "{at: 2030-01-01T00:00:00Z}"}))
    cli.write("team.yaml", taskfile({"name": "t"}))
    with watching(cli) as watcher:
        wait_for(watcher.is_healthy, 30, "the first reconcile")
        applied = payloads(cli)
        cli.write("inf.yaml", PARAM_TASK.format(name="i", value=".inf"))
        cli.write(
            "far.yaml", taskfile({"name": "far", "schedule": "{at: 9999-12-31T23:00:00-12:00}"})
        )
        time.sleep(0.3)
        cli.write("team.yaml", taskfile({"name": "t"}, {"name": "t2"}))
        wait_for(lambda: payloads(cli).get("t2"), 15, "another team's new task")
        now = payloads(cli)
        assert (now["i"], now["far"]) == (applied["i"], applied["far"])
        assert watcher.is_healthy()
        log = watcher.log()
        assert "inf.yaml:6:" in log
        assert "far.yaml:5:" in log
        assert "internal error" not in log
        assert watcher.stop() == 0
    assert "Traceback" not in watcher.log()


def test_plan_json_of_a_hostile_tree_stays_valid_json(cli: Cli) -> None:
    cli.write("a.yaml", PARAM_TASK.format(name="a", value=".nan"))
    cli.write("b.yaml", taskfile({"name": "b"}))
    found = cli.plan_json()
    assert [t["name"] for t in found["changes"]] == ["b"]
    assert found["frozen_files"] == ["a.yaml"]
    json.dumps(found, allow_nan=False)  # nothing non-finite reached the output

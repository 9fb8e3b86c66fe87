"""`syncd plan` / `syncd sync` end to end on real PostgreSQL and Redis: every kind of change,
drift repair, the safety rules, and two concurrent syncs."""

from __future__ import annotations

import json

import psycopg

from tests.e2e.conftest import Cli

TASK = """
  - name: {name}
    task_type: diagnostics.noop
    schedule: {schedule}
    priority: {priority}
    enabled: {enabled}
"""


def taskfile(*tasks: dict[str, object]) -> str:
    body = "".join(
        TASK.format(**{"schedule": "{interval: 60}", "priority": 5, "enabled": "true", **t})
        for t in tasks
    )
    return "version: 1\ntasks:" + body


def sync(cli: Cli, *extra: str) -> dict[str, object]:
    proc = cli.run("sync", str(cli.taskdefs), "--format", "json", *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def summary(result: dict[str, object]) -> dict[str, int]:
    value = result["summary"]
    assert isinstance(value, dict)
    return value


def rows(cli: Cli) -> dict[str, tuple[int, str, bool]]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT name, id, scheduler_type, enabled FROM task_configs"
        ).fetchall()
    return {name: (id_, kind, enabled) for name, id_, kind, enabled in found}


def schedule_ids(cli: Cli) -> dict[str, list[str]]:
    client = cli.redis()
    return {
        "cron": client.lrange("syncd:cron", 0, -1),
        "interval": client.lrange("syncd:interval", 0, -1),
        "data": sorted(k.removeprefix("syncd:data:") for k in client.scan_iter("syncd:data:*")),
    }


def test_create_then_second_sync_reports_no_changes(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}, {"name": "b", "schedule": "{cron: '0 3 * * 7'}"}))
    assert summary(sync(cli))["create"] == 2
    ids = rows(cli)
    assert ids["b"][1] == "cron"
    assert schedule_ids(cli) == {
        "cron": [f"task_{ids['b'][0]}"],
        "interval": [f"task_{ids['a'][0]}"],
        "data": sorted([f"task_{ids['a'][0]}", f"task_{ids['b'][0]}"]),
    }
    payload = json.loads(cli.redis().get(f"syncd:data:task_{ids['b'][0]}") or "")
    assert payload["cron"] == "0 3 * * 0"  # normalised form registered
    assert cli.redis().get(f"schedule:status:{ids['a'][0]}") == "active"
    again = cli.run("sync", str(cli.taskdefs), check=True)
    assert "No changes" in again.stdout


def test_plan_and_dry_run_print_the_same_and_change_nothing(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    plan = cli.run("plan", str(cli.taskdefs), "--no-color")
    dry = cli.run("sync", str(cli.taskdefs), "--dry-run", "--no-color")
    assert plan.stdout == dry.stdout
    assert "a" in plan.stdout
    assert rows(cli) == {}
    assert cli.redis().dbsize() == 0
    detailed = cli.run("plan", str(cli.taskdefs), "--detailed-exitcode")
    assert detailed.returncode == 2
    sync(cli)
    assert cli.run("plan", str(cli.taskdefs), "--detailed-exitcode").returncode == 0


def test_update_rename_delete_disable_and_kind_change(cli: Cli) -> None:
    cli.write(
        "a.yaml", taskfile({"name": "keep"}, {"name": "old"}, {"name": "gone"}, {"name": "flip"})
    )
    sync(cli)
    before = rows(cli)
    cli.write(
        "a.yaml",
        taskfile(
            {"name": "keep", "priority": 9},
            {"name": "new"},  # "old" renamed to "new"
            {"name": "flip", "schedule": "{cron: '*/5 * * * *'}", "enabled": "false"},
        ),
    )
    result = sync(cli)
    assert summary(result)["create"] == 1
    assert summary(result)["update"] == 2
    assert summary(result)["delete"] == 2
    after = rows(cli)
    assert set(after) == {"keep", "new", "flip"}
    assert after["keep"][0] == before["keep"][0]  # updated in place, same id
    assert after["flip"] == (before["flip"][0], "cron", False)
    ids = schedule_ids(cli)
    assert ids["cron"] == []  # disabled: no schedule, and not left in the interval list
    assert sorted(ids["interval"]) == sorted(f"task_{after[n][0]}" for n in ("keep", "new"))
    assert cli.redis().get(f"schedule:status:{after['flip'][0]}") == "inactive"
    assert cli.redis().get(f"schedule:status:{before['gone'][0]}") is None
    cli.write(
        "a.yaml",
        taskfile(
            {"name": "keep", "priority": 9},
            {"name": "new"},
            {"name": "flip", "schedule": "{cron: '*/5 * * * *'}"},
        ),
    )
    sync(cli)
    assert schedule_ids(cli)["cron"] == [f"task_{after['flip'][0]}"]


def test_drift_is_repaired(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}, {"name": "b"}))
    sync(cli)
    ids = rows(cli)
    client = cli.redis()
    client.delete(f"syncd:data:task_{ids['a'][0]}")
    client.delete(f"schedule:status:{ids['b'][0]}")
    client.rpush("syncd:interval", f"task_{ids['b'][0]}")  # listed twice
    client.set("syncd:data:task_999999", "{}")
    client.rpush("syncd:cron", "task_999999")
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE task_configs SET priority = 1 WHERE name = 'a'")
    plan = cli.plan_json()
    assert summary(plan)["drift"] == 3  # a, b, and the stray
    drift = {c["name"]: [d["code"] for d in c["drift"]] for c in plan["changes"]}
    assert "schedule_missing" in drift["a"]
    assert "row_edited" in drift["a"]
    assert "status_missing" in drift["b"]
    sync(cli)
    assert cli.plan_json()["summary"]["drift"] == 0
    assert sorted(client.lrange("syncd:interval", 0, -1)) == sorted(
        f"task_{ids[n][0]}" for n in ("a", "b")
    )
    assert client.exists("syncd:data:task_999999") == 0


def test_broken_file_freezes_its_tasks_while_valid_edits_apply(cli: Cli) -> None:
    cli.write("good.yaml", taskfile({"name": "g"}))
    cli.write("bad.yaml", taskfile({"name": "frozen"}, {"name": "also-frozen"}))
    cli.write("old.yaml", taskfile({"name": "orphan"}))
    sync(cli)
    before = schedule_ids(cli)
    cli.write("good.yaml", taskfile({"name": "g", "priority": 2}, {"name": "g2"}))
    cli.write("bad.yaml", "version: 1\ntasks:\n  - name: frozen\n    task_type: [broken\n")
    (cli.taskdefs / "old.yaml").unlink()
    proc = cli.run("sync", str(cli.taskdefs), "--format", "json")
    assert proc.returncode == 1
    assert "bad.yaml:" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["summary"]["create"] == 1
    assert result["summary"]["update"] == 1
    assert result["summary"]["delete"] == 0
    names = rows(cli)
    assert {"frozen", "also-frozen", "orphan", "g2"} <= set(names)  # nothing deleted
    after = schedule_ids(cli)
    for name in ("frozen", "also-frozen", "orphan"):
        assert f"task_{names[name][0]}" in after["data"]
    assert len(after["data"]) == len(before["data"]) + 1


def test_emptied_directory_and_mass_delete_are_refused(cli: Cli) -> None:
    cli.write("a.yaml", taskfile(*({"name": f"t{i}"} for i in range(12))))
    sync(cli)
    cli.write("a.yaml", "version: 1\ntasks: []\n")
    refused = cli.run("sync", str(cli.taskdefs))
    assert refused.returncode == 1
    assert "--allow-empty" in refused.stderr
    assert len(rows(cli)) == 12
    cli.write("a.yaml", taskfile({"name": "t0"}))
    refused = cli.run("sync", str(cli.taskdefs))
    assert refused.returncode == 1
    assert "--max-deletes 11" in refused.stderr
    assert len(rows(cli)) == 12
    sync(cli, "--max-deletes", "11")
    assert set(rows(cli)) == {"t0"}
    cli.write("a.yaml", "version: 1\ntasks: []\n")
    sync(cli, "--allow-empty")
    assert rows(cli) == {}
    assert cli.redis().keys("syncd:*") == ["syncd:version"]


def test_missing_directory_deletes_nothing(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    sync(cli)
    proc = cli.run("sync", str(cli.taskdefs / "nope"), "--allow-empty")
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr
    assert set(rows(cli)) == {"a"}


def test_two_concurrent_syncs_do_not_interleave(cli: Cli) -> None:
    cli.write("a.yaml", taskfile(*({"name": f"t{i}"} for i in range(200))))
    first = cli.popen("sync", str(cli.taskdefs))
    second = cli.popen("sync", str(cli.taskdefs))
    for proc in (first, second):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    assert len(rows(cli)) == 200
    ids = schedule_ids(cli)
    assert len(ids["interval"]) == len(set(ids["interval"])) == 200
    assert "No changes" in cli.run("plan", str(cli.taskdefs)).stdout


def test_operator_pause_survives_sync(cli: Cli) -> None:
    cli.write("a.yaml", taskfile({"name": "a"}))
    sync(cli)
    config_id = rows(cli)["a"][0]
    cli.redis().set(f"schedule:status:{config_id}", "paused")
    cli.write("a.yaml", taskfile({"name": "a", "priority": 3}))
    result = sync(cli)
    (change,) = [c for c in result["changes"] if c["name"] == "a"]  # type: ignore[union-attr]
    assert change["state"] == "paused"
    assert cli.redis().get(f"schedule:status:{config_id}") == "paused"


def test_commands_without_schema_say_run_migrate(cli: Cli, tmp_path: object) -> None:
    env = dict(cli.env)
    env["SYNCD_DATABASE_URL"] = env["SYNCD_DATABASE_URL"] + "_missing"
    proc = Cli(env, cli.taskdefs, cli.redis_url).run("plan", str(cli.taskdefs))
    assert proc.returncode == 1
    assert "syncd migrate" in proc.stderr

"""Which change broke it, and what is late, end to end: taskdefs in a real git repository,
`syncd sync` and `syncd run`, a real `taskiq worker` recording each run with its task's
revision, `syncd history` / `explain` / `status`, and the daemon's /metrics."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Cli
from tests.e2e.test_watch import wait_for as wait_until
from tests.e2e.test_watch import watching
from tests.e2e.test_worker import executions, wait_for, worker
from tests.gitrepo import git

TASKS = """
version: 1
tasks:
  - name: job
    task_type: {job_type}
    schedule: {{interval: 3600}}
  - name: tick
    task_type: diagnostics.noop
    schedule: {{interval: 2}}
"""


def commit(cli: Cli, job_type: str, message: str) -> str:
    """Write the taskdefs, commit them, sync; return the revision."""
    repo = cli.taskdefs.parent
    cli.write("tasks.yaml", TASKS.format(job_type=job_type))
    git(repo, "add", "taskdefs")
    git(repo, "commit", "-qm", message)
    cli.run("sync", str(cli.taskdefs), check=True)
    return git(repo, "rev-parse", "HEAD")


def history(cli: Cli, *args: str) -> list[dict[str, Any]]:
    proc = cli.run("history", *args, "--format", "json", check=True)
    found: list[dict[str, Any]] = json.loads(proc.stdout)
    return found


def status(cli: Cli) -> dict[str, dict[str, Any]]:
    proc = cli.run("status", str(cli.taskdefs), "--format", "json", check=True)
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_a_failure_is_pinned_to_its_revision_and_a_silent_task_is_late(
    cli: Cli, tmp_path: Path
) -> None:
    git(tmp_path, "init", "-q")
    cli.env["SYNCD_LATE_GRACE_SECONDS"] = "1"
    good = commit(cli, "diagnostics.noop", "a job that works")

    # No scheduler runs: `syncd run` sends every run of `job`, and `tick` never runs.
    with worker(cli, tmp_path / "worker.log"):
        cli.run("run", "job", check=True)
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the first run", lambda: executions(cli))
        bad = commit(cli, "diagnostics.fail", "break the job")
        for _ in range(2):
            cli.run("run", "job", check=True)
        wait_for(lambda: len(executions(cli)) >= 3, 30, "the failing runs")

    runs = history(cli, "job")
    assert [(run["success"], run["git_revision"]) for run in runs] == [
        (False, bad),
        (False, bad),
        (True, good),
    ]
    assert {run["task_name"] for run in runs} == {"job"}
    assert runs[0]["config_hash"] == runs[1]["config_hash"] != runs[2]["config_hash"]
    text = cli.run("history", "job", check=True).stdout
    assert bad[:7] in text.splitlines()[1]

    explained = cli.run("explain", "job", str(cli.taskdefs), check=True).stdout
    assert (
        f"failing since revision {bad[:7]} (2 of the last 3 runs); the run before succeeded"
        f" on {good[:7]}: the change is the likely cause"
    ) in explained
    assert f"rev {bad[:7]}" in explained

    # `tick` (every 2 s) has had no run since its registration: late within seconds.
    wait_for(lambda: status(cli)["tick"]["late"], 20, "tick to be late", lambda: status(cli))
    rows = status(cli)
    assert rows["tick"]["expected_at"] is not None
    assert rows["tick"]["missed_fires"] >= 1
    assert (rows["job"]["late"], rows["job"]["missed_fires"]) == (False, 0)
    table = cli.run("status", str(cli.taskdefs), check=True).stdout
    assert any(line.startswith("tick") and "active LATE" in line for line in table.splitlines())
    assert "  tick: late: no run since the fire due at " in table
    assert "late: no run since" in cli.run("explain", "tick", str(cli.taskdefs)).stdout

    with watching(cli) as watcher:
        wait_until(
            lambda: (watcher.metric('syncd_task_missed_fires{task="tick"}') or 0) > 0,
            30,
            "the missed fires metric",
        )
        assert watcher.metric('syncd_task_late{task="tick"}') == 1.0
        assert watcher.metric('syncd_task_late{task="job"}') == 0.0
        last_success = watcher.metric('syncd_task_last_success_timestamp_seconds{task="job"}')
        assert last_success is not None
        assert abs(last_success - _completed(runs[2])) < 1
        assert watcher.metric('syncd_task_last_success_timestamp_seconds{task="tick"}') is None
        assert watcher.stop() == 0
    assert "Traceback" not in watcher.log()


def _completed(run: dict[str, Any]) -> float:
    return datetime.fromisoformat(run["completed_at"]).timestamp()

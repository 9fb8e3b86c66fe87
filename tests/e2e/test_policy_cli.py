"""The operator policy from the command line: `validate` and `plan --against` report each
violation at file:line:col, a broken policy file is an error (never silently the
defaults), and the diagnostics task types exist only with SYNCD_DIAGNOSTICS=1."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_inspect_cli import git

STRICT = """
version: 1
paths:
  allow: [{root}]
limits:
  min_interval_seconds: 30
"""

VIOLATIONS = """
version: 1
tasks:
  - name: wipe
    task_type: cleanup.temp_files
    parameters: {path: /etc, pattern: "../victim/*"}
  - name: hook
    task_type: notification.webhook
    parameters: {url: "http://0x7f.1:8080/x"}
  - name: often
    task_type: notification.log
    schedule: {interval: 1}
    parameters: {message: hi}
"""


def strict_policy(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(STRICT.format(root=tmp_path / "allowed"))
    cli.env["SYNCD_POLICY"] = str(path)


def test_validate_reports_each_violation_where_it_is(cli: Cli, tmp_path: Path) -> None:
    strict_policy(cli, tmp_path)
    path = cli.write("a.yaml", VIOLATIONS)
    proc = cli.run("validate", str(cli.taskdefs))
    assert proc.returncode == 1
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    expected = [
        (f"{path}:5:", "'/etc' is outside the allowed roots for cleanup.temp_files"),
        (f"{path}:5:", "`pattern` may not contain `..`"),
        (f"{path}:8:", "is not a public address"),
        (f"{path}:11:", "interval 1 s is below the minimum of 30 s"),
    ]
    for where, what in expected:
        assert any(line.startswith(where) and what in line for line in lines), (what, lines)


def test_plan_against_a_ref_shows_violations_in_the_pull_request_comment(
    cli: Cli, tmp_path: Path
) -> None:
    strict_policy(cli, tmp_path)
    repo = cli.taskdefs.parent
    cli.write("ok.yaml", "version: 1\ntasks:\n  - {name: hi, task_type: notification.log,"
              " parameters: {message: hi}}\n")  # fmt: skip
    git(repo, "init", "-q")
    git(repo, "add", "taskdefs")
    git(repo, "commit", "-q", "-m", "base")
    cli.write("a.yaml", VIOLATIONS)
    proc = cli.run("plan", str(cli.taskdefs), "--against", "HEAD", "--format", "markdown")
    assert "outside the allowed roots for cleanup.temp\\_files" in proc.stdout  # escaped
    assert "a.yaml:5:" in proc.stdout


def test_a_broken_policy_file_stops_every_command(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\npaths:\n  allow: [relative]\n")
    cli.env["SYNCD_POLICY"] = str(path)
    cli.write("ok.yaml", "version: 1\ntasks: []\n")
    proc = cli.run("validate", str(cli.taskdefs))
    assert proc.returncode == 1
    assert f"{path}:3:" in proc.stderr
    assert "not an absolute path" in proc.stderr


def test_diagnostics_task_types_need_syncd_diagnostics(cli: Cli) -> None:
    cli.write("d.yaml", "version: 1\ntasks:\n  - {name: n, task_type: diagnostics.noop}\n")
    assert cli.run("validate", str(cli.taskdefs)).returncode == 0
    cli.env.pop("SYNCD_DIAGNOSTICS")
    proc = cli.run("validate", str(cli.taskdefs))
    assert proc.returncode == 1
    assert "unknown task_type 'diagnostics.noop'" in proc.stdout + proc.stderr

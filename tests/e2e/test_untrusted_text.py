"""What an author writes or a task says cannot forge a line: the real `syncd validate` on
hostile names, keys and file names, and a real `taskiq worker` whose tasks log and raise
text made of line breaks, fake log levels and terminal escape sequences."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_validate_cli import syncd
from tests.e2e.test_worker import executions, process, wait_for

INJECTED_NAME = "x\n::error file=taskdefs/ok.yaml,line=1::injected\n ok: 7 task(s)"
INJECTED_KEY = "two\nlines"
INJECTED_FILE = "bad\n::error file=ok.yaml,line=1::file.yaml"  # a file name holds no '/'
COMMAND_FILE = "::error file=ok.yaml,line=1::named.yaml"
# `path:line:col: message`, the path possibly `./`-prefixed (a name that starts with `::`).
PROBLEM_LINE = re.compile(r"^(\./)?[^\n]+?\.yaml:\d+:\d+: ")


def hostile_taskdefs(root: Path) -> None:
    root.mkdir()
    (root / "a.yaml").write_text(
        "version: 1\ntasks:\n"
        f"  - name: {json.dumps(INJECTED_NAME)}\n"
        "    task_type: diagnostics.noop\n"
        f"    {json.dumps(INJECTED_KEY)}: 1\n"
    )
    for name in (INJECTED_FILE, COMMAND_FILE):
        (root / name).write_text("version: 1\ntasks: [1]\n")


def test_validate_prints_each_problem_on_one_line_with_its_location(tmp_path: Path) -> None:
    root = tmp_path / "taskdefs"
    hostile_taskdefs(root)
    proc = syncd("validate", ".", cwd=root)  # paths as given: `::error...` starts a line
    assert proc.returncode == 1
    report = json.loads(syncd("validate", ".", "--format", "json", cwd=root).stdout)
    lines = proc.stdout.splitlines()
    assert len(lines) == report["errors"] == 4, lines  # name, key, and one per broken file
    for line in lines:
        assert PROBLEM_LINE.match(line), line
    for line in (proc.stdout + proc.stderr).splitlines():
        assert not line.lstrip().startswith("::"), line
        assert not line.lstrip().startswith("ok:"), line
    assert proc.stderr.strip() == "4 error(s), 0 warning(s) in 3 of 3 file(s)"
    assert any(line.startswith("a.yaml:3:") and "\\n::error file=" in line for line in lines)
    assert any(line.startswith("a.yaml:5:") and "two\\nlines" in line for line in lines)
    assert any(line.startswith("bad\\n::error file=ok.yaml,line=1::file.yaml:2:") for line in lines)
    assert any(line.startswith(f"./{COMMAND_FILE}:") for line in lines)


def test_validate_json_holds_the_same_problems_escaped(tmp_path: Path) -> None:
    root = tmp_path / "taskdefs"
    hostile_taskdefs(root)
    proc = syncd("validate", str(root), "--format", "json")
    report = json.loads(proc.stdout)
    paths = sorted({p["path"] for p in report["problems"]})
    assert f"{root}/bad\\n::error file=ok.yaml,line=1::file.yaml" in paths
    assert all("\n" not in p["message"] for p in report["problems"])
    assert any("two\\nlines" in p["message"] for p in report["problems"])


FORGED_LOG = "hello\n[CRITICAL] forged-log\x1b[2J"
FORGED_ERROR = "boom\n[CRITICAL] forged-error\x1b[2J"


def test_worker_log_shows_task_messages_and_errors_escaped(cli: Cli, tmp_path: Path) -> None:
    # A blocking task (run in a child process) whose error quotes its path: one with a newline.
    csv = tmp_path / "in\n[CRITICAL] forged-child\x1b[2J.csv"
    csv.write_text("a\n1\n")
    cli.write(
        "a.yaml",
        f"""
        version: 1
        tasks:
          - name: shout
            task_type: notification.log
            parameters: {{message: {json.dumps(FORGED_LOG)}, level: warning}}
          - name: fail
            task_type: diagnostics.fail
            parameters: {{message: {json.dumps(FORGED_ERROR)}}}
            max_retries: 0
          - name: summary
            task_type: data.csv_summary
            parameters: {{source: {json.dumps(str(csv))}, column: nope}}
            max_retries: 0
        """,
    )
    cli.run("sync", str(cli.taskdefs), check=True)
    log = tmp_path / "worker.log"
    with process(cli, "worker", "worker.app:broker", "--workers", "1", log=log):
        for name in ("shout", "fail", "summary"):
            cli.run("run", name, check=True)
        wait_for(lambda: len(executions(cli)) >= 3, 60, "3 executions", lambda: executions(cli))
    raw = log.read_bytes()
    text = raw.decode()
    assert b"\x1b" not in raw
    for line in text.splitlines():
        assert not line.lstrip().startswith("[CRITICAL]"), line
    # Each message did reach the log, escaped: from the child, the event loop, the child's error.
    assert "hello\\n[CRITICAL] forged-log\\x1b[2J" in text
    assert "boom\\n[CRITICAL] forged-error\\x1b[2J" in text
    assert "in\\n[CRITICAL] forged-child\\x1b[2J.csv: no column 'nope'" in text
    assert text.count("Traceback (most recent call last):") >= 2
    outcomes = {name: ok for name, _, ok, _ in executions(cli)}
    assert outcomes == {"shout": True, "fail": False, "summary": False}

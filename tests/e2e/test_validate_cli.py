"""`syncd validate` as a user runs it: exit codes, one line per problem, JSON, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.services import TEST_POLICY, clean_env

REPO = Path(__file__).resolve().parents[2]


def syncd(
    *args: str, cwd: Path = REPO, policy: Path = TEST_POLICY
) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env["SYNCD_POLICY"] = str(policy)
    env["SYNCD_DIAGNOSTICS"] = "1"
    # No store is reachable: validate must not need one.
    env["SYNCD_DATABASE_URL"] = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    env["SYNCD_REDIS_URL"] = "redis://127.0.0.1:1/0"
    return subprocess.run(
        [sys.executable, "-m", "syncd.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bundled_taskdefs_are_valid_under_the_demo_policy() -> None:
    proc = syncd("validate", "taskdefs", policy=REPO / "policy" / "demo.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith("ok: ")


def make_broken_folder(root: Path) -> dict[str, str]:
    """One file per kind of breakage; value = a substring its line must contain."""
    root.mkdir()
    lines = ["version: 1", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    files = {
        "syntax.yaml": ("version: 1\ntasks:\n  - name: a\n    task_type: [oops\n", "YAML syntax"),
        "unknown_key.yaml": (
            "version: 1\ntasks:\n  - name: u\n    task_type: diagnostics.noop\n    retries: 3\n",
            "unknown_key.yaml:5:5: tasks[0] (u).retries: unknown key",
        ),
        "bad_cron.yaml": (
            "version: 1\ntasks:\n  - name: c\n    task_type: diagnostics.noop\n"
            "    schedule: {cron: '0 0 * * * *'}\n",
            "bad_cron.yaml:5:22:",
        ),
        "dup_a.yaml": (
            "version: 1\ntasks:\n  - {name: twin, task_type: diagnostics.noop}\n",
            "dup_a.yaml:3:1: duplicate task name 'twin'",
        ),
        "dup_b.yaml": (
            "version: 1\ntasks:\n  - {name: twin, task_type: diagnostics.noop}\n",
            "dup_b.yaml:3:1: duplicate task name 'twin'",
        ),
        "bomb.yaml": ("\n".join(lines) + "\ntasks: []\n", "alias bomb"),
        "python_tag.yaml": (
            "version: 1\ntasks: !!python/object/apply:os.system ['touch /tmp/x']\n",
            "is not allowed",
        ),
    }
    for name, (body, _) in files.items():
        (root / name).write_text(body)
    with (root / "huge.yaml").open("wb") as handle:
        handle.write(b"version: 1\ntasks: []\n")
        handle.truncate(20 * 1024 * 1024)
    (root / "garbage.yaml").write_bytes(bytes(range(256)) * 8)
    expected = {name: needle for name, (_, needle) in files.items()}
    expected["huge.yaml"] = "the limit is"
    expected["garbage.yaml"] = "not UTF-8"
    return expected


def test_broken_folder_yields_one_clear_line_per_problem(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    expected = make_broken_folder(root)
    (root / "sunday.yaml").write_text(
        "version: 1\ntasks:\n  - {name: sunday, task_type: diagnostics.noop, "
        "schedule: {cron: '0 0 * * 7'}}\n"
    )
    proc = syncd("validate", str(root))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(expected), lines
    for name, needle in expected.items():
        (line,) = [line for line in lines if line.startswith(f"{root}/{name}:")]
        assert needle in line, line
    assert not any("sunday.yaml" in line for line in lines)  # normalised, not rejected


def test_json_format(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.yaml").write_text("version: 1\ntasks:\n  - {name: x, task_type: nope}\n")
    proc = syncd("validate", str(root), "--format", "json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["valid"] is False
    assert report["errors"] == 1
    (problem,) = report["problems"]
    assert problem["path"] == f"{root}/a.yaml"
    assert problem["line"] == 3
    assert "unknown task_type" in problem["message"]


def test_schema_command_prints_json_schema() -> None:
    proc = syncd("schema")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["title"] == "syncd taskdef file"

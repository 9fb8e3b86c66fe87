"""Generate a large taskdefs tree (N tasks in M files) for benchmarks and load tests."""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = (
    'schedule: {{cron: "{minute} {hour} * * *", timezone: Europe/Berlin}}',
    "schedule: {{interval: {interval}}}",
    'schedule: {{cron: "*/{step} * * * MON-FRI"}}',
)


def task_yaml(index: int, revision: int = 0) -> str:
    kind = KINDS[index % len(KINDS)].format(
        minute=index % 60,
        hour=index % 24,
        interval=60 + index % 600 + revision,
        step=1 + index % 30,
    )
    return (
        f"  - name: task-{index:05d}\n"
        f"    description: generated task {index} revision {revision}\n"
        f"    task_type: cleanup.temp_files\n"
        f"    {kind}\n"
        f"    parameters: {{path: /tmp/bench/{index}, older_than_days: {1 + index % 30}}}\n"
        f"    max_retries: {index % 4}\n"
        f"    timeout_seconds: {60 + index % 100}\n"
        f"    priority: {1 + index % 10}\n"
    )


def write_tree(root: Path, tasks: int, files: int, revision: int = 0) -> list[Path]:
    """Write `tasks` tasks spread evenly over `files` files; return the file paths."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = max(1, tasks // files)
    paths = []
    for file_index in range(files):
        start = file_index * per_file
        end = tasks if file_index == files - 1 else start + per_file
        body = "".join(task_yaml(i, revision) for i in range(start, end))
        path = root / f"group-{file_index:03d}.yaml"
        path.write_text("version: 1\ntasks:\n" + body)
        paths.append(path)
    return paths


def rewrite_file(root: Path, file_index: int, tasks: int, files: int, revision: int) -> Path:
    """Rewrite one file of a generated tree with a new revision of its tasks."""
    per_file = max(1, tasks // files)
    start = file_index * per_file
    end = tasks if file_index == files - 1 else start + per_file
    body = "".join(task_yaml(i, revision) for i in range(start, end))
    path = root / f"group-{file_index:03d}.yaml"
    path.write_text("version: 1\ntasks:\n" + body)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    write_tree(args.root, args.tasks, args.files)

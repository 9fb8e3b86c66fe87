"""End-to-end fixtures: a migrated private database + private Redis db, and a CLI runner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.services import store_env

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Cli:
    """Runs `syncd` as a user would, against this test's private stores."""

    env: dict[str, str]
    taskdefs: Path
    redis_url: str

    def run(
        self, *args: str, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "syncd.cli", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if check:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", *args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def plan_json(self, *extra: str) -> dict[str, Any]:
        proc = self.run("plan", str(self.taskdefs), "--format", "json", *extra)
        assert proc.returncode in (0, 1, 2), proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def write(self, name: str, body: str) -> Path:
        path = self.taskdefs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body).lstrip("\n"))
        return path

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, decode_responses=True)


@pytest.fixture
def cli(fresh_database_url: str, redis_url: str, tmp_path: Path) -> Cli:
    taskdefs = tmp_path / "taskdefs"
    taskdefs.mkdir()
    runner = Cli(store_env(fresh_database_url, redis_url), taskdefs, redis_url)
    runner.run("migrate", check=True)
    return runner

"""What `syncd serve` hands the app: settings, the taskdefs root, the catalog and a broker.

The worker's registry stays behind the CLI (only `syncd.cli` imports `worker`): the app
receives the catalog as data and a function that makes a broker for `syncd run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskiq import AsyncBroker

from syncd.core.model import TaskCatalog
from syncd.core.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


@dataclass(frozen=True)
class ServeConfig:
    """Everything the app needs; the defaults suit one console on one machine."""

    settings: Settings
    taskdefs: Path
    catalog: TaskCatalog
    make_broker: Callable[[], AsyncBroker]
    # Mark the session cookie Secure even on plain HTTP (TLS ends at a proxy in front).
    secure_cookies: bool = False
    max_streams: int = 32  # concurrent /api/v1/events streams
    poll_seconds: float = 1.0  # how often statuses and new executions are looked at
    # The sync state on the task list comes from a dry-run plan at most this old; a
    # request finding it older gets it at once and triggers a new plan in the background.
    plan_max_age_seconds: float = 10.0
    recent_runs: int = 20  # the success rate on the task list covers this many runs
    session_idle_seconds: float = 2 * 3600
    session_max_seconds: float = 12 * 3600

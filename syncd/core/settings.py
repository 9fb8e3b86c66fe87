"""Settings shared by every syncd process: CLI, daemon, scheduler and worker.

One pydantic settings model read from the environment (`SYNCD_*`) and overridden by
command-line flags, so one environment configures every process the same way. Reading
the environment is all it does; it connects to nothing.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from syncd.core.keys import DEFAULT_SCHEDULE_PREFIX, DEFAULT_STATUS_PREFIX, KeyLayout


class Settings(BaseSettings):
    """Where the stores are, how syncd names its keys, and how a worker behaves."""

    model_config = SettingsConfigDict(env_prefix="SYNCD_", extra="ignore")

    # Both may hold a password: kept out of repr(), and checked (never echoed) by the
    # adapters that use them (`adapters.pg.parse_url`, `adapters.redis.location`), so a
    # command that needs no store never fails on them.
    database_url: str = Field(
        default="postgresql+psycopg://postgres@127.0.0.1:5432/syncd", repr=False
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    schedule_prefix: str = Field(default=DEFAULT_SCHEDULE_PREFIX, pattern=r"^[^:]+$")
    status_prefix: str = DEFAULT_STATUS_PREFIX
    max_deletes: int = Field(default=10, ge=0)
    # How long after a due fire a task without a run counts as late (`syncd status`, the
    # daemon's metrics); None: max(60 s, 10 % of the time between fires), at most 15 min.
    # The last run's duration is added either way: a run is recorded only when it ends.
    late_grace_seconds: float | None = Field(default=None, ge=0)

    # -- the worker ------------------------------------------------------------------
    # Comma-separated queue names (SYNCD_WORKER_QUEUES=data,default); empty: every queue
    # the registry declares.
    worker_queues: str = ""
    # A message held by a dead worker is re-delivered after this long; a task running
    # longer than this is delivered again concurrently. One hour is above any sane task
    # timeout; raise it for tasks that legitimately run longer.
    idle_timeout_seconds: int = Field(default=3600, ge=10)
    # Messages fetched per XREADGROUP: small, so busy workers don't hoard work that an
    # idle worker could run (a fetched message is pending on this worker until acked).
    xread_count: int = Field(default=10, ge=1)
    # Where the recorder spools executions it could not write yet (SYNCD_RECORDER_SPOOL);
    # None: a per-user file under the temporary directory.
    recorder_spool: Path | None = None
    # Blocking attempts run in child processes: at most this many at once per worker
    # process, and at most `task_type_concurrency` of one task type, so one slow type
    # cannot take every slot.
    worker_concurrency: int = Field(default=4, ge=1, le=256)
    task_type_concurrency: int = Field(default=2, ge=1, le=256)
    # The hard deadline of an attempt whose taskdef sets no `timeout_seconds`.
    default_timeout_seconds: float = Field(default=3600.0, gt=0)
    # Address-space limit of the process running one attempt (RLIMIT_AS, MiB).
    task_memory_mb: int = Field(default=1024, ge=128)
    # On SIGTERM/SIGINT a worker stops fetching and gives running attempts this long to
    # finish; then it stops them unacknowledged (they are delivered again) and exits.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # A message delivered this many times without an outcome (its worker died each time)
    # is dead-lettered: recorded as failed and never delivered again.
    max_deliveries: int = Field(default=3, ge=1, le=100)
    # Prometheus /metrics of a worker process; process i of `taskiq worker --workers N`
    # listens on this port + i. 0 disables. Loopback by default, like the daemon's: set
    # SYNCD_WORKER_METRICS_HOST=0.0.0.0 for a scraper on another machine.
    worker_metrics_port: int = Field(default=9465, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"
    # Prometheus /metrics of the scheduler (fires sent, taken, failed; send retries); 0
    # disables. A second scheduler on the same host finds it taken and runs without.
    scheduler_metrics_port: int = Field(default=9466, ge=0, le=65535)

    # The operator policy file: what taskdefs may make workers do (file roots, webhook
    # egress, limits). None: the safe defaults.
    policy: Path | None = None
    # Register the diagnostics.* task types (tests and the demo stack); off in production.
    diagnostics: bool = False

    @field_validator("database_url", "redis_url")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        # A URL read from a secret file often ends in a newline. Never raises: an error
        # here would quote the value, password included.
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, value: str) -> str:
        # Accept the plain libpq form too; syncd always talks through psycopg 3.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+psycopg://" + value.removeprefix(plain)
        return value

    @property
    def layout(self) -> KeyLayout:
        return KeyLayout(prefix=self.schedule_prefix, status_prefix=self.status_prefix)

    @property
    def queues(self) -> list[str]:
        """SYNCD_WORKER_QUEUES as a list (empty: all)."""
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

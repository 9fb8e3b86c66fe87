"""Settings shared by every syncd process (CLI, daemon, worker, scheduler).

One pydantic settings model read from the environment (`SYNCD_*`) and overridden by
command-line flags, so one environment configures every process the same way.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from syncd.keys import DEFAULT_SCHEDULE_PREFIX, DEFAULT_STATUS_PREFIX, KeyLayout


class Settings(BaseSettings):
    """Where the stores are and how syncd names its keys."""

    model_config = SettingsConfigDict(env_prefix="SYNCD_", extra="ignore")

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/syncd"
    redis_url: str = "redis://127.0.0.1:6379/0"
    schedule_prefix: str = Field(default=DEFAULT_SCHEDULE_PREFIX, pattern=r"^[^:]+$")
    status_prefix: str = DEFAULT_STATUS_PREFIX
    max_deletes: int = Field(default=10, ge=0)

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

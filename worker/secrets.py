"""Resolving `{secret: NAME}` parameter references in the worker, and keeping the values in.

A reference is replaced by the value of the environment variable `SYNCD_SECRET_<NAME>` or
the content of `$SYNCD_SECRETS_DIR/<NAME>` (trailing newline dropped), only in the process
that runs the attempt, right before the parameters are validated. A missing secret fails
the attempt with "secret NAME is not set". Whatever leaves the attempt (its error message,
traceback, result, log lines) passes through `redact`, so a value never reaches
PostgreSQL, Redis or a log, even when a task echoes its parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schemas.secrets import secret_name

ENV_PREFIX = "SYNCD_SECRET_"
MAX_SECRET_BYTES = 64 * 1024
REDACTED = "***"


class SecretMissing(Exception):
    """A referenced secret is not configured where this worker runs."""


def resolve(value: Any, found: list[str] | None = None) -> tuple[Any, list[str]]:
    """`value` with every reference replaced, and the secret values used."""
    found = [] if found is None else found
    name = secret_name(value)
    if name is not None:
        secret = _lookup(name)
        found.append(secret)
        return secret, found
    if isinstance(value, dict):
        return {key: resolve(item, found)[0] for key, item in value.items()}, found
    if isinstance(value, list):
        return [resolve(item, found)[0] for item in value], found
    return value, found


def _lookup(name: str) -> str:
    if (value := os.environ.get(ENV_PREFIX + name)) is not None:
        return value
    directory = os.environ.get("SYNCD_SECRETS_DIR")
    if directory:
        path = Path(directory) / name  # NAME is [A-Z0-9_]+: no separator, no '..'
        try:
            with path.open("rb") as handle:
                return handle.read(MAX_SECRET_BYTES).decode().removesuffix("\n")
        except (OSError, UnicodeDecodeError):
            pass
    raise SecretMissing(f"secret {name} is not set")


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """`value` with every secret value replaced by ***, in strings at any depth."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            if secret:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, secrets) for item in value]
    return value


class _RedactingFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self.secrets)
        record.args = None
        return True


@contextmanager
def redacted_logs(secrets: Sequence[str]) -> Iterator[None]:
    """While an attempt runs with secrets, no log line of this process shows them."""
    if not secrets:
        yield
        return
    handlers = logging.getLogger().handlers
    log_filter = _RedactingFilter(secrets)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)

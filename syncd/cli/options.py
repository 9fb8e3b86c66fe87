"""Settings and sync options from command-line flags (flags override `SYNCD_*`)."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from schemas.text import visible
from syncd.core.errors import UsageError
from syncd.core.guards import SyncOptions
from syncd.core.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k in ("database_url", "redis_url") if (v := getattr(args, k, None))}
    return load_settings(**overrides)


def load_settings(**overrides: Any) -> Settings:
    """Settings from SYNCD_* and `overrides`; a bad value is a usage error, not a crash."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(settings_problem(exc)) from None


def settings_problem(exc: ValidationError) -> str:
    """One line naming each bad SYNCD_* variable and why, never its value (it may be a
    secret, or text that would forge output)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "SYNCD_" + "_".join(str(step) for step in error["loc"]).upper()
        parts.append(f"{name}: {visible(error['msg'], 200)}")
    return "invalid settings: " + "; ".join(parts)


def guard_options(args: argparse.Namespace, settings: Settings, **extra: Any) -> SyncOptions:
    """SyncOptions from `--allow-empty` and `--max-deletes` (default: SYNCD_MAX_DELETES)."""
    max_deletes = settings.max_deletes if args.max_deletes is None else args.max_deletes
    return SyncOptions(allow_empty=args.allow_empty, max_deletes=max_deletes, **extra)

"""Settings and sync options from command-line flags (flags override `SYNCD_*`)."""

from __future__ import annotations

import argparse
from typing import Any

from syncd.core.guards import SyncOptions
from syncd.core.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k in ("database_url", "redis_url") if (v := getattr(args, k, None))}
    return Settings(**overrides)


def guard_options(args: argparse.Namespace, settings: Settings, **extra: Any) -> SyncOptions:
    """SyncOptions from `--allow-empty` and `--max-deletes` (default: SYNCD_MAX_DELETES)."""
    max_deletes = settings.max_deletes if args.max_deletes is None else args.max_deletes
    return SyncOptions(allow_empty=args.allow_empty, max_deletes=max_deletes, **extra)

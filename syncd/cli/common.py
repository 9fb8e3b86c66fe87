"""What every command module may need: the worker's catalog and output helpers.

`catalog()` turns the worker's task registry into data (`TaskCatalog`): the rest of syncd
receives it that way, and nothing below the CLI imports `worker` (`cli.operate` also
hands the registry to the broker that `syncd run` sends through). Kept
light on purpose: `syncd validate` imports it (store settings are in `cli.options`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TextIO

from syncd.cli.options import load_settings
from syncd.core.model import TaskCatalog
from syncd.load.policy import load_policy
from worker.tasks import registry


def catalog() -> TaskCatalog:
    """The worker's registry as data, with the operator policy (SYNCD_POLICY) to apply."""
    policy = load_policy(load_settings().policy)
    return TaskCatalog(registry.params_models(), {t.name: t.queue for t in registry}, policy)


def print_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, sort_keys=False, default=str), file=out or sys.stdout)


def progress_printer() -> Callable[[str, int, int], None] | None:
    """A `phase: done/total` line on a terminal's stderr; None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(phase: str, done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{phase}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show

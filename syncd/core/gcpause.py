"""Hold Python's cyclic garbage collector off during one bulk operation.

Loading and reconciling thousands of tasks allocates hundreds of thousands of small
objects (YAML nodes, models, rows) and keeps most of them until the operation ends, so
generational collection scans them again and again for nothing: measured at 35-48 % of a
10,000-task reconcile and of `syncd validate`. Reference counting frees the rest, and
`collect_young` frees the few cycles a step leaves behind.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (nested use is fine)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collect_young() -> None:
    """Free the reference cycles the last step left, scanning only the youngest generation.

    Cheap while collection is paused: whatever survives moves to an older generation that
    is not scanned again. Parsing and validating a file leaves cycles behind; kept for a
    whole 100,000-task load they held about 290 MB (457 MB peak instead of 168 MB)."""
    gc.collect(0)

"""When the daemon reconciles: which file events matter, the dirty flag, backoff. Pure.

Level-triggered: an event or the resync timer only marks the state dirty, and the loop
reconciles the directory when it is due, so a missed or coalesced event costs latency,
never correctness. Which files changed is not taken from the events: the incremental
reconcile compares what it loads with what was last applied. `Timing.wants_full` says
when it must not be tried (a resync, a retry, a new leader, the start). No I/O here but
`dir_identity`'s stat, and no clock: times are passed in (monotonic seconds).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change

from syncd.core.errors import SyncdError
from syncd.load.loader import YAML_SUFFIXES

FileChange = tuple[Change, str]
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0


def backoff_delay(
    failures: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Seconds to wait after `failures` consecutive failures: 0.5, 1, 2, 4 ... capped."""
    if failures < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 64))


def is_relevant(
    change: Change, path: str, root: Path, is_dir: Callable[[str], bool] = os.path.isdir
) -> bool:
    """Could this event change what `load_taskdefs(root)` reads?

    YAML files count, hidden paths do not (the loader skips them, and `.git` churns on
    every commit). A directory moved in or out yields one event for the directory and
    none for the YAML inside, so directories, and deleted names without a suffix, count.
    """
    target = Path(path)
    if target == root:
        return True
    try:
        parts = target.relative_to(root).parts
    except ValueError:
        return False
    if any(part.startswith(".") for part in parts):
        return False
    if target.suffix in YAML_SUFFIXES:
        return True
    return is_dir(path) or (change == Change.deleted and not target.suffix)


def has_relevant(
    changes: Iterable[FileChange], root: Path, is_dir: Callable[[str], bool] = os.path.isdir
) -> bool:
    return any(is_relevant(change, path, root, is_dir) for change, path in changes)


def relevant_files(
    changes: Iterable[FileChange], root: Path, is_dir: Callable[[str], bool] = os.path.isdir
) -> int:
    """How many distinct paths of the batch are relevant (a burst names many)."""
    return len({path for change, path in changes if is_relevant(change, path, root, is_dir)})


@dataclass
class Timing:
    """When the next reconcile is due, on a monotonic clock; no I/O, no clock of its own."""

    resync_interval: float
    dirty: bool = True
    cause: str = "start"
    failures: int = 0
    retry_at: float = 0.0
    next_resync: float = 0.0
    resync_deferred: bool = False  # a due resync already let one change go first

    def mark_dirty(self, cause: str) -> None:
        if not self.dirty:
            self.cause = cause
        self.dirty = True

    def is_due(self, now: float) -> bool:
        if now < self.retry_at:
            return False
        return self.dirty or now >= self.next_resync

    @property
    def trigger(self) -> str:
        if self.failures:
            return "retry"
        return self.cause if self.dirty else "resync"

    def became_leader(self) -> None:
        """A new leader reconciles at once: it knows nothing of the previous one's backoff."""
        self.dirty, self.cause = True, "leader"
        self.failures = 0
        self.retry_at = 0.0

    def wants_full(self, now: float) -> bool:
        """Only a file change may be reconciled incrementally; a resync, a retry, a new
        leader and the start read and plan everything. A change pending when the resync
        falls due goes first, once: the incremental reconcile leaves the resync due, so
        it runs next, however fast the changes come."""
        if self.failures > 0 or not self.dirty or self.cause != "change":
            return True
        if now < self.next_resync:
            return False
        if self.resync_deferred:
            return True
        self.resync_deferred = True
        return False

    def finished(self, now: float, *, full: bool = True) -> None:
        """Applied, nothing to do, or refused: not a failure to retry, wait for a change.

        Only a full reconcile moves the resync: a stream of edits must not starve it."""
        self.dirty = False
        self.failures = 0
        self.retry_at = 0.0
        if full:
            self.next_resync = now + self.resync_interval
            self.resync_deferred = False

    def failed(self, now: float) -> float:
        """Record a failure; return the delay before the retry."""
        self.dirty = True
        self.failures += 1
        delay = backoff_delay(self.failures)
        self.retry_at = now + delay
        return delay


def error_kind(exc: BaseException) -> str:
    """Metric label: StoreUnavailable -> store_unavailable, ConflictError -> conflict."""
    if not isinstance(exc, SyncdError):
        return "internal"
    name = type(exc).__name__.removesuffix("Error") or "syncd"
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def dir_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory path points to; None if it is not a directory."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None

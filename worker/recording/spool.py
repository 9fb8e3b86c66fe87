"""The recorder's spool: records that could not be written yet, as JSON lines on local disk.

Written on shutdown (and while the buffer is full) and re-read at the next start, so an
attempt finished while PostgreSQL is away is recorded late rather than lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from syncd.core.model import Execution
from worker.recording.records import record_from_json, record_json

logger = logging.getLogger("worker.recorder")


def default_spool_path() -> Path:
    """A per-user file under the temp dir (not shared with others)."""
    return Path(tempfile.gettempdir()) / f"syncd-recorder-{os.getuid()}" / "spool.jsonl"


class Spool:
    """Records that could not be written yet, as JSON lines; safe for several worker processes.

    Appends and claims hold one lock file, so a claim (rename to a private name) never races
    an append. Claimed files are deleted only after their records committed; until then any
    process may read them again, which is harmless because inserts are idempotent.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def append(self, records: Sequence[Execution], durable: bool = True) -> None:
        lines = "".join(json.dumps(record_json(r), ensure_ascii=False) + "\n" for r in records)
        with self._locked(), open(self.path, "a", encoding="utf-8") as spool:
            spool.write(lines)
            spool.flush()
            if durable:
                os.fsync(spool.fileno())

    def claim(self, skip: set[Path]) -> list[Path]:
        """Take the spool file over under a private name; return every claimed file not in skip."""
        with self._locked():
            if self.path.exists():
                self.path.rename(
                    self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.claimed")
                )
        return sorted(set(self.path.parent.glob(f"{self.path.name}.*.claimed")) - skip)

    @staticmethod
    def read(path: Path) -> list[Execution]:
        records = []
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as spool:
            for number, line in enumerate(spool, 1):
                try:
                    records.append(record_from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError):  # a line cut short by a crash
                    logger.warning("skipping unreadable line %d of %s", number, path)
        return records

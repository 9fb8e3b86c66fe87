"""Cleanup tasks: remove what piles up (old temporary files, empty directories)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from worker.registry import task
from worker.tasks.params import Params


class TempFilesParams(Params):
    path: Annotated[str, Field(min_length=1, description="directory to clean")]
    older_than_days: Annotated[float, Field(gt=0, le=3650)] = 7
    pattern: Annotated[str, Field(min_length=1)] = "*"
    dry_run: bool = False


@task("cleanup.temp_files", params=TempFilesParams, queue="default")
def temp_files(params: TempFilesParams) -> dict[str, int | bool]:
    """Delete regular files under `path` matching `pattern` not modified for `older_than_days`."""
    root = Path(params.path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    cutoff = time.time() - params.older_than_days * 86400
    removed = freed = 0
    for path in root.rglob(params.pattern):
        # Never follow links out of the directory; never touch anything but regular files.
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        if stat.st_mtime >= cutoff:
            continue
        removed += 1
        freed += stat.st_size
        if not params.dry_run:
            path.unlink(missing_ok=True)
    return {"removed": removed, "bytes_freed": freed, "dry_run": params.dry_run}


class EmptyDirsParams(Params):
    path: Annotated[str, Field(min_length=1)]


@task("cleanup.empty_dirs", params=EmptyDirsParams, queue="default")
def empty_dirs(params: EmptyDirsParams) -> dict[str, int]:
    """Remove empty directories below `path` (never `path` itself)."""
    root = Path(params.path)
    removed = 0
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
            removed += 1
    return {"removed": removed}

"""Cleanup tasks: remove what piles up (old temporary files, empty directories).

Both stay below the operator policy's allowed roots whatever is on disk: the directory is
opened component by component, links are never followed, and files are removed through
their directory's fd (worker/confine.py).
"""

from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field

from schemas.kinds import ConfinedPath, GlobPattern
from worker.confine import open_dir, remove_empty_dirs, remove_file, walk_files
from worker.policy import active_policy
from worker.registry import task
from worker.tasks.params import Params


class TempFilesParams(Params):
    path: Annotated[ConfinedPath, Field(description="directory to clean")]
    older_than_days: Annotated[float, Field(gt=0, le=3650)] = 7
    pattern: Annotated[
        GlobPattern, Field(description="files to remove, relative to `path`, at any depth")
    ] = "*"
    dry_run: bool = False


@task("cleanup.temp_files", params=TempFilesParams, queue="default")
def temp_files(params: TempFilesParams) -> dict[str, int | bool]:
    """Delete regular files under `path` matching `pattern` not modified for `older_than_days`."""
    cutoff = time.time() - params.older_than_days * 86400
    removed = freed = 0
    with open_dir(params.path, active_policy().paths.allow) as top:
        for found in walk_files(top, params.pattern, params.path):
            if found.stat.st_mtime >= cutoff:
                continue
            if params.dry_run or remove_file(found.dir_fd, found.name, found.shown):
                removed += 1
                freed += found.stat.st_size
    return {"removed": removed, "bytes_freed": freed, "dry_run": params.dry_run}


class EmptyDirsParams(Params):
    path: Annotated[ConfinedPath, Field(description="directory whose empty subdirectories go")]


@task("cleanup.empty_dirs", params=EmptyDirsParams, queue="default")
def empty_dirs(params: EmptyDirsParams) -> dict[str, int]:
    """Remove empty directories below `path` (never `path` itself)."""
    with open_dir(params.path, active_policy().paths.allow) as top:
        return {"removed": remove_empty_dirs(top, params.path)}

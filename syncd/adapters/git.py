"""Git facts for the taskdefs directory: the revision applied, and the taskdefs at a ref.

Runs the `git` executable (no library needed for three plumbing commands). Used by
sync (to stamp `git_revision` on the rows it writes) and by `plan --against REF`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from syncd.core.errors import SyncdError


class GitError(SyncdError):
    """git is missing, the directory is not in a repository, or the ref is unknown."""


def _git(cwd: Path, *args: str, input_: bytes | None = None) -> bytes:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, input=input_, capture_output=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"cannot run git: {exc}") from exc
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def revision_of(directory: Path) -> str | None:
    """HEAD's commit id, suffixed `-dirty` when the directory has uncommitted changes;
    None when the directory is not inside a git work tree."""
    try:
        head = _git(directory, "rev-parse", "HEAD").decode().strip()
        dirty = _git(directory, "status", "--porcelain", "--", ".").strip()
    except GitError:
        return None
    return f"{head[:40]}-dirty" if dirty else head[:40]


def files_at(ref: str, directory: Path) -> dict[str, bytes]:
    """Every file under `directory` as committed at `ref`: path relative to it -> bytes.

    Reads all blobs with one `git cat-file --batch` call instead of one `git show` each.
    """
    directory = directory.resolve()
    top = Path(_git(directory, "rev-parse", "--show-toplevel").decode().strip())
    prefix = directory.relative_to(top).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    _git(directory, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    listing = _git(top, "ls-tree", "-r", "-z", "--full-tree", ref, "--", prefix or ".")
    entries = [line.split(b"\t", 1) for line in listing.split(b"\0") if line]
    blobs = [
        (meta.split()[2].decode(), path.decode())
        for meta, path in entries
        if meta.split()[1] == b"blob"
    ]
    if not blobs:
        return {}
    batch = _git(top, "cat-file", "--batch", input_="\n".join(b for b, _ in blobs).encode() + b"\n")
    return dict(zip((p.removeprefix(prefix) for _, p in blobs), _split_batch(batch), strict=True))


def _split_batch(output: bytes) -> list[bytes]:
    contents, offset = [], 0
    while offset < len(output):
        header_end = output.index(b"\n", offset)
        size = int(output[offset:header_end].split()[2])
        start = header_end + 1
        contents.append(output[start : start + size])
        offset = start + size + 1  # blob, then a newline
    return contents

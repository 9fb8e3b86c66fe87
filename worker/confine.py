"""Confined file access: what file tasks read, write and delete stays below an allowed root.

A path that passed `schemas.kinds.ConfinedPath` is only a string: it proves nothing about
the disk. Any component may be a symbolic link (planted by whoever can write into the
directory), and what a name is can change between a check and its use. So file tasks
never hand a whole path to the kernel:

- **Directories** (`open_dir`). The allowed root is opened as the operator configured it
  (links in the root's own path are the operator's choice), then each component below it
  with `openat(parent, name, O_DIRECTORY | O_NOFOLLOW)`: a component that is a symbolic
  link, or not a directory, fails with a ConfinementError naming it. No link is crossed.
- **Walking** (`walk_files`, `remove_empty_dirs`). Directories are listed through their
  fds and entered the same way, so a symbolic link is never entered; only regular files
  (`lstat` through the directory fd) are reported. Subdirectories that vanish, turn into
  something else or cannot be opened while walking are skipped. os.fwalk is not used: it
  opens each subdirectory without O_NOFOLLOW and checks afterwards, so a name swapped for
  a link in between is opened through the link (a FIFO blocks, a device is opened) before
  the check discards it.
- **Deleting** (`remove_file`). `unlinkat(dir_fd, name)`: unlink never follows its last
  component, so a file swapped for a link after the check removes the link, never its
  target; the directory fd keeps the delete in the directory that was walked.
- **Reading** (`open_file`, `read_text`). `openat(O_NOFOLLOW | O_NONBLOCK)` through the
  parent's fd; the open file must be a regular file (no device, FIFO or socket).
- **Writing** (`write_atomic`). A new temporary file (`O_CREAT | O_EXCL | O_NOFOLLOW`) in
  the fd-opened directory is written and fsynced, then renamed over the name within that
  directory: rename replaces a link planted at the name, and its target is never touched.

**Patterns** (`schemas.kinds.GlobPattern`) match like `Path.rglob`: against the end of
each file's path relative to the walked directory, one pattern component per path
component. A component is an fnmatch pattern (`*`, `?`, `[seq]`, case-sensitive; `*`
matches names starting with a dot, and never '/', since it sees one component); a
component `**` matches any number of components, zero included. So `*.tmp` matches
`a.tmp` and `x/y/a.tmp`; `cache/*.tmp` matches `cache/a.tmp` and `x/cache/a.tmp` but not
`cache/x/a.tmp`; `cache/**/*.tmp` matches all three. Absolute patterns and `..` are refused.

Every error is a ConfinementError (an OSError, with `errno` set where one applies). Its
message says what failed and where (the path as the taskdef gave it), never what a file
holds.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import accumulate
from pathlib import PurePosixPath

MAX_DEPTH = 128  # directory levels a walk enters; deeper trees fail rather than hide files

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# While walking, a subdirectory that is gone, no longer a directory or not ours to open.
_SKIPPED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM})

Matcher = Callable[[Sequence[str]], bool]
_Level = tuple[int, tuple[str, ...], list[str], list[str]]  # fd, parts, dirs, other names


class ConfinementError(OSError):
    """A confined file operation was refused or failed; the message holds no file content."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True)
class FoundFile:
    """A regular file found by `walk_files`. `dir_fd` is open only until the walk moves on."""

    dir_fd: int
    name: str
    shown: str  # its path for messages: the walked path as given, then the relative path
    stat: os.stat_result  # lstat through dir_fd: the file itself, never a link's target


# -- patterns -------------------------------------------------------------------------


def check_pattern(pattern: str) -> tuple[str, ...]:
    """The components of a relative pattern that stays in its directory, or an error."""
    if "\x00" in pattern:
        raise ConfinementError("a pattern may not contain NUL", errno.EINVAL)
    if pattern.startswith("/"):
        raise ConfinementError(f"pattern {pattern!r} is not relative", errno.EINVAL)
    parts = PurePosixPath(pattern).parts
    if ".." in parts:
        raise ConfinementError(f"pattern {pattern!r} may not contain '..'", errno.EINVAL)
    if not parts:
        raise ConfinementError(f"pattern {pattern!r} names no file", errno.EINVAL)
    return parts


def compile_pattern(pattern: str) -> Matcher:
    """A test of a relative path's components against `pattern` (see the module doc)."""
    steps = [_step(part) for part in ("**", *check_pattern(pattern))]
    return lambda parts: _matches(steps, parts)


def _step(part: str) -> re.Pattern[str] | None:
    return None if part == "**" else re.compile(fnmatch.translate(part))


def _matches(steps: Sequence[re.Pattern[str] | None], parts: Sequence[str]) -> bool:
    # reach[j]: the steps so far match parts[:j]. Linear in steps x parts, whatever the `**`s.
    reach = [True] + [False] * len(parts)
    for step in steps:
        if step is None:
            reach = list(accumulate(reach, lambda seen, here: seen or here))
        else:
            reach = [False] + [
                r and step.match(p) is not None for r, p in zip(reach[:-1], parts, strict=True)
            ]
    return reach[-1]


# -- locating and opening directories -----------------------------------------------


def locate(path: str, roots: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The allowed root `path` lies under (the longest) and the components below it."""
    target = _absolute(path)
    best: PurePosixPath | None = None
    for root in roots:
        base = PurePosixPath(root)
        if not base.is_absolute() or ".." in base.parts:
            continue
        if target.parts[: len(base.parts)] == base.parts and (
            best is None or len(base.parts) > len(best.parts)
        ):
            best = base
    if best is None:
        raise ConfinementError(_outside(path, roots), errno.EACCES)
    return str(best), target.parts[len(best.parts) :]


def _absolute(path: str) -> PurePosixPath:
    if "\x00" in path:
        raise ConfinementError("a path may not contain NUL", errno.EINVAL)
    target = PurePosixPath(path)
    if not target.is_absolute():
        raise ConfinementError(f"{path} is not an absolute path", errno.EINVAL)
    if ".." in target.parts:
        raise ConfinementError(f"{path} may not contain '..'", errno.EINVAL)
    return target


def _outside(path: str, roots: Sequence[str]) -> str:
    if not roots:
        return f"{path}: no directory is allowed (paths.allow of the operator policy is empty)"
    return f"{path} is outside the allowed roots ({', '.join(roots)})"


@contextmanager
def open_dir(path: str, roots: Sequence[str]) -> Iterator[int]:
    """An fd of the directory `path`, opened component by component from its root."""
    root, below = locate(path, roots)
    fd = _descend(_open_root(root, path), root, below, path)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_root(root: str, shown: str) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _failed(f"{_at(shown, root)}: the allowed root cannot be opened", exc) from None


def _descend(fd: int, root: str, names: Sequence[str], shown: str) -> int:
    """From the open directory `fd` down through `names`; `fd` is consumed (closed)."""
    where = PurePosixPath(root)
    for name in names:
        where = where / name
        try:
            child = _open_subdir(fd, name, shown, str(where))
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_subdir(fd: int, name: str, shown: str, where: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _refusal(exc, fd, name, _at(shown, where)) from None


def _refusal(exc: OSError, fd: int, name: str, where: str) -> ConfinementError:
    """Why opening `name` in `fd` failed, in words (a link is told apart by lstat)."""
    if _is_link(fd, name):
        return ConfinementError(f"{where} is a symbolic link; links are not followed", errno.ELOOP)
    if exc.errno == errno.ENOENT:
        return ConfinementError(f"{where} does not exist", exc.errno)
    if exc.errno == errno.ENOTDIR:
        return ConfinementError(f"{where} is not a directory", exc.errno)
    return _failed(f"{where} cannot be opened", exc)


def _is_link(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _at(shown: str, where: str) -> str:
    return where if where == shown else f"{shown}: {where}"


def _join(shown: str, parts: Sequence[str]) -> str:
    return "/".join([shown.rstrip("/"), *parts]) if parts else shown


# -- walking and deleting -----------------------------------------------------------


def walk_files(dir_fd: int, pattern: str, shown: str) -> Iterator[FoundFile]:
    """Regular files below `dir_fd` (any depth) whose relative path matches `pattern`.

    `shown` is the directory's path as given, for messages. Links are never entered nor
    reported; each FoundFile's `dir_fd` is valid until the next one is asked for.
    """
    matches = compile_pattern(pattern)
    for fd, parts, _dirs, names in _walk(dir_fd, (), shown, topdown=True):
        for name in names:
            relative = (*parts, name)
            if not matches(relative):
                continue
            found = _regular(fd, name)
            if found is not None:
                yield FoundFile(fd, name, _join(shown, relative), found)


def _walk(fd: int, parts: tuple[str, ...], shown: str, *, topdown: bool) -> Iterator[_Level]:
    if len(parts) > MAX_DEPTH:
        where = _join(shown, parts)
        raise ConfinementError(f"{where}: more than {MAX_DEPTH} directory levels", errno.ELOOP)
    dirs, names = _list(fd, _join(shown, parts))
    if topdown:
        yield fd, parts, dirs, names
    for name in dirs:
        child = _enter(fd, name, _join(shown, (*parts, name)))
        if child is None:
            continue
        try:
            yield from _walk(child, (*parts, name), shown, topdown=topdown)
        finally:
            os.close(child)
    if not topdown:
        yield fd, parts, dirs, names


def _list(fd: int, where: str) -> tuple[list[str], list[str]]:
    """(real directories, every other name) in the directory `fd`."""
    dirs: list[str] = []
    names: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                (dirs if _is_real_dir(entry) else names).append(entry.name)
    except OSError as exc:
        raise _failed(f"{where} cannot be listed", exc) from None
    return dirs, names


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _enter(fd: int, name: str, where: str) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in _SKIPPED:
            return None
        raise _failed(f"{where} cannot be opened", exc) from None


def _regular(fd: int, name: str) -> os.stat_result | None:
    try:
        found = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    return found if stat.S_ISREG(found.st_mode) else None


def remove_file(dir_fd: int, name: str, shown: str) -> bool:
    """Unlink `name` in `dir_fd`: False if it is gone or became a directory meanwhile.

    Never follows a link: a name swapped for one since it was checked removes the link.
    """
    _check_name(name)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EISDIR):
            return False
        raise _failed(f"{shown} cannot be removed", exc) from None
    return True


def remove_empty_dirs(dir_fd: int, shown: str) -> int:
    """Remove the empty directories below `dir_fd` (deepest first, never `dir_fd` itself)."""
    removed = 0
    for fd, parts, dirs, _names in _walk(dir_fd, (), shown, topdown=False):
        for name in dirs:
            removed += _remove_dir(fd, name, _join(shown, (*parts, name)))
    return removed


def _remove_dir(fd: int, name: str, shown: str) -> int:
    try:
        os.rmdir(name, dir_fd=fd)  # rmdir never follows a link either (ENOTDIR)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            return 0
        raise _failed(f"{shown} cannot be removed", exc) from None
    return 1


def _failed(what: str, exc: OSError) -> ConfinementError:
    """`what` failed, and the system's reason (never anything read from a file)."""
    return ConfinementError(f"{what} ({exc.strerror})", exc.errno)


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ConfinementError(f"{name!r} is not a name in a directory", errno.EINVAL)


# -- reading and writing files ------------------------------------------------------


@contextmanager
def _parent_dir(path: str, roots: Sequence[str]) -> Iterator[tuple[int, str]]:
    """The fd of the directory holding the file `path`, and the file's name in it."""
    root, below = locate(path, roots)
    if not below:
        raise ConfinementError(f"{path} is an allowed root, not a file below one", errno.EISDIR)
    fd = _descend(_open_root(root, path), root, below[:-1], path)
    try:
        yield fd, below[-1]
    finally:
        os.close(fd)


@contextmanager
def open_file(path: str, roots: Sequence[str]) -> Iterator[io.BufferedReader]:
    """The regular file `path`, open for reading in binary (no link followed anywhere)."""
    with _parent_dir(path, roots) as (dir_fd, name):
        fd = _open_regular(dir_fd, name, path)
    with os.fdopen(fd, "rb") as handle:
        yield handle


def _open_regular(dir_fd: int, name: str, shown: str) -> int:
    # lstat first, so a device or FIFO in the tree is never even opened; fstat after, in
    # case the name was swapped in between (O_NOFOLLOW already refuses a link).
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):
            raise _not_regular(before, shown)
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except ConfinementError:
        raise
    except OSError as exc:
        raise _refusal(exc, dir_fd, name, shown) from None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    raise ConfinementError(f"{shown} is not a regular file", errno.EINVAL)


def _not_regular(found: os.stat_result, shown: str) -> ConfinementError:
    if stat.S_ISLNK(found.st_mode):
        return ConfinementError(f"{shown} is a symbolic link; links are not followed", errno.ELOOP)
    return ConfinementError(f"{shown} is not a regular file", errno.EINVAL)


def read_text(path: str, roots: Sequence[str], limit: int) -> str:
    """The UTF-8 text of the regular file `path`, at most `limit` bytes of it."""
    with open_file(path, roots) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfinementError(f"{path} is larger than {limit} bytes", errno.EFBIG)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfinementError(f"{path} is not UTF-8 text", errno.EILSEQ) from None


def write_atomic(path: str, roots: Sequence[str], data: bytes) -> None:
    """Replace the file `path` by `data`: all or nothing, and never through a link."""
    with _parent_dir(path, roots) as (dir_fd, name):
        temporary = _write_temporary(dir_fd, name, data, path)
        try:
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            _discard(dir_fd, temporary)
            raise _failed(f"{path} cannot be written", exc) from None
        os.fsync(dir_fd)  # the rename itself survives a crash


def _write_temporary(dir_fd: int, name: str, data: bytes, shown: str) -> str:
    temporary = f".{name[:40]}.{os.urandom(8).hex()}.tmp"
    try:
        fd = os.open(temporary, _CREATE_FLAGS, 0o666, dir_fd=dir_fd)
    except OSError as exc:
        raise _failed(f"{shown} cannot be written", exc) from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        _discard(dir_fd, temporary)
        raise _failed(f"{shown} cannot be written", exc) from None
    return temporary


def _discard(dir_fd: int, name: str) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)

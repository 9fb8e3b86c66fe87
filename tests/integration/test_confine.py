"""worker.confine against a real directory tree: links planted in the allowed root, names
swapped for links while a cleanup runs, outputs replacing links, reads refused through them.

Every test has an allowed root (`allowed/`) and, next to it, victims (`outside/`) that a
link or a race would reach; each checks on disk that the victims are untouched.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from schemas.kinds import validation_context
from schemas.policy import PathsPolicy, Policy
from worker import confine
from worker.confine import (
    ConfinementError,
    open_dir,
    open_file,
    read_text,
    remove_empty_dirs,
    remove_file,
    walk_files,
    write_atomic,
)
from worker.tasks import cleanup, data, diagnostics

OLD = time.time() - 30 * 86400  # an mtime every cleanup in these tests considers old
SECRET = "DB_PASSWORD=hunter2\n"


@dataclass
class Tree:
    allowed: Path  # the only root
    clean: Path  # allowed/clean: what the cleanups clean
    victim: Path  # outside/victim/important.txt lives here
    victim2: Path  # outside/victim2/file.txt; allowed/clean/link2 points here

    @property
    def roots(self) -> list[str]:
        return [str(self.allowed)]

    def victims(self) -> dict[str, str]:
        """Every file outside the root, with its content."""
        outside = self.allowed.parent / "outside"
        return {str(p): p.read_text() for p in sorted(outside.rglob("*")) if p.is_file()}


def old_file(path: Path, text: str = "old\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (OLD, OLD))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    clean = allowed / "clean"
    old_file(clean / "a.tmp")
    old_file(clean / "sub" / "b.tmp")
    old_file(outside / "victim" / "important.txt", "important\n")
    old_file(outside / "victim2" / "file.txt", "precious\n")
    old_file(outside / "secret.env", SECRET)
    (clean / "link2").symlink_to(outside / "victim2")
    return Tree(allowed, clean, outside / "victim", outside / "victim2")


def found_names(tree: Tree, pattern: str) -> list[str]:
    with open_dir(str(tree.clean), tree.roots) as top:
        return sorted(f.shown for f in walk_files(top, pattern, str(tree.clean)))


def clean_all(tree: Tree, pattern: str = "*") -> int:
    removed = 0
    with open_dir(str(tree.clean), tree.roots) as top:
        for found in walk_files(top, pattern, str(tree.clean)):
            removed += remove_file(found.dir_fd, found.name, found.shown)
    return removed


# -- directories ------------------------------------------------------------------------


def refusal(path: str, roots: list[str]) -> ConfinementError:
    with pytest.raises(ConfinementError) as caught, open_dir(path, roots):
        pass
    return caught.value


def test_a_symlinked_component_is_refused_and_named(tree: Tree) -> None:
    path = f"{tree.clean}/link2"
    error = refusal(path, tree.roots)
    assert str(error) == f"{path} is a symbolic link; links are not followed"
    assert error.errno == errno.ELOOP
    deeper = f"{path}/sub"
    assert str(refusal(deeper, tree.roots)).startswith(f"{deeper}: {path} is a symbolic link")


@pytest.mark.parametrize(
    ("below", "says", "code"),
    [
        ("clean/missing", "clean/missing does not exist", errno.ENOENT),
        ("clean/a.tmp", "clean/a.tmp is not a directory", errno.ENOTDIR),
        ("clean/a.tmp/x", "clean/a.tmp is not a directory", errno.ENOTDIR),
    ],
)
def test_directory_errors_say_which_component(tree: Tree, below: str, says: str, code: int) -> None:
    error = refusal(f"{tree.allowed}/{below}", tree.roots)
    assert says in str(error)
    assert error.errno == code


def test_paths_outside_the_root_are_refused_before_anything_is_opened(tree: Tree) -> None:
    for path in (str(tree.victim), f"{tree.clean}/../../outside/victim", "relative/dir"):
        refusal(path, tree.roots)


def test_a_missing_root_is_reported_as_such(tree: Tree) -> None:
    root = tree.allowed.parent / "not-there"
    assert "the allowed root cannot be opened" in str(refusal(f"{root}/x", [str(root)]))


# -- walking --------------------------------------------------------------------------


def test_a_walk_never_enters_a_symlinked_directory(tree: Tree) -> None:
    assert found_names(tree, "*/*") == [f"{tree.clean}/sub/b.tmp"]
    assert found_names(tree, "*") == [f"{tree.clean}/a.tmp", f"{tree.clean}/sub/b.tmp"]


def test_only_regular_files_are_found(tree: Tree) -> None:
    os.mkfifo(tree.clean / "fifo.tmp")
    (tree.clean / "to-inside.tmp").symlink_to(tree.clean / "a.tmp")
    (tree.clean / "to-victim.tmp").symlink_to(tree.victim / "important.txt")
    (tree.clean / "dangling.tmp").symlink_to(tree.clean / "nothing")
    (tree.clean / "dir.tmp").mkdir()
    assert found_names(tree, "*.tmp") == [f"{tree.clean}/a.tmp", f"{tree.clean}/sub/b.tmp"]


@pytest.mark.parametrize(
    "pattern", ["../victim/*", "../../outside/victim/*", "/etc/*", "a/../../x"]
)
def test_escaping_patterns_are_refused_before_the_walk(tree: Tree, pattern: str) -> None:
    before = tree.victims()
    with pytest.raises(ConfinementError, match=r"'\.\.'|not relative"):
        clean_all(tree, pattern)
    assert tree.victims() == before
    assert (tree.clean / "a.tmp").exists()


def test_a_walk_deeper_than_the_limit_fails(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(confine, "MAX_DEPTH", 3)
    old_file(tree.clean / "1" / "2" / "3" / "4" / "deep.tmp")
    with pytest.raises(ConfinementError, match="more than 3 directory levels"):
        found_names(tree, "*")


# -- deleting -------------------------------------------------------------------------


def test_removing_a_link_removes_the_link_only(tree: Tree) -> None:
    with open_dir(str(tree.clean), tree.roots) as top:
        assert remove_file(top, "link2", f"{tree.clean}/link2")
        assert not remove_file(top, "link2", f"{tree.clean}/link2")  # gone now
        assert not remove_file(top, "sub", f"{tree.clean}/sub")  # a directory is left alone
        for bad in ("..", ".", "", "sub/b.tmp"):
            with pytest.raises(ConfinementError, match="is not a name"):
                remove_file(top, bad, "x")
    assert not (tree.clean / "link2").is_symlink()
    assert (tree.victim2 / "file.txt").read_text() == "precious\n"


def test_a_file_swapped_for_a_link_after_the_check_removes_the_link(tree: Tree) -> None:
    """The check-then-unlink window, driven deterministically: the swap happens between the
    walk's lstat (a regular file) and the unlink."""
    target = tree.victim / "important.txt"
    with open_dir(str(tree.clean), tree.roots) as top:
        for found in walk_files(top, "a.tmp", str(tree.clean)):
            swap = tree.clean / "swap"
            swap.symlink_to(target)
            os.replace(swap, tree.clean / "a.tmp")
            assert remove_file(found.dir_fd, found.name, found.shown)
    assert not os.path.lexists(tree.clean / "a.tmp")
    assert target.read_text() == "important\n"


def plant_old_file(scratch: Path) -> None:
    """A fresh regular file at `scratch`, never written through a link left there."""
    with suppress(FileNotFoundError):
        scratch.unlink()
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.write(fd, b"old\n")
    os.close(fd)
    os.utime(scratch, (OLD, OLD), follow_symlinks=False)


def plant_link(scratch: Path, target: Path) -> None:
    with suppress(FileNotFoundError):
        scratch.unlink()
    scratch.symlink_to(target)


def swap_file_and_link(stop: threading.Event, name: Path, target: Path) -> None:
    """Until `stop`: `name` is an old regular file, then a link to `target`, and again;
    each by an atomic rename over `name`."""
    scratch = name.with_name(f".{name.name}.swap")
    while not stop.is_set():
        with suppress(OSError):
            plant_old_file(scratch)
            os.replace(scratch, name)
        with suppress(OSError):
            plant_link(scratch, target)
            os.replace(scratch, name)


def swap_dir_and_link(stop: threading.Event, name: Path, target: Path, trash: Path) -> None:
    """Until `stop`: `name` is a real directory holding an old `important.txt`, then a link
    to the directory `target`, and again. Replaced directories are moved to `trash`."""
    scratch = name.with_name(f".{name.name}.swap")
    for turn in itertools.count():
        if stop.is_set():
            return
        with suppress(OSError):
            scratch.mkdir()
            plant_old_file(scratch / "important.txt")
            name.unlink()  # the link of the previous turn
        with suppress(OSError):
            os.rename(scratch, name)
        with suppress(OSError):
            os.rename(name, trash / str(turn))
            name.symlink_to(target)


def while_swapping(swap: Callable[[threading.Event], None], cleanup: Callable[[], int]) -> int:
    """Run `cleanup` again and again for 2 s while `swap` runs in a thread; the removals."""
    stop = threading.Event()
    thread = threading.Thread(target=swap, args=(stop,))
    thread.start()
    removed = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            removed += cleanup()
    finally:
        stop.set()
        thread.join(10)
    return removed


def test_a_racing_swap_of_a_file_for_a_link_never_redirects_a_delete(tree: Tree) -> None:
    target = tree.victim / "important.txt"
    removed = while_swapping(
        lambda stop: swap_file_and_link(stop, tree.clean / "race.tmp", target),
        lambda: clean_all(tree, "race.tmp"),
    )
    assert removed > 0  # the cleanup kept deleting the swapping name
    assert target.read_text() == "important\n"
    assert sorted(p.name for p in tree.victim.iterdir()) == ["important.txt"]


def test_a_racing_swap_of_a_directory_for_a_link_never_redirects_a_delete(
    tree: Tree, tmp_path: Path
) -> None:
    trash = tmp_path / "trash"
    trash.mkdir()
    removed = while_swapping(
        lambda stop: swap_dir_and_link(stop, tree.clean / "flip", tree.victim, trash),
        lambda: clean_all(tree, "flip/important.txt"),
    )
    assert removed > 0  # it deleted in the real directories it met
    assert (tree.victim / "important.txt").read_text() == "important\n"


# -- empty directories -----------------------------------------------------------------


def test_empty_directories_go_deepest_first_and_links_stay(tree: Tree) -> None:
    (tree.clean / "e1" / "e2" / "e3").mkdir(parents=True)
    (tree.clean / "keep").mkdir()
    old_file(tree.clean / "keep" / "x")
    (tree.victim2 / "empty").mkdir()
    (tree.clean / "link-empty").symlink_to(tree.victim2 / "empty")
    with open_dir(str(tree.clean), tree.roots) as top:
        assert remove_empty_dirs(top, str(tree.clean)) == 3
    assert not (tree.clean / "e1").exists()
    assert (tree.clean / "keep" / "x").exists()
    assert (tree.clean / "link-empty").is_symlink()
    assert (tree.victim2 / "empty").is_dir()
    assert tree.clean.is_dir()


# -- reading --------------------------------------------------------------------------


def test_reading_through_a_link_is_refused_without_content(tree: Tree) -> None:
    (tree.allowed / "secret.env").symlink_to(tree.allowed.parent / "outside" / "secret.env")
    (tree.allowed / "outdir").symlink_to(tree.allowed.parent / "outside")
    for path in (f"{tree.allowed}/secret.env", f"{tree.allowed}/outdir/secret.env"):
        with pytest.raises(ConfinementError, match="is a symbolic link") as caught:
            read_text(path, tree.roots, 1000)
        assert "hunter2" not in str(caught.value)
        assert caught.value.errno == errno.ELOOP


def test_only_regular_files_are_read(tree: Tree) -> None:
    os.mkfifo(tree.allowed / "fifo")
    for name in ("fifo", "clean"):  # a FIFO must not block the read; a directory is no file
        with pytest.raises(ConfinementError, match="is not a regular file"):
            read_text(f"{tree.allowed}/{name}", tree.roots, 10)
    with pytest.raises(ConfinementError, match="is an allowed root"):
        read_text(str(tree.allowed), tree.roots, 10)
    with pytest.raises(ConfinementError, match="does not exist") as caught:
        read_text(f"{tree.allowed}/nothing", tree.roots, 10)
    assert caught.value.errno == errno.ENOENT


def test_read_errors_hold_no_content(tree: Tree) -> None:
    (tree.allowed / "big").write_text(SECRET * 10)
    (tree.allowed / "binary").write_bytes(b"ok\xff\xfehunter2")
    with pytest.raises(ConfinementError, match="larger than 16 bytes") as big:
        read_text(f"{tree.allowed}/big", tree.roots, 16)
    with pytest.raises(ConfinementError, match="is not UTF-8 text") as binary:
        read_text(f"{tree.allowed}/binary", tree.roots, 100)
    for error in (big.value, binary.value):
        assert "hunter2" not in str(error)
        assert "xff" not in str(error)
    assert read_text(f"{tree.clean}/a.tmp", tree.roots, 100) == "old\n"
    with open_file(f"{tree.clean}/a.tmp", tree.roots) as handle:
        assert handle.read() == b"old\n"


# -- writing --------------------------------------------------------------------------


def test_an_output_replaces_a_planted_link_and_leaves_its_target_alone(tree: Tree) -> None:
    target = tree.allowed.parent / "outside" / "anything.conf"
    target.write_text("keep me\n")
    out = tree.allowed / "summary.json"
    out.symlink_to(target)
    write_atomic(str(out), tree.roots, b'{"rows": 1}')
    assert not out.is_symlink()
    assert out.read_text() == '{"rows": 1}'
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in tree.allowed.iterdir()) == ["clean", "summary.json"]


def test_an_output_overwrites_a_regular_file_atomically(tree: Tree) -> None:
    out = tree.clean / "report.json"
    out.write_text("old report, much longer than the new one\n")
    write_atomic(str(out), tree.roots, b"new")
    assert out.read_bytes() == b"new"
    assert not [p for p in tree.clean.iterdir() if p.name.startswith(".report.json")]


def test_an_output_through_a_symlinked_directory_is_refused(tree: Tree) -> None:
    path = f"{tree.clean}/link2/evil.json"
    with pytest.raises(ConfinementError, match=f"^{path}: {tree.clean}/link2 is a symbolic link"):
        write_atomic(path, tree.roots, b"x")
    assert sorted(p.name for p in tree.victim2.iterdir()) == ["file.txt"]


def test_an_output_that_is_a_directory_fails_and_leaves_no_temporary(tree: Tree) -> None:
    with pytest.raises(ConfinementError, match="cannot be written"):
        write_atomic(f"{tree.clean}/sub", tree.roots, b"x")
    assert sorted(p.name for p in tree.clean.iterdir()) == ["a.tmp", "link2", "sub"]
    with pytest.raises(ConfinementError, match="is an allowed root"):
        write_atomic(str(tree.allowed), tree.roots, b"x")
    with pytest.raises(ConfinementError, match="outside the allowed roots"):
        write_atomic(str(tree.victim / "important.txt"), tree.roots, b"x")
    assert (tree.victim / "important.txt").read_text() == "important\n"


# -- the tasks, under a policy whose only root is allowed/ --------------------------------


@pytest.fixture
def policy(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> Policy:
    only = Policy(paths=PathsPolicy(allow=tuple(tree.roots)))
    for module in (cleanup, data, diagnostics):
        monkeypatch.setattr(module, "active_policy", lambda: only)
    return only


M = TypeVar("M", bound=BaseModel)


def checked(model: type[M], policy: Policy, **values: Any) -> M:
    """Parameters as the worker validates them, under `policy`."""
    return model.model_validate(values, context=validation_context(policy, "test"))


def test_temp_files_with_a_symlinked_directory_deletes_inside_only(
    tree: Tree, policy: Policy
) -> None:
    params = checked(cleanup.TempFilesParams, policy, path=str(tree.clean), pattern="*/*")
    assert cleanup.temp_files(params) == {"removed": 1, "bytes_freed": 4, "dry_run": False}
    assert not (tree.clean / "sub" / "b.tmp").exists()
    assert (tree.victim2 / "file.txt").read_text() == "precious\n"
    dry = checked(cleanup.TempFilesParams, policy, path=str(tree.clean), dry_run=True)
    assert cleanup.temp_files(dry) == {"removed": 1, "bytes_freed": 4, "dry_run": True}
    assert (tree.clean / "a.tmp").exists()


def test_empty_dirs_and_directory_usage(tree: Tree, policy: Policy) -> None:
    (tree.clean / "empty").mkdir()
    usage = checked(data.DirectoryUsageParams, policy, path=str(tree.clean))
    assert data.directory_usage(usage) == {"files": 2, "bytes": 8}  # link2's files not counted
    prune = checked(cleanup.EmptyDirsParams, policy, path=str(tree.clean))
    assert cleanup.empty_dirs(prune) == {"removed": 1}
    linked = checked(data.DirectoryUsageParams, policy, path=f"{tree.clean}/link2")
    with pytest.raises(ConfinementError, match="is a symbolic link"):
        data.directory_usage(linked)


def test_csv_errors_name_the_row_and_column_never_the_value(tree: Tree, policy: Policy) -> None:
    source = tree.allowed / "passwd.csv"
    source.write_text("root:x:0:0\nDB_PASSWORD=hunter2\n")
    params = checked(data.CsvSummaryParams, policy, source=str(source), column="root:x:0:0")
    with pytest.raises(data.CsvProblem) as caught:
        data.csv_summary(params)
    assert str(caught.value) == f"{source}: row 1: column 'root:x:0:0' is not a number"
    assert caught.value.__suppress_context__
    short = tree.allowed / "short.csv"
    short.write_text("a,b\n1,2\n3\n")
    with pytest.raises(data.CsvProblem, match="row 2: column 'b' is missing"):
        data.csv_summary(checked(data.CsvSummaryParams, policy, source=str(short), column="b"))
    with pytest.raises(data.CsvProblem, match="no column 'c' in the header row"):
        data.csv_summary(checked(data.CsvSummaryParams, policy, source=str(short), column="c"))
    binary = tree.allowed / "binary.csv"
    binary.write_bytes(b"a\n1\n\xffhunter2\n")
    with pytest.raises(data.CsvProblem, match="is not UTF-8 text") as undecodable:
        data.csv_summary(checked(data.CsvSummaryParams, policy, source=str(binary), column="a"))
    assert "xff" not in str(undecodable.value)


def test_csv_summary_writes_its_output_in_place_of_a_planted_link(
    tree: Tree, policy: Policy
) -> None:
    source = tree.allowed / "sales.csv"
    source.write_text("amount\n1\n2.5\n")
    target = tree.allowed.parent / "outside" / "anything.conf"
    target.write_text("keep me\n")
    out = tree.allowed / "summary.json"
    out.symlink_to(target)
    params = checked(
        data.CsvSummaryParams, policy, source=str(source), column="amount", output=str(out)
    )
    summary = data.csv_summary(params)
    assert summary == {"rows": 2, "sum": 3.5, "min": 1.0, "max": 2.5, "mean": 1.75}
    assert out.read_text() == '{"rows": 2, "sum": 3.5, "min": 1.0, "max": 2.5, "mean": 1.75}'
    assert target.read_text() == "keep me\n"


def test_the_flaky_counter_never_echoes_the_file(tree: Tree, policy: Policy) -> None:
    counter = tree.allowed / "counter"
    params = checked(diagnostics.FlakyParams, policy, counter_file=str(counter), failures=1)
    with pytest.raises(diagnostics.DiagnosticFailure, match="call 1 of 1"):
        asyncio.run(diagnostics.flaky(params))
    assert asyncio.run(diagnostics.flaky(params)) == {"calls": 2}
    counter.write_text(SECRET)
    with pytest.raises(ValueError, match=r"^counter_file does not hold a number \(") as caught:
        asyncio.run(diagnostics.flaky(params))
    assert "hunter2" not in str(caught.value)
    counter.unlink()
    counter.symlink_to(tree.allowed.parent / "outside" / "secret.env")
    with pytest.raises(ConfinementError, match="is a symbolic link") as linked:
        asyncio.run(diagnostics.flaky(params))
    assert "hunter2" not in str(linked.value)
    assert (tree.allowed.parent / "outside" / "secret.env").read_text() == SECRET

"""Load `taskdefs/`: read every YAML file, validate it, and collect every problem at once.

Called by the CLI (`validate`, `plan`, `sync`) and the daemon. Reading is the only I/O
here; everything after reading a file works on its bytes, so a file's result is cached by
content digest: in memory for a daemon's life (`LoadCache`), and on disk across processes
(`syncd.load.cache`), so only a changed file is parsed and validated again. It does not
touch any store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from schemas.policy import DEFAULT_POLICY, Policy
from syncd.core.gcpause import collect_young, gc_paused
from syncd.core.model import Desired, DesiredTask, TaskCatalog, TaskConfig, config_from_taskdef
from syncd.core.problems import Problem
from syncd.load.cache import ParseCache, Parsed, problems_of
from syncd.load.validate import validate_document
from syncd.load.yamlsafe import YamlProblem, parse_document

MAX_FILE_BYTES = 5 * 1024 * 1024
YAML_SUFFIXES = (".yaml", ".yml")

TaskTypes = Mapping[str, type[BaseModel]]
"""The worker's registry as data: task_type -> pydantic model of its parameters."""


@dataclass(frozen=True)
class LoadedTask:
    """A valid task and where it was declared: the row it becomes, and its file and line."""

    config: TaskConfig
    source: str  # path relative to the taskdefs root: stored in task_configs.source_file
    path: str  # path as the user named it, for messages
    line: int

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class FileResult:
    source: str
    path: str
    digest: str
    tasks: tuple[LoadedTask, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def is_valid(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


@dataclass(frozen=True)
class LoadResult:
    """Everything found under one taskdefs directory."""

    root: str
    files: tuple[FileResult, ...]
    problems: tuple[Problem, ...]  # all of them, sorted; per-file ones and cross-file ones
    duplicates: tuple[Problem, ...] = ()  # the duplicate-name ones among them

    def with_problems(self, found: Iterable[Problem]) -> LoadResult:
        """This result with more problems (found while applying): their files are broken."""
        problems = tuple(sorted((*self.problems, *found)))
        return LoadResult(self.root, self.files, problems, self.duplicates)

    def settle_duplicates(self, owners: Mapping[str, str | None]) -> LoadResult:
        """Judge duplicate names again, knowing which file each applied task came from
        (`owners`: name -> source file of its row): the owner keeps it, the newcomer's
        file is the one in error, so an edit elsewhere in the owner's file still applies."""
        settled = duplicate_name_problems(self.files, owners)
        if settled == list(self.duplicates):
            return self
        old = set(self.duplicates)
        problems = [p for p in self.problems if p not in old] + settled
        return LoadResult(self.root, self.files, tuple(sorted(problems)), tuple(settled))

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def tasks(self) -> tuple[LoadedTask, ...]:
        """Tasks of valid files only; a broken file contributes nothing (it is frozen)."""
        broken = self.broken_sources
        return tuple(t for f in self.files if f.source not in broken for t in f.tasks)

    @property
    def broken_sources(self) -> frozenset[str]:
        """Files with at least one error, cross-file ones (duplicate names) included."""
        paths = {p.path for p in self.errors}
        return frozenset(f.source for f in self.files if f.path in paths)

    def declared_at(self, name: str) -> str | None:
        """`path:line` of the valid task named `name`, or None."""
        for task in self.tasks:
            if task.name == name:
                return f"{task.path}:{task.line}"
        return None


def build_desired(loaded: LoadResult, catalog: TaskCatalog, revision: str | None) -> Desired:
    """What git says, as the planner takes it: the valid tasks, and which files are broken."""
    tasks = {t.name: DesiredTask(t.config, t.source, t.line, t.path) for t in loaded.tasks}
    # Any error, even one not tied to a file (a missing directory), suspends pruning.
    broken = loaded.broken_sources or (frozenset({"<taskdefs>"}) if loaded.errors else frozenset())
    return Desired(tasks, broken, catalog.queues, revision)


@dataclass
class LoadCache:
    """Per-file results by content digest, so a daemon re-validates only changed files."""

    entries: dict[tuple[str, str, Policy], FileResult] = field(default_factory=dict)


def find_taskdef_files(root: Path) -> list[Path]:
    """Every *.yaml / *.yml below root, recursively, in a stable order; hidden dirs skipped."""
    found = [
        p
        for p in root.rglob("*")
        if p.suffix in YAML_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def load_taskdefs(
    root: Path | str,
    task_types: TaskTypes | None,
    now: datetime | None = None,
    cache: LoadCache | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> LoadResult:
    """Load and validate the whole directory; never raises for bad content."""
    root_path = Path(root)
    if not root_path.is_dir():
        problem = Problem(
            str(root), 0, 0, "taskdefs directory does not exist or is not a directory"
        )
        return LoadResult(str(root), (), (problem,))
    disk = ParseCache.open(task_types, policy)
    with gc_paused():
        files = [
            load_file(path, root_path, task_types, cache, policy, disk=disk)
            for path in find_taskdef_files(root_path)
        ]
        return _assemble(str(root), files, now, policy)


def load_taskdef_blobs(
    blobs: Mapping[str, bytes],
    shown_root: str,
    task_types: TaskTypes | None,
    now: datetime | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> LoadResult:
    """Like load_taskdefs, for files held in memory (e.g. read from a git ref)."""
    names = sorted(
        n
        for n in blobs
        if n.endswith(YAML_SUFFIXES) and not any(part.startswith(".") for part in n.split("/"))
    )
    disk = ParseCache.open(task_types, policy)
    files = [
        _checked_blob(blobs[n], n, f"{shown_root}/{n}", task_types, policy=policy, disk=disk)
        for n in names
    ]
    return _assemble(shown_root, files, now, policy)


def _checked_blob(
    raw: bytes,
    source: str,
    shown: str,
    task_types: TaskTypes | None,
    *,
    policy: Policy,
    disk: ParseCache | None,
) -> FileResult:
    if len(raw) > MAX_FILE_BYTES:
        return _failed(
            source, shown, "", f"file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}"
        )
    return parse_file(raw, source, shown, task_types, policy=policy, disk=disk)


def _assemble(
    root: str, files: list[FileResult], now: datetime | None, policy: Policy
) -> LoadResult:
    problems = [p for f in files for p in f.problems]
    duplicates = duplicate_name_problems(files)
    problems += duplicates
    problems += too_many_tasks(root, files, policy)
    if now is not None:
        problems += expired_at_warnings(files, now)
    return LoadResult(root, tuple(files), tuple(sorted(problems)), tuple(duplicates))


def load_file(
    path: Path,
    root: Path,
    task_types: TaskTypes | None,
    cache: LoadCache | None = None,
    policy: Policy = DEFAULT_POLICY,
    *,
    disk: ParseCache | None = None,
) -> FileResult:
    source = path.relative_to(root).as_posix()
    shown = str(path)
    try:
        path = _inside(path, root)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return _failed(
                source, shown, "", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}"
            )
        raw = path.read_bytes()
    except OSError as exc:
        return _failed(source, shown, "", f"cannot read file: {exc.strerror or exc}")
    except _LinkLeavesRoot:
        return _failed(
            source,
            shown,
            "",
            "symbolic link to a file outside the taskdefs directory: refused (a reviewer "
            "sees only the link, not what it points at)",
        )
    return parse_file(raw, source, shown, task_types, cache, policy=policy, disk=disk)


class _LinkLeavesRoot(Exception):
    pass


def _inside(path: Path, root: Path) -> Path:
    """The file to read: `path` itself, or the target of a link that stays below `root`."""
    if not path.is_symlink():
        return path
    target = path.resolve(strict=True)
    if not target.is_relative_to(root.resolve()):
        raise _LinkLeavesRoot
    return target


def parse_file(
    raw: bytes,
    source: str,
    shown: str,
    task_types: TaskTypes | None,
    cache: LoadCache | None = None,
    *,
    policy: Policy = DEFAULT_POLICY,
    disk: ParseCache | None = None,
) -> FileResult:
    """Validate one file's bytes; an unchanged file's result comes from `cache` (this
    process) or `disk` (any earlier process) instead."""
    digest = hashlib.sha256(raw).hexdigest()
    key = (source, digest, policy)
    if cache is not None and (hit := cache.entries.get(key)) is not None:
        return hit if hit.path == shown else _reshown(hit, shown)
    parsed = disk.get(digest) if disk is not None else None
    if parsed is not None:
        result = _from_parsed(parsed, source, shown, digest)
    else:
        result = _parse_uncached(raw, source, shown, digest, task_types=task_types, policy=policy)
        collect_young()
        if disk is not None:
            disk.put(digest, _to_parsed(result))
    if cache is not None:
        cache.entries[key] = result
    return result


def _to_parsed(result: FileResult) -> Parsed:
    tasks = tuple((t.line, t.config) for t in result.tasks)
    problems = tuple((p.line, p.col, p.message, p.severity) for p in result.problems)
    return Parsed(tasks, problems)


def _from_parsed(parsed: Parsed, source: str, shown: str, digest: str) -> FileResult:
    tasks = tuple(LoadedTask(config, source, shown, line) for line, config in parsed.tasks)
    return FileResult(source, shown, digest, tasks, problems_of(parsed, shown))


def _parse_uncached(
    raw: bytes,
    source: str,
    shown: str,
    digest: str,
    *,
    task_types: TaskTypes | None,
    policy: Policy,
) -> FileResult:
    text, problem = decode_utf8(raw)
    if problem is not None:
        return _failed(source, shown, digest, problem[2], line=problem[0], col=problem[1])
    if not text.strip():
        return _failed(source, shown, digest, "file is empty (expected 'version: 1' and 'tasks:')")
    try:
        data, marks = parse_document(text)
    except YamlProblem as exc:
        return _failed(source, shown, digest, exc.message, line=exc.line + 1, col=exc.col + 1)
    if data is None:
        return _failed(
            source, shown, digest, "file has no content (expected 'version: 1' and 'tasks:')"
        )
    found = validate_document(data, marks, task_types, policy)
    problems = tuple(Problem(shown, line, col, msg) for line, col, msg in found.problems)
    tasks = tuple(
        LoadedTask(config_from_taskdef(spec), source, shown, line) for spec, line in found.tasks
    )
    warnings = tuple(Problem(shown, *where, severity="warning") for where in found.warnings)
    return FileResult(source, shown, digest, tasks if not problems else (), problems + warnings)


def decode_utf8(raw: bytes) -> tuple[str, tuple[int, int, str] | None]:
    """Decode strictly; on failure say where (line, col) the first bad byte is."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        return "", (line, col, f"not UTF-8 text (byte 0x{byte:02x}); is this a binary file?")


def _failed(
    source: str, shown: str, digest: str, message: str, *, line: int = 1, col: int = 1
) -> FileResult:
    return FileResult(source, shown, digest, (), (Problem(shown, line, col, message),))


def _reshown(result: FileResult, shown: str) -> FileResult:
    problems = tuple(Problem(shown, p.line, p.col, p.message, p.severity) for p in result.problems)
    tasks = tuple(LoadedTask(t.config, t.source, shown, t.line) for t in result.tasks)
    return FileResult(result.source, shown, result.digest, tasks, problems)


def too_many_tasks(root: str, files: Iterable[FileResult], policy: Policy) -> list[Problem]:
    """The policy's `limits.max_tasks`, over every file: an error that stops the sync."""
    limit = policy.limits.max_tasks
    count = sum(len(f.tasks) for f in files)
    if limit is None or count <= limit:
        return []
    message = f"{count} tasks; the operator policy allows at most {limit} (limits.max_tasks)"
    return [Problem(root, 0, 0, message)]


def duplicate_name_problems(
    files: Iterable[FileResult], owners: Mapping[str, str | None] | None = None
) -> list[Problem]:
    """A name declared twice is an error at every declaration, naming the other place;
    when `owners` says which file the applied task came from, that declaration keeps it."""
    by_name: dict[str, list[LoadedTask]] = {}
    for file in files:
        for task in file.tasks:
            by_name.setdefault(task.name, []).append(task)
    problems = []
    for name, tasks in by_name.items():
        if len(tasks) < 2:
            continue
        owner = _owning_declaration(tasks, (owners or {}).get(name))
        for task in tasks:
            if task is owner:
                continue
            problems.append(
                Problem(task.path, task.line, 1, _duplicate_message(task, tasks, owner))
            )
    return sorted(problems)


def _owning_declaration(tasks: list[LoadedTask], source: str | None) -> LoadedTask | None:
    holders = [t for t in tasks if source is not None and t.source == source]
    return holders[0] if len(holders) == 1 else None


def _duplicate_message(task: LoadedTask, tasks: list[LoadedTask], owner: LoadedTask | None) -> str:
    name = task.name
    if owner is not None:
        return (
            f"duplicate task name {name!r}: it is already applied from {owner.path}:"
            f"{owner.line}, which keeps it; rename this one"
        )
    others = ", ".join(f"{o.path}:{o.line}" for o in tasks if o is not task)
    return f"duplicate task name {name!r} (also declared at {others})"


def expired_at_warnings(files: Iterable[FileResult], now: datetime) -> list[Problem]:
    """A one-shot `at` already in the past validates, with a warning: it is never registered."""
    return [
        Problem(
            task.path,
            task.line,
            1,
            f"task {task.name!r}: 'at' {_iso(task.config.at_time())} has passed; it will not be "
            "registered (a one-shot schedule never fires twice)",
            "warning",
        )
        for file in files
        for task in file.tasks
        if task.config.has_passed(now)
    ]


def _iso(when: datetime | None) -> str:
    return "" if when is None else when.isoformat()

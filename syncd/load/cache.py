"""The parse cache: validated taskdef files kept on disk, shared by every syncd process.

Parsing and validating YAML is most of what `syncd validate`, `plan` and a no-op `sync`
do, and between two runs almost every file is byte for byte the same. So the result of a
file (its task rows and its problems) is stored under a key made of

- the file's SHA-256 (the entry also names it, and a hit must match it again), and
- a fingerprint of everything else that decides the result: the code that turns bytes
  into rows (every module of `schemas/`, `syncd/load/` and `syncd/core/`), the versions
  of Python, pydantic and PyYAML, the worker registry's parameter models (their JSON
  schema and the source of the module defining each), and the operator policy.

Change any of them and every key changes: an entry is never trusted for anything but a
byte-identical file checked by the same rules. Entries are JSON, never pickle, so reading
one can not run code; a file that does not read, does not parse, names another digest or
has an unexpected shape is a miss and is written again. Writes are atomic (a temporary
file renamed into place), so concurrent processes at worst both write the same entry.

The directory is `$SYNCD_PARSE_CACHE`, else `$XDG_CACHE_HOME/syncd/parse`, else
`~/.cache/syncd/parse`; `SYNCD_PARSE_CACHE=off` turns the cache off. It is created 0700,
and one that is not owned by this user or that others may write is not used: whoever can
write an entry decides what a file "contains". Deleting it is always safe.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel

from schemas.policy import Policy
from syncd.core.model import TaskConfig
from syncd.core.problems import Problem

FORMAT = 2  # bump when the entry layout changes
ENV = "SYNCD_PARSE_CACHE"
OFF = "off"

# What a file's bytes become: (line, config) per task (the config's content hash is stored
# with it), and (line, col, message, severity)
# per problem; the file's paths are added back by the loader, so a renamed or copied file
# hits too.
CachedTask = tuple[int, TaskConfig]
CachedProblem = tuple[int, int, str, str]


@dataclass(frozen=True)
class Parsed:
    """One file's result without its paths: what the cache stores."""

    tasks: tuple[CachedTask, ...]
    problems: tuple[CachedProblem, ...]


class ParseCache:
    """Entries under one directory, for one fingerprint."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    @classmethod
    def open(
        cls, task_types: Mapping[str, type[BaseModel]] | None, policy: Policy
    ) -> ParseCache | None:
        """The cache the environment names, or None when it is off or not safe to use."""
        directory = cache_directory()
        if directory is None or not _usable(directory):
            return None
        models = None if task_types is None else tuple(sorted(task_types.items()))
        return cls(directory, _fingerprint(models, policy))

    def get(self, digest: str) -> Parsed | None:
        try:
            text = self._entry(digest).read_text(encoding="utf-8")
            return _decode(json.loads(text), digest)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def put(self, digest: str, parsed: Parsed) -> None:
        body = json.dumps(_encode(parsed, digest), separators=(",", ":"), ensure_ascii=False)
        try:
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".entry-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(body)
                os.replace(temporary, self._entry(digest))
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError:
            pass  # a cache that cannot be written is a slower run, not a failure

    def _entry(self, digest: str) -> Path:
        key = hashlib.sha256(f"{self.fingerprint}\0{digest}".encode()).hexdigest()
        return self.directory / f"{key}.json"


def cache_directory() -> Path | None:
    configured = os.environ.get(ENV, "").strip()
    if configured.lower() == OFF:
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".cache"
    return root / "syncd" / "parse"


def _usable(directory: Path) -> bool:
    """Create the directory private to this user; refuse one anybody else controls."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False
    return not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


# -- the fingerprint -------------------------------------------------------------------

_CODE_PACKAGES = ("schemas", "syncd/load", "syncd/core")


@functools.lru_cache(maxsize=16)  # a daemon loads with the same registry and policy each time
def _fingerprint(models: tuple[tuple[str, type[BaseModel]], ...] | None, policy: Policy) -> str:
    digest = hashlib.sha256(f"format {FORMAT}\0{_code_fingerprint()}\0".encode())
    digest.update(policy.model_dump_json().encode())
    if models is None:
        digest.update(b"\0no registry")
    for name, model in models or ():
        digest.update(f"\0{name}\0".encode())
        digest.update(_model_fingerprint(model).encode())
    return digest.hexdigest()


@functools.cache
def _code_fingerprint() -> str:
    """The code and libraries that turn bytes into rows (hashed once per process)."""
    digest = hashlib.sha256(f"{sys.version}\0{pydantic.VERSION}\0{yaml.__version__}".encode())
    for path in _code_files():
        digest.update(f"\0{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _code_files() -> Iterator[Path]:
    top = Path(__file__).resolve().parents[2]
    for package in _CODE_PACKAGES:
        yield from sorted((top / package).glob("*.py"))


def _model_fingerprint(model: type[BaseModel]) -> str:
    schema = json.dumps(model.model_json_schema(), sort_keys=True)
    try:
        source = inspect.getsource(sys.modules[model.__module__])
    except (OSError, TypeError, KeyError):
        source = ""  # a model built at run time: its schema is what is known of it
    return f"{model.__module__}.{model.__qualname__}\0{schema}\0{source}"


# -- the entry format ------------------------------------------------------------------

_CONFIG_FIELDS = tuple(TaskConfig.__dataclass_fields__)
_SHA256 = re.compile("[0-9a-f]{64}")


def _encode(parsed: Parsed, digest: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "digest": digest,
        "tasks": [
            [line, [getattr(config, name) for name in _CONFIG_FIELDS], config.content_hash()]
            for line, config in parsed.tasks
        ],
        "problems": [list(problem) for problem in parsed.problems],
    }


def _decode(entry: Any, digest: str) -> Parsed | None:
    """The entry as a result, or None for anything but the exact shape `_encode` writes."""
    if entry["format"] != FORMAT or entry["digest"] != digest:
        return None
    tasks = tuple(_decode_task(*task) for task in entry["tasks"])
    problems = tuple(_decode_problem(*problem) for problem in entry["problems"])
    return Parsed(tasks, problems)


def _decode_task(line: Any, values: Any, content_hash: Any) -> CachedTask:
    if type(line) is not int or len(values) != len(_CONFIG_FIELDS):
        raise ValueError("malformed task")
    if not (isinstance(content_hash, str) and _SHA256.fullmatch(content_hash)):
        raise ValueError("malformed task")
    config = TaskConfig(**dict(zip(_CONFIG_FIELDS, values, strict=True)))
    # Hashing is a fifth of a cold sync of 10,000 tasks; the hash was made from these values.
    config.__dict__["_hash"] = content_hash
    return line, config


def _decode_problem(line: Any, col: Any, message: Any, severity: Any) -> CachedProblem:
    if not (type(line) is int and type(col) is int and isinstance(message, str)):
        raise ValueError("malformed problem")
    if severity not in ("error", "warning"):
        raise ValueError("malformed problem")
    return line, col, message, severity


def problems_of(parsed: Parsed, shown: str) -> tuple[Problem, ...]:
    return tuple(
        Problem(shown, line, col, message, "warning" if severity == "warning" else "error")
        for line, col, message, severity in parsed.problems
    )

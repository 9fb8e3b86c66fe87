"""The parse cache: a byte-identical file checked by the same rules is not parsed again,
anything else is; a damaged or foreign cache is never believed."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.policy import Policy
from syncd.load.loader import LoadResult, load_taskdef_blobs, load_taskdefs
from syncd.load.policy import load_policy
from syncd.load.yamlsafe import parse_document
from tests.conftest import WriteTaskdef
from tests.services import TEST_POLICY
from worker.tasks import registry

TYPES = registry.params_models()
POLICY = load_policy(TEST_POLICY)
NOW = datetime(2026, 11, 29, tzinfo=UTC)

VALID = """
version: 1
tasks:
  - name: nightly
    description: "tab\\there, quote \\" and snow ☃"
    task_type: diagnostics.noop
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
  - name: often
    task_type: diagnostics.noop
    schedule: {interval: 30}
  - name: once
    task_type: diagnostics.noop
    schedule: {at: "2020-01-01T00:00:00+00:00"}
"""
BROKEN = """
version: 1
tasks:
  - name: bad
    task_type: diagnostics.noop
    schedule: {cron: "61 * * * *"}
"""


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("SYNCD_PARSE_CACHE", str(directory))
    return directory


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the loader actually parsed (a cache hit parses nothing)."""
    seen: list[str] = []

    def counting(text: str) -> Any:
        seen.append(text)
        return parse_document(text)

    monkeypatch.setattr("syncd.load.loader.parse_document", counting)
    return seen


def summary(result: LoadResult) -> Any:
    tasks = [
        (t.name, t.source, t.path, t.line, t.config, t.config.content_hash()) for t in result.tasks
    ]
    return tasks, [str(p) for p in result.problems], sorted(result.broken_sources)


def load(root: Path, policy: Policy = POLICY, types: Any = TYPES) -> LoadResult:
    return load_taskdefs(root, types, now=NOW, policy=policy)


def test_an_unchanged_tree_is_read_from_the_cache_with_the_same_result(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    write("a.yaml", VALID)
    write("sub/b.yaml", BROKEN)
    first = load(taskdefs)
    assert len(parses) == 2
    assert len(list(cache_dir.glob("*.json"))) == 2
    second = load(taskdefs)
    assert len(parses) == 2, "nothing is parsed again"
    assert summary(second) == summary(first)
    assert any(p.severity == "warning" for p in second.problems)  # the passed one-shot
    assert second.broken_sources == {"sub/b.yaml"}


def test_a_changed_byte_is_parsed_again(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    path = write("a.yaml", VALID)
    load(taskdefs)
    path.write_text(path.read_text().replace("interval: 30", "interval: 31"))
    result = load(taskdefs)
    assert len(parses) == 2
    assert {t.name: t.config.schedule_config for t in result.tasks}["often"] == {"interval": 31}


def test_a_renamed_file_hits_and_is_shown_under_its_new_name(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    write("a.yaml", BROKEN)
    load(taskdefs)
    (taskdefs / "a.yaml").rename(taskdefs / "renamed.yaml")
    result = load(taskdefs)
    assert len(parses) == 1
    assert [p.path for p in result.problems] == [str(taskdefs / "renamed.yaml")]
    assert result.broken_sources == {"renamed.yaml"}


def test_another_policy_or_registry_is_another_key(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    write("a.yaml", VALID)
    load(taskdefs)
    strict = POLICY.model_copy(update={"limits": POLICY.limits.model_copy(update={"max_tasks": 1})})
    load(taskdefs, policy=strict)
    assert len(parses) == 2

    class Changed(BaseModel):
        anything: int = 0

    load(taskdefs, types={**TYPES, "diagnostics.noop": Changed})
    assert len(parses) == 3
    load(taskdefs)
    assert len(parses) == 3, "the first key is still there"


@pytest.mark.parametrize(
    "damage",
    [
        "not json at all",
        "[]",
        '{"format": 1}',
        "{}",
        "__WRONG_DIGEST__",
        "__TASK_LINE_AS_STRING__",
        "__BAD_SEVERITY__",
        "__BAD_HASH__",
    ],
)
def test_a_damaged_entry_is_a_miss_and_is_written_again(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str], damage: str
) -> None:
    write("a.yaml", VALID)
    expected = summary(load(taskdefs))
    (entry,) = cache_dir.glob("*.json")
    entry.write_text(_damaged(entry.read_text(), damage))
    assert summary(load(taskdefs)) == expected
    assert len(parses) == 2
    json.loads(entry.read_text())  # rewritten whole
    assert summary(load(taskdefs)) == expected
    assert len(parses) == 2


def _damaged(text: str, how: str) -> str:
    entry = json.loads(text)
    if how == "__WRONG_DIGEST__":
        entry["digest"] = "0" * 64
    elif how == "__TASK_LINE_AS_STRING__":
        entry["tasks"][0][0] = "4"
    elif how == "__BAD_HASH__":
        entry["tasks"][0][2] = "not a hash"
    elif how == "__BAD_SEVERITY__":
        entry["problems"].append([1, 1, "made up", "fatal"])
    else:
        return how
    return json.dumps(entry)


def test_a_cache_others_may_write_is_not_used(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    cache_dir.mkdir()
    cache_dir.chmod(0o770)
    write("a.yaml", VALID)
    load(taskdefs)
    load(taskdefs)
    assert len(parses) == 2
    assert list(cache_dir.iterdir()) == []


def test_the_cache_is_created_private(taskdefs: Path, write: WriteTaskdef, cache_dir: Path) -> None:
    write("a.yaml", VALID)
    load(taskdefs)
    assert (cache_dir.stat().st_mode & 0o777) == 0o700
    assert cache_dir.stat().st_uid == os.getuid()


def test_off_writes_nothing(
    taskdefs: Path, write: WriteTaskdef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNCD_PARSE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write("a.yaml", VALID)
    assert len(load(taskdefs).tasks) == 3
    assert not (tmp_path / "xdg").exists()


def test_git_blobs_share_the_cache_with_files(
    taskdefs: Path, write: WriteTaskdef, cache_dir: Path, parses: list[str]
) -> None:
    write("a.yaml", VALID)
    from_disk = load(taskdefs)
    blobs = load_taskdef_blobs(
        {"a.yaml": VALID.lstrip("\n").encode()}, "HEAD:taskdefs", TYPES, now=NOW, policy=POLICY
    )
    assert len(parses) == 1
    assert [t.config for t in blobs.tasks] == [t.config for t in from_disk.tasks]
    assert blobs.tasks[0].path == "HEAD:taskdefs/a.yaml"


# Values a task's row carries that JSON must bring back exactly: text of every kind,
# numbers of both kinds, nesting.
_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(description=st.text(max_size=40), value=_values)
def test_a_cached_row_is_the_row_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, description: str, value: Any
) -> None:
    monkeypatch.setenv("SYNCD_PARSE_CACHE", str(tmp_path / "property-cache"))
    body = {
        "version": 1,
        "tasks": [
            {
                "name": "t",
                "description": description,
                "task_type": "any.type",  # no registry below: parameters are free
                "parameters": {"value": value},
                "schedule": {"interval": 60},
            }
        ],
    }
    blob = {"a.yaml": json.dumps(body).encode()}  # JSON is YAML
    fresh = load_taskdef_blobs(blob, "t", None, policy=POLICY)
    again = load_taskdef_blobs(blob, "t", None, policy=POLICY)
    assert [str(p) for p in again.problems] == [str(p) for p in fresh.problems]
    assert [t.config for t in again.tasks] == [t.config for t in fresh.tasks]
    assert len(fresh.tasks) == 1 or fresh.errors
    assert [t.config.content_hash() for t in again.tasks] == [
        t.config.content_hash() for t in fresh.tasks
    ]

"""worker.confine without the disk: which patterns are accepted, what they match, which root
a path falls under; and the file tasks' parameter models refusing what no policy permits."""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from schemas.kinds import validation_context
from schemas.policy import PathsPolicy, Policy
from worker.confine import ConfinementError, check_pattern, compile_pattern, locate
from worker.tasks.cleanup import EmptyDirsParams, TempFilesParams
from worker.tasks.data import CsvSummaryParams, DirectoryUsageParams
from worker.tasks.diagnostics import FlakyParams

ROOTS = ["/srv/clean", "/srv/data"]


@pytest.mark.parametrize(
    ("pattern", "parts"),
    [
        ("*", ("*",)),
        ("*.tmp", ("*.tmp",)),
        ("cache/*/x.log", ("cache", "*", "x.log")),
        ("./a//b/", ("a", "b")),
        ("**/*.tmp", ("**", "*.tmp")),
        ("..x", ("..x",)),  # a name that starts with dots is a name
    ],
)
def test_relative_patterns_are_accepted(pattern: str, parts: tuple[str, ...]) -> None:
    assert check_pattern(pattern) == parts


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("../victim/*", "'..'"),
        ("a/../../b", "'..'"),
        ("..", "'..'"),
        ("/etc/*", "not relative"),
        ("//etc/*", "not relative"),
        ("", "names no file"),
        (".", "names no file"),
        ("a\x00b", "NUL"),
    ],
)
def test_patterns_that_could_leave_the_directory_are_refused(pattern: str, says: str) -> None:
    with pytest.raises(ConfinementError, match=says) as caught:
        check_pattern(pattern)
    assert caught.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("pattern", "path", "matched"),
    [
        ("*", "a", True),
        ("*", "x/y/a", True),  # like rglob: at any depth
        ("*", ".hidden", True),
        ("*.tmp", "x/a.tmp", True),
        ("*.tmp", "a.tmpx", False),
        ("*.TMP", "a.tmp", False),  # case-sensitive
        ("?.log", "a.log", True),
        ("?.log", "ab.log", False),
        ("[ab].log", "b.log", True),
        ("[!ab].log", "b.log", False),
        ("*/*", "a", False),
        ("*/*", "a/b", True),
        ("*/*", "a/b/c", True),
        ("x*y", "x/y", False),  # `*` stays within one component
        ("cache/*.tmp", "cache/a.tmp", True),
        ("cache/*.tmp", "x/cache/a.tmp", True),
        ("cache/*.tmp", "cache/x/a.tmp", False),
        ("cache/**/*.tmp", "cache/a.tmp", True),
        ("cache/**/*.tmp", "cache/x/y/a.tmp", True),
        ("cache/**/*.tmp", "other/x/a.tmp", False),
        ("**", "a/b/c", True),
        ("a/**/b/**/c", "a/b/c", True),
        ("a/**/b/**/c", "a/x/b/y/z/c", True),
        ("a/**/b/**/c", "a/x/c/b", False),
    ],
)
def test_matching_is_per_component_and_anchored_at_the_end(
    pattern: str, path: str, matched: bool
) -> None:
    assert compile_pattern(pattern)(path.split("/")) is matched


def test_many_double_stars_match_in_linear_time() -> None:
    matches = compile_pattern("/".join(["**"] * 30 + ["x"]))
    deep = ["d"] * 500
    start = time.monotonic()
    assert matches([*deep, "x"])
    assert not matches([*deep, "y"])
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize(
    ("path", "root", "below"),
    [
        ("/srv/clean", "/srv/clean", ()),
        ("/srv/clean/a/b", "/srv/clean", ("a", "b")),
        ("/srv/clean/./a//b/", "/srv/clean", ("a", "b")),
        ("/srv/data/x.csv", "/srv/data", ("x.csv",)),
    ],
)
def test_a_path_is_located_under_its_root(path: str, root: str, below: tuple[str, ...]) -> None:
    assert locate(path, ROOTS) == (root, below)


def test_the_longest_root_wins() -> None:
    assert locate("/srv/data/in/x.csv", ["/srv", "/srv/data"]) == ("/srv/data", ("in", "x.csv"))


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/srv/victim/important.txt", "outside the allowed roots (/srv/clean, /srv/data)"),
        ("/srv/clean2/x", "outside the allowed roots"),  # a shared prefix is not a parent
        ("/srv", "outside the allowed roots"),
        ("/etc/anything.conf", "outside the allowed roots"),
        ("//srv/clean/x", "outside the allowed roots"),
        ("srv/clean/x", "not an absolute path"),
        ("/srv/clean/../victim/x", "may not contain '..'"),
        ("/srv/clean/\x00x", "NUL"),
    ],
)
def test_paths_outside_every_root_are_refused(path: str, says: str) -> None:
    with pytest.raises(ConfinementError, match=says.replace("(", r"\(").replace(")", r"\)")):
        locate(path, ROOTS)


def test_without_roots_nothing_is_allowed() -> None:
    with pytest.raises(ConfinementError, match="no directory is allowed") as caught:
        locate("/srv/clean/x", [])
    assert caught.value.errno == errno.EACCES


def test_a_confinement_error_is_an_os_error_whose_text_is_the_message() -> None:
    error = ConfinementError("/srv/clean/x does not exist", errno.ENOENT)
    assert isinstance(error, OSError)
    assert str(error) == "/srv/clean/x does not exist"
    assert error.errno == errno.ENOENT


def _validate(model: type[BaseModel], task_type: str, params: dict[str, Any]) -> BaseModel:
    policy = Policy(paths=PathsPolicy(allow=("/srv/clean", "/srv/data")))
    return model.model_validate(params, context=validation_context(policy, task_type))


@pytest.mark.parametrize(
    ("model", "task_type", "params", "says"),
    [
        (TempFilesParams, "cleanup.temp_files", {"path": "/srv/clean", "pattern": "../v/*"}, ".."),
        (TempFilesParams, "cleanup.temp_files", {"path": "/srv/clean", "pattern": "/etc/*"}, "rel"),
        (TempFilesParams, "cleanup.temp_files", {"path": "/srv/victim"}, "outside"),
        (EmptyDirsParams, "cleanup.empty_dirs", {"path": "/srv/clean/../victim"}, ".."),
        (DirectoryUsageParams, "data.directory_usage", {"path": "/etc"}, "outside"),
        (
            CsvSummaryParams,
            "data.csv_summary",
            {"source": "/srv/data/a.csv", "column": "x", "output": "/etc/anything.conf"},
            "outside",
        ),
        (CsvSummaryParams, "data.csv_summary", {"source": "/etc/passwd", "column": "x"}, "outside"),
        (FlakyParams, "diagnostics.flaky", {"counter_file": "/srv/secret.env"}, "outside"),
    ],
)
def test_parameter_models_refuse_paths_no_policy_allows(
    model: type[BaseModel], task_type: str, params: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        _validate(model, task_type, params)


def test_parameter_models_accept_paths_under_the_roots() -> None:
    checked = _validate(
        TempFilesParams, "cleanup.temp_files", {"path": "/srv/clean", "pattern": "*/*"}
    )
    assert checked == TempFilesParams.model_construct(
        path="/srv/clean", older_than_days=7, pattern="*/*", dry_run=False
    )
    summary = _validate(
        CsvSummaryParams,
        "data.csv_summary",
        {"source": "/srv/data/a.csv", "column": "x", "output": "/srv/data/out.json"},
    )
    assert isinstance(summary, CsvSummaryParams)
    assert summary.output == "/srv/data/out.json"

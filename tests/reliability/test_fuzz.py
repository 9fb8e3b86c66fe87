"""Hostile input: hypothesis-generated and mutated YAML through `load_taskdefs` and `parse_file`
never raises, never hangs, and every rejection names the file at a line >= 1; a corpus of
nasty files (bombs, nesting, huge values, encodings, control characters, injections, tags)
stays within time and memory bounds, measured in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.taskdefs_gen import task_yaml
from syncd.cli.common import catalog
from syncd.core.problems import Problem
from syncd.load.loader import load_taskdefs, parse_file
from syncd.load.yamlsafe import parse_document
from tests.e2e.conftest import REPO
from tests.reliability import corpus
from tests.reliability.support import EXTRAS, record, size

PARAMS = catalog().params
POLICY = catalog().policy
TIME_BOUND_SECONDS = 10.0
MEMORY_BOUND_BYTES = 300 * 1024 * 1024
HARD_TIMEOUT_SECONDS = 15  # a hang, not a slow example: the alarm interrupts it
RUNS: Counter[str] = Counter()


def fuzz_settings(slow: bool, share: int) -> settings:
    return settings(
        max_examples=max(10, size("SYNCD_RELIABILITY_FUZZ", slow=slow) // share),
        deadline=timedelta(seconds=5),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        report_multiple_bugs=False,  # the first failure, shrunk; not a group of them
        database=None,  # examples are cheap to find again; keep the repo's database clean
    )


# -- the property: never raises, never hangs, rejections name the file ---------------------


class Hang(Exception):
    pass


@contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_names_the_file(problems: tuple[Problem, ...], shown: str) -> None:
    for problem in problems:
        assert problem.path == shown, f"{problem} does not name {shown}"
        assert problem.line >= 1, f"{problem} has no line"


Loader = Callable[[bytes, Path], tuple[Problem, ...]]


def through_parse_file(raw: bytes, where: Path) -> tuple[Problem, ...]:
    return parse_file(raw, "case.yaml", str(where / "case.yaml"), PARAMS, policy=POLICY).problems


def through_load_taskdefs(raw: bytes, where: Path) -> tuple[Problem, ...]:
    (where / "case.yaml").write_bytes(raw)
    return load_taskdefs(where, PARAMS, policy=POLICY).problems


def check_input(raw: bytes, where: Path, kind: str) -> None:
    """The property, for both entry points."""
    RUNS[kind] += 1
    for load in (through_parse_file, through_load_taskdefs):
        with hard_timeout(HARD_TIMEOUT_SECONDS):
            problems = load(raw, where)
        assert_names_the_file(problems, str(where / "case.yaml"))


@pytest.fixture(scope="module")
def where() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="syncd-fuzz-") as name:
        yield Path(name)


@pytest.fixture(scope="module", autouse=True)
def count_cases() -> Iterator[None]:
    yield
    cases = sum(n for kind, n in RUNS.items() if kind != "self-check")
    record("fuzz", cases=cases, **RUNS)


# -- strategies ----------------------------------------------------------------------------

keys = st.one_of(
    st.sampled_from(["version", "tasks", "name", "task_type", "schedule", "parameters", "cron"]),
    st.text(max_size=12),
    st.integers(-5, 5),
    st.booleans(),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.datetimes(timezones=st.none() | st.just(UTC)),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)
task_types = st.sampled_from([*PARAMS, "no.such_task", "x"])
schedules = st.one_of(
    st.fixed_dictionaries({"cron": st.text(max_size=30)}),
    st.fixed_dictionaries(
        {"cron": st.sampled_from(["0 3 * * *", "*/5 * * * MON-FRI", "@daily", "* * * * 7"])},
        optional={"timezone": st.text(max_size=20) | st.sampled_from(["Europe/Berlin", "UTC"])},
    ),
    st.fixed_dictionaries({"interval": st.integers(-10, 10**7) | values}),
    st.fixed_dictionaries({"at": st.datetimes() | st.text(max_size=25)}),
    values,
)
tasks = st.fixed_dictionaries(
    {"name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True) | st.text()},
    optional={
        "task_type": task_types,
        "schedule": schedules,
        "parameters": st.dictionaries(st.text(max_size=10), values, max_size=4) | values,
        "max_retries": st.integers(-3, 200) | values,
        "retry_backoff_seconds": st.floats() | st.integers(-3, 10**6) | values,
        "retry_backoff_max_seconds": st.floats() | st.integers(-3, 10**6) | values,
        "timeout_seconds": st.integers(-3, 10**6) | values,
        "priority": st.integers(-1, 12),
        "enabled": st.booleans() | values,
        "description": st.text(max_size=50),
        "unknown_key": values,
    },
)
documents = st.one_of(
    values,
    st.fixed_dictionaries(
        {"version": st.sampled_from([1, 2, "1", None])}, optional={"tasks": values}
    ),
    st.fixed_dictionaries({"version": st.just(1), "tasks": st.lists(tasks, max_size=4)}),
)


@st.composite
def dumped(draw: st.DrawFn) -> bytes:
    """A random document as PyYAML's own safe_dump writes it (block or flow style)."""
    text = yaml.safe_dump(
        draw(documents),
        default_flow_style=draw(st.sampled_from([False, True, None])),
        allow_unicode=draw(st.booleans()),
        sort_keys=False,
    )
    return text.encode("utf-8", "surrogatepass")


def _bases() -> list[str]:
    found = [p.read_text() for p in sorted((REPO / "taskdefs").rglob("*.yaml"))]
    return [*found, EXTRAS, "version: 1\ntasks:\n" + "".join(task_yaml(i) for i in range(4))]


BASES = _bases()
INSERTS = [
    "\t",
    "\x00",
    "\x01",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\ud7ff",
    "\U0001f600",
    "é",
    " ",
    "\n",
    "\r\n",
    "\r",
    ":",
    ": ",
    "- ",
    "-",
    "[",
    "]",
    "{",
    "}",
    ",",
    "#",
    "'",
    '"',
    "&a ",
    "*a",
    "<<: *a\n",
    "&anchor [1, 2]",
    "!!python/object/apply:os.system ['true'] ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!int ",
    "!!str ",
    "!local ",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "? ",
    "|\n",
    ">-\n",
    "~",
    "null",
    "yes",
    "0x1F",
    "1e400",
    ".nan",
    "9" * 30,
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid taskdef file with one to five raw mutations."""
    data = bytearray(draw(st.sampled_from(BASES)).encode("utf-8"))
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(
            st.sampled_from(["flip", "truncate", "insert", "dup", "drop", "swap", "indent"])
        )
        at = draw(st.integers(0, max(0, len(data) - 1)))
        lines = bytes(data).split(b"\n")
        line = draw(st.integers(0, max(0, len(lines) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            text = draw(st.sampled_from(INSERTS) | st.text(min_size=1, max_size=3))
            data[at:at] = text.encode("utf-8", "surrogatepass")
        elif kind == "dup":
            data = bytearray(b"\n".join([*lines[: line + 1], lines[line], *lines[line + 1 :]]))
        elif kind == "drop":
            data = bytearray(b"\n".join(lines[:line] + lines[line + 1 :]))
        elif kind == "swap" and len(lines) > 1:
            other = draw(st.integers(0, len(lines) - 1))
            lines[line], lines[other] = lines[other], lines[line]
            data = bytearray(b"\n".join(lines))
        elif kind == "indent":
            lines[line] = b"  " + lines[line] if draw(st.booleans()) else lines[line][1:]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@st.composite
def aliased(draw: st.DrawFn) -> bytes:
    """Anchors, aliases and merge keys in random places and numbers."""
    width = draw(st.integers(1, 12))
    levels = draw(st.integers(1, 12))
    style = draw(st.sampled_from(["seq", "map", "merge"]))
    lines = ["version: 1", "x0: &x0 [a, b]" if style == "seq" else "x0: &x0 {a: b}"]
    for i in range(1, levels):
        refs = ", ".join([f"*x{i - 1}"] * width)
        body = f"[{refs}]" if style == "seq" else f"{{<<: [{refs}]}}"
        if style == "map":
            body = "{" + ", ".join(f"k{j}: *x{i - 1}" for j in range(width)) + "}"
        lines.append(f"x{i}: &x{i} {body}")
    where = draw(st.sampled_from(["tasks", "parameters", "top"]))
    last = f"*x{levels - 1}"
    if where == "tasks":
        lines.append(f"tasks: {last}")
    elif where == "parameters":
        lines.append(f"tasks:\n  - {{name: t, task_type: diagnostics.fail, parameters: {last}}}")
    return ("\n".join(lines) + "\n").encode()


# YAML 1.1 implicit types: scalars PyYAML turns into dates, ints, floats and booleans.
implicit_scalars = st.one_of(
    st.builds(
        "{:04d}-{:02d}-{:02d}".format,
        st.integers(0, 9999),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}Z".format,
        st.integers(1, 9999),
        st.integers(0, 19),
        st.integers(0, 39),
        st.integers(0, 29),
        st.integers(0, 69),
        st.integers(0, 69),
    ),
    # Digits as text: str() of an int over 4,300 digits would itself raise (sys limit).
    st.builds(str.__mul__, st.sampled_from("123456789"), st.integers(1, 6000)),
    st.sampled_from(["0o17", "0x1F", "0b101", "1_000", "1:20:30", ".inf", "-.Inf", ".NaN", "~"]),
)


@st.composite
def implicitly_typed(draw: st.DrawFn) -> bytes:
    """A valid task with one value replaced by an unquoted implicitly-typed scalar."""
    value = draw(implicit_scalars)
    key = draw(
        st.sampled_from(
            ["description", "priority", "max_retries", "retry_backoff_seconds", "schedule"]
        )
    )
    if key == "schedule":
        line = f"    schedule: {{{draw(st.sampled_from(['at', 'interval']))}: {value}}}"
    else:
        line = f"    {key}: {value}"
    return (corpus.TASK + line + "\n").encode()


# -- the hypothesis properties -------------------------------------------------------------

SLOW = [
    pytest.param(False, id="ci"),
    pytest.param(True, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]),
]


@pytest.mark.parametrize("slow", SLOW)
def test_generated_documents_never_break_the_loader(where: Path, slow: bool) -> None:
    @fuzz_settings(slow, 3)
    @given(dumped())
    def prop(raw: bytes) -> None:
        check_input(raw, where, "generated documents")

    prop()


@pytest.mark.parametrize("slow", SLOW)
def test_mutated_taskdefs_never_break_the_loader(where: Path, slow: bool) -> None:
    @fuzz_settings(slow, 3)
    @given(mutated())
    def prop(raw: bytes) -> None:
        check_input(raw, where, "mutated taskdefs")

    prop()


@pytest.mark.parametrize("slow", SLOW)
def test_anchors_aliases_and_merge_keys_never_break_the_loader(where: Path, slow: bool) -> None:
    @fuzz_settings(slow, 6)
    @given(aliased())
    def prop(raw: bytes) -> None:
        check_input(raw, where, "aliases")

    prop()


def test_implicitly_typed_scalars_never_break_the_loader(where: Path) -> None:
    @fuzz_settings(False, 6)
    @given(implicitly_typed())
    def prop(raw: bytes) -> None:
        check_input(raw, where, "implicitly typed scalars")

    prop()


ESCAPING_TAGS = [
    "!!int abc",
    "!!int 0x",
    "!!int ''",
    "!!float abc",
    "!!bool maybe",
    "!!timestamp hello",
    "!!timestamp 2026-01-01T99:00:00",
    "!!map x",
    "!!seq x",
]


@pytest.mark.parametrize("tagged", ESCAPING_TAGS)
def test_a_mismatched_explicit_tag_is_a_problem(where: Path, tagged: str) -> None:
    check_input(f"version: {tagged}\n".encode(), where, "explicit tags")


@pytest.mark.parametrize("zone", ["Europe", "America", "Etc"])
def test_a_time_zone_naming_a_directory_is_a_problem(where: Path, zone: str) -> None:
    text = corpus.TASK + f'    schedule: {{cron: "0 3 * * *", timezone: {zone}}}\n'
    check_input(text.encode(), where, "time zones")


# -- the corpus, measured in a subprocess --------------------------------------------------

UNBOUNDED = {"100k-item tasks list", "100k unknown keys"}
MARKER = Path(corpus.TAG_MARKER)  # what the python-tag case would create if it ran


PROBE_TIMEOUT_SECONDS = 120  # the whole corpus takes ~5 s; a bomb that got through, forever


def probe_files(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Run the probe in a child capped at 2 GB, 120 s of CPU and PROBE_TIMEOUT_SECONDS of
    wall time; reports by file, plus the child's peak RSS under the key "<peak_rss>"."""
    command = [sys.executable, "-m", "tests.reliability.fuzz_probe", *map(str, paths)]
    env = {**os.environ, "SYNCD_PROBE_LIMITS": "1"}
    try:
        proc = subprocess.run(
            command,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        done = len(out.splitlines())
        stuck = paths[done] if done < len(paths) else "?"
        raise AssertionError(f"no answer within {PROBE_TIMEOUT_SECONDS} s, on {stuck}") from None
    reports = {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}
    died_on = paths[len(reports)] if len(reports) < len(paths) else None
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:], f"died on {died_on}")
    peak = max((r["peak_rss_bytes"] for r in reports.values()), default=0)
    reports["<peak_rss>"] = {"bytes": peak}
    return reports


def write_cases(root: Path, names: list[str]) -> dict[str, Path]:
    paths = {}
    for index, name in enumerate(names):
        folder = root / f"case-{index:03d}"
        folder.mkdir(parents=True)
        paths[name] = folder / "case.yaml"
        paths[name].write_bytes(corpus.CORPUS[name][0]())
    return paths


def check_report(report: dict[str, Any], name: str) -> None:
    """The corpus rules for one file; raises AssertionError naming the broken one."""
    assert "exception" not in report, f"{name}: {report['exception']}"
    assert report["load_seconds"] <= TIME_BOUND_SECONDS, f"{name}: {report['load_seconds']} s"
    assert report.get("parse_seconds", 0) <= TIME_BOUND_SECONDS, name
    assert report["tracemalloc_peak"] <= MEMORY_BOUND_BYTES, f"{name}: {report}"
    for key in ("load_problems", "parse_problems"):
        for problem in report.get(key, []):
            assert problem["path"] == report["file"], f"{name}: {problem} names another file"
            assert problem["line"] >= 1, f"{name}: {problem} has no line"
    valid = corpus.CORPUS[name][1]
    if valid is True:
        assert (report["tasks"], report["load_problem_count"]) == (1, 0), f"{name}: {report}"
    elif valid is False:
        assert report["tasks"] == 0, f"{name}: accepted"
        assert report["load_problem_count"] >= 1, f"{name}: rejected without a problem"


BATCH = [n for n in corpus.CORPUS if n not in UNBOUNDED]


@pytest.fixture(scope="module")
def batch_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    MARKER.unlink(missing_ok=True)
    paths = write_cases(tmp_path_factory.mktemp("corpus"), BATCH)
    reports = probe_files(list(paths.values()))
    RUNS["corpus files"] += len(paths)
    return {name: reports[str(path)] for name, path in paths.items()} | {
        "<peak_rss>": reports["<peak_rss>"]
    }


@pytest.mark.parametrize("name", BATCH)
def test_hostile_file_is_rejected_or_loaded_within_bounds(
    batch_reports: dict[str, dict[str, Any]], name: str
) -> None:
    check_report(batch_reports[name], name)


def test_the_whole_corpus_stays_under_the_memory_bound(
    batch_reports: dict[str, dict[str, Any]],
) -> None:
    peak = batch_reports["<peak_rss>"]["bytes"]
    assert peak <= MEMORY_BOUND_BYTES, f"peak RSS {peak >> 20} MB"
    assert not MARKER.exists(), "a python tag ran code"
    record("fuzz corpus", files=len(BATCH), peak_rss_mb=peak >> 20)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "name",
    [
        "100k-item tasks list",
        pytest.param(
            "100k unknown keys",
            marks=pytest.mark.xfail(
                strict=True,
                raises=AssertionError,
                reason="BUG: parsing a mapping of 100,000 keys (1 MB) peaks near 500 MB: the "
                "per-key marks and nodes, before validation refuses the shape",
            ),
        ),
    ],
)
def test_a_file_full_of_errors_is_validated_within_bounds(tmp_path: Path, name: str) -> None:
    path = write_cases(tmp_path, [name])[name]
    reports = probe_files([path])
    check_report(reports[str(path)], name)
    assert reports["<peak_rss>"]["bytes"] <= MEMORY_BOUND_BYTES, reports["<peak_rss>"]


# -- the checks catch a broken loader ------------------------------------------------------


def test_the_property_catches_a_loader_that_raises(
    where: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fragile(text: str) -> Any:
        if not text.endswith("\n"):
            raise KeyError("no final newline")  # the kind of bug the property must find
        return parse_document(text)

    monkeypatch.setattr("syncd.load.loader.parse_document", fragile)
    monkeypatch.setenv("SYNCD_PARSE_CACHE", "off")  # every input parsed, none remembered

    @settings(max_examples=500, database=None, deadline=None)
    @given(mutated())
    def prop(raw: bytes) -> None:
        check_input(raw, where, "self-check")

    with pytest.raises(KeyError):
        prop()


def test_the_property_catches_a_problem_without_file_or_line() -> None:
    with pytest.raises(AssertionError, match="does not name"):
        assert_names_the_file((Problem("other.yaml", 3, 1, "x"),), "case.yaml")
    with pytest.raises(AssertionError, match="has no line"):
        assert_names_the_file((Problem("case.yaml", 0, 0, "x"),), "case.yaml")


def _spin() -> None:
    while True:
        pass


def test_the_property_catches_a_hang() -> None:
    with pytest.raises(Hang), hard_timeout(0.2):
        _spin()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"exception": "Traceback ... ValueError"}, "ValueError"),
        ({"load_seconds": 60.0}, "60.0 s"),
        ({"tracemalloc_peak": 1 << 31}, "tracemalloc_peak"),
        ({"load_problems": [{"path": "elsewhere.yaml", "line": 1}]}, "names another file"),
        ({"load_problems": [{"path": "F", "line": 0}]}, "has no line"),
        ({"tasks": 1, "load_problem_count": 0}, "accepted"),
    ],
)
def test_the_corpus_check_catches_each_broken_rule(broken: dict[str, Any], message: str) -> None:
    report = {
        "file": "F",
        "load_seconds": 0.01,
        "tracemalloc_peak": 1000,
        "tasks": 0,
        "load_problem_count": 1,
        "load_problems": [{"path": "F", "line": 1}],
        **broken,
    }
    with pytest.raises(AssertionError, match=message):
        check_report(report, "billion laughs (sequences)")

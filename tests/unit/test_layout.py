"""The layout holds: no import loops, commands import only what they use, no outside refs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("syncd", "worker", "schemas")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), function-level imports
    included: grimp reads every import statement, wherever it is."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_another_in_a_loop() -> None:
    graph = grimp.build_graph(*PACKAGES)
    assert len(graph.modules) > 50  # the graph really holds the code
    assert import_cycles(graph) == []


def test_the_cycle_check_catches_a_loop() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert import_cycles(graph) == [["a.x", "a.y", "a.z"]]


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("syncd.cli", ("sqlalchemy", "psycopg", "redis", "taskiq", "watchfiles", "alembic")),
        ("syncd.cli.validate", ("sqlalchemy", "psycopg", "redis", "taskiq", "alembic")),
        ("syncd.cli.plan", ("sqlalchemy", "psycopg", "redis", "alembic")),  # --against: offline
    ],
)
def test_commands_import_only_what_they_use(module: str, absent: tuple[str, ...]) -> None:
    probe = (
        f"import sys, {module}; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(absent)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_comments_point_at_nothing_outside_the_repository() -> None:
    sources = [
        p for package in (*PACKAGES, "tests", "bench") for p in (REPO / package).rglob("*.py")
    ]
    assert len(sources) > 50
    outside = ("DESIGN" + " §", "seed" + " §", "DESIGN" + ".md")
    found = [f"{p}: {m}" for p in sources for m in outside if m in p.read_text()]
    assert found == []

"""Parse one YAML document safely and fast, keeping the position of every key and item.

Uses libyaml (`CSafeLoader`) when present. On top of PyYAML's safe loader it rejects
duplicate mapping keys and alias expansions that would blow up memory, and records the
marks of every mapping key/value and sequence item so a validation error can be pointed
at `line:col` without parsing the file a second time (`yaml.compose` would
cost as much again as the load).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

try:
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - libyaml missing; 7x slower but correct
    _BaseLoader = yaml.SafeLoader

# A document may reuse anchors (shared parameter blocks are fine), but its expanded size
# may not exceed what it spells out by much: that is the whole "billion laughs" attack.
EXPANSION_FACTOR = 4
EXPANSION_ALLOWANCE = 10_000
EXPANSION_ALLOWANCE_CHARS = 1_000_000


class YamlProblem(Exception):
    """A problem at a position (0-based line/col), raised while parsing."""

    def __init__(self, message: str, line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


@dataclass(frozen=True)
class Position:
    line: int  # 0-based, as in yaml marks
    col: int


@dataclass
class Marks:
    """Where each constructed container and its children came from, keyed by id()."""

    containers: dict[int, Position] = field(default_factory=dict)
    keys: dict[int, dict[Any, tuple[Position, Position]]] = field(default_factory=dict)
    items: dict[int, list[Position]] = field(default_factory=dict)


def _position(node: Node) -> Position:
    return Position(node.start_mark.line, node.start_mark.column)


class _MarkingLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.marks = Marks()

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """PyYAML's constructors raise bare ValueError, AttributeError... for values they
        cannot build (2026-02-30, `!!int abc`, `!!timestamp hello`, an int of 5,000 digits):
        turn any of them into a problem at the node's position."""
        try:
            return super().construct_object(node, deep=deep)
        except (YamlProblem, yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            # Only ValueError-family messages say something useful ("day is out of range").
            reason = f": {exc}" if isinstance(exc, ValueError | OverflowError) else ""
            raise YamlProblem(
                f"cannot read {_shown(node)} as {tag}{reason}", *_pair(node)
            ) from None

    def construct_marked_map(self, node: MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        _require(node, MappingNode, "a mapping")
        _reject_duplicate_keys(node)
        self.flatten_mapping(node)  # merge keys (<<) first, explicit keys override them
        key_marks: dict[Any, tuple[Position, Position]] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=False)
            if not isinstance(key, Hashable):
                raise YamlProblem("a mapping key must be a plain value", *_pair(key_node))
            data[key] = self.construct_object(value_node, deep=False)
            key_marks[key] = (_position(key_node), _position(value_node))
        self.marks.containers[id(data)] = _position(node)
        self.marks.keys[id(data)] = key_marks

    def construct_marked_seq(self, node: SequenceNode) -> Iterator[list[Any]]:
        data: list[Any] = []
        yield data
        _require(node, SequenceNode, "a sequence")
        data.extend(self.construct_object(child, deep=False) for child in node.value)
        self.marks.containers[id(data)] = _position(node)
        self.marks.items[id(data)] = [_position(child) for child in node.value]


_MarkingLoader.add_constructor("tag:yaml.org,2002:map", _MarkingLoader.construct_marked_map)
_MarkingLoader.add_constructor("tag:yaml.org,2002:seq", _MarkingLoader.construct_marked_seq)


def _require(node: Node, kind: type[Node], what: str) -> None:
    # An explicit `!!map`/`!!seq` tag on a node of another kind (`!!map x`).
    if not isinstance(node, kind):
        raise YamlProblem(f"tag {node.tag!r} needs {what}, found {_shown(node)}", *_pair(node))


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        text = str(node.value)
        return repr(text if len(text) <= 40 else text[:40] + "...")
    return "a mapping" if isinstance(node, MappingNode) else "a sequence"


def _pair(node: Node) -> tuple[int, int]:
    return node.start_mark.line, node.start_mark.column


def _reject_duplicate_keys(node: MappingNode) -> None:
    seen: dict[tuple[str, str], Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key_node.tag, key_node.value)
        if ident in seen:
            first = seen[ident].start_mark.line + 1
            raise YamlProblem(
                f"duplicate key {key_node.value!r} (first defined on line {first})",
                *_pair(key_node),
            )
        seen[ident] = key_node


def _check_expansion(root: Node, written_chars: int) -> None:
    """Refuse documents whose aliases expand far beyond their written size (or loop).

    Both nodes and characters count: a thousand aliases of one 1 MB string are few nodes
    but a gigabyte of data, and of error messages about it."""
    expanded: dict[int, tuple[int, int]] = {}
    in_progress: set[int] = set()

    def size(node: Node) -> tuple[int, int]:
        ident = id(node)
        if ident in expanded:
            return expanded[ident]
        if ident in in_progress:
            raise YamlProblem("recursive alias: a node contains itself", *_pair(node))
        in_progress.add(ident)
        nodes, chars = 1, 0
        children: list[Node] = []
        if isinstance(node, ScalarNode):
            chars = len(node.value)
        elif isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        for child in children:
            child_nodes, child_chars = size(child)
            nodes += child_nodes
            chars += child_chars
        in_progress.discard(ident)
        expanded[ident] = (nodes, chars)
        return nodes, chars

    nodes, chars = size(root)
    node_limit = EXPANSION_FACTOR * len(expanded) + EXPANSION_ALLOWANCE
    if nodes > node_limit:
        raise YamlProblem(
            f"aliases expand this document to {nodes} nodes from {len(expanded)} written "
            f"(limit {node_limit}): refusing a possible alias bomb",
            *_pair(root),
        )
    char_limit = EXPANSION_FACTOR * written_chars + EXPANSION_ALLOWANCE_CHARS
    if chars > char_limit:
        raise YamlProblem(
            f"aliases expand this document to {chars} characters from {written_chars} written "
            f"(limit {char_limit}): refusing a possible alias bomb",
            *_pair(root),
        )


MAX_DEPTH = 100


def _check_depth(root: Node) -> None:
    """Bound nesting before anything recursive walks the tree (libyaml itself has no bound)."""
    if _max_depth(root) > MAX_DEPTH:
        raise YamlProblem(f"nesting deeper than {MAX_DEPTH} levels", *_pair(root))


def _max_depth(root: Node) -> int:
    deepest = 0
    seen: set[int] = set()
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(node, SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
    return deepest


def parse_document(text: str) -> tuple[Any, Marks]:
    """Parse one YAML document; return (data, marks). Raise YamlProblem on any problem."""
    loader = _MarkingLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, loader.marks
        _check_depth(root)
        _check_expansion(root, len(text))
        return loader.construct_document(root), loader.marks
    except yaml.MarkedYAMLError as exc:
        raise _from_marked(exc) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position)
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise YamlProblem(
            f"control character U+{code:04X} is not allowed in YAML", line, col
        ) from None
    except RecursionError:
        raise YamlProblem(f"nesting deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _from_marked(exc: yaml.MarkedYAMLError) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line, mark.column) if mark is not None else (0, 0)
    message = " ".join(part for part in (exc.context, exc.problem) if part)
    if isinstance(exc, ConstructorError):
        tag = re.search(r"'([^']*)'", exc.problem or "")
        if "could not determine a constructor" in message and tag:
            return YamlProblem(
                f"tag {tag.group(1)!r} is not allowed: taskdefs hold plain data only", line, col
            )
        return YamlProblem(message, line, col)
    return YamlProblem(f"YAML syntax: {message}", line, col)

"""A corpus of hostile taskdef files: alias and merge-key bombs, deep nesting, huge scalars
and lists, control characters, odd encodings and line ends, injection strings, tags.

Used by tests/reliability/test_fuzz.py; every case is bytes (some are generated, so the
module stays small). `VALID` cases must load with their task; the others must be rejected
with problems that name the file.
"""

from __future__ import annotations

from collections.abc import Callable

TAG_MARKER = "/tmp/syncd-reliability-python-tag-ran"
TASK = "version: 1\ntasks:\n  - name: t\n    task_type: diagnostics.fail\n"
INJECTIONS = (
    "'; DROP TABLE task_configs; --",
    "$(rm -rf /)",
    "`touch /tmp/pwned`",
    "{{7*7}}",
    "${jndi:ldap://x/a}",
    "\r\nSET x y\r\n",
    "*\r\nFLUSHALL\r\n",
    "task:*",
    "../../etc/passwd",
)


def seq_bomb(levels: int = 12, width: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def map_bomb(levels: int = 12, width: int = 9) -> str:
    lines = ["m0: &m0 {x: lol}"]
    for i in range(1, levels):
        body = ", ".join(f"k{j}: *m{i - 1}" for j in range(width))
        lines.append(f"m{i}: &m{i} {{{body}}}")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 20, width: int = 3) -> str:
    lines = ["m0: &m0 {k: v, j: w}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * width) + "]}")
    return "\n".join(lines) + "\n"


def merge_doubling_bomb(levels: int = 30) -> str:
    """`<<: *a` and the same alias again as a value: the size doubles at every level."""
    lines = ["m0: &m0 {k: v}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{<<: *m{i - 1}, again{i}: *m{i - 1}}}")
    return "\n".join(lines) + "\n"


def bomb_in_parameters() -> str:
    """A valid-looking task whose parameters are an alias bomb."""
    anchors = ['    a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        anchors.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 8) + "]")
    return TASK + "    parameters:\n      message:\n" + "\n".join("  " + a for a in anchors) + "\n"


def block_nesting(depth: int) -> str:
    return "version: 1\ntasks:\n" + "".join("  " * i + "- \n" for i in range(1, depth))


def flow_nesting(depth: int) -> str:
    return "version: 1\ntasks: " + "[" * depth + "]" * depth + "\n"


def nesting_in_parameters(depth: int) -> str:
    return TASK + "    parameters: {message: " + "{a: " * depth + "1" + "}" * depth + "}\n"


def big_scalar(size: int = 4_000_000) -> str:
    return TASK + "    description: " + "a" * size + "\n"


def big_parameter(size: int = 4_000_000) -> str:
    return TASK + "    parameters: {message: '" + "x" * size + "'}\n"


def long_list(items: int) -> str:
    return "version: 1\ntasks:\n" + "".join(f"  - {i}\n" for i in range(items))


def long_parameter_list(items: int = 100_000) -> str:
    return (
        TASK
        + "    parameters:\n      message:\n"
        + "".join(f"        - {i}\n" for i in range(items))
    )


def unknown_keys(count: int) -> str:
    return "version: 1\n" + "".join(f"k{i}: {i}\n" for i in range(count))


def named(name: str) -> str:
    escaped = (
        name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    )
    return f'version: 1\ntasks:\n  - name: "{escaped}"\n    task_type: diagnostics.noop\n'


def with_parameter(value: str) -> str:
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    )
    return TASK + f'    description: "{escaped}"\n    parameters: {{message: "{escaped}"}}\n'


def _text(build: Callable[[], str]) -> Callable[[], bytes]:
    return lambda: build().encode("utf-8")


def _bound(build: Callable[[str], str], value: str) -> Callable[[], bytes]:
    return lambda: build(value).encode("utf-8")


# name -> (builder, loads as valid: True, rejected: False, either is fine: None)
CORPUS: dict[str, tuple[Callable[[], bytes], bool | None]] = {
    "billion laughs (sequences)": (_text(seq_bomb), False),
    "billion laughs (mappings)": (_text(map_bomb), False),
    "merge-key bomb <<: [*a, *a, *a]": (_text(merge_bomb), False),
    "merge-key doubling bomb <<: *a": (_text(merge_doubling_bomb), False),
    "alias bomb inside parameters": (_text(bomb_in_parameters), False),
    "recursive alias": (_text(lambda: "version: 1\ntasks: &a [*a]\n"), False),
    "recursive merge key": (_text(lambda: "a: &a {<<: *a}\n"), False),
    "alias as mapping key": (_text(lambda: "version: 1\nk: &k [1]\n*k : 2\n"), False),
    "undefined alias": (_text(lambda: "version: 1\ntasks: *nowhere\n"), False),
    "block nesting 150": (_text(lambda: block_nesting(150)), False),
    "block nesting 990": (_text(lambda: block_nesting(990)), False),
    "flow nesting 150": (_text(lambda: flow_nesting(150)), False),
    "flow nesting 100000": (_text(lambda: flow_nesting(100_000)), False),
    "nesting 150 in parameters": (_text(lambda: nesting_in_parameters(150)), False),
    "nesting 50 in parameters": (_text(lambda: nesting_in_parameters(50)), False),
    "4 MB scalar (description)": (_text(big_scalar), False),
    "4 MB scalar (parameter)": (_text(big_parameter), True),
    "6 MB file (over the limit)": (_text(lambda: big_scalar(6_000_000)), False),
    "100k-item list in parameters": (_text(long_parameter_list), False),
    "100k-item tasks list": (_text(lambda: long_list(100_000)), False),
    "20k-item tasks list": (_text(lambda: long_list(20_000)), False),
    "100k unknown keys": (_text(lambda: unknown_keys(100_000)), False),
    "control character U+0001": (_text(lambda: TASK + "    description: a\x01b\n"), False),
    "escape sequence (ANSI)": (_text(lambda: TASK + "    description: \x1b[31mred\n"), False),
    "NUL byte": (lambda: (TASK + "    description: a").encode() + b"\x00b\n", False),
    "escaped NUL in a parameter": (
        _text(lambda: TASK + '    parameters: {message: "a\\0b"}\n'),
        False,  # PostgreSQL can store NUL in neither text nor jsonb
    ),
    "escaped NUL in a description": (_text(lambda: TASK + '    description: "a\\0b"\n'), False),
    "lone surrogate escape": (_text(lambda: TASK + '    parameters: {message: "\\ud800"}\n'), None),
    "U+2028 line separator": (_text(lambda: TASK + "    description: a\u2028b\n"), None),
    "UTF-8 BOM": (lambda: b"\xef\xbb\xbf" + TASK.encode(), True),
    "BOM in the middle": (_text(lambda: TASK + "    description: a\ufeffb\n"), None),
    "UTF-16 with BOM": (lambda: TASK.encode("utf-16"), False),
    "UTF-32 with BOM": (lambda: TASK.encode("utf-32"), False),
    "Latin-1 bytes": (lambda: (TASK + "    description: caf\xe9\n").encode("latin-1"), False),
    "CRLF line ends": (lambda: TASK.replace("\n", "\r\n").encode(), True),
    "CR-only line ends": (lambda: TASK.replace("\n", "\r").encode(), None),
    "tab indentation": (_text(lambda: TASK.replace("  - name", "\t- name")), False),
    "two documents": (_text(lambda: TASK + "---\n" + TASK), False),
    "only a comment": (_text(lambda: "# nothing here\n"), False),
    "empty": (lambda: b"", False),
    "whitespace only": (lambda: b" \n\t\n", False),
    "a bare scalar": (_text(lambda: "just text\n"), False),
    "python tag (code execution)": (
        _text(
            lambda: f'version: 1\ntasks: !!python/object/apply:os.system ["touch {TAG_MARKER}"]\n'
        ),
        False,
    ),
    "python name tag": (_text(lambda: "version: !!python/name:os.system\n"), False),
    "custom local tag": (_text(lambda: TASK + "    parameters: !env {message: x}\n"), False),
    "!!int tag on text": (_text(lambda: TASK + "    priority: !!int high\n"), False),
    "!!map tag on a scalar": (_text(lambda: TASK + "    parameters: !!map x\n"), False),
    "binary tag": (_text(lambda: TASK + "    parameters: {message: !!binary aGVsbG8=}\n"), False),
    "set tag": (_text(lambda: TASK + "    parameters: {message: !!set {a, b}}\n"), False),
    "impossible date in 'at'": (
        _text(
            lambda: (
                "version: 1\ntasks:\n  - {name: o, task_type: diagnostics.noop, "
                "schedule: {at: 2026-13-45T09:00:00Z}}\n"
            )
        ),
        False,
    ),
    "impossible date as a description": (
        _text(lambda: TASK + "    description: 2026-02-30\n"),
        False,
    ),
    "time zone naming a directory": (
        _text(lambda: TASK + '    schedule: {cron: "0 3 * * *", timezone: Europe}\n'),
        False,
    ),
    "5000-digit integer": (_text(lambda: TASK + "    max_retries: " + "9" * 5000 + "\n"), False),
    "base-60 and octal-looking numbers": (
        _text(lambda: TASK + "    max_retries: 1:20\n    priority: 0o7\n"),
        False,
    ),
    "huge float and NaN in parameters": (
        _text(lambda: TASK + "    parameters: {message: x, a: 1e999999, b: .nan}\n"),
        False,
    ),
    **{f"injection in a name: {s!r}": (_bound(named, s), False) for s in INJECTIONS},
    **{f"injection as data: {s!r}": (_bound(with_parameter, s), True) for s in INJECTIONS},
}

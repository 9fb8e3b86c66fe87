"""How any string a taskdef author (or a task, or a store) controls is shown to people.

Every output path — the terminal, log lines in text and JSON form, markdown for pull
requests, CI logs — passes user text through `visible`, so no input can start a new line
(a forged `::error` annotation or a fake "ok" line), move the cursor (terminal escape
sequences), or reorder what a reviewer reads (bidi overrides). Messages that quote a
value use `quoted`, which also bounds its length: a 1 MB name must not make every message
about it 1 MB. It lives at the bottom of the layering so every package shares one rule.
"""

from __future__ import annotations

import re

__all__ = ["PATH_LIMIT", "QUOTE_LIMIT", "cut", "quoted", "visible"]

QUOTE_LIMIT = 80
# Paths are quoted whole up to a length no real path reaches (PATH_MAX is 4096 bytes).
PATH_LIMIT = 4096

# What is escaped: C0 and C1 controls and DEL (newlines, ESC, ...), the line and paragraph
# separators, lone surrogates (undecodable bytes), the byte-order mark, and every bidi
# control. Zero-width joiners stay: emoji are built from them and they move nothing.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cut(text: str, limit: int | None) -> str:
    """`text`, shortened to `limit` characters with a note of how much was left out."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def visible(text: str, limit: int | None = None) -> str:
    """`text` on one line, with every control character rendered as a visible escape."""
    text = cut(text, limit)
    if _UNSAFE.search(text) is None:  # the common case: nothing to do
        return text
    return _UNSAFE.sub(_escape, text)


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A value quoted for a message (`'nightly'`), shortened, safe on one line.

    repr() already escapes what `visible` does for strings (str.isprintable is false for
    controls, separators and bidi marks); `visible` guards the rest (a dict's repr)."""
    if isinstance(value, str):
        return visible(repr(cut(value, limit)))
    return visible(repr(value), limit)

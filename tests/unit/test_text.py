"""The one rule for showing user text: one line, no control characters, bounded quotes."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from schemas.text import cut, quoted, visible

FORGING = ["\n", "\r", "\x1b", "\x85", "\u2028", "\u2029", "\u202e", "\u2066", "\x00", "\x7f"]


def raw_controls(text: str) -> list[str]:
    """Characters that could start a line, move the cursor or reorder text."""
    return [
        c
        for c in text
        if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")
        or unicodedata.bidirectional(c)
        in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
    ]


@given(st.text(alphabet=st.characters(codec=None)))
def test_visible_never_leaves_a_control_character(text: str) -> None:
    assert raw_controls(visible(text)) == []


@given(st.text(alphabet=st.sampled_from(["a", "b", " ", *FORGING])))
def test_visible_keeps_every_character_in_some_form(text: str) -> None:
    shown = visible(text)
    assert "\n" not in shown
    assert len(shown) >= len(text)


def test_forging_characters_are_escaped_readably() -> None:
    line = visible("x\n::error file=a.yaml,line=1::injected\x1b[2J\u202eok")
    assert line == "x\\n::error file=a.yaml,line=1::injected\\x1b[2J\\u202eok"


def test_plain_text_is_untouched() -> None:
    assert visible("nightly-cleanup: ok ✓ 👩‍💻") == "nightly-cleanup: ok ✓ 👩‍💻"


def test_cut_says_how_much_was_left_out() -> None:
    assert cut("abcdef", 3) == "abc…(+3 chars)"
    assert cut("abc", 3) == "abc"
    assert cut("abc", None) == "abc"


def test_quoted_bounds_a_huge_value() -> None:
    shown = quoted("n" * 1_000_000)
    assert len(shown) < 120
    assert shown.startswith("'nnn")
    assert "(+999920 chars)" in shown


@given(st.one_of(st.text(), st.dictionaries(st.text(), st.text())))
def test_quoted_is_one_safe_line(value: object) -> None:
    assert raw_controls(quoted(value)) == []

"""text.py: a peer's text as a screen shows it, with control and format characters
escaped and everything else kept, and long lines wrapped so that no row can pass for a
line of its own. The property over any text is in test_properties.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.text import CONTINUATION, char_width, sanitize, wrap_rows

# --- sanitize --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "forbidden"),
    [
        ("\x1b]0;owned\x07title", "\x1b\x07"),
        ("\x1b[2J\x1b[31mred", "\x1b"),
        ("\x9b31mred", "\x9b"),  # C1 CSI
        ("\x85next line\x8d", "\x85\x8d"),
        ("ring\x07", "\x07"),
        ("fake\nlaptop says: hi", "\n"),
        ("overwrite\rthis", "\r"),
        ("abc\u202egpj.exe", "\u202e"),  # right-to-left override
        ("isolate\u2066x\u2069", "\u2066\u2069"),
        ("line\u2028sep\u2029para", "\u2028\u2029"),
        ("nul\x00del\x7f", "\x00\x7f"),
        ("tab\there", "\t"),
    ],
)
def test_sanitize_neutralises_controls(text: str, forbidden: str) -> None:
    shown = sanitize(text)
    assert not set(forbidden) & set(shown)
    assert shown.isprintable()
    assert shown == "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def test_sanitize_escapes_visibly() -> None:
    assert sanitize("\x1b[31mred") == "\\x1b[31mred"
    assert sanitize("a\nb\rc") == "a\\nb\\rc"
    assert sanitize("\x9b") == "\\x9b"
    assert sanitize("x\u202ey") == "x\\u202ey"


@pytest.mark.parametrize(
    "text",
    [
        "hello desktop",
        "",
        "50% off! <b>&amp;</b> \\x1b",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # ZWJ family
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: variation selector + ZWJ
        "\u0928\u094d\u200d\u092f",  # Devanagari with ZWJ
        "\u4f60\u597d e\u0301",
    ],
)
def test_sanitize_keeps_text(text: str) -> None:
    assert sanitize(text) == text


# --- Wrapping peer text on a terminal ----------------------------------------------------


def test_a_padded_line_cannot_fake_a_line_of_its_own() -> None:
    spoof = "laptop says: " + " " * 67 + "laptop left the chat: bye" + " " * 55
    spoof += "Connection closed by peer."
    rows = wrap_rows(spoof, 79)
    assert rows[0].startswith("laptop says: ")
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    assert all(sum(char_width(ch) for ch in row) <= 79 for row in rows)


def test_rows_end_after_a_space_so_words_stay_whole() -> None:
    line = "Session code: 123456 (the same on both screens means nobody is in the middle)"
    rows = wrap_rows(line, 30)
    assert rows == [
        "Session code: 123456 (the ",
        "  same on both screens means ",
        "  nobody is in the middle)",
    ]
    assert wrap_rows("x" * 25, 10) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]


def test_wide_and_combining_characters_are_measured() -> None:
    assert char_width("界") == 2 and char_width("\u0301") == 0 and char_width("a") == 1
    assert sum(char_width(ch) for ch in "\u2764\ufe0f") == 2  # a red heart, drawn wide
    rows = wrap_rows("界" * 30, 20)
    assert [sum(char_width(ch) for ch in row) for row in rows][:2] == [20, 20]


@given(st.text(max_size=300), st.integers(min_value=1, max_value=200))
def test_wrapped_rows_fit_and_only_the_first_starts_at_column_zero(text: str, width: int) -> None:
    line = "laptop says: " + text.replace("\n", " ")
    rows = wrap_rows(line, width)
    assert (
        "".join(row.removeprefix(CONTINUATION) if i else row for i, row in enumerate(rows)) == line
    )
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    limit = max(width, len(CONTINUATION) + 8)
    assert all(sum(char_width(ch) for ch in row) <= limit for row in rows if len(row) > 3)

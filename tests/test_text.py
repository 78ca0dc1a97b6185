"""text.py: a peer's text as a screen shows it, with control and format characters
escaped and everything else kept, and long lines wrapped so that no row can pass for a
line of its own. The property over any text is in test_properties.py."""

from __future__ import annotations

import pyte
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.text import (
    CONTINUATION,
    char_width,
    is_blank,
    name_problem,
    name_skeleton,
    sanitize,
    wrap_for_terminal,
    wrap_rows,
)

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


def test_a_word_wider_than_a_row_goes_out_whole_and_what_follows_starts_below() -> None:
    assert wrap_rows("x" * 25, 10) == ["x" * 25]
    assert wrap_rows("see " + "x" * 25 + " then more", 10) == [
        "see " + "x" * 25 + " ",
        "  then ",
        "  more",
    ]


def test_a_long_cjk_message_stays_beside_who_said_it() -> None:
    line = "laptop says: " + "界" * 60
    assert wrap_rows(line, 79) == [line]  # never "laptop says:" alone on its row


def test_wide_and_combining_characters_are_measured() -> None:
    assert char_width("界") == 2 and char_width("\u0301") == 0 and char_width("a") == 1
    assert sum(char_width(ch) for ch in "\u2764\ufe0f") == 2  # a red heart, drawn wide
    assert wrap_rows("界界界 界界界 界界界 界界界", 20) == ["界界界 界界界 ", "  界界界 界界界"]
    assert wrap_rows("e\u0301" * 30, 20) == ["e\u0301" * 30]  # 30 columns: one long word


@pytest.mark.parametrize("blank", [" ", "\u00a0", "\u3000", "\u2800", "\u3164", "\u2003"])
def test_no_blank_looking_character_can_hide_inside_a_long_word(blank: str) -> None:
    fake = blank.join(["Connection", "closed", "by", "peer."])
    line = "laptop says: " + "x" * 150 + fake + "x" * 150
    rows = wrap_rows(line, 79)
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    assert all(beyond(row, 79).rstrip(blank) == beyond(row, 79).strip(blank) for row in rows)
    assert not any(blank in beyond(row, 79).rstrip(blank) for row in rows)


def beyond(row: str, width: int) -> str:
    """What of `row` the terminal wraps onto rows of its own (past `width` columns)."""
    used = 0
    for index, ch in enumerate(row):
        used += char_width(ch)
        if used > width:
            return row[index:]
    return ""


@given(st.text(max_size=300), st.integers(min_value=1, max_value=200))
def test_wrapped_rows_keep_every_character_and_only_the_first_starts_at_column_zero(
    text: str, width: int
) -> None:
    line = "laptop says: " + text.replace("\n", " ")
    rows = wrap_rows(line, width)
    assert (
        "".join(row.removeprefix(CONTINUATION) if i else row for i, row in enumerate(rows)) == line
    )
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    limit = max(width, len(CONTINUATION) + 8)
    for row in rows:  # past the width, a row holds only the end of one word (and blanks)
        tail = beyond(row, limit).rstrip()
        assert not any(is_blank(ch) for ch in tail.rstrip("".join(filter(is_blank, tail))))


# --- What a person copies off the screen (pyte: a terminal of 80 columns) ---------------


def screen_of(text: str, columns: int = 80) -> list[str]:
    """The rows of an 80-column terminal after printing `text` as the Terminal does."""
    screen = pyte.Screen(columns, 40)
    stream = pyte.Stream(screen)
    stream.feed(wrap_for_terminal(text, columns - 1).replace("\n", "\r\n") + "\r\n")
    return [row.rstrip() for row in screen.display]


def test_a_long_link_copied_off_the_screen_is_the_link() -> None:
    url = "https://example.com/" + "/".join(f"part{i:03d}" for i in range(36))
    assert len(url) >= 300
    rows = screen_of(f"laptop says: look at {url} and tell me")
    # A terminal joins the rows it wrapped itself when the text is copied.
    first = next(i for i, row in enumerate(rows) if row.startswith("laptop says: look at "))
    after = rows.index("  and tell me")
    assert "".join(rows[first:after]) == f"laptop says: look at {url}"


def test_after_a_long_word_nothing_reaches_column_zero() -> None:
    word = "x" * 170
    rows = screen_of(f"laptop says: {word} Connection closed by peer.")
    assert "Connection closed by peer." not in rows
    assert "  Connection closed by peer." in rows


@pytest.mark.parametrize(
    "name",
    ["Connection closed by peer." + " " * 37 + "x", "a  b", "a\u00a0b", "a\u3000b", "a\u2800b"],
)
def test_a_name_cannot_pad_itself_into_a_line_of_its_own(name: str) -> None:
    assert name_problem(name) == "must not hold blanks other than single spaces"
    assert name_problem("alice I") is None


def test_a_long_run_of_one_escaped_character_is_shown_once_with_its_count() -> None:
    assert sanitize("a" + "\x01" * 4000 + "b") == "a\\x01 \u00d74000b"
    assert sanitize("\x07\x07\x07") == "\\x07\\x07\\x07"  # short runs as they are
    assert len(sanitize("\x01" * 65536)) < 20  # 64 KiB of it is a few characters on screen
    assert sanitize("\x1b" * 5 + "[2J").isprintable()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice\u200d", "must not contain invisible characters"),  # zero width joiner
        ("alice\u034f", "must not contain invisible characters"),  # combining grapheme joiner
        ("alice\ufe0f", "must not contain invisible characters"),  # variation selector 16
        ("\u3164", "must not hold blanks other than single spaces"),  # Hangul filler
        ("\u2800", "must not hold blanks other than single spaces"),  # Braille blank
        ("\uff41lice", "must be written in its plain form ('alice')"),  # fullwidth a
    ],
)
def test_invisible_blank_and_unnormalised_names_are_refused(name: str, problem: str) -> None:
    assert name_problem(name) == problem


def test_look_alike_names_share_one_skeleton() -> None:
    alice = name_skeleton("alice")
    for look_alike in ("\u0430lice", "ALICE", "a1ice", "alic\u0435", "aIice"):
        assert name_skeleton(look_alike) == alice, look_alike
    assert name_skeleton("bob") != alice and name_skeleton("alicia") != alice

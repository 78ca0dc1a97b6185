"""The list a folder or multi-file offer starts with (manifest.py, pure): its wire form,
the rules for each path, and its limits."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.errors import ProtocolError
from chatclient.manifest import (
    MAX_DEPTH,
    MAX_LIST_BYTES,
    Entry,
    decode_list,
    describe,
    encode_list,
    list_end,
    safe_inner_name,
)
from chatclient.messages import Bundle


def test_a_list_round_trips_and_its_bytes_are_as_documented() -> None:
    data = encode_list([("Holiday/a.jpg", 5), ("Holiday/day 2/b.jpg", 0)])
    assert data[:4] == struct.pack("!I", len(data) - 4)
    assert data[4:29] == struct.pack("!QI", 5, 13) + b"Holiday/a.jpg"
    assert list_end(data[:3]) is None and list_end(data[:4]) == len(data)
    assert decode_list(data, Bundle.FOLDER, 2, "Holiday") == [
        Entry(("Holiday", "a.jpg"), 5),
        Entry(("Holiday", "day 2", "b.jpg"), 0),
    ]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("Holiday/../x", "could land outside"),
        ("Holiday/./x", "could land outside"),
        ("/Holiday/x", "could land outside"),
        ("Holiday//x", "could land outside"),
        ("Holiday/x/", "could land outside"),
        ("Holiday/a\\b", "could land outside"),
        ("Holiday/a\0b", "could land outside"),
        ("Other/x", "not inside the folder 'Holiday'"),
        ("Holiday", "not inside the folder 'Holiday'"),
        ("Holiday/\u202e\u200f", "leaves nothing safe"),
        ("Holiday/" + "d/" * MAX_DEPTH + "x", f"over {MAX_DEPTH} folders deep"),
    ],
)
def test_a_path_that_could_leave_the_folder_is_refused(path: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_list(encode_list([(path, 1)]), Bundle.FOLDER, 1, "Holiday")


def test_names_inside_a_folder_follow_the_file_name_rules_but_keep_a_leading_dot() -> None:
    assert safe_inner_name(".gitignore") == ".gitignore"
    assert safe_inner_name("evil\u202egpj.exe") == "evilgpj.exe"
    assert safe_inner_name("\x1b[2Jx") == "[2Jx"
    assert safe_inner_name("...") is None
    assert safe_inner_name("list.part") == "list_part"  # never our own working name
    assert len(safe_inner_name("é" * 300).encode()) <= 200  # type: ignore[union-attr]
    [entry] = decode_list(encode_list([(".hidden", 1)]), Bundle.FILES, 1, ".hidden")
    assert entry.parts == ("hidden",)  # at the top, a file's rules: no dot-file


@pytest.mark.parametrize(
    ("paths", "problem"),
    [
        (["H/a", "H/a/b"], "'H/a' is both a file and a folder"),
        (["H/a/b", "H/a"], "'H/a' is both a file and a folder"),
        (["H/a", "H/a"], "'H/a' is in its list twice"),
        (["H/a\x07", "H/a"], "'H/a' is in its list twice"),
    ],
)
def test_paths_that_clash_are_refused(paths: list[str], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_list(encode_list((path, 1) for path in paths), Bundle.FOLDER, len(paths), "H")


def test_a_list_must_hold_exactly_the_count_offered_and_stay_under_its_limit() -> None:
    data = encode_list([("a", 1), ("b", 2)])
    with pytest.raises(ProtocolError, match="fewer than the 3 files"):
        decode_list(data, Bundle.FILES, 3, "a")
    with pytest.raises(ProtocolError, match="more than the 1 files"):
        decode_list(data, Bundle.FILES, 1, "a")
    with pytest.raises(ProtocolError, match="not a plain file name"):
        decode_list(encode_list([("a/b", 1)]), Bundle.FILES, 1, "a")
    with pytest.raises(ProtocolError, match="over the limit"):
        list_end(struct.pack("!I", MAX_LIST_BYTES + 1))
    with pytest.raises(ProtocolError, match="not UTF-8"):
        decode_list(struct.pack("!IQI", 13, 1, 1) + b"\xff", Bundle.FILES, 1, "a")


def test_offers_are_named_as_lines_show_them() -> None:
    assert describe(Bundle.FOLDER, "Holiday", 214) == "Holiday/"
    assert describe(Bundle.FILES, "a.jpg", 3) == "a.jpg and 2 more"
    assert describe(Bundle.FILE, "a.jpg", 1) == "a.jpg"


@given(st.binary(max_size=200), st.integers(0, 5))
def test_any_bytes_fail_only_with_protocol_errors(data: bytes, count: int) -> None:
    with contextlib.suppress(ProtocolError):
        decode_list(data, Bundle.FOLDER, count, "H")

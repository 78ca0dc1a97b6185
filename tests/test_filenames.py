"""The names of received files (filenames.py): an offered name made a safe base name and
cut to length, numbered copies, and the record a resumed .part trusts; with
text.format_size and disk.place_file, which puts a finished file in place without
ever replacing one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.disk import place_file
from chatclient.filenames import MAX_SAVED_NAME, PartialInfo, numbered, safe_file_name
from chatclient.text import format_size

# --- Names, sizes, places (pure) ---------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "saved"),
    [
        ("holiday.jpg", "holiday.jpg"),
        ("../../.bashrc", "bashrc"),
        ("/etc/passwd", "passwd"),
        ("C:\\x", "x"),
        ("C:x", "x"),
        ("..\\..\\Windows\\win.ini", "win.ini"),
        ("evil\x1b[31m.txt", "evil[31m.txt"),
        ("report\u202egnp.exe", "reportgnp.exe"),  # a right-to-left override
        ("  spaced name.txt  ", "spaced name.txt"),
        ("a\nb.txt", "ab.txt"),
        ("é.txt", "é.txt"),
    ],
)
def test_an_offered_name_becomes_a_safe_base_name(offered: str, saved: str) -> None:
    assert safe_file_name(offered) == saved


@pytest.mark.parametrize(
    "offered",
    [
        "x.part",
        "x.part.meta",
        "x" * 190 + ".part" + "y" * 20 + ".meta",  # the cut would bring .part.meta back
        "x" * 195 + ".part" + "y" * 40,
        "é" * 120 + ".part",
    ],
)
def test_no_offered_name_is_saved_as_one_of_our_working_files(offered: str) -> None:
    name = safe_file_name(offered)
    assert name is not None
    assert not name.endswith((".part", ".part.meta")), name


@given(st.text(max_size=300).map(lambda text: text + ".part"), st.sampled_from(["", ".meta"]))
def test_no_name_at_all_ends_as_a_working_file(offered: str, meta: str) -> None:
    name = safe_file_name(offered + meta)
    assert name is None or not name.endswith((".part", ".part.meta"))


@pytest.mark.parametrize("offered", ["", "..", ".", "/", "a/", "...", "\x1b", "C:", " . "])
def test_a_name_with_nothing_safe_left_is_refused(offered: str) -> None:
    assert safe_file_name(offered) is None


@given(st.text(max_size=400))
def test_a_safe_name_is_never_a_path_a_dot_file_or_too_long(offered: str) -> None:
    name = safe_file_name(offered)
    if name is not None:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert name.isprintable() and 0 < len(name.encode()) <= MAX_SAVED_NAME


def test_a_long_name_is_cut_keeping_its_extension() -> None:
    name = safe_file_name("x" * 300 + ".jpg")
    assert name is not None and name.endswith(".jpg") and len(name.encode()) == 200
    name = safe_file_name("é" * 300)  # two bytes each: never cut inside one
    assert name == "é" * 100


def test_sizes_read_as_people_say_them() -> None:
    assert [format_size(n) for n in (1, 512, 2_400, 2_400_000, 1_073_741_824)] == [
        "1 byte",
        "512 bytes",
        "2.4 kB",
        "2.4 MB",
        "1.1 GB",
    ]
    assert numbered("holiday.jpg", 0) == "holiday.jpg"
    assert numbered("holiday.jpg", 2) == "holiday (2).jpg"


def test_a_finished_file_never_replaces_one_already_there(tmp_path: Path) -> None:
    (tmp_path / "holiday.jpg").write_bytes(b"mine")
    (tmp_path / "holiday (1).jpg").symlink_to("/etc/passwd")  # a planted link: skipped
    part = tmp_path / "holiday.jpg.part"
    part.write_bytes(b"theirs")
    final = place_file(str(part), str(tmp_path), "holiday.jpg")
    assert final == str(tmp_path / "holiday (2).jpg")
    assert (tmp_path / "holiday.jpg").read_bytes() == b"mine"
    assert Path(final).read_bytes() == b"theirs" and not part.exists()


def test_a_partial_record_round_trips_and_anything_else_is_ignored() -> None:
    info = PartialInfo("holiday.jpg", 2_400_000, bytes(range(32)), bytes(32))
    assert PartialInfo.parse(info.render()) == info
    for text in ("", "size = 1\n", info.render().replace("fingerprint = 00", "fingerprint = zz")):
        assert PartialInfo.parse(text) is None

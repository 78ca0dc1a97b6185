"""Folder and multi-file offers from Mallory (test_files_hostile.py's peer speaking the
real protocol) to a real `python chatclient.py --listen` on 127.0.0.1 (issue 20): paths
that climb out, absolute paths, NUL and bidi characters, a path that is a file and a
folder, a list that lies about the total, 100,000 files, a link planted where the folder
lands, and a resume that sends nothing that arrived whole again."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import Spawn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_files_hostile import Mallory, listener, with_mallory

from chatclient.disk import FILE_WINDOW
from chatclient.manifest import encode_list
from chatclient.messages import (
    MAX_BUNDLE_FILES,
    Bundle,
    FileAccept,
    FileCancel,
    FileOffer,
    FileReceived,
    FileReject,
)


def stream(files: list[tuple[str, bytes]]) -> bytes:
    """A bundle's stream: the list, then every file's data."""
    return encode_list((path, len(data)) for path, data in files) + b"".join(
        data for _, data in files
    )


def offer_folder(
    mallory: Mallory,
    number: int,
    files: list[tuple[str, bytes]],
    name: str = "Holiday",
    bundle: Bundle = Bundle.FOLDER,
    size: int | None = None,
) -> bytes:
    """Offer `files` as one folder (or `bundle`); the stream it stands for."""
    data = stream(files)
    fingerprint = hashlib.sha256(data).digest()
    size = len(data) if size is None else size
    mallory.send(FileOffer(number, size, fingerprint, name, "", 0, bytes(64), bundle, len(files)))
    return data


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("Holiday/../../.bashrc", r"the path 'Holiday/\.\./\.\./\.bashrc' in its list could land"),
        ("/etc/passwd", r"the path '/etc/passwd' in its list could land outside"),
        ("Holiday/a\0b", r"could land outside the folder"),
        ("Holiday/a\\..\\b", r"could land outside the folder"),
        ("Elsewhere/x", r"the path 'Elsewhere/x' is not inside the folder 'Holiday'"),
    ],
)
def test_a_path_that_could_land_outside_saves_nothing(
    spawn: Spawn, tmp_path: Path, path: str, problem: str
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    data = offer_folder(mallory, 1, [("Holiday/fine.jpg", b"ok"), (path, b"evil")])
    desk.expect(r"^mallory offers Holiday/ \(2 files, ")
    desk.send("/accept")
    assert mallory.expect(FileAccept) == FileAccept(1, 0, FILE_WINDOW)
    mallory.send_all(1, data)
    desk.expect(rf"^error: Holiday/ from mallory: .*{problem}.*: nothing saved$", stream="err")
    cancel = mallory.expect(FileCancel)
    assert isinstance(cancel, FileCancel) and cancel.reason == "desktop could not save it"
    assert os.listdir(downloads) == []  # nothing kept, nothing outside either
    assert sorted(os.listdir(tmp_path)) == ["config.ini", "dl", "identity.key", "known_peers"]


def test_bidi_and_control_characters_are_taken_out_of_each_part(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    files = [("Holiday/evil\u202egpj.exe", b"x"), ("Holiday/\x1b[2Jsub/.plan", b"y")]
    data = offer_folder(mallory, 1, files)
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    mallory.done(1, data)
    desk.expect(r"^Received Holiday/ from mallory \(2 files, ")
    assert sorted(str(p.relative_to(downloads)) for p in downloads.rglob("*")) == [
        "Holiday",
        "Holiday/[2Jsub",
        "Holiday/[2Jsub/.plan",
        "Holiday/evilgpj.exe",
    ]
    assert mallory.expect(FileReceived) == FileReceived(1)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ([("Holiday/a", b"1"), ("Holiday/a/b", b"2")], r"'Holiday/a' is both a file and a folder"),
        ([("Holiday/a", b"1"), ("Holiday/a", b"2")], r"the path 'Holiday/a' is in its list twice"),
        ([("Holiday/a\x07", b"1"), ("Holiday/a", b"2")], r"'Holiday/a' is in its list twice"),
    ],
)
def test_a_list_whose_paths_clash_saves_nothing(
    spawn: Spawn, tmp_path: Path, files: list[tuple[str, bytes]], problem: str
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    data = offer_folder(mallory, 1, files)
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    desk.expect(rf"^error: Holiday/ from mallory: .*{problem}.*: nothing saved$", stream="err")
    assert os.listdir(downloads) == []


def test_a_total_that_lies_or_a_count_past_the_limit_is_refused(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    files = [("Holiday/a.jpg", b"a" * 100)]
    offer_folder(mallory, 1, files, size=len(stream(files)) + 1000)  # says 1000 bytes more
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, stream(files))
    desk.expect(
        r"^error: Holiday/ from mallory: its list adds up to \d+ bytes, not the \d+ offered: "
        r"nothing saved$"
    )
    assert os.listdir(downloads) == []
    fingerprint = bytes(32)
    for number, count in ((2, 100_000), (3, 0)):
        mallory.send(
            FileOffer(number, 10**6, fingerprint, "Many", "", 0, bytes(64), Bundle.FOLDER, count)
        )
        assert mallory.expect(FileReject) == FileReject(number)
    desk.expect(
        rf"^mallory offered Many/ with 100,000 files; one offer may hold 1 to "
        rf"{MAX_BUNDLE_FILES:,}: declined$"
    )
    desk.expect(r"^mallory offered Many/ with 0 files; ")
    many = [(f"Many/{number}", b"") for number in range(MAX_BUNDLE_FILES)]
    data = offer_folder(mallory, 4, many, name="Many")  # the most there may be: taken
    desk.expect(r"^mallory offers Many/ \(10,000 files, ")
    desk.send("/accept")  # the only offer waiting
    mallory.expect(FileAccept)
    mallory.send_all(4, data)
    mallory.done(4, data)
    desk.expect(r"^Received Many/ from mallory \(10,000 files, ", timeout=60.0)
    assert len(os.listdir(downloads / "Many")) == MAX_BUNDLE_FILES


def test_a_link_planted_where_the_folder_lands_is_never_followed(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (downloads / "Holiday").symlink_to(outside)
    (downloads / "Holiday.part").symlink_to(outside)
    data = offer_folder(mallory, 1, [("Holiday/a.jpg", b"photo")])
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    mallory.done(1, data)
    desk.expect(r"^Received Holiday/ from mallory \(1 file, .*\): saved as .*/Holiday \(1\)$")
    assert os.listdir(outside) == []
    assert (downloads / "Holiday (1)" / "a.jpg").read_bytes() == b"photo"


def test_a_folder_cut_short_resumes_without_the_files_that_arrived_whole(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port, Ed25519PrivateKey.generate())
    files = [(f"Holiday/{name}.bin", os.urandom(100_000)) for name in "abc"]
    data = offer_folder(mallory, 1, files)
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    cut = len(encode_list((path, len(content)) for path, content in files)) + 150_000
    mallory.send_all(1, data[:cut])  # a.bin whole, half of b.bin
    mallory.send(FileCancel(1, True, "paused", keep=True))
    desk.expect(r"^mallory paused Holiday/ at 50%: what came is kept")
    offer_folder(mallory, 2, files)
    desk.expect(r"^mallory offers Holiday/ \(3 files, 300\.\d kB, 50% already here\): /accept 2 to")
    desk.send("/accept 2")
    assert mallory.expect(FileAccept) == FileAccept(2, cut, FILE_WINDOW)  # nothing again
    desk.expect(r"^Resuming Holiday/ at 50%$")
    mallory.send_all(2, data, start=cut)
    mallory.done(2, data)
    desk.expect(r"^Received Holiday/ from mallory \(3 files, 300\.\d kB, SHA-256 verified\)")
    for path, content in files:
        assert (downloads / path).read_bytes() == content
    assert sorted(os.listdir(downloads)) == ["Holiday"]  # no .part left


# --- Found by review ----------------------------------------------------------------


@pytest.mark.parametrize("bundle", [Bundle.FOLDER, Bundle.FILES])
def test_an_offer_whose_size_ends_inside_its_list_saves_nothing(
    spawn: Spawn, tmp_path: Path, bundle: Bundle
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    name = "Holiday" if bundle is Bundle.FOLDER else "a.txt"
    path = "Holiday/a.txt" if bundle is Bundle.FOLDER else "a.txt"
    data = offer_folder(mallory, 1, [(path, b"x")], name=name, bundle=bundle, size=10)[:10]
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    mallory.done(1, data)
    desk.expect(r"from mallory: its list is cut short: nothing saved$", stream="err")
    assert mallory.expect(FileCancel).id == 1  # type: ignore[attr-defined]
    assert os.listdir(downloads) == []


def test_several_files_must_start_with_the_file_they_were_offered_as(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    data = offer_folder(mallory, 1, [("evil.sh", b"x")], name="holiday.jpg", bundle=Bundle.FILES)
    desk.expect(r"^mallory offers holiday\.jpg \(1 file, ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    desk.expect(r"its first file is not 'holiday\.jpg', the name it was offered as: nothing saved$")
    assert os.listdir(downloads) == []


def test_a_list_that_makes_too_many_folders_saves_nothing(spawn: Spawn, tmp_path: Path) -> None:
    """Folders cost disk the offer's size does not count: 10,000 at most."""
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    files = [(f"Holiday/{number}/in/x", b"") for number in range(5_000)]  # 10,001 folders
    data = offer_folder(mallory, 1, files)
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data)
    desk.expect(r"from mallory: its list makes over 10,000 folders: nothing saved$")
    assert os.listdir(downloads) == []


def test_a_folder_paused_before_its_first_byte_resumes_and_leaves_nothing_behind(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port, Ed25519PrivateKey.generate())
    files = [("Holiday/a.bin", b"a" * 1000)]
    data = offer_folder(mallory, 1, files)
    desk.expect(r"^mallory offers ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send(FileCancel(1, True, "paused", keep=True))
    desk.expect(r"^mallory paused Holiday/ at 0%")
    offer_folder(mallory, 2, files)
    desk.expect(r"^mallory offers Holiday/ \(1 file, .*\): /accept 2 or /reject 2$")
    desk.send("/accept 2")
    assert mallory.expect(FileAccept) == FileAccept(2, 0, FILE_WINDOW)
    mallory.send_all(2, data)
    mallory.done(2, data)
    desk.expect(r"^Received Holiday/ from mallory ")
    assert sorted(os.listdir(downloads)) == ["Holiday"]  # its .part/ was used, not left

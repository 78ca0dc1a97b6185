"""Folders and several files as one offer (issue 20), between real `python chatclient.py`
processes on 127.0.0.1: a folder arrives as that folder, several files (or a quoted
glob) as one offer, links on the sending side are skipped, a name in use gets " (1)",
and a paused folder resumes without sending again the files that arrived whole. The
list's rules are in test_manifest.py; a hostile sender, and a resume, are in
test_folders_hostile.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

from conftest import Spawn
from test_files import two_people


def holiday(root: Path) -> dict[str, bytes]:
    """A folder with sub-folders, an empty file and a dot-file: {path: content}."""
    files = {
        "Holiday/beach.jpg": os.urandom(300_000),
        "Holiday/day 2/dinner.jpg": os.urandom(70_000),
        "Holiday/day 2/notes/.plan": b"swim",
        "Holiday/empty.txt": b"",
    }
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`: {path relative to root's parent: content}."""
    return {
        str(path.relative_to(root.parent)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def test_a_folder_arrives_as_that_folder_with_its_structure(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap = two_people(spawn, tmp_path)
    files = holiday(tmp_path / "laptop")
    (tmp_path / "laptop" / "Holiday" / "link.jpg").symlink_to(tmp_path / "laptop" / "secret")
    (tmp_path / "desktop" / "dl" / "Holiday").mkdir()  # a folder of that name is there
    lap.send("/send Holiday")
    lap.expect(r"^skipped Holiday/link\.jpg: a symbolic link \(links are not followed\)$")
    lap.expect(r"^Offered Holiday/ \(4 files, 370\.\d kB\) to desktop\.$")
    desk.expect(r"^laptop offers Holiday/ \(4 files, 370\.\d kB\): /accept 1 or /reject 1$")
    desk.send("/files")
    desk.expect(r"^  1\. Holiday/ \(4 files, 370\.\d kB\) from laptop: offered: /accept 1 ")
    desk.send("/accept 1")
    desk.expect(r"^Holiday/ \([0-4] of 4 files\): 50% of 370\.\d kB received$")
    saved = tmp_path / "desktop" / "dl" / "Holiday (1)"
    desk.expect(
        rf"^Received Holiday/ from laptop \(4 files, .*\): saved as {re.escape(str(saved))}$"
    )
    lap.expect(r"^desktop received Holiday/ \(4 files, ")
    assert {path.replace("Holiday (1)", "Holiday"): data for path, data in tree(saved).items()} == (
        files
    )
    assert sorted(os.listdir(tmp_path / "desktop" / "dl")) == ["Holiday", "Holiday (1)"]
    assert not (saved / "link.jpg").exists()


def test_several_files_or_a_quoted_glob_are_one_offer(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap = two_people(spawn, tmp_path)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "laptop" / name).write_bytes(name.encode() * 1000)
    (tmp_path / "desktop" / "dl" / "a.jpg").write_bytes(b"mine")
    lap.send("/send a.jpg b.jpg c.jpg")
    desk.expect(r"^laptop offers a\.jpg and 2 more \(3 files, 15\.\d kB\): /accept 1 ")
    desk.send("/accept")
    desk.expect(r"^Received a\.jpg and 2 more from laptop \(3 files, .*\): saved as 3 files in ")
    dl = tmp_path / "desktop" / "dl"
    assert sorted(os.listdir(dl)) == ["a (1).jpg", "a.jpg", "b.jpg", "c.jpg"]
    assert (dl / "a.jpg").read_bytes() == b"mine"
    assert (dl / "a (1).jpg").read_bytes() == b"a.jpg" * 1000
    lap.send('/send "*.jpg"')
    desk.expect(r"^laptop offers a\.jpg and 2 more \(3 files, 15\.\d kB\): /accept 2 ")
    lap.send("/send a.jpg Holiday")  # a folder among files: said, nothing offered
    lap.expect(r"^error: Holiday is a folder: send a folder on its own \(/send Holiday\)|no such")

"""Sending files (issue 11) between real `python chatclient.py` processes on 127.0.0.1:
an offer accepted or declined while the chat goes on, what cannot be sent, where files
are saved, and a file in a room. The pure parts are in test_filenames.py (names),
test_session.py (sealed chunks) and test_messages.py (the file messages); a peer that
misbehaves on purpose is in test_files_hostile.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import KEY, SCRIPT, TIMEOUT, ChatProcess, free_port, write_config

from chatclient.config import Config
from chatclient.firstrun import downloads_folder
from chatclient.messages import CHUNK_SIZE

Spawn = Callable[..., ChatProcess]


# --- Real processes ------------------------------------------------------------------


def two_people(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, ChatProcess]:
    """desktop listens (saving into desktop/dl), laptop connects (saving into laptop/dl)."""
    port = free_port()
    for name in ("desktop", "laptop"):
        (tmp_path / name / "dl").mkdir(parents=True)
        write_config(tmp_path / name, port=port, username=name)
    desk = spawn("--listen", "--downloads", "dl", *flags, cwd=tmp_path / "desktop")
    desk.expect(r"^Listening on ")
    lap = spawn("--connect", f"127.0.0.1:{port}", "--downloads", "dl", cwd=tmp_path / "laptop")
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^laptop joined the chat\.$")
    return desk, lap


def test_a_photo_and_a_big_file_cross_while_the_chat_goes_on(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap = two_people(spawn, tmp_path)
    photo = os.urandom(2_400_000)
    (tmp_path / "laptop" / "holiday.jpg").write_bytes(photo)
    big = tmp_path / "desktop" / "video.bin"
    with big.open("wb") as file:
        for _ in range(64):
            file.write(os.urandom(1 << 20))
    lap.send("/send holiday.jpg")
    lap.expect(r"^Offered holiday\.jpg \(2\.4 MB\) to desktop\.$")
    desk.expect(r"^laptop offers holiday\.jpg \(2\.4 MB\): /accept 1 or /reject 1$")
    desk.send("/accept")
    saved = tmp_path / "desktop" / "dl" / "holiday.jpg"
    desk.expect(
        rf"^Received holiday\.jpg from laptop \(2\.4 MB, SHA-256 verified\): saved as {saved}$"
    )
    lap.expect(r"^desktop received holiday\.jpg \(2\.4 MB in [0-9.]+ s\)\.$")
    assert saved.read_bytes() == photo
    desk.send("/send video.bin")  # the other way: each side numbers what it sees
    lap.expect(r"^desktop offers video\.bin \(67\.1 MB\): /accept 2 or /reject 2$")
    lap.send("/accept 2", "still here?")
    desk.send("yes, talking while it moves")
    desk.expect(r"^laptop says: still here\?$")
    lap.expect(r"^desktop says: yes, talking while it moves$")
    lap.expect(r"^video\.bin: 50% of 67\.1 MB received$")
    lap.expect(r"^Received video\.bin from desktop \(67\.1 MB, SHA-256 verified\)")
    desk.expect(r"^laptop received video\.bin \(67\.1 MB in ")
    assert (tmp_path / "laptop" / "dl" / "video.bin").read_bytes() == big.read_bytes()
    desk.send("/files")
    desk.expect(r"^  1\. holiday\.jpg \(2\.4 MB\) from laptop: done$")
    desk.expect(r"^  2\. video\.bin \(67\.1 MB\) to laptop: done$")
    lap.send("exit", "")
    assert lap.wait() == 0 and desk.wait() == 0
    assert not list((tmp_path / "laptop" / "dl").glob("*.part*"))


def test_a_declined_offer_and_a_second_copy_that_never_overwrites(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, lap = two_people(spawn, tmp_path)
    (tmp_path / "laptop" / "holiday.jpg").write_bytes(b"new photo")
    (tmp_path / "desktop" / "dl" / "holiday.jpg").write_bytes(b"old photo")
    lap.send("/send holiday.jpg")
    desk.expect(r"^laptop offers holiday\.jpg \(9 bytes\): /accept 1 or /reject 1$")
    desk.send("/reject 1")
    desk.expect(r"^Declined holiday\.jpg from laptop\.$")
    lap.expect(r"^desktop declined holiday\.jpg\.$")
    desk.send("/accept 1")
    desk.expect(r"^try again: 1 is not an offer waiting for an answer \(declined\)$")
    lap.send("/send holiday.jpg")
    desk.expect(r"^laptop offers holiday\.jpg \(9 bytes\): /accept 2 or /reject 2$")
    desk.send("/accept 2")
    desk.expect(r"saved as .*/dl/holiday \(1\)\.jpg$")
    assert (tmp_path / "desktop" / "dl" / "holiday.jpg").read_bytes() == b"old photo"
    assert (tmp_path / "desktop" / "dl" / "holiday (1).jpg").read_bytes() == b"new photo"


def test_what_cannot_be_sent_is_a_local_error_and_nothing_is_offered(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, lap = two_people(spawn, tmp_path)
    os.mkfifo(tmp_path / "laptop" / "pipe")
    (tmp_path / "laptop" / "folder").mkdir()
    lap.send("/send nothing.txt", "/send folder", "/send pipe", "/send /dev/null", "/send")
    lap.expect(r"^error: no such file: nothing\.txt: nothing offered$")
    lap.expect(r"^error: folder holds no files to send: nothing offered$")
    lap.expect(r"^error: pipe is not a regular file \(a device, FIFO or socket\): nothing")
    lap.expect(r"^error: /dev/null is not a regular file")
    lap.expect(r"^try again: /send PATH, or /send NAME PATH for one person$")
    lap.send("/accept x", "/cancel", "/cancel 9", "/files")
    lap.expect(r"^try again: /accept N \(/files lists the numbers\)$")
    lap.expect(r"^try again: /cancel N \(/files lists the numbers\)$")
    lap.expect(r"^try again: there is no transfer 9 \(/files lists them\)$")
    lap.expect(r"^No files offered or received yet: /send PATH offers one\.$")
    if os.geteuid() != 0:  # root reads anything
        secret = tmp_path / "laptop" / "secret.txt"
        secret.write_text("x")
        secret.chmod(0)
        lap.send("/send secret.txt")
        lap.expect(r"^error: cannot read secret\.txt: .*: nothing offered$")
    lap.send("after the errors")
    desk.expect(r"^laptop says: after the errors$")
    assert not any("offers" in line for line in desk.out)


def test_a_path_may_be_quoted_or_escaped_as_terminals_drop_it(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap = two_people(spawn, tmp_path)
    (tmp_path / "laptop" / "my photo.jpg").write_bytes(b"x")
    lap.send("/send 'my photo.jpg'", "/send my\\ photo.jpg", "/send desktop my photo.jpg")
    for number in (1, 2, 3):
        desk.expect(rf"^laptop offers my photo\.jpg \(1 byte\): /accept {number} or ")


def test_a_missing_downloads_folder_is_an_error_at_start(tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port(), username="desktop")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--listen", "--downloads", "nowhere"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: --downloads: {tmp_path}/nowhere is not a folder: ")


def test_files_go_to_the_desktop_download_folder_and_never_to_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    config = Config(path="config.ini")
    # Nothing there: chatclient's own folder in the data directory, made private.
    own = home / ".local" / "share" / "chatclient" / "downloads"
    assert downloads_folder(config, None) == str(own)
    assert own.stat().st_mode & 0o777 == 0o700
    # ~/Downloads where it exists.
    (home / "Downloads").mkdir()
    assert downloads_folder(config, None) == str(home / "Downloads")
    # XDG_DOWNLOAD_DIR (xdg-user-dirs) first, with $HOME expanded.
    (home / "Fetched").mkdir()
    (home / ".config").mkdir()
    (home / ".config" / "user-dirs.dirs").write_text(
        '# written by xdg-user-dirs-update\nXDG_DOWNLOAD_DIR="$HOME/Fetched"\n', encoding="utf-8"
    )
    assert downloads_folder(config, None) == str(home / "Fetched")
    # "$HOME/" alone means the desktop has no download folder.
    (home / ".config" / "user-dirs.dirs").write_text('XDG_DOWNLOAD_DIR="$HOME/"\n')
    assert downloads_folder(config, None) == str(home / "Downloads")
    there = Config(path="config.ini", downloads=str(tmp_path))
    assert downloads_folder(there, None) == str(tmp_path)
    assert str(tmp_path) not in (downloads_folder(config, None),)


# --- In a room -------------------------------------------------------------------------


def test_in_a_room_a_file_goes_to_everyone_or_to_one_person(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    people = {}
    for name in ("desktop", "alice", "bob"):
        (tmp_path / name / "dl").mkdir(parents=True)
        write_config(tmp_path / name, port=port, username=name, key=KEY)
    people["desktop"] = spawn("--listen", "--downloads", "dl", cwd=tmp_path / "desktop")
    people["desktop"].expect(r"^Listening on ")
    for name in ("alice", "bob"):
        people[name] = spawn(
            "--connect", f"127.0.0.1:{port}", "--downloads", "dl", cwd=tmp_path / name
        )
        people[name].expect(r"^WELCOME Welcome to the chat! I am desktop$")
    people["alice"].expect(r"^bob joined the chat")
    data = os.urandom(3 * CHUNK_SIZE + 5)
    (tmp_path / "alice" / "notes.pdf").write_bytes(data)
    people["alice"].send("/send notes.pdf")
    people["alice"].expect(r"^Offered notes\.pdf \(196\.6 kB\) to desktop, bob\.$")
    for name in ("desktop", "bob"):
        people[name].expect(r"^alice offers notes\.pdf \(196\.6 kB\): /accept 1 or /reject 1$")
        people[name].send("/accept")
        people[name].expect(r"^Received notes\.pdf from alice \(196\.6 kB, SHA-256 verified\)")
        people["alice"].expect(rf"^{name} received notes\.pdf \(196\.6 kB in ")
        assert (tmp_path / name / "dl" / "notes.pdf").read_bytes() == data
    (tmp_path / "bob" / "b.txt").write_text("for alice")
    (tmp_path / "desktop" / "d.txt").write_text("for bob")
    people["bob"].send("/send alice b.txt")
    people["bob"].expect(r"^Offered b\.txt \(9 bytes\) to alice\.$")
    people["alice"].expect(r"^bob offers b\.txt \(9 bytes\): /accept 3 or /reject 3$")
    people["alice"].send("/reject 3")
    people["bob"].expect(r"^alice declined b\.txt\.$")
    people["desktop"].send("/send bob d.txt")
    people["bob"].expect(r"^desktop offers d\.txt \(7 bytes\): /accept 3 ")
    people["bob"].send("/accept 3")
    people["bob"].expect(r"^Received d\.txt from desktop")
    assert not any("offers d.txt" in line for line in people["alice"].out)
    assert not any("b.txt" in line for line in people["desktop"].out)
    assert (tmp_path / "bob" / "dl" / "d.txt").read_text() == "for bob"

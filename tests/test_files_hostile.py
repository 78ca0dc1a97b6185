"""Sending files with a real `python chatclient.py --listen` on 127.0.0.1 and, in the
test, Mallory: a peer speaking the real protocol that sends exactly what the test
says. Hostile names, data nobody asked for, more, less or other bytes than offered, a
tampered chunk, a transfer cut at 60% that resumes, credit, cancelling either way, a
full disk, the progress row on a real terminal (tmux), and what review found."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SCRIPT, TIMEOUT, ChatProcess, Spawn, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, drive

from chatclient.disk import FILE_WINDOW
from chatclient.filenames import PartialInfo
from chatclient.handshake import Role
from chatclient.messages import (
    CHUNK_SIZE,
    Chat,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Message,
)
from chatclient.peer import (
    ChunkReceived,
    Closed,
    Established,
    Failed,
    MessageReceived,
    PeerProtocol,
)

# --- A peer that misbehaves on purpose -----------------------------------------------


class Mallory:
    """An in-process connector speaking the real protocol, to send what it likes."""

    def __init__(
        self, port: int, identity: Ed25519PrivateKey | None = None, name: str = "mallory"
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.peer = PeerProtocol(Role.CONNECTOR, PSK, name, time.monotonic(), identity=identity)
        drive(self.sock, self.peer, Established)
        self.held: list[Message] = []  # messages that came while chunks were awaited

    def send(self, *messages: Message) -> None:
        for message in messages:
            self.sock.sendall(self.peer.send(message, time.monotonic()))

    def chunk(self, transfer: int, offset: int, data: bytes) -> None:
        self.sock.sendall(self.peer.send_chunk(transfer, offset, data, time.monotonic()))

    def offer(self, number: int, data: bytes, name: str = "x.bin") -> None:
        """Offer `data` (its fingerprint, made up: the SHA-256 of the data)."""
        self.send(FileOffer(number, len(data), hashlib.sha256(data).digest(), name))

    def done(self, number: int, data: bytes) -> None:
        """All of file `number` is sent: its SHA-256 is `data`'s."""
        self.send(FileDone(number, hashlib.sha256(data).digest()))

    def expect(self, kind: type[Message], timeout: float = TIMEOUT) -> Message:
        """The next message of `kind` from the listener (others are skipped)."""
        for message in self.held:
            if isinstance(message, kind):
                self.held.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            for event in self.peer.events():
                if isinstance(event, MessageReceived) and isinstance(event.message, kind):
                    return event.message
                assert not isinstance(event, (Failed, Closed)), event
            if data := self.peer.data_to_send():
                self.sock.sendall(data)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind.__name__} within {timeout} s")
            self.peer.receive_data(self.sock.recv(1 << 20), time.monotonic())

    def send_all(self, number: int, data: bytes, start: int = 0) -> None:
        for offset in range(start, len(data), CHUNK_SIZE):
            self.chunk(number, offset, data[offset : offset + CHUNK_SIZE])


def listener(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, int, Path]:
    port = free_port()
    (tmp_path / "dl").mkdir(exist_ok=True)
    write_config(tmp_path, port=port, username="desktop")
    desk = spawn("--listen", "--downloads", "dl", "--keepalive", "60", *flags)
    desk.expect(r"^Listening on ")
    return desk, port, tmp_path / "dl"


def with_mallory(spawn: Spawn, tmp_path: Path) -> tuple[ChatProcess, Path, Mallory]:
    """A listener, its downloads folder, and Mallory in its chat."""
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port)
    desk.expect(r"^mallory joined the chat\.$")
    return desk, downloads, mallory


def test_hostile_names_land_inside_the_downloads_folder_or_are_refused(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    names = ["../../.bashrc", "/etc/passwd", "C:\\x", "evil\x1b[2J.txt", ".."]
    for number, name in enumerate(names, start=1):
        mallory.offer(number, name.encode(), name)
    desk.expect(r"^mallory offered a file named '\.\.', which cannot be saved under a safe name")
    assert mallory.expect(FileReject) == FileReject(5)
    for number, shown in enumerate(["bashrc", "passwd", "x", "evil[2J.txt"], start=1):
        desk.expect(rf"^mallory offers {shown.replace('[', '.')} \(\d+ bytes\): /accept {number} ")
        desk.send(f"/accept {number}")
        mallory.expect(FileAccept)
        mallory.send_all(number, names[number - 1].encode())
        mallory.done(number, names[number - 1].encode())
        desk.expect(rf"saved as {downloads}/{shown.replace('[', '.')}$")
    assert sorted(os.listdir(downloads)) == ["bashrc", "evil[2J.txt", "passwd", "x"]
    assert not any("\x1b" in line for line in desk.out + desk.err)
    assert (tmp_path / "identity.key").exists()  # nothing written outside dl


def test_data_nobody_accepted_or_asked_for_is_never_written(spawn: Spawn, tmp_path: Path) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    mallory.offer(1, b"a" * 100, "pushed.bin")
    desk.expect(r"^mallory offers pushed\.bin")
    mallory.chunk(1, 0, b"a" * 100)  # before any /accept
    desk.expect(
        r"^error: mallory sent data for pushed\.bin before it was accepted: transfer ended, "
        r"nothing saved$"
    )
    assert mallory.expect(FileCancel) == FileCancel(
        1, False, "mallory sent data for pushed.bin before it was accepted"
    )
    mallory.chunk(9, 0, b"never offered")
    desk.expect(r"^mallory sent data for a file it never offered: ignored$")
    mallory.offer(2, b"b" * 10, "cancelled.bin")
    desk.expect(r"^mallory offers ")
    desk.send("/accept 2")
    desk.expect(r"^Receiving cancelled\.bin from mallory into ")
    mallory.send(FileCancel(2, True, "changed my mind"))
    desk.expect(r"^mallory cancelled cancelled\.bin: changed my mind\.$")
    mallory.chunk(2, 0, b"b" * 10)
    desk.expect(r"^mallory sent data for cancelled\.bin after it ended: ignored$")
    assert os.listdir(downloads) == []
    desk.send("still talking")
    assert mallory.expect(Chat) == Chat("still talking")


@pytest.mark.parametrize(
    ("sent", "done", "error"),
    [
        (b"x" * 20, False, r"sent more of over\.bin than the 10 bytes it announced"),
        (b"x" * 5, True, r"sent less of over\.bin than announced \(5 of 10 bytes\)"),
        (b"y" * 10, True, r"^error: over\.bin from mallory does not match the SHA-256"),
    ],
)
def test_a_sender_that_sends_more_less_or_other_bytes_saves_nothing(
    spawn: Spawn, tmp_path: Path, sent: bytes, done: bool, error: str
) -> None:
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port)
    mallory.offer(1, b"x" * 10, "over.bin")
    desk.expect(r"^mallory offers ")
    desk.send("/accept")
    assert mallory.expect(FileAccept) == FileAccept(1, 0, FILE_WINDOW)
    mallory.chunk(1, 0, sent)
    if done:
        mallory.done(1, b"x" * 10)  # the bytes offered
    desk.expect(error)
    assert mallory.expect(FileCancel).id == 1  # type: ignore[attr-defined]
    assert os.listdir(downloads) == []


def test_a_tampered_chunk_ends_the_connection(spawn: Spawn, tmp_path: Path) -> None:
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port)
    mallory.offer(1, b"x" * 10)
    desk.expect(r"^mallory offers ")
    desk.send("/accept")
    mallory.expect(FileAccept)
    frame = bytearray(mallory.peer.send_chunk(1, 0, b"x" * 10, time.monotonic()))
    frame[-1] ^= 1
    mallory.sock.sendall(frame)
    desk.expect(r"^Connection lost: a file chunk failed its integrity check")
    assert desk.wait() == 1
    assert not list(downloads.glob("x.bin"))


def test_a_transfer_cut_at_60_percent_resumes_from_there(spawn: Spawn, tmp_path: Path) -> None:
    desk, port, downloads = listener(spawn, tmp_path, "--reconnect-for", "0")
    data = os.urandom(40 * CHUNK_SIZE)
    cut = 24 * CHUNK_SIZE  # 60%
    identity = Ed25519PrivateKey.generate()
    mallory = Mallory(port, identity)
    mallory.offer(1, data, "holiday.jpg")
    desk.expect(r"^mallory offers ")
    desk.send("/accept")
    mallory.expect(FileAccept)
    mallory.send_all(1, data[:cut])
    desk.expect(r"^holiday\.jpg: 50% of 2\.6 MB received$")
    mallory.sock.shutdown(socket.SHUT_WR)  # gone, after what it sent (not a reset)
    desk.expect(r"^holiday\.jpg stopped: the connection ended \(60% kept: offered again, ")
    desk.expect(r"^Connection lost: ")
    assert desk.wait() == 1  # the two-person chat ended with the connection
    stopped = next(i for i, line in enumerate(desk.out) if " stopped: the connection " in line)
    lost = next(i for i, line in enumerate(desk.out) if line.startswith("Connection lost: "))
    assert stopped < lost  # what happened to the file, then the chat's last line
    assert (downloads / "holiday.jpg.part").stat().st_size == cut  # every byte that came
    assert "fingerprint = " in (downloads / "holiday.jpg.part.meta").read_text()
    for working in ("holiday.jpg.part", "holiday.jpg.part.meta"):
        assert (downloads / working).stat().st_mode & 0o777 == 0o600
    desk, port, downloads = listener(spawn, tmp_path)
    eve = Mallory(port, name="eve")  # the same file from someone else: not resumed
    eve.offer(1, data, "holiday.jpg")
    desk.expect(r"^eve offers ")
    desk.send("/accept")
    assert eve.expect(FileAccept) == FileAccept(1, 0, FILE_WINDOW)
    eve.send(FileCancel(1, True, ""))
    desk.expect(r"^eve cancelled holiday\.jpg\.$")
    mallory = Mallory(port, identity)
    mallory.offer(1, data, "holiday.jpg")
    desk.expect(r"^mallory offers ")
    desk.send("/accept 2")
    assert mallory.expect(FileAccept) == FileAccept(1, cut, FILE_WINDOW)
    desk.expect(r"^Resuming holiday\.jpg at 60%$")
    mallory.send_all(1, data, start=cut)
    mallory.done(1, data)
    desk.expect(r"^Received holiday\.jpg from mallory \(2\.6 MB, SHA-256 verified\)")
    assert (downloads / "holiday.jpg").read_bytes() == data
    assert sorted(os.listdir(downloads)) == ["holiday.jpg"]


def test_the_receiver_grants_credit_and_the_sender_waits_for_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    """A receiver that grants one chunk gets one chunk; more credit, more data."""
    desk, _, mallory = with_mallory(spawn, tmp_path)
    data = os.urandom(4 * CHUNK_SIZE)
    (tmp_path / "four.bin").write_bytes(data)
    desk.send("/send four.bin")
    offer = mallory.expect(FileOffer)
    assert isinstance(offer, FileOffer) and offer.size == len(data)
    received: list[bytes] = []
    mallory.send(FileAccept(offer.id, 0, CHUNK_SIZE))
    received += chunks(mallory, 1)
    mallory.send(FileCredit(offer.id, 3 * CHUNK_SIZE))
    received += chunks(mallory, 3)
    assert b"".join(received) == data
    assert mallory.expect(FileDone) == FileDone(offer.id, hashlib.sha256(data).digest())
    mallory.send(FileReceived(offer.id))
    desk.expect(r"^mallory received four\.bin \(262\.1 kB in ")


def chunks(mallory: Mallory, count: int) -> list[bytes]:
    """The next `count` chunks the listener sends, in order."""
    got: list[bytes] = []
    mallory.sock.settimeout(TIMEOUT)
    while len(got) < count:
        for event in mallory.peer.events():
            if isinstance(event, ChunkReceived):
                got.append(event.data)
            elif isinstance(event, MessageReceived):
                mallory.held.append(event.message)
        if len(got) < count:
            mallory.peer.receive_data(mallory.sock.recv(1 << 20), time.monotonic())
    return got


def test_a_file_changed_while_it_is_sent_fails_cleanly(spawn: Spawn, tmp_path: Path) -> None:
    desk, _, mallory = with_mallory(spawn, tmp_path)
    path = tmp_path / "growing.log"
    path.write_bytes(b"a" * (200 * CHUNK_SIZE))
    desk.send("/send growing.log")
    offer = mallory.expect(FileOffer)
    assert isinstance(offer, FileOffer)
    mallory.send(FileAccept(offer.id, 0, CHUNK_SIZE))
    chunks(mallory, 1)
    with path.open("r+b") as file:  # changed past what is read ahead
        file.seek(150 * CHUNK_SIZE)
        file.write(b"b")
    mallory.send(FileCredit(offer.id, 199 * CHUNK_SIZE))
    cancel = mallory.expect(FileCancel)
    assert cancel == FileCancel(offer.id, True, "it changed while it was being sent")
    desk.expect(
        r"^error: growing\.log changed while it was being sent: cancelled; send it again once "
        r"it is final$"
    )


def test_either_side_can_cancel_and_the_other_is_told(spawn: Spawn, tmp_path: Path) -> None:
    desk, downloads, mallory = with_mallory(spawn, tmp_path)
    (tmp_path / "slow.bin").write_bytes(os.urandom(8 * CHUNK_SIZE))
    desk.send("/send slow.bin")
    offer = mallory.expect(FileOffer)
    assert isinstance(offer, FileOffer)
    mallory.send(FileAccept(offer.id, 0, CHUNK_SIZE))  # then no more credit: it waits
    desk.expect(r"^mallory accepted slow\.bin\.$")
    desk.send("/cancel 1")
    desk.expect(r"^Cancelled slow\.bin\.$")
    assert mallory.expect(FileCancel) == FileCancel(offer.id, True, "")
    mallory.offer(1, b"z" * (3 * CHUNK_SIZE), "theirs.bin")
    desk.expect(r"^mallory offers ")
    desk.send("/accept 2")
    mallory.expect(FileAccept)
    mallory.chunk(1, 0, b"z" * CHUNK_SIZE)
    desk.send("/cancel 2")
    desk.expect(r"^Cancelled theirs\.bin\.$")
    assert mallory.expect(FileCancel) == FileCancel(1, False, "")
    mallory.send(FileCancel(offer.id, False, ""))  # crossing: harmless
    mallory.chunk(1, CHUNK_SIZE, b"z" * CHUNK_SIZE)  # in flight as we cancelled: dropped
    desk.send("/files")
    desk.expect(r"^  1\. slow\.bin \(524\.3 kB\) to mallory: cancelled$")
    desk.expect(r"^  2\. theirs\.bin \(196\.6 kB\) from mallory: cancelled$")
    assert os.listdir(downloads) == []
    assert not any("after it ended" in line for line in desk.out + desk.err)


def test_too_little_free_space_is_an_error_and_nothing_is_written(
    spawn: Spawn, tmp_path: Path
) -> None:
    small = tmp_path / "dl"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        desk, port, _ = listener(spawn, tmp_path)
        mallory = Mallory(port)
        mallory.offer(1, b"x" * 3_000_000, "big.bin")
        desk.expect(r"^mallory offers ")
        desk.send("/accept")
        desk.expect(
            rf"^error: not enough space in {small} for big\.bin: it needs 3\.0 MB, "
            r"[0-9.]+ [kM]B is free \(make room and /accept 1 again, or /reject 1\)$"
        )
        assert os.listdir(small) == []
        desk.send("/reject 1")
        assert mallory.expect(FileReject) == FileReject(1)
        desk.kill()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# --- On a terminal -----------------------------------------------------------------------


class Tmux:
    """A real terminal: chatclient in a tmux session of its own, read back as the screen."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.socket = f"chatclient-test-{os.getpid()}-{time.monotonic_ns()}"
        command = " ".join([sys.executable, str(SCRIPT), *args])
        self.tmux("new-session", "-d", "-x", "100", "-y", "20", "-c", str(folder), command)

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return result.stdout

    def rows(self) -> list[str]:
        """The screen's rows, without the empty ones at the bottom."""
        screen = self.tmux("capture-pane", "-p").rstrip("\n").split("\n")
        return [row.rstrip() for row in screen]

    def wait_for(self, check: Callable[[list[str]], bool]) -> list[str]:
        """The screen once `check` holds (polled: tmux has no event to wait on)."""
        deadline = time.monotonic() + TIMEOUT
        while not check(rows := self.rows()):
            if time.monotonic() > deadline:
                raise AssertionError("the screen never showed it:\n" + "\n".join(rows))
            time.sleep(0.05)
        return rows

    def type(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_progress_is_one_row_above_the_prompt_and_never_touches_the_typed_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    (tmp_path / "dl").mkdir()
    write_config(tmp_path, port=port, username="desktop")
    (tmp_path / "four.bin").write_bytes(os.urandom(4 * CHUNK_SIZE))
    screen = Tmux(tmp_path, "--listen", "--downloads", "dl", "--keepalive", "60")
    try:
        screen.wait_for(lambda rows: any(row.startswith("Listening on") for row in rows))
        mallory = Mallory(port)
        screen.wait_for(lambda rows: "mallory joined the chat." in rows)
        screen.type("/send four.bin", "Enter")
        offer = mallory.expect(FileOffer)
        assert isinstance(offer, FileOffer)
        screen.type("half typed")
        mallory.send(FileAccept(offer.id, 0, CHUNK_SIZE))  # one chunk of four, then nothing
        chunks(mallory, 1)
        mallory.send(Chat("a message meanwhile"))
        rows = screen.wait_for(lambda rows: "desktop> half typed" in rows)
        rows = screen.wait_for(lambda rows: "mallory says: a message meanwhile" in rows)
        last = [row for row in rows if row]
        assert last[-1] == "desktop> half typed"
        # The rate, once time has passed since the accept (the first chunk may go with it).
        assert re.fullmatch(
            r"four\.bin 25% \(65\.5 kB of 262\.1 kB(, [0-9.]+ MB/s, .* left)?\)", last[-2]
        )
        assert sum("%" in row for row in rows) == 1  # one status row, redrawn in place
        mallory.send(FileCredit(offer.id, 3 * CHUNK_SIZE))
        chunks(mallory, 3)
        assert mallory.expect(FileDone).id == offer.id  # type: ignore[attr-defined]
        mallory.send(FileReceived(offer.id))
        rows = screen.wait_for(lambda rows: any("mallory received four.bin" in r for r in rows))
        rows = screen.wait_for(lambda rows: [r for r in rows if r][-1] == "desktop> half typed")
        assert not any("%" in row for row in rows)  # the status row is gone
        screen.type(" and sent", "Enter")
        assert mallory.expect(Chat) == Chat("half typed and sent")
    finally:
        screen.close()


# --- Found by review ----------------------------------------------------------------


def test_a_long_name_in_a_refusal_never_stops_the_chat(spawn: Spawn, tmp_path: Path) -> None:
    """The reason of a FILECANCEL is cut to its limit in bytes, however long the names."""
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port, name="m" * 60)
    desk.expect(r"^m{60} joined the chat\.$")
    mallory.offer(1, b"x" * 10, "é" * 100)
    desk.expect(r"offers é{100} \(10 bytes\)")
    desk.send("/accept")
    mallory.expect(FileAccept)
    mallory.chunk(1, 5, b"x" * 5)  # out of place
    desk.expect(r"^error: m{60} sent data for é{100} out of place")
    cancel = mallory.expect(FileCancel)
    assert isinstance(cancel, FileCancel) and len(cancel.reason.encode()) <= 256
    desk.send("still here")
    assert mallory.expect(Chat) == Chat("still here")
    assert os.listdir(downloads) == []


def test_a_peer_cannot_plant_a_record_that_a_resume_would_trust(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port, downloads = listener(spawn, tmp_path)
    (downloads / "movie.mkv.part").write_bytes(b"the user's own download")
    mallory = Mallory(port)
    desk.expect(r"^mallory joined the chat\.$")
    record = PartialInfo("movie.mkv", 46, hashlib.sha256(b"y" * 46).digest(), bytes(32))
    mallory.offer(1, record.render().encode(), "movie.mkv.part.meta")
    desk.expect(r"^mallory offers movie\.mkv_part\.meta ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, record.render().encode())
    mallory.done(1, record.render().encode())
    desk.expect(r"saved as .*/movie\.mkv_part\.meta$")
    assert (downloads / "movie.mkv.part").read_bytes() == b"the user's own download"
    assert sorted(os.listdir(downloads)) == ["movie.mkv.part", "movie.mkv_part.meta"]


def test_a_host_holds_at_most_its_window_of_a_file_it_relays(spawn: Spawn, tmp_path: Path) -> None:
    """A receiver granting ever so much credit gets the sender granted the host's window."""
    desk, port, _ = listener(spawn, tmp_path)
    alice = Mallory(port, name="alice")
    bob = Mallory(port, name="bob")
    desk.expect(r"^bob joined the chat\.$")
    alice.send(FileOffer(1, 2**40, bytes(32), "huge.bin", "bob"))
    offer = bob.expect(FileOffer)
    assert isinstance(offer, FileOffer) and offer.who == "alice"
    bob.send(FileAccept(offer.id, 0, 2**62))
    assert alice.expect(FileAccept) == FileAccept(1, 0, FILE_WINDOW)
    alice.chunk(1, 0, b"z" * CHUNK_SIZE)
    assert chunks(bob, 1) == [b"z" * CHUNK_SIZE]
    assert alice.expect(FileCredit) == FileCredit(1, CHUNK_SIZE)  # granted as passed on


def test_pause_typed_by_the_receiver_keeps_what_came_and_a_new_offer_resumes(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Issue 20: /pause N from the terminal; the sender is told to keep its place."""
    desk, port, downloads = listener(spawn, tmp_path)
    mallory = Mallory(port, Ed25519PrivateKey.generate())
    data = os.urandom(8 * CHUNK_SIZE)
    mallory.offer(1, data, "movie.mkv")
    desk.expect(r"^mallory offers movie\.mkv ")
    desk.send("/accept 1")
    mallory.expect(FileAccept)
    mallory.send_all(1, data[: 3 * CHUNK_SIZE])
    desk.expect(r"^movie\.mkv: 25% of 524\.3 kB received$")
    desk.send("/pause 1")
    desk.expect(r"^Paused movie\.mkv \(37%, 196\.6 kB kept\): it resumes there when it is offered")
    assert mallory.expect(FileCancel) == FileCancel(1, False, "paused", True)
    mallory.offer(2, data, "movie.mkv")
    desk.expect(r"^mallory offers movie\.mkv \(524\.3 kB, 37% already here\): /accept 2 to resume")
    desk.send("/accept 2")
    assert mallory.expect(FileAccept) == FileAccept(2, 3 * CHUNK_SIZE, FILE_WINDOW)
    mallory.send_all(2, data, start=3 * CHUNK_SIZE)
    mallory.done(2, data)
    desk.expect(r"^Received movie\.mkv from mallory \(524\.3 kB, SHA-256 verified\)")
    assert (downloads / "movie.mkv").read_bytes() == data


def test_two_chatclients_receiving_into_one_folder_never_share_a_part(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Found by a newcomer: two of one person's chats accepting the same file at once wrote
    one .part; a part another chatclient holds is never resumed from."""
    shared = tmp_path / "shared"
    shared.mkdir()
    identity = Ed25519PrivateKey.generate()
    data = os.urandom(6 * CHUNK_SIZE)
    desks, mallories = [], []
    for name in ("one", "two"):
        port = free_port()
        (tmp_path / name).mkdir()
        write_config(tmp_path / name, port=port, username=name)
        desk = spawn("--listen", "--downloads", str(shared), cwd=tmp_path / name)
        desk.expect(r"^Listening on ")
        mallory = Mallory(port, identity)
        mallory.offer(1, data, "x.bin")
        desk.expect(r"^mallory offers x\.bin \(393\.2 kB\): /accept 1 or /reject 1$")
        desk.send("/accept 1")
        assert mallory.expect(FileAccept) == FileAccept(1, 0, FILE_WINDOW)  # not one's part
        mallory.send_all(1, data[: 3 * CHUNK_SIZE])
        desk.expect(r"^x\.bin: 50% of 393\.2 kB received$")
        desks.append(desk)
        mallories.append(mallory)
    for desk, mallory in zip(desks, mallories, strict=True):
        mallory.send_all(1, data, start=3 * CHUNK_SIZE)
        mallory.done(1, data)
        desk.expect(r"^Received x\.bin from mallory \(393\.2 kB, SHA-256 verified\)")
    assert sorted(os.listdir(shared)) == ["x (1).bin", "x.bin"]
    assert (shared / "x.bin").read_bytes() == (shared / "x (1).bin").read_bytes() == data

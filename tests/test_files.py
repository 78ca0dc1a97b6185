"""Sending files (issue 11): safe names, sealed chunks, credit, resume, hostile senders.

Pure tests check names, sizes, the chunk cipher and the messages; real-process
tests run `python chatclient.py` on 127.0.0.1, with an in-process peer speaking
the real protocol where a test needs one that misbehaves on purpose.
"""

from __future__ import annotations

import contextlib
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
from conftest import KEY, SCRIPT, TIMEOUT, ChatProcess, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pair import PSK, drive, handshake_keys

from chatclient.config import Config
from chatclient.disk import FILE_WINDOW, place_file
from chatclient.errors import ProtocolError
from chatclient.filenames import MAX_SAVED_NAME, PartialInfo, numbered, safe_file_name
from chatclient.firstrun import downloads_folder
from chatclient.handshake import Role
from chatclient.messages import (
    CHUNK_SIZE,
    FRAME_HEADER,
    MESSAGES,
    Chat,
    FieldReader,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Message,
    Phase,
    chunk_nonce,
    decode_payload,
    encode_payload,
)
from chatclient.peer import (
    ChunkReceived,
    Closed,
    Established,
    Failed,
    MessageReceived,
    PeerProtocol,
)
from chatclient.session import Session
from chatclient.text import format_size

Spawn = Callable[..., ChatProcess]


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
    for text in ("", "size = 1\n", info.render().replace("sha256 = 00", "sha256 = zz")):
        assert PartialInfo.parse(text) is None


# --- Chunks: AES-256-GCM with a counter nonce (pure) ---------------------------------


def sessions() -> tuple[Session, Session]:
    connector_keys, listener_keys = handshake_keys()
    connector, listener = Session(connector_keys), Session(listener_keys)
    for session in (connector, listener):  # both past the WELCOMEs, as in a chat
        session._send_phase = session._recv_phase = Phase.OPEN
    return connector, listener


def body(frame: bytes) -> bytes:
    return frame[FRAME_HEADER.size :]


def test_chunks_open_in_order_with_their_id_and_offset() -> None:
    connector, listener = sessions()
    for offset in range(0, 5 * CHUNK_SIZE, CHUNK_SIZE):
        data = os.urandom(CHUNK_SIZE)
        assert listener.open_chunk(body(connector.seal_chunk(7, offset, data))) == (7, offset, data)


def test_no_nonce_repeats_under_a_key_and_the_directions_differ() -> None:
    connector, listener = sessions()
    assert connector.keys.file_send_key == listener.keys.file_recv_key
    assert connector.keys.file_send_key != connector.keys.file_recv_key
    nonces = {chunk_nonce(d, n) for d in (0, 1) for n in range(10_000)}
    assert len(nonces) == 20_000
    assert chunk_nonce(connector.keys.direction, 0) != chunk_nonce(listener.keys.direction, 0)
    # the same data at the same place twice: two different ciphertexts
    first, second = connector.seal_chunk(1, 0, b"same"), connector.seal_chunk(1, 0, b"same")
    assert first[-20:] != second[-20:]


def tampered(frame: bytes, position: int) -> bytes:
    data = bytearray(body(frame))
    data[position] ^= 1
    return bytes(data)


@pytest.mark.parametrize("where", ["id", "offset", "data", "tag"])
def test_a_flipped_bit_anywhere_fails(where: str) -> None:
    connector, listener = sessions()
    frame = connector.seal_chunk(1, 0, b"x" * 100)
    position = {"id": 2, "offset": 12, "data": 20, "tag": -1}[where]
    with pytest.raises(ProtocolError, match="integrity check"):
        listener.open_chunk(tampered(frame, position))


def test_swapped_replayed_and_misplaced_chunks_fail() -> None:
    connector, listener = sessions()
    first, second = connector.seal_chunk(1, 0, b"a" * 10), connector.seal_chunk(1, 10, b"b" * 10)
    with pytest.raises(ProtocolError):  # swapped
        sessions()[1].open_chunk(body(second))
    connector, listener = sessions()
    first = connector.seal_chunk(1, 0, b"a" * 10)
    listener.open_chunk(body(first))
    with pytest.raises(ProtocolError):  # replayed
        listener.open_chunk(body(first))
    connector, listener = sessions()
    frame = bytearray(body(connector.seal_chunk(1, 0, b"a" * 10)))
    frame[1:5] = (2).to_bytes(4, "big")  # presented as a chunk of another transfer
    with pytest.raises(ProtocolError):
        listener.open_chunk(bytes(frame))
    connector, listener = sessions()
    reflected = listener.seal_chunk(1, 0, b"a")  # our own chunk sent back to us
    with pytest.raises(ProtocolError):
        listener.open_chunk(body(reflected))


def test_short_and_oversized_chunks_fail_before_any_work() -> None:
    _, listener = sessions()
    for bad in (b"\0" * 20, b"\0" * (13 + CHUNK_SIZE + 17)):
        with pytest.raises(ProtocolError):
            listener.open_chunk(bad)


FILE_MESSAGES = [
    FileOffer(1, 2_400_000, bytes(32), "holiday.jpg", "alice"),
    FileOffer(2**32 - 1, 2**64 - 1, b"\xff" * 32, "x" * 1024),
    FileAccept(1, 0, 4 * 2**20),
    FileReject(3),
    FileCredit(3, 2**20),
    FileDone(4),
    FileReceived(5),
    FileCancel(6, True, "changed while it was being sent"),
    FileCancel(6, False),
]


@pytest.mark.parametrize("message", FILE_MESSAGES)
def test_file_messages_round_trip(message: Message) -> None:
    assert decode_payload(encode_payload(9, message)) == (9, message)


@given(st.sampled_from([13, 14, 15, 16, 17, 18, 19]), st.binary(max_size=80))
def test_file_message_bodies_fail_only_with_protocol_errors(tag: int, data: bytes) -> None:
    kind = MESSAGES[tag]
    with contextlib.suppress(ProtocolError):
        kind.decode_body(FieldReader(data, kind.__name__))


def test_an_offer_from_a_name_that_breaks_the_rules_is_refused() -> None:
    bad = FileOffer(1, 1, bytes(32), "a", "#x").encode_body()
    with pytest.raises(ProtocolError):
        FileOffer.decode_body(FieldReader(bad, "FileOffer"))


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
    lap.expect(r"^error: folder is a folder: send one file \(zip the folder first\): nothing")
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


def test_files_go_to_the_config_folder_or_to_downloads_in_home(tmp_path: Path) -> None:
    (tmp_path / "Downloads").mkdir()
    config = Config(path="config.ini")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(tmp_path)
    try:
        assert downloads_folder(config, None) == str(tmp_path / "Downloads")
        (tmp_path / "Downloads").rmdir()
        assert downloads_folder(config, None) == os.getcwd()
        there = Config(path="config.ini", downloads=str(tmp_path))
        assert downloads_folder(there, None) == str(tmp_path)
    finally:
        if old is not None:
            os.environ["HOME"] = old


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

    def offer(self, number: int, data: bytes, name: str = "x.bin", digest: bytes = b"") -> None:
        self.send(FileOffer(number, len(data), digest or hashlib.sha256(data).digest(), name))

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
        mallory.send(FileDone(number))
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
        mallory.send(FileDone(1))
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
    desk, port, downloads = listener(spawn, tmp_path)
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
    assert (downloads / "holiday.jpg.part").stat().st_size == cut  # every byte that came
    assert "sha256 = " in (downloads / "holiday.jpg.part.meta").read_text()
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
    desk.expect(r"^resuming holiday\.jpg at 60%$")
    mallory.send_all(1, data, start=cut)
    mallory.send(FileDone(1))
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
    assert isinstance(offer, FileOffer) and offer.digest == hashlib.sha256(data).digest()
    received: list[bytes] = []
    mallory.send(FileAccept(offer.id, 0, CHUNK_SIZE))
    received += chunks(mallory, 1)
    mallory.send(FileCredit(offer.id, 3 * CHUNK_SIZE))
    received += chunks(mallory, 3)
    assert b"".join(received) == data
    assert mallory.expect(FileDone) == FileDone(offer.id)
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
        assert re.fullmatch(
            r"four\.bin 25% \(65\.5 kB of 262\.1 kB, [0-9.]+ MB/s, .* left\)", last[-2]
        )
        assert sum("%" in row for row in rows) == 1  # one status row, redrawn in place
        mallory.send(FileCredit(offer.id, 3 * CHUNK_SIZE))
        chunks(mallory, 3)
        assert mallory.expect(FileDone) == FileDone(offer.id)
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
    mallory.send(FileDone(1))
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

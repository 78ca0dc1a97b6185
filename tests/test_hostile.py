"""Hostile peers against a real listener process, on 127.0.0.1 only.

A man-in-the-middle relay sits between two real chatclient processes and
tampers with, duplicates, reflects, records or cuts their frames; plain
sockets play attackers that never learned the key (silent, trickling,
garbage, a 4 GiB length prefix, a replayed session), and one attacker runs
the real handshake to become an authenticated peer that then misbehaves.
Every wait is on process output, a socket read or an Event, each with a timeout.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import resource
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from enum import Enum
from pathlib import Path

import pytest
from conftest import KEY, OTHER_KEY, TIMEOUT, ChatProcess, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import OTHER_PSK, drive

from chatclient.config import decode_key
from chatclient.handshake import (
    HELLO_SIZE,
    MAGIC,
    VERSION,
    ConnectorHandshake,
    ListenerHandshake,
    Mode,
    Role,
    derive_psk,
    welcome_signed_data,
)
from chatclient.messages import Chat, FrameDecoder, Welcome, encode_frame
from chatclient.peer import Established, Failed, PeerProtocol
from chatclient.room import MAX_PENDING_HANDSHAKES
from chatclient.session import Session

Spawn = Callable[..., ChatProcess]

PSK = derive_psk(decode_key(KEY, program="chatclient"))
Role = Role
# Memory may grow this much (KiB) while a huge frame is refused.
GROWTH_KIB = 20 * 1024
# Keepalives would shift the frame numbers the relay's transforms count on.
QUIET = ("--keepalive", "60")

# Frame numbers per direction: connector->listener is M1, M3, WELCOME, then
# chats; listener->connector is M2, WELCOME, then chats.
# Frames before the first CHAT: M1, M3, WELCOME, READY from the connector; M2, WELCOME,
# MEMBERS from the listener.
FIRST_CHAT = {"to_listener": 4, "to_connector": 3}


# --- Processes ---------------------------------------------------------------


def start_listener(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, int]:
    """A real `--listen` process named desktop on a free port, already listening."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    listener = spawn("--config", "desktop.ini", "--listen", *QUIET, *flags)
    listener.expect(r"^Listening on 127\.0\.0\.1:")
    return listener, port


def start_connector(
    spawn: Spawn, tmp_path: Path, port: int, name: str = "laptop", key: str = KEY
) -> ChatProcess:
    """A real `--connect 127.0.0.1:port` process (not waited on)."""
    config = f"{name}-{'key' if key == KEY else 'otherkey'}.ini"
    write_config(tmp_path, config, port=port, username=name, key=key)
    return spawn("--config", config, "--connect", f"127.0.0.1:{port}", *QUIET)


def joined(listener: ChatProcess, connector: ChatProcess, name: str = "laptop") -> None:
    """Wait until both sides show that the chat began."""
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(rf"^{name} joined the chat\.$")


def chat_both_ways(listener: ChatProcess, connector: ChatProcess, tag: str) -> None:
    """Prove a chat works: one line each way arrives."""
    connector.send(f"hello {tag}")
    listener.expect(rf"^laptop says: hello {tag}$")
    listener.send(f"hi {tag}")
    connector.expect(rf"^desktop says: hi {tag}$")


def says(process: ChatProcess) -> list[str]:
    """Every chat line the process printed as received from its peer."""
    return [line for line in process.out if " says: " in line]


def memory_kib(pid: int, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status (has the process exited?)")


def frozen_peak_kib(process: ChatProcess) -> int | None:
    """VmHWM (peak resident KiB) of a process that may be exiting, or None if it is gone.

    The process is stopped while /proc is read, so it cannot let go of its
    memory halfway, and is let go on afterwards.
    """
    pid = process.proc.pid
    os.kill(pid, signal.SIGSTOP)  # a zombie (not reaped yet) takes signals harmlessly
    try:
        return memory_kib(pid, "VmHWM")
    except AssertionError:
        return None
    finally:
        os.kill(pid, signal.SIGCONT)


def reap(process: ChatProcess, timeout: float = TIMEOUT) -> tuple[int, int]:
    """Exit status and ru_maxrss (KiB) of a process, reaped here with os.wait4.

    Linux counts in ru_maxrss the memory the child inherited from pytest when
    it was spawned, so it is an upper bound on the child's own peak.
    """
    result: list[tuple[int, int, resource.struct_rusage]] = []
    pid = process.proc.pid
    waiter = threading.Thread(target=lambda: result.append(os.wait4(pid, 0)), daemon=True)
    waiter.start()
    waiter.join(timeout)
    if not result:
        os.kill(pid, signal.SIGKILL)
        waiter.join(TIMEOUT)
        raise AssertionError(
            f"process did not exit within {timeout} s\nstdout: {process.out}\nstderr: {process.err}"
        )
    _, status, usage = result[0]
    process.proc.returncode = os.waitstatus_to_exitcode(status)
    return process.proc.returncode, usage.ru_maxrss


# --- Plain sockets -------------------------------------------------------------


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection to 127.0.0.1:port from `source`, every operation bounded.

    All of 127.0.0.0/8 is loopback, so 127.0.0.2 and up play other hosts.
    """
    sock = socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes (EOF or reset), within timeout."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError(f"the listener did not close the connection within {timeout} s")


def frame(body: bytes) -> bytes:
    return encode_frame(body)


# --- A man in the middle -------------------------------------------------------


class Route(Enum):
    """Where the relay sends a frame: on to its destination, or back to its sender."""

    FORWARD = "forward"
    BACK = "back"


Transform = Callable[[int, bytes], list[tuple[Route, bytes]]]


def forward(index: int, body: bytes) -> list[tuple[Route, bytes]]:
    return [(Route.FORWARD, body)]


class Relay:
    """A TCP relay on 127.0.0.1 between one connector and the listener at upstream_port.

    Each direction's byte stream is cut into frames at the 4-byte big-endian
    length; its transform gets (frame number, body) and says what to send
    where. Connector->listener bytes are also recorded raw, as received.
    """

    def __init__(
        self,
        upstream_port: int,
        to_listener: Transform = forward,
        to_connector: Transform = forward,
    ) -> None:
        self._upstream_port = upstream_port
        self._to_listener = to_listener
        self._to_connector = to_connector
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(TIMEOUT)
        self.port: int = self._server.getsockname()[1]
        self.recorded = bytearray()
        self.finished = threading.Event()
        self._connected = threading.Event()
        self._sockets: list[socket.socket] = []
        self._send_locks: dict[socket.socket, threading.Lock] = {}
        self._cut = False
        threading.Thread(target=self._run, name="relay", daemon=True).start()

    def _run(self) -> None:
        try:
            client, _ = self._server.accept()
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port), TIMEOUT)
        except OSError:
            self.finished.set()
            return
        finally:
            self._server.close()
        for sock in (client, upstream):
            sock.settimeout(2 * TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._send_locks[sock] = threading.Lock()
        self._sockets = [client, upstream]
        self._connected.set()
        pumps = [
            threading.Thread(target=self._pump, args=(client, upstream, self._to_listener, True)),
            threading.Thread(target=self._pump, args=(upstream, client, self._to_connector, False)),
        ]
        for pump in pumps:
            pump.daemon = True
            pump.start()
        for pump in pumps:
            pump.join()
        for sock in self._sockets:
            sock.close()
        self.finished.set()

    def _pump(
        self, source: socket.socket, dest: socket.socket, transform: Transform, record: bool
    ) -> None:
        buffer = bytearray()
        index = 0
        while True:
            try:
                data = source.recv(65536)
            except OSError:  # reset or idle too long: drop the whole link
                self.cut()
                return
            if not data or self._cut:
                break
            if record:
                self.recorded += data
            buffer += data
            while len(buffer) >= 4:
                (length,) = struct.unpack_from("!I", buffer)
                if len(buffer) < 4 + length:
                    break
                body = bytes(buffer[4 : 4 + length])
                del buffer[: 4 + length]
                for route, out in transform(index, body):
                    self._send(dest if route is Route.FORWARD else source, frame(out))
                index += 1
        if not self._cut:  # pass the half-close on, so a goodbye ends cleanly
            with suppress(OSError):
                dest.shutdown(socket.SHUT_WR)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with self._send_locks[sock], suppress(OSError):
            sock.sendall(data)

    def cut(self, reset: bool = False) -> None:
        """Drop both sides at once: FIN to each, or with reset, RST to each."""
        if not self._connected.wait(TIMEOUT):
            raise AssertionError("nobody connected to the relay")
        self._cut = True
        for sock in self._sockets:
            with suppress(OSError):
                if reset:  # before anything: whichever thread closes it then sends RST
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)  # wakes the pump; sends nothing
        for sock in self._sockets:
            with self._send_locks[sock], suppress(OSError):
                if reset:
                    sock.close()
                else:
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with suppress(OSError):
            self._server.close()
        if self._connected.is_set():
            self.cut()


@pytest.fixture
def relay() -> Iterator[Callable[..., Relay]]:
    """relay(upstream_port, to_listener=..., to_connector=...) -> Relay; closed at the end."""
    made: list[Relay] = []

    def make(upstream_port: int, **transforms: Transform) -> Relay:
        made.append(Relay(upstream_port, **transforms))
        return made[-1]

    yield make
    for each in made:
        each.close()


def through_relay(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay], **transforms: Transform
) -> tuple[ChatProcess, ChatProcess, Relay]:
    """A real listener and a real connector joined through a relay."""
    listener, port = start_listener(spawn, tmp_path)
    middle = relay(port, **transforms)
    connector = start_connector(spawn, tmp_path, middle.port)
    joined(listener, connector)
    return listener, connector, middle


def flip_bit(body: bytes) -> bytes:
    """A Fernet token with one ciphertext bit flipped, still well-formed base64."""
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[len(raw) // 2] ^= 0x04
    return base64.urlsafe_b64encode(bytes(raw))


# --- Through the relay -----------------------------------------------------------


@pytest.mark.parametrize("direction", ["to_listener", "to_connector"])
def test_tampered_chat_frame_ends_the_session_unseen(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay], direction: str
) -> None:
    second_chat = FIRST_CHAT[direction] + 1

    def tamper(index: int, body: bytes) -> list[tuple[Route, bytes]]:
        return [(Route.FORWARD, flip_bit(body) if index == second_chat else body)]

    listener, connector, _ = through_relay(spawn, tmp_path, relay, **{direction: tamper})
    sender, receiver = (
        (connector, listener) if direction == "to_listener" else (listener, connector)
    )
    sender_name = "laptop" if sender is connector else "desktop"

    sender.send("one")
    receiver.expect(rf"^{sender_name} says: one$")
    sender.send("two")
    receiver.expect(r"^Connection lost: .*integrity")
    assert receiver.wait() != 0
    assert says(receiver) == [f"{sender_name} says: one"]
    assert "Connection closed by peer." not in receiver.out


def test_duplicated_chat_frame_is_shown_once_then_ends_the_session(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay]
) -> None:
    second_chat = FIRST_CHAT["to_listener"] + 1

    def duplicate(index: int, body: bytes) -> list[tuple[Route, bytes]]:
        return [(Route.FORWARD, body)] * (2 if index == second_chat else 1)

    listener, connector, _ = through_relay(spawn, tmp_path, relay, to_listener=duplicate)
    connector.send("one")
    listener.expect(r"^laptop says: one$")
    connector.send("two")
    listener.expect(r"^Connection lost: .*message number 3 arrived where 4 was due")
    assert listener.wait() != 0
    assert says(listener) == ["laptop says: one", "laptop says: two"]
    assert "Connection closed by peer." not in listener.out


def test_reflected_frame_ends_the_session_of_its_sender(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay]
) -> None:
    second_chat = FIRST_CHAT["to_listener"] + 1

    def reflect(index: int, body: bytes) -> list[tuple[Route, bytes]]:
        return [(Route.BACK if index == second_chat else Route.FORWARD, body)]

    listener, connector, _ = through_relay(spawn, tmp_path, relay, to_listener=reflect)
    connector.send("one")
    listener.expect(r"^laptop says: one$")
    connector.send("two")
    connector.expect(r"^Connection lost: ")
    assert connector.wait() != 0
    assert says(connector) == []
    assert "Connection closed by peer." not in connector.out
    listener.expect(r"^Connection lost: ")
    assert listener.wait() != 0
    assert says(listener) == ["laptop says: one"]


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_cut_connection_is_lost_on_both_sides(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay], reset: bool
) -> None:
    listener, connector, middle = through_relay(spawn, tmp_path, relay)
    chat_both_ways(listener, connector, "before the cut")
    middle.cut(reset=reset)
    for side in (listener, connector):
        side.expect(r"^Connection lost: .*reset" if reset else r"^Connection lost: ")
    for side in (listener, connector):
        assert side.wait() != 0
        assert "Connection closed by peer." not in side.out
        assert "Connection closed by you." not in side.out


def test_replayed_session_is_refused_by_a_new_listener(
    spawn: Spawn, tmp_path: Path, relay: Callable[..., Relay]
) -> None:
    listener, connector, middle = through_relay(spawn, tmp_path, relay)
    chat_both_ways(listener, connector, "recorded")
    connector.send("exit", "bye bye")
    listener.expect(r"^laptop left the chat: bye bye$")
    assert listener.wait() == 0
    assert connector.wait() == 0
    assert middle.finished.wait(TIMEOUT), "the relay did not see the session end"
    recorded = bytes(middle.recorded)
    assert len(recorded) > 200  # M1, M3, WELCOME, a chat and TERMINATE

    fresh, port = start_listener(spawn, tmp_path)
    with connect(port) as sock:
        sock.sendall(recorded)
        read_until_closed(sock, 5.0)
    fresh.expect(r"^Refused a connection from \('127\.0\.0\.1', \d+\): ", stream="err")
    # The replay never got in; a real connector still does.
    real = start_connector(spawn, tmp_path, port)
    joined(fresh, real)
    chat_both_ways(fresh, real, "after the replay")
    assert says(fresh) == ["laptop says: hello after the replay"]
    assert sum("joined the chat" in line for line in fresh.out) == 1
    assert sum(line.startswith("Connected by ") for line in fresh.out) == 1


# --- Plain-socket and wrong-key attackers -----------------------------------------


def test_wrong_key_is_refused_on_both_sides_and_the_listener_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    stranger = start_connector(spawn, tmp_path, port, key=OTHER_KEY)
    stranger.expect(r"^error: .*fernet_key", stream="err")
    assert stranger.wait() != 0
    assert "WELCOME" not in stranger.all_output()
    listener.expect(r"^Refused a connection from .*fernet_key", stream="err")

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the wrong key")


def test_silent_connection_does_not_delay_a_real_peer(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as silent:
        friend = start_connector(spawn, tmp_path, port)
        joined(listener, friend)
        chat_both_ways(listener, friend, "beside a silent one")
        # The silent one is still waiting for its deadline: the real peer never queued behind it.
        assert not any("did not finish" in line for line in listener.err)
        silent.settimeout(0.1)
        with pytest.raises(TimeoutError):
            silent.recv(1)  # the listener answered the silent connection nothing


def test_huge_length_prefix_before_the_handshake_is_refused_without_memory(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    pid = listener.proc.pid
    rss_before, peak_before = memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM")
    with connect(port) as sock:
        sock.sendall(b"\xff\xff\xff\xff")
        assert read_until_closed(sock, 3.0) == b""
    listener.expect(r"^Refused a connection from .*4294967295-byte frame", stream="err")
    rss_after, peak_after = memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM")
    assert rss_after - rss_before < GROWTH_KIB, (rss_before, rss_after)
    assert peak_after - peak_before < GROWTH_KIB, (peak_before, peak_after)

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the huge prefix")


def test_huge_length_prefix_from_an_authenticated_peer_ends_the_chat_without_memory(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as sock:
        mallory = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(sock, mallory, Established)
        assert mallory.peer_name == "desktop"
        listener.expect(r"^mallory joined the chat\.$")
        sock.sendall(mallory.send(Chat("I am in"), time.monotonic()))
        listener.expect(r"^mallory says: I am in$")
        rss_before = memory_kib(listener.proc.pid, "VmRSS")
        inherited = memory_kib(os.getpid(), "VmHWM")  # pytest's own peak, see reap()

        sock.sendall(b"\xff\xff\xff\xff")
        listener.expect(r"^Connection lost: .*4294967295-byte frame")
        peak = frozen_peak_kib(listener)  # it exits right after that line
        status, maxrss = reap(listener)
        assert status != 0
        if peak is not None:
            assert peak - rss_before < GROWTH_KIB, (rss_before, peak)
        else:  # it had already exited: fall back on the kernel's upper bound
            assert maxrss - max(rss_before, inherited) < GROWTH_KIB, (rss_before, maxrss)
        read_until_closed(sock, 3.0)
    assert "Connection closed by peer." not in listener.out


def test_trickling_hello_is_dropped_at_the_handshake_deadline(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path)
    m1 = frame(ConnectorHandshake(PSK).m1)
    closed = threading.Event()
    received: list[bytes] = []
    with connect(port) as sock:

        def watch() -> None:
            with suppress(OSError):
                received.append(read_until_closed(sock, 20.0))
            closed.set()

        threading.Thread(target=watch, daemon=True).start()
        # 41 bytes, one per 0.3 s: the whole hello would take 12 s.
        for byte in m1:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            if closed.wait(0.3):
                break
        assert closed.wait(TIMEOUT)
    # When it closes is the pure protocol's deadline, tested with a fake clock
    # (test_peer.py); here: the trickler got no M2 and the listener says why.
    assert received == [b""]  # no M2: the hello never completed
    listener.expect(r"^Refused a connection from .*did not finish within 10 s", stream="err")

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the trickle")


def test_garbage_connections_are_refused_and_the_listener_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    zero_key = bytes(32)
    hello_head = MAGIC + bytes([VERSION, Mode.SHARED_KEY])
    garbage = [
        (rng.randbytes(1000), r""),
        (frame(rng.randbytes(HELLO_SIZE)), r"not speaking the chatclient protocol"),
        (frame(MAGIC + bytes([1]) + rng.randbytes(32)), r"protocol version 1"),
        (
            frame(hello_head + rng.randbytes(32)) + frame(rng.randbytes(64)),
            r"commitment",
        ),
        (
            frame(hello_head + hashlib.sha256(zero_key).digest())
            + frame(zero_key + rng.randbytes(32)),
            r"all-zero key",
        ),
        (b"", r"closed the connection during the handshake"),
    ]
    listener, port = start_listener(spawn, tmp_path)
    # Each from an address of its own: refusals from one address are summarised.
    for number, (data, reason) in enumerate(garbage, start=2):
        source = f"127.0.0.{number}"
        with connect(port, source) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            read_until_closed(sock, 5.0)
        listener.expect(
            rf"^Refused a connection from \('{re.escape(source)}', \d+\): .*{reason}",
            stream="err",
        )

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the garbage")
    assert says(listener) == ["laptop says: hello after the garbage"]


def test_third_connection_is_refused_while_two_are_chatting(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path, "--max-members", "1")
    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)

    # "Full" is only told to a connector that proved the key: a stranger who
    # sends a hello learns nothing about whether a chat is going on.
    with connect(port) as sock:
        stranger = PeerProtocol(Role.CONNECTOR, OTHER_PSK, "stranger", time.monotonic())
        events = drive(sock, stranger, Established)
        assert isinstance(events[-1], Failed)
        assert "could not authenticate" in str(events[-1].error)
        assert "full" not in str(events[-1].error)
    with connect(port) as sock:
        knows_key = PeerProtocol(Role.CONNECTOR, PSK, "third", time.monotonic())
        busy = drive(sock, knows_key, Established)[-1]
        assert isinstance(busy, Failed)
        assert str(busy.error) == "the chat is full (1 person)"

    intruder = start_connector(spawn, tmp_path, port, name="intruder")
    intruder.expect(r"^error: the chat is full \(1 person\)$", stream="err")
    assert intruder.wait() != 0
    assert "WELCOME" not in intruder.all_output()

    chat_both_ways(listener, friend, "still two")
    assert "intruder" not in listener.all_output()


# --- Authenticated peers that vanish mid-handshake ---------------------------------


def next_frame(sock: socket.socket, decoder: FrameDecoder) -> bytes:
    """The next frame body from a plain socket (its timeout bounds each read)."""
    while (body := decoder.next_frame()) is None:
        data = sock.recv(65536)
        assert data, "the peer closed the connection"
        decoder.feed(data)
    return body


def vanish_after_welcome(port: int) -> None:
    """Complete the handshake as a peer that knows the key, then reset the connection.

    M3, the WELCOME and the reset leave together, so the listener reads a valid
    WELCOME from a connection that is already gone.
    """
    with connect(port) as sock:
        handshake = ConnectorHandshake(PSK)
        decoder = FrameDecoder()
        sock.sendall(frame(handshake.m1))
        m3, keys = handshake.respond(next_frame(sock, decoder))
        identity = Ed25519PrivateKey.generate()
        signed = welcome_signed_data(Role.CONNECTOR, keys.transcript, "mallory", bytes(16))
        public = identity.public_key().public_bytes_raw()
        welcome = Welcome("mallory", public, identity.sign(signed))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(frame(m3) + Session(keys).encode(welcome))


def test_peer_vanishing_right_after_its_welcome_leaves_no_traceback_on_the_listener(
    spawn: Spawn, tmp_path: Path
) -> None:
    # The reset races the listener's last steps; five fresh listeners make
    # a traceback, if there is one to see, near certain to show.
    for attempt in range(5):
        listener, port = start_listener(spawn, tmp_path)
        vanish_after_welcome(port)
        line = listener.expect(r"^(Refused a connection from |Connection lost: |Traceback)", 5.0)
        assert not line.startswith("Traceback"), "\n".join(listener.err)
        if line.startswith("Connection lost: "):  # admitted, then lost: a fair ending too
            assert listener.wait() != 0
        else:
            friend = start_connector(spawn, tmp_path, port)
            joined(listener, friend)
            chat_both_ways(listener, friend, f"after vanished peer {attempt}")
        listener.kill()
        assert "Traceback" not in listener.all_output()


def test_listener_vanishing_right_after_its_welcome_leaves_no_traceback_on_the_connector(
    spawn: Spawn, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        connector = start_connector(spawn, tmp_path, server.getsockname()[1])
        sock, _ = server.accept()
        with sock:
            sock.settimeout(TIMEOUT)
            decoder = FrameDecoder()
            handshake = ListenerHandshake(PSK)
            sock.sendall(frame(handshake.receive_commit(next_frame(sock, decoder))))
            keys = handshake.receive_confirm(next_frame(sock, decoder))
            sock.sendall(Session(keys).encode(Welcome("desktop")))
        # Closed at once: the connector's own WELCOME then draws a reset.
        assert connector.wait() != 0
    assert "Traceback" not in connector.all_output(), "\n".join(connector.err)
    assert any(
        line.startswith(("error: ", "Connection lost: ")) for line in connector.out + connector.err
    )


def test_more_silent_connections_than_slots_do_not_lock_out_a_real_peer(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    silent = [connect(port) for _ in range(MAX_PENDING_HANDSHAKES + 4)]
    try:
        friend = start_connector(spawn, tmp_path, port)
        joined(listener, friend)
        chat_both_ways(listener, friend, "beside twenty silent ones")
        assert not any("did not finish" in line for line in listener.err)
    finally:
        for sock in silent:
            sock.close()
    assert any(line.startswith("Dropped a connection from") for line in listener.err)


def test_messages_that_verified_are_shown_even_when_the_next_frame_in_the_read_breaks(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as sock:
        mallory = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(sock, mallory, Established)
        listener.expect(r"^mallory joined the chat\.$")
        good = b"".join(mallory.send(Chat(f"fine {n}"), 0.0) for n in range(3))
        sock.sendall(good + frame(b"not a token"))  # one write: read as one chunk
        listener.expect(r"^Connection lost: .*integrity")
        assert listener.wait() != 0
    assert says(listener) == [f"mallory says: fine {n}" for n in range(3)]

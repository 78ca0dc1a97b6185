"""A man in the middle on 127.0.0.1: a relay between two real chatclient processes that
tampers with, duplicates, reflects, records or cuts their frames, and the session it
recorded replayed to a fresh listener. Every wait is on process output, a socket read
or an Event, each with a timeout."""

from __future__ import annotations

import base64
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from enum import Enum
from pathlib import Path

import pytest
from conftest import TIMEOUT, ChatProcess, Spawn
from hostile import (
    chat_both_ways,
    connect,
    frame,
    joined,
    read_until_closed,
    says,
    start_connector,
    start_listener,
)

# Frame numbers per direction: connector->listener is M1, M3, WELCOME, then
# chats; listener->connector is M2, WELCOME, then chats.
# Frames before the first CHAT: M1, M3, WELCOME, READY from the connector; M2, WELCOME,
# MEMBERS from the listener.
FIRST_CHAT = {"to_listener": 4, "to_connector": 3}


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

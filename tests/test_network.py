"""The network thread in-process: a real Network on 127.0.0.1 against a test peer that
plays by the protocol (pair.drive) and then misbehaves. Every wait has a timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT
from pair import PSK, drive

from chatclient.errors import ChatError
from chatclient.handshake import Role
from chatclient.messages import Chat, Members, Terminate
from chatclient.network import HIGH_WATER, Network
from chatclient.peer import Established, Event, MessageReceived, PeerProtocol
from chatclient.sockets import Link


class Recorder:
    """A NetworkUser that records what the network thread reports."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.refusals: list[str] = []
        self.changed = threading.Condition()

    def connection_events(self, link: Link, events: list[Event]) -> None:
        with self.changed:
            self.events += events
            self.changed.notify_all()

    def refused(self, line: str) -> None:
        with self.changed:
            self.refusals.append(line)
            self.changed.notify_all()

    def network_failed(self, error: ChatError) -> None:
        with self.changed:
            self.refusals.append(f"network failed: {error}")
            self.changed.notify_all()

    def wait_for(self, kind: type[Event]) -> Event:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(isinstance(e, kind) for e in self.events), TIMEOUT
            ), self.events
            return next(e for e in self.events if isinstance(e, kind))


@pytest.fixture
def listening() -> Iterator[tuple[Network, Recorder, int]]:
    """A started listening Network on 127.0.0.1 port 0; stopped at the end."""
    server = socket.create_server(("127.0.0.1", 0))
    user = Recorder()
    net = Network(PSK, "desktop", user)
    net.listen(server)
    net.start()
    yield net, user, server.getsockname()[1]
    net.stop()
    assert net.finished.wait(TIMEOUT)


def join(port: int) -> tuple[socket.socket, PeerProtocol]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    peer = PeerProtocol(Role.CONNECTOR, PSK, "laptop", time.monotonic())
    assert isinstance(drive(sock, peer, Established)[-1], Established)
    return sock, peer


def test_messages_both_ways_and_a_goodbye(listening: tuple[Network, Recorder, int]) -> None:
    net, user, port = listening
    sock, peer = join(port)
    with sock:
        user.wait_for(Established)
        sock.sendall(peer.send(Chat("hello desktop"), time.monotonic()))
        assert user.wait_for(MessageReceived) == MessageReceived(Chat("hello desktop"))
        net.send(Chat("hi laptop"))
        net.leave("bye")
        received: list[Event] = []
        while not any(
            isinstance(e, MessageReceived) and isinstance(e.message, Terminate) for e in received
        ):
            peer.receive_data(sock.recv(65536), time.monotonic())
            received += peer.events()
        messages = [e.message for e in received if isinstance(e, MessageReceived)]
        head, count = net.log.state  # the room code after the host's own words
        assert messages[0] == Members((), messages[0].head, 1)  # nobody else; laptop's JOINED
        assert count == 2 and head != messages[0].head
        assert messages[1:] == [
            Chat("hi laptop"),
            Terminate("bye"),
        ]
        assert sock.recv(1) == b""  # half-closed after the goodbye
        sock.close()
        assert net.finished.wait(TIMEOUT)


def test_a_peer_that_stops_reading_slows_the_sender_and_stop_still_stops(
    listening: tuple[Network, Recorder, int],
) -> None:
    net, user, port = listening
    sock, _ = join(port)
    with sock:
        user.wait_for(Established)
        sent = threading.Event()
        count = 0

        def flood() -> None:  # far more than the socket buffers and HIGH_WATER hold
            nonlocal count
            for _ in range(4 * HIGH_WATER // 1000 + 8192):
                net.send(Chat("x" * 1000))
                count += 1
            sent.set()

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        # The sender is held back by the unread peer: it never finishes on its own.
        assert not sent.wait(1.0)
        assert 0 < count < 4 * HIGH_WATER // 1000 + 8192
        net.stop()  # not queued behind the messages: it stops the loop now
        assert net.finished.wait(TIMEOUT)
        sender.join(TIMEOUT)
        assert not sender.is_alive()  # a waiting sender is released when the network ends


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_network_thread_ends_the_wait_instead_of_hanging() -> None:
    class Broken(Recorder):
        def connection_events(self, link: Link, events: list[Event]) -> None:
            raise RuntimeError("a bug in what handles events")

    server = socket.create_server(("127.0.0.1", 0))
    user = Broken()
    net = Network(PSK, "desktop", user)
    net.listen(server)
    net.start()
    try:
        sock, _ = join(server.getsockname()[1])
        sock.close()
        assert net.finished.wait(TIMEOUT)
        with user.changed:
            assert user.changed.wait_for(lambda: bool(user.refusals), TIMEOUT)
        assert "internal error in the network thread" in user.refusals[0]
    finally:
        net.stop()

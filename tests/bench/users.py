"""Stand-ins for the program's Conversation: NetworkUsers that echo, count or greet on the
network thread, and plain sockets for the baselines.
"""

from __future__ import annotations

import queue
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.common import (
    BURST_DONE,
    HOST,
    IDLE_CHECK,
    INDEX_DIGITS,
    KEY,
    SOCKET_SECONDS,
    STEP_SECONDS,
    TEXT_SIZE,
    BenchError,
    E,
    WorkerQueue,
)
from chatclient.config import decode_key
from chatclient.handshake import derive_psk
from chatclient.messages import Chat, FrameDecoder, Message
from chatclient.network import Network
from chatclient.peer import Closed, Established, Event, Failed, MessageReceived
from chatclient.sockets import Link, connect_socket, listen_socket

# --- Peers: run in their own processes -------------------------------------------


def shared_psk() -> bytes:
    """The PSK both peers derive from the fixed benchmark key."""
    return derive_psk(decode_key(KEY, program="chatclient"))


def open_listener(out: WorkerQueue) -> socket.socket:
    """A listening socket on 127.0.0.1 port 0; its port goes to the parent."""
    server = listen_socket(HOST, 0)
    server.settimeout(SOCKET_SECONDS)
    out.put(("port", server.getsockname()[1]))
    return server


def accept_plain(server: socket.socket) -> socket.socket:
    """The next connection, with a timeout on every read."""
    sock, _ = server.accept()
    sock.settimeout(SOCKET_SECONDS)
    return sock


def connect_plain(port: int) -> socket.socket:
    """A plain TCP connection set up like connect_socket's (TCP_NODELAY)."""
    sock = socket.create_connection((HOST, port), SOCKET_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def await_close(sock: socket.socket) -> None:
    """Half-close, then read until the peer closes too, so nothing in flight is cut off."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


def plain_frames(sock: socket.socket) -> Iterator[bytes]:
    """Frame bodies from a blocking socket until EOF, read 64 KiB at a time as Network reads."""
    decoder = FrameDecoder()
    while data := sock.recv(65536):
        decoder.feed(data)
        yield from decoder.frames()


def chat_texts(count: int) -> list[str]:
    """Burst texts of TEXT_SIZE bytes, each starting with its index."""
    pad = "x" * (TEXT_SIZE - INDEX_DIGITS)
    return [f"{i:0{INDEX_DIGITS}d}{pad}" for i in range(count)]


@dataclass
class Arrivals:
    """What a burst receiver saw: messages in order and when the first and last came."""

    in_order: int = 0
    first: float = 0.0
    last: float = 0.0
    error: str = ""

    def see(self, index: int) -> None:
        """Count one arrival; only the exactly next index counts as in order."""
        now = time.perf_counter()
        if self.in_order == 0:
            self.first = now
        self.last = now
        if index == self.in_order:
            self.in_order += 1

    def report(self) -> dict[str, Any]:
        """The figures the parent needs."""
        spent = self.last - self.first
        rate = (self.in_order - 1) / spent if self.in_order > 1 and spent > 0 else 0.0
        return {"received": self.in_order, "rate": rate, "error": self.error}


# The chat's peers: each runs the program's own Network thread and PeerProtocol, and a
# BenchUser in the place of the program's Conversation.


class BenchUser:
    """The NetworkUser of a benchmark peer, in the place of the program's Conversation.

    Like the Conversation, it is called on the network thread; `handle` deals there with
    the messages being measured, and every other event (Established, the goodbye, Closed,
    Failed) and every refusal goes to `inbox` for the peer's main thread.
    """

    def __init__(self) -> None:
        self.net: Network | None = None
        self.inbox: queue.SimpleQueue[Event | str] = queue.SimpleQueue()

    def connection_events(self, link: Link, events: list[Event]) -> None:
        """Events of the chat's connection, on the network thread."""
        for event in events:
            if not self.handle(event):
                self.inbox.put(event)

    def refused(self, line: str) -> None:
        """A refused connection: the peer's main thread raises it as a BenchError."""
        self.inbox.put(line)

    def network_failed(self, error: Exception) -> None:
        """The network thread failed: the main thread raises it as a BenchError."""
        self.inbox.put(f"the network thread failed: {error}")

    def handle(self, event: Event) -> bool:
        """Deal with `event` on the network thread; False passes it on to the inbox."""
        return False

    def send(self, message: Message) -> None:
        """Send through the network, from any thread."""
        assert self.net is not None
        self.net.send(message)

    def next_event(self, timeout: float = SOCKET_SECONDS) -> Event:
        """The next event in the inbox, or BenchError on a refusal or after `timeout`."""
        try:
            got = self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"no event from the network thread within {timeout:g} s") from None
        if isinstance(got, str):
            raise BenchError(f"the network refused a connection: {got}")
        return got

    def expect(self, kind: type[E]) -> E:
        """The next event, which must be a `kind`."""
        event = self.next_event()
        if not isinstance(event, kind):
            raise BenchError(f"{event!r} arrived where {kind.__name__} was due")
        return event

    def wait_end(self, timeout: float = STEP_SECONDS) -> str:
        """Wait for the connection to end: "" when it closed cleanly, else why it failed."""
        while True:
            event = self.next_event(timeout)
            if isinstance(event, Closed):
                return ""
            if isinstance(event, Failed):
                return str(event.error)


class Echo(BenchUser):
    """Sends every Chat straight back with net.send, from the network thread."""

    def handle(self, event: Event) -> bool:
        if isinstance(event, MessageReceived) and isinstance(event.message, Chat):
            self.send(event.message)
            return True
        return False


class BurstCounter(BenchUser):
    """Counts Chat arrivals on the network thread, and acknowledges the burst's last one."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.seen = Arrivals()
        self.last_index = count - 1

    def handle(self, event: Event) -> bool:
        if isinstance(event, MessageReceived) and isinstance(event.message, Chat):
            index = int(event.message.text[:INDEX_DIGITS])
            self.seen.see(index)
            if index == self.last_index:
                self.send(Chat(BURST_DONE))
            return True
        return False


class Greeter(BenchUser):
    """Greets the peer with IDLE_CHECK as soon as it is in the chat."""

    def handle(self, event: Event) -> bool:
        if isinstance(event, Established):
            self.send(Chat(IDLE_CHECK))
        return False


def listen_chat(server: socket.socket, user: BenchUser) -> Network:
    """The listener's real Network on `server`, started, reporting to `user`."""
    net = Network(shared_psk(), "listener", user)
    user.net = net
    net.listen(server)
    net.start()
    return net


def join_chat(port: int, user: BenchUser) -> Network:
    """The connector's real Network, started and in the chat (its Established taken)."""
    net = Network(shared_psk(), "connector", user)
    user.net = net
    net.connect(connect_socket(HOST, port, SOCKET_SECONDS))
    net.start()
    user.expect(Established)
    user.expect(MessageReceived)  # the host's MEMBERS: who else is in the room (nobody)
    return net


def leave_chat(net: Network) -> None:
    """Say goodbye as the program does, and wait for the network thread to finish.

    The network half-closes after the goodbye and finishes once the peer has closed too.
    """
    net.leave("")
    if not net.finished.wait(STEP_SECONDS):
        raise BenchError(f"the network thread did not finish within {STEP_SECONDS:g} s")


def end_listener(user: BenchUser, net: Network, timeout: float = STEP_SECONDS) -> str:
    """Wait for the peer to leave, stop the network; "" or why the connection failed."""
    error = user.wait_end(timeout)
    net.stop()
    return error

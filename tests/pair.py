"""Two chatclient sessions joined by an in-memory link (like h11's ConnectionPair).

The handshake messages travel as real frames through FrameDecoder, so a pair
exercises the same pure code the sockets do, with no socket in sight.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from chatclient.config import decode_key
from chatclient.handshake import (
    MAX_HELLO_SIZE,
    ConnectorHandshake,
    ListenerHandshake,
    Role,
    SessionKeys,
    derive_psk,
)
from chatclient.messages import MAX_FRAME, MESSAGES, FrameDecoder, Message, Welcome, encode_frame
from chatclient.peer import Event, Failed, KeyProven, PeerProtocol, Stage
from chatclient.session import Session

# The wire tags as an enum, derived from the registry (tests name and list them).
MessageType = IntEnum(  # type: ignore[misc]
    "MessageType", {kind.kind(): tag for tag, kind in MESSAGES.items()}
)

KEY = "9RB_8x-fOAeLY6_W-0ykarW4-4i-GomhsITSbtRJuXs="
OTHER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
PSK = derive_psk(decode_key(KEY, program="chatclient"))
OTHER_PSK = derive_psk(decode_key(OTHER_KEY, program="chatclient"))


def one_frame(data: bytes, limit: int = MAX_HELLO_SIZE) -> bytes:
    """The single frame body in `data`, decoded as a receiver would."""
    decoder = FrameDecoder()
    decoder.feed(data)
    body = decoder.next_frame(limit)
    assert body is not None and decoder.buffered == 0
    return body


def body_of(frame: bytes) -> bytes:
    """The body of one complete frame."""
    return one_frame(frame, MAX_FRAME)


def handshake_keys(
    connector_psk: bytes = PSK,
    listener_psk: bytes = PSK,
    connector_private: X25519PrivateKey | None = None,
    listener_private: X25519PrivateKey | None = None,
) -> tuple[SessionKeys, SessionKeys]:
    """Run M1, M2, M3 over the link; (connector keys, listener keys)."""
    connector = ConnectorHandshake(connector_psk, connector_private)
    listener = ListenerHandshake(listener_psk, listener_private)
    m2 = listener.receive_commit(one_frame(encode_frame(connector.m1)))
    m3, connector_keys = connector.respond(one_frame(encode_frame(m2)))
    listener_keys = listener.receive_confirm(one_frame(encode_frame(m3)))
    return connector_keys, listener_keys


@dataclass
class Endpoint:
    """One side: its session and the decoder of the bytes it receives."""

    session: Session
    decoder: FrameDecoder = field(default_factory=FrameDecoder)

    def receive(self, data: bytes, into: list[Message] | None = None) -> list[Message]:
        """Feed bytes from the peer; every message they complete, appended to `into`.

        Messages decoded before an error stay in `into`, so a caller can see
        exactly what was delivered before the session stopped.
        """
        delivered = [] if into is None else into
        self.decoder.feed(data)
        for body in self.decoder.frames():
            delivered.append(self.session.decode(body))
        return delivered


class ConnectionPair:
    """A connector and a listener after the handshake, optionally after both WELCOMEs."""

    def __init__(self, *, welcome: bool = True) -> None:
        connector_keys, listener_keys = handshake_keys()
        self.connector = Endpoint(Session(connector_keys))
        self.listener = Endpoint(Session(listener_keys))
        if welcome:
            # The listener speaks first, as on a real connection.
            assert self.send(self.listener, Welcome("desktop")) == [Welcome("desktop")]
            assert self.send(self.connector, Welcome("laptop")) == [Welcome("laptop")]

    def peer(self, side: Endpoint) -> Endpoint:
        """The other endpoint."""
        return self.listener if side is self.connector else self.connector

    def send(self, sender: Endpoint, *messages: Message) -> list[Message]:
        """Encode messages at `sender`, deliver the bytes; what the peer received."""
        wire = b"".join(sender.session.encode(message) for message in messages)
        return self.peer(sender).receive(wire)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class PeerPair:
    """Two PeerProtocol objects joined by an in-memory link and a fake clock."""

    def __init__(
        self,
        *,
        connector_psk: bytes | None = PSK,
        listener_psk: bytes | None = PSK,
        keepalive: float = 10.0,
        handshake_seconds: float = 10.0,
        connector: dict[str, Any] | None = None,
        listener: dict[str, Any] | None = None,
    ) -> None:
        """`connector` and `listener` are further PeerProtocol arguments for each side
        (identity, judge, code, invite)."""
        self.clock = FakeClock()
        options = {"keepalive": keepalive, "handshake_seconds": handshake_seconds}
        self.connector = PeerProtocol(
            Role.CONNECTOR, connector_psk, "laptop", self.clock.now, **options, **(connector or {})
        )
        self.listener = PeerProtocol(
            Role.LISTENER, listener_psk, "desktop", self.clock.now, **options, **(listener or {})
        )
        self.events: dict[PeerProtocol, list[Event]] = {self.connector: [], self.listener: []}

    def other(self, side: PeerProtocol) -> PeerProtocol:
        return self.listener if side is self.connector else self.connector

    def pump(self, *, admit: bool = True) -> None:
        """Deliver bytes both ways until nothing moves; the listener admits proven peers."""
        moved = True
        while moved:
            moved = False
            for side in (self.connector, self.listener):
                data = side.data_to_send()
                if data:
                    moved = True
                    self.other(side).receive_data(data, self.clock.now)
                for event in side.events():
                    self.events[side].append(event)
                    if isinstance(event, KeyProven) and admit:
                        side.admit()
                        moved = True

    def established(self) -> bool:
        return self.connector.stage is Stage.OPEN and self.listener.stage is Stage.OPEN


def drive(
    sock: socket.socket, peer: PeerProtocol, until: type[Event], timeout: float = 15.0
) -> list[Event]:
    """Run a PeerProtocol over a blocking socket until an event of type `until` or Failed.

    Real-socket tests use it to play a well-behaved (or, stopped early, a
    misbehaving) peer against a real chatclient process.
    """
    sock.settimeout(timeout)
    seen: list[Event] = []
    while True:
        if data := peer.data_to_send():
            sock.sendall(data)
        for event in peer.events():
            seen.append(event)
            if isinstance(event, KeyProven):
                peer.admit()
            if isinstance(event, (until, Failed)):
                if data := peer.data_to_send():
                    sock.sendall(data)
                return seen
        if peer.stage is Stage.CLOSED:
            return seen
        peer.receive_data(sock.recv(65536), time.monotonic())

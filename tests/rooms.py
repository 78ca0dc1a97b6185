"""Helpers shared by the room tests: keys, the fixed host and room, members' join
nonces, real rooms of real processes (each person in a folder of their own), and hostile
hosts and members built from the real Network and PeerProtocol."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from conftest import KEY, TIMEOUT, ChatProcess, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, drive

from chatclient.handshake import Role
from chatclient.messages import (
    Joined,
    Left,
    Message,
    Said,
)
from chatclient.network import Network
from chatclient.peer import Established, PeerProtocol
from chatclient.room import (
    Voice,
)
from chatclient.sockets import listen_socket

Spawn = Callable[..., ChatProcess]
HOST = bytes(range(32))
ROOM = bytes(range(16))


def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public(identity: Ed25519PrivateKey) -> bytes:
    return identity.public_key().public_bytes_raw()


A_JOIN, B_JOIN = bytes([1]) * 16, bytes([2]) * 16  # alice's and bob's join nonces


def folder(tmp_path: Path, name: str, port: int) -> Path:
    place = tmp_path / name
    place.mkdir(exist_ok=True)
    write_config(place, port=port, key=KEY, username=name)
    return place


def host(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, int]:
    port = free_port()
    desk = spawn("--listen", *flags, cwd=folder(tmp_path, "desktop", port))
    desk.expect(r"^Listening on ")
    return desk, port


def join(spawn: Spawn, tmp_path: Path, name: str, port: int, *flags: str) -> ChatProcess:
    member = spawn("--connect", f"127.0.0.1:{port}", *flags, cwd=folder(tmp_path, name, port))
    member.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    return member


class Mallory:
    """An in-process member who signs her words with a key other than her identity."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.peer = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(self.sock, self.peer, Established)

    def say(self, text: str) -> None:
        voice = Voice(key(), "mallory", HOST, self.peer.room, self.peer.nonce)  # not her key
        self.sock.sendall(self.peer.send(voice.say(text), time.monotonic()))


class Quiet:
    """A host's user that shows nothing (the test reads the members' screens)."""

    def connection_events(self, link: Any, events: Any) -> None: ...
    def refused(self, line: str) -> None: ...
    def network_failed(self, error: Any) -> None: ...
    def invite_void(self, line: str) -> None: ...


Net = TypeVar("Net", bound=Network)


class HostileHost(Network):
    """The real host's Network, which a test makes say what it likes."""

    def inject(self, to: str, *messages: Message) -> None:
        """Send `messages` to member `to`, on the network thread, as the host."""

        def run(now: float) -> None:
            target = self._room.named(to)
            assert target is not None
            for message in messages:
                self._to(target, message, now)

        self.post(run)


class Replayer(HostileHost):
    """A hostile host that keeps what it relays and can play it again later."""

    kept: list[Said]

    def _to(self, member: object, message: Message, now: float) -> None:
        if isinstance(message, Said):
            self.kept.append(message)
        super()._to(member, message, now)

    def replay_join(self, name: str, to: str, nonce: bytes | None = None) -> None:
        """LEFT then JOINED for `name` (with her old join nonce, or `nonce`), then her old
        words again, all to `to`."""

        def run(now: float) -> None:
            target, gone = self._room.named(to), self._room.named(name)
            person = self._room.person(gone)
            assert target is not None and person is not None
            self._to(target, Left(name), now)
            self._to(target, Joined(person._replace(nonce=nonce or person.nonce, next=0)), now)
            for said in [s for s in self.kept if s.author == name]:
                self._to(target, said, now)

        self.post(run)


def hostile_host(kind: type[Net], identity: Ed25519PrivateKey, port: int) -> Net:
    """A hostile host of class `kind` listening on 127.0.0.1:`port`, started."""
    net = kind(PSK, "desktop", Quiet(), identity=identity, room=ROOM, capacity=5)
    net.listen(listen_socket("127.0.0.1", port, ""))
    net.start()
    return net


ROOM_CODE = r"^Room code: ([\d ]+) \((\d+) public lines? so far\)\.$"


def room_code(process: ChatProcess) -> tuple[str, str]:
    """`/verify room` on `process`: its code and count."""
    process.send("/verify room")
    found = re.match(ROOM_CODE, process.expect(ROOM_CODE))
    assert found is not None
    return found.group(1), found.group(2)

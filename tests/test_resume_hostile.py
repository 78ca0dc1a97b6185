"""A hostile peer that holds a real session resumes it with lies (issue 18, found by a
hostile review): a real `python chatclient.py` host ends that session with one clear
line and goes on; it neither dies nor waits for the liar forever."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from conftest import ChatProcess, Spawn, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, drive

from chatclient.handshake import Role
from chatclient.peer import Established, PeerProtocol

WAIT = 30.0


def mallory(port: int, **options: object) -> tuple[socket.socket, PeerProtocol]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    peer = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic(), **options)  # type: ignore[arg-type]
    events = drive(sock, peer, Established)
    assert any(isinstance(event, Established) for event in events), events
    return sock, peer


def host(spawn: Spawn, tmp_path: Path, port: int) -> ChatProcess:
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    desk = spawn("--config", "desktop.ini", "--listen", "--keepalive", "1", "--max-members", "3")
    desk.expect(r"^Listening on ")
    return desk


def test_a_resume_whose_resumed_lies_ends_that_session_and_the_host_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desk = host(spawn, tmp_path, port)
    write_config(tmp_path, "bob.ini", port=port, username="bob")
    bob = spawn("--config", "bob.ini", "--connect", f"127.0.0.1:{port}", "--keepalive", "1")
    bob.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^bob joined the chat\.$")
    key = Ed25519PrivateKey.generate()
    sock, first = mallory(port, identity=key)
    desk.expect(r"^mallory joined the chat\.$")
    sock.close()  # no goodbye: the host keeps mallory's place
    desk.expect(r"^mallory lost the connection; keeping their place", timeout=WAIT)
    carry = first.carry
    assert carry is not None
    carry.outbox.sent = 2**64 - 2  # "my oldest kept message is number 2**64 - 1"
    again, _ = mallory(port, identity=key, resume=carry)
    desk.expect(
        r"^mallory lost the connection \(the peer's RESUMED says its oldest kept message is "
        r"number 18446744073709551615, with 0 taken here\)\.$",
        timeout=WAIT,
    )
    bob.expect(r"^mallory lost the connection\.$", timeout=WAIT)
    assert "mallory is back." not in bob.out
    again.close()
    desk.send("still here")
    bob.expect(r"^desktop says: still here$", timeout=WAIT)
    assert not [line for line in desk.err if "Traceback" in line or "internal error" in line]

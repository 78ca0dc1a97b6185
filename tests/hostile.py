"""Helpers for test_hostile.py and test_hostile_relay.py: a real listener named desktop
and real connectors on 127.0.0.1, kept from sending keepalives, and plain sockets that
connect from any 127.0.0.x and read until the listener hangs up."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from conftest import KEY, TIMEOUT, ChatProcess, Spawn, free_port, write_config

from chatclient.messages import encode_frame

# Keepalives would shift the frame numbers the relay's transforms count on; a lost
# connection ends the chat here, as these tests expect (no resume).
QUIET = ("--keepalive", "60", "--reconnect-for", "0")


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

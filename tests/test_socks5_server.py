"""The test SOCKS5 server itself, driven by plain sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from socks5 import Socks5Server, is_loopback, recv_exact

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail, before any packet leaves, if the server under test connects beyond loopback."""
    create_connection = socket.create_connection

    def guarded(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        if not is_loopback(address[0]):
            raise AssertionError(f"the SOCKS5 server tried to connect to {address}")
        return create_connection(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A server on 127.0.0.1 that echoes one connection, then says b"bye" and half-closes."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def echo() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.sendall(b"bye")
                conn.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        thread.join(TIMEOUT)


def request(proxy: Socks5Server, address: bytes, port: int) -> tuple[socket.socket, bytes]:
    """Greet `proxy`, ask it to CONNECT to `address` (ATYP and address) and return its reply."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00" + address + port.to_bytes(2, "big"))
    return sock, recv_exact(sock, 10)  # BND.ADDR is always IPv4 here


def domain(name: str) -> bytes:
    return b"\x03" + bytes([len(name)]) + name.encode()


def test_allowed_name_relays_both_ways_and_passes_the_half_close(echo_port: int) -> None:
    with Socks5Server(allowed_hosts={"desktop.example": "127.0.0.1"}) as proxy:
        sock, reply = request(proxy, domain("desktop.example"), echo_port)
        with sock:
            assert reply[:4] == b"\x05\x00\x00\x01"
            assert proxy.connected.is_set()
            sock.sendall(b"hello")
            assert recv_exact(sock, 5) == b"hello"
            sock.shutdown(socket.SHUT_WR)
            assert recv_exact(sock, 3) == b"bye"
            assert sock.recv(1) == b""
        assert proxy.requests == [(3, "desktop.example", echo_port)]


@pytest.mark.parametrize(
    "address",
    [
        domain("example.com"),
        domain("127.0.0.1"),  # an IP literal must come as ATYP 1 or 4, not as a name
        b"\x01" + socket.inet_aton("192.0.2.1"),
        b"\x04" + socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
    ],
)
def test_anything_but_loopback_or_an_allowed_name_gets_code_2(address: bytes) -> None:
    with Socks5Server(allowed_hosts={"desktop.example": "127.0.0.1"}) as proxy:
        sock, reply = request(proxy, address, 50233)
        with sock:
            assert reply[1] == 2
            assert sock.recv(1) == b""
        assert len(proxy.requests) == 1
        assert not proxy.connected.is_set()


def test_a_refused_port_gets_code_5() -> None:
    with socket.socket() as unused, Socks5Server() as proxy:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: a connect is refused
        port = unused.getsockname()[1]
        sock, reply = request(proxy, b"\x01" + socket.inet_aton("127.0.0.1"), port)
        with sock:
            assert reply[1] == 5
        assert proxy.requests == [(1, "127.0.0.1", port)]


@pytest.mark.parametrize("greeting", [b"\x04\x01\x00", b"\x05\x01\x02"])
def test_a_bad_version_or_no_acceptable_method_gets_ff(greeting: bytes) -> None:
    with Socks5Server() as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(greeting)
            assert recv_exact(sock, 2) == b"\x05\xff"
            assert sock.recv(1) == b""
        assert proxy.requests == []

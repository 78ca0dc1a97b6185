"""Sockets: listening, connecting (directly or through SOCKS5), addresses, and the
Link that pairs one socket with its PeerProtocol.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import HANDSHAKE_SECONDS
from .errors import HandshakeError, NetworkError, describe_os_error

if TYPE_CHECKING:  # a Link carries one, but making sockets needs none of the protocol
    from .peer import PeerProtocol

LISTEN_BACKLOG = 128


# --- Network: sockets, selectors, timers --------------------------------------


def format_address(address: tuple[str, int]) -> str:
    """host:port as people type it ([::1]:50233 for IPv6)."""
    return f"{format_host(address[0])}:{address[1]}"


def format_host(host: str) -> str:
    """Host as typed before ':port' (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def unmap(host: str) -> str:
    """An IPv4-mapped IPv6 address (as getpeername gives it) shown as plain IPv4."""
    prefix = "::ffff:"
    if host.lower().startswith(prefix) and host.count(".") == 3:
        return host[len(prefix) :]
    return host


def peer_address(sock: socket.socket) -> tuple[str, int]:
    """The peer's (host, port), or HandshakeError if it already vanished."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError as exc:
        raise HandshakeError("the peer vanished right after the handshake") from exc
    return unmap(host), port


def is_wildcard(host: str) -> bool:
    """True for 0.0.0.0 and ::, which mean every interface."""
    return host in ("0.0.0.0", "::", "*")


def lan_address() -> str:
    """The address a peer on the LAN should type to reach this machine.

    A UDP socket's connect only picks a route; no packet is sent.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address: str = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if not address.startswith("127."):
        return address
    # No route to that probe (a LAN without a gateway): ask the host name.
    with contextlib.suppress(OSError, UnicodeError):
        for candidate in socket.gethostbyname_ex(socket.gethostname())[2]:
            if not candidate.startswith("127."):
                return candidate
    return address


def resolve(
    host: str, port: int, passive: bool, what: str = "host"
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The first socket address for host:port, or NetworkError naming `what` it is."""
    flags = socket.AI_PASSIVE if passive else 0
    lookup = None if passive and host == "*" else host
    try:
        infos = socket.getaddrinfo(lookup, port, 0, socket.SOCK_STREAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkError(
            f"cannot resolve {what} {host!r}: check the spelling, or use an IP address"
        ) from exc
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


def listen_socket(
    host: str, port: int, source: str = "config.ini", ip_source: str | None = None
) -> socket.socket:
    """A listening TCP socket on host:port (:: also accepts IPv4).

    `source` says where the port came from (a config file, or --port), for the advice.
    """
    family, address = resolve(host, port, passive=True)
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(address)
        server.listen(LISTEN_BACKLOG)
    except OSError as exc:
        server.close()
        where = f"{format_host(host)}:{port}"
        if getattr(exc, "errno", None) in (98, 48, 10048):  # EADDRINUSE
            advice = f"choose another port in {source}" if source else "choose another port"
            if source == "--port":
                advice = "choose another --port"
            raise NetworkError(
                f"port {port} is already in use on {where}: stop the other program or {advice}"
            ) from exc
        if getattr(exc, "errno", None) in (99, 49, 10049):  # EADDRNOTAVAIL
            raise NetworkError(
                f"cannot listen on {where}: that address is not on this machine; "
                f"set ip = 0.0.0.0 in {ip_source or source or 'the config'} to listen on all "
                "interfaces"
            ) from exc
        raise NetworkError(f"cannot listen on {where}: {describe_os_error(exc)}") from exc
    return server


def connect_socket(
    host: str,
    port: int,
    timeout: float = HANDSHAKE_SECONDS,
    proxy: tuple[str, int] | None = None,
) -> socket.socket:
    """A TCP connection to host:port (through a SOCKS5 proxy if given), or NetworkError."""
    if proxy is None:
        return open_connection(host, port, timeout, proxied=False)
    sock = open_connection(proxy[0], proxy[1], timeout, proxied=True)
    try:
        socks5_connect(sock, host, port)
    except BaseException:
        sock.close()
        raise
    return sock


def open_connection(host: str, port: int, timeout: float, proxied: bool) -> socket.socket:
    """A plain TCP connection to a peer (or to a proxy); errors say what to check."""
    where = f"{'the proxy at ' if proxied else ''}{format_host(host)}:{port}"
    family, address = resolve(host, port, False, "the proxy's host" if proxied else "host")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except TimeoutError as exc:
        sock.close()
        raise NetworkError(
            f"connecting to {where} timed out after {timeout:g} s: check the address "
            "and that no firewall blocks the port"
        ) from exc
    except ConnectionRefusedError as exc:
        sock.close()
        check = (
            "is the proxy running? (check --proxy)"
            if proxied
            else "is the peer listening on that port? (they must start first and choose listen)"
        )
        raise NetworkError(f"connection to {where} refused: {check}") from exc
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot connect to {where}: {describe_os_error(exc)}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# SOCKS5 (RFC 1928), no authentication, CONNECT only. A host name is passed to the
# proxy as a name, so the proxy resolves it (what Tor and `ssh -D` expect).
SOCKS_REPLIES = {
    1: "the proxy failed",
    2: "the proxy's rules do not allow it",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused: is the peer listening on that port?",
    6: "it timed out",
    7: "the proxy does not support CONNECT",
    8: "the proxy does not support that address type",
}


def socks5_request(host: str, port: int) -> bytes:
    """The CONNECT request for host:port: an address as an address, a name as a name."""
    for family, kind in ((socket.AF_INET, 1), (socket.AF_INET6, 4)):
        with contextlib.suppress(OSError):
            address = socket.inet_pton(family, host)
            return bytes([5, 1, 0, kind]) + address + port.to_bytes(2, "big")
    try:
        name = host.encode("idna")
    except UnicodeError:
        raise NetworkError(f"{host!r} is not a host name a SOCKS5 proxy can look up") from None
    if not 0 < len(name) < 256:
        raise NetworkError(f"the host name {host!r} is too long for a SOCKS5 proxy")
    return bytes([5, 1, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


def socks5_connect(sock: socket.socket, host: str, port: int) -> None:
    """Ask the proxy on `sock` to connect to host:port; NetworkError says why it did not."""
    where = f"{format_host(host)}:{port}"
    try:
        proxy = format_address(sock.getpeername())
        sock.sendall(b"\x05\x01\x00")  # version 5, one method: no authentication
        version, method = receive_exactly(sock, 2)
        if version != 5:
            raise NetworkError("that is not a SOCKS5 proxy (check --proxy)")
        if method != 0:
            raise NetworkError("the proxy wants a login, which chatclient does not support")
        sock.sendall(socks5_request(host, port))
        # OpenSSH's `ssh -D` closes without a reply when it cannot reach the destination
        # (refused, or an unknown host): that says nothing against the proxy itself.
        unreached = (
            f"the proxy at {proxy} could not reach {where} (or refused to): it closed the "
            f"connection without saying why; check that {where} is right and that the peer "
            "is listening there"
        )
        version, reply, _, kind = receive_exactly(sock, 4, unreached)
        if version != 5:
            raise NetworkError("that is not a SOCKS5 proxy (check --proxy)")
        if reply != 0:
            reason = SOCKS_REPLIES.get(reply, f"reply {reply}")
            raise NetworkError(f"the proxy could not connect to {where}: {reason}")
        length = {1: 4, 4: 16}.get(kind) or receive_exactly(sock, 1)[0]
        receive_exactly(sock, length + 2)  # the address the proxy bound: not needed
    except TimeoutError as exc:
        raise NetworkError("the proxy did not answer in time (check --proxy)") from exc
    except OSError as exc:
        raise NetworkError(f"the proxy failed: {describe_os_error(exc)}") from exc


def receive_exactly(
    sock: socket.socket,
    size: int,
    closed: str = "the proxy closed the connection (check --proxy)",
) -> bytes:
    """Exactly `size` bytes (the socket's timeout bounds each read), or NetworkError
    (`closed` when the other end closes first)."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise NetworkError(closed)
        data += chunk
    return data


@dataclass(eq=False)
class Link:
    """One TCP connection and its protocol object; only the network thread touches it."""

    sock: socket.socket
    address: tuple[str, int]
    peer: PeerProtocol
    since: float
    fd: int = -1
    outgoing: bytearray = field(default_factory=bytearray)
    last_write: float = 0.0
    established: bool = False  # both WELCOMEs went through: its events go to the user
    leaving: bool = False  # we said goodbye: half-close once it is written
    leave_by: float | None = None  # half-closed: close when the peer has, or by then
    leave_cap: float = 0.0  # ... and by then at the latest, however busy the peer
    last_read: float = 0.0  # when data last came
    mask: int = selectors.EVENT_READ  # what the selector watches for
    no_room: bool = False  # proven while the room was full: refused once it says who it is
    said_goodbye: bool = False  # its TERMINATE came: the room was told
    goodbye_words: bool = False  # a member sent its goodbye's words: TERMINATE is next
    echo_due: int | None = None  # hosting: its last room words not yet ECHOed
    to_nobody: int = 0  # private words it sent to names not in the room (dropped)
    parked: bool = False  # hosting: lost, its place kept while its session may resume
    away_since: float | None = None  # a resumed connection: when its session was lost

    @property
    def host(self) -> str:
        """The peer's address without the port."""
        return self.address[0]

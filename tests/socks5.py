"""A minimal SOCKS5 server for tests (RFC 1928): no authentication, CONNECT only.

It only ever connects to loopback: 127.0.0.0/8 and ::1 as sent, or a name that
`allowed_hosts` maps to one of those ("localhost" is 127.0.0.1 unless mapped
otherwise). Anything else gets reply 0x02, so a test can never reach the world.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading

TIMEOUT = 10.0  # every step of a request, and the connect
IDLE_TIMEOUT = 60.0  # how long a relayed direction may stay silent: above chatclient's keepalive
VERSION, NO_AUTH, NO_ACCEPTABLE_METHOD, CONNECT = 5, 0x00, 0xFF, 0x01
IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, REFUSED = 0x00, 0x01, 0x02, 0x05
COMMAND_NOT_SUPPORTED, ADDRESS_TYPE_NOT_SUPPORTED = 0x07, 0x08


def is_loopback(address: str) -> bool:
    """True only for 127.0.0.0/8 and ::1, the addresses tests may connect to."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip == ipaddress.IPv6Address("::1") or (ip.version == 4 and ip.is_loopback)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes, or ConnectionError if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection in mid-request")
        data += chunk
    return data


def reply(sock: socket.socket, code: int, bound: tuple[str, int] = ("0.0.0.0", 0)) -> None:
    """Send a SOCKS5 reply; BND.ADDR is the proxy's own end of the outgoing connection."""
    family, atyp = (socket.AF_INET6, IPV6) if ":" in bound[0] else (socket.AF_INET, IPV4)
    address = socket.inet_pton(family, bound[0]) + bound[1].to_bytes(2, "big")
    sock.sendall(bytes([VERSION, code, 0, atyp]) + address)


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes until EOF and pass the half-close on; on any error, cut both sides."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def relay(client: socket.socket, target: socket.socket) -> None:
    """Copy bytes both ways, one thread per direction, until both directions have ended."""
    client.settimeout(IDLE_TIMEOUT)
    target.settimeout(IDLE_TIMEOUT)
    upstream = threading.Thread(target=pump, args=(client, target), daemon=True)
    upstream.start()
    pump(target, client)
    upstream.join()  # bounded: every recv and send has a timeout


def linger(client: socket.socket) -> None:
    """Close after a refusal as RFC 1928 wants: the client closes first, so no reset is sent."""
    client.shutdown(socket.SHUT_WR)
    while client.recv(4096):
        pass


class Socks5Server:
    """A SOCKS5 server on 127.0.0.1 port 0 in a daemon thread; records each request."""

    port: int

    def __init__(
        self, *, allowed_hosts: dict[str, str] | None = None, like_openssh: bool = False
    ) -> None:
        self.allowed_hosts = {"localhost": "127.0.0.1", **(allowed_hosts or {})}
        # OpenSSH's `ssh -D` answers a destination it cannot reach (refused, unknown host,
        # not allowed) by closing the connection, with no reply code.
        self.like_openssh = like_openssh
        if bad := [f"{k} -> {v}" for k, v in self.allowed_hosts.items() if not is_loopback(v)]:
            raise ValueError(f"allowed_hosts must map to 127.0.0.0/8 or ::1: {bad}")
        self.requests: list[tuple[int, str, int]] = []  # (ATYP, host as sent, port)
        self.connected = threading.Event()  # set when the first relay starts
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._handlers: list[threading.Thread] = []

    def __enter__(self) -> Socks5Server:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # how soon the accept loop sees _stopping
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(TIMEOUT)  # it closes the listener
        with self._lock:
            for sock in self._sockets:  # wakes every blocked recv in the handlers
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for handler in self._handlers:
            handler.join(TIMEOUT)
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _serve(self) -> None:
        with self._listener:
            while not self._stopping.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(TIMEOUT)
                with self._lock:
                    self._sockets.add(client)
                handler = threading.Thread(target=self._handle, args=(client,), daemon=True)
                self._handlers.append(handler)
                handler.start()

    def _handle(self, client: socket.socket) -> None:
        target = None
        try:
            if (target := self._negotiate(client)) is None:
                linger(client)
                return
            self.connected.set()  # before the reply, so a client that has it can rely on it
            reply(client, SUCCEEDED, target.getsockname()[:2])
            relay(client, target)
        except OSError:
            pass  # the client vanished or timed out: nothing to tell anyone
        finally:
            with self._lock:
                for sock in (client, target):
                    if sock is not None:
                        self._sockets.discard(sock)
                        sock.close()

    def _fail(self, client: socket.socket, code: int) -> None:
        """Refuse the request: with a reply code, or (like OpenSSH) by closing without one."""
        if not self.like_openssh:
            reply(client, code)

    def _negotiate(self, client: socket.socket) -> socket.socket | None:
        """Method selection, the request and the connect: the target, or None after a refusal."""
        version, count = recv_exact(client, 2)
        if version != VERSION or NO_AUTH not in recv_exact(client, count):
            client.sendall(bytes([VERSION, NO_ACCEPTABLE_METHOD]))
            return None
        client.sendall(bytes([VERSION, NO_AUTH]))
        version, command, _, atyp = recv_exact(client, 4)
        if version != VERSION or command != CONNECT:
            reply(client, GENERAL_FAILURE if version != VERSION else COMMAND_NOT_SUPPORTED)
            return None
        if atyp == IPV4:
            host = socket.inet_ntop(socket.AF_INET, recv_exact(client, 4))
        elif atyp == IPV6:
            host = socket.inet_ntop(socket.AF_INET6, recv_exact(client, 16))
        elif atyp == DOMAIN:
            host = recv_exact(client, recv_exact(client, 1)[0]).decode("ascii", "backslashreplace")
        else:
            reply(client, ADDRESS_TYPE_NOT_SUPPORTED)
            return None
        port = int.from_bytes(recv_exact(client, 2), "big")
        self.requests.append((atyp, host, port))
        address = self.allowed_hosts.get(host) if atyp == DOMAIN else host
        if address is None or not is_loopback(address):  # the one gate before any connect
            self._fail(client, NOT_ALLOWED)
            return None
        try:
            target = socket.create_connection((address, port), timeout=TIMEOUT)
        except OSError as exc:
            refused = isinstance(exc, ConnectionRefusedError)
            self._fail(client, REFUSED if refused else GENERAL_FAILURE)
            return None
        with self._lock:
            self._sockets.add(target)
        return target

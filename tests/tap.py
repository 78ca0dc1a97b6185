"""A TCP forwarder on 127.0.0.1 for tests: a connector talks to a listener through it. It
records what each connection's connector sent, and it can freeze the connections it has,
so that neither end hears the other any more while neither sees its connection close (a
link gone quiet, as when a laptop's Wi-Fi changes networks). Connections made after a
freeze are forwarded as usual, unless the tap holds them: then they are recorded, never
forwarded (what someone on the path captures, and keeps from arriving)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType


class Tap:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.sent: list[bytearray] = []  # per connection, in order: what the connector sent
        self._frozen = 0  # connections numbered below this forward nothing more
        self.holding = False  # new connections are recorded, and go nowhere
        self._sockets: list[socket.socket] = []
        self._connectors: list[socket.socket] = []  # their ends, by connection
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        threading.Thread(target=self._accept, name="tap", daemon=True).start()

    def freeze(self) -> None:
        """The connections so far go quiet, both ways, and stay open."""
        with self._lock:
            self._frozen = len(self.sent)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                with self._lock:
                    held = self.holding
                server = None if held else socket.create_connection(self._target, timeout=10.0)
            except OSError:
                return
            with self._lock:
                number = len(self.sent)
                self.sent.append(bytearray())
                self._sockets += [client] if server is None else [client, server]
                self._connectors.append(client)
                if server is None:
                    self._held.append(client)
                if server is None:
                    self._frozen = max(self._frozen, number + 1)
            if server is None:
                threading.Thread(
                    target=self._pump, args=(number, client, client, True), daemon=True
                ).start()
                continue
            server.settimeout(None)
            for source, sink, record in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(number, source, sink, record), daemon=True
                ).start()

    def _pump(self, number: int, source: socket.socket, sink: socket.socket, record: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            with self._lock:
                frozen = number < self._frozen
                if record and data:
                    self.sent[number] += data
                    self._arrived.notify_all()
            if frozen:
                if not data:
                    return  # its end closed: the other end is never told
                continue
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    def reset_connectors(self) -> None:
        """Freeze, and reset the connector's end of every connection so far (as a NAT or a
        dropped Wi-Fi can): the connector learns at once, the listener hears nothing."""
        self.freeze()
        with self._lock:
            clients = list(self._connectors)
        reset(clients)

    def release(self) -> None:
        """Stop holding: the connections held are reset, and new ones are forwarded."""
        with self._lock:
            self.holding = False
            held, self._held = self._held, []
        reset(held)

    def captured(self, number: int, timeout: float) -> bytes:
        """What the connector sent on connection `number` (from 0), once it sent anything."""
        with self._arrived:
            if not self._arrived.wait_for(
                lambda: len(self.sent) > number and bool(self.sent[number]), timeout
            ):
                raise AssertionError(f"nothing came on connection {number} within {timeout} s")
            return bytes(self.sent[number])

    def close(self) -> None:
        with self._lock:
            sockets = [self._server, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> Tap:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def reset(clients: list[socket.socket]) -> None:
    """Close each connection with a reset (RST), not a goodbye (FIN)."""
    for client in clients:
        with contextlib.suppress(OSError):
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.shutdown(socket.SHUT_RD)  # wakes its pump, which then lets go
        client.close()  # with no linger: a reset

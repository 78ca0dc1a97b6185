"""A hardened listener: floods from one host never lock out a real peer, thousands of
connections leave threads and memory flat, and refusals are summarised per address.

Real `python chatclient.py --listen` processes on 127.0.0.1; 127.0.0.2 plays the
flooding host (all of 127.0.0.0/8 is loopback). Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from conftest import KEY, TIMEOUT, ChatProcess, free_port, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, drive

from chatclient.handshake import Role
from chatclient.messages import Terminate
from chatclient.peer import Established, Event, PeerProtocol, Stage

Spawn = Callable[..., ChatProcess]
FLOODER = "127.0.0.2"


def start_listener(spawn: Spawn, tmp_path: Path) -> tuple[ChatProcess, int]:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop", key=KEY)
    listener = spawn("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on 127\.0\.0\.1:")
    return listener, port


def status_field(pid: int, name: str) -> int:
    """A number from /proc/PID/status (Threads, or VmRSS in KiB)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{name} not in /proc/{pid}/status")


class Flood:
    """Silent and garbage connections from FLOODER, as fast as one thread can make them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        rng = random.Random(8)
        held: list[socket.socket] = []  # silent ones stay open a while
        try:
            while not self.stop.is_set():
                try:
                    sock = socket.create_connection(
                        ("127.0.0.1", self.port), timeout=2.0, source_address=(FLOODER, 0)
                    )
                except OSError:
                    continue
                self.count += 1
                if self.count % 2:
                    held.append(sock)
                    if len(held) > 64:
                        held.pop(0).close()
                else:
                    with contextlib.suppress(OSError):
                        sock.sendall(rng.randbytes(rng.randrange(1, 200)))
                    sock.close()
        finally:
            for sock in held:
                sock.close()


# One person, one identity: the listener pins laptop's on first contact.
LAPTOP = Ed25519PrivateKey.generate()


def connect_slowly(port: int, pause: threading.Event) -> list[Event]:
    """A real connector from 127.0.0.1 that waits 150 ms between M2 and M3."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        peer = PeerProtocol(Role.CONNECTOR, PSK, "laptop", time.monotonic(), identity=LAPTOP)
        sock.sendall(peer.data_to_send())  # M1
        while peer.stage is Stage.HELLO:
            peer.receive_data(sock.recv(65536), time.monotonic())
        pause.wait(0.15)  # a slow M3, as from a busy laptop on Wi-Fi
        events = drive(sock, peer, Established)
        if isinstance(events[-1], Established):
            sock.sendall(peer.send(Terminate("thanks"), time.monotonic()))
        return events


def test_a_flood_from_one_host_never_locks_out_a_slow_real_peer(
    spawn: Spawn, tmp_path: Path
) -> None:
    never = threading.Event()
    for attempt in range(5):
        listener, port = start_listener(spawn, tmp_path)
        with Flood(port) as flood:
            while flood.count < 200:  # the flood is well under way
                assert not flood.stop.wait(0.01)
            events = connect_slowly(port, never)
        assert isinstance(events[-1], Established), (attempt, events, listener.err)
        listener.expect(r"^laptop joined the chat\.$")
        listener.expect(r"^laptop left the chat: thanks$")
        assert listener.wait() == 0
        assert flood.count >= 200


def test_six_thousand_connections_leave_threads_and_memory_flat(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    pid = listener.proc.pid
    for _ in range(50):  # warm up: the first connections load what refusals need
        with socket.create_connection(("127.0.0.1", port), source_address=(FLOODER, 0)):
            pass
    # The first refusal is printed: the printer thread (the screen's own) is there.
    listener.expect(r"^(Refused|Dropped) a connection from \('127\.0\.0\.2', ", stream="err")
    threads, rss = status_field(pid, "Threads"), status_field(pid, "VmRSS")
    rng = random.Random(6000)
    for n in range(6000):
        with socket.create_connection(
            ("127.0.0.1", port), timeout=TIMEOUT, source_address=(FLOODER, 0)
        ) as sock:
            if n % 3 == 0:
                sock.sendall(rng.randbytes(64))
    # Every one refused or dropped; the listener still answers, with no more threads.
    summary = listener.expect(r"^Refused \d+ more connections? from 127\.0\.0\.2 in the last 10 s$")
    assert int(re.findall(r"\d+", summary)[0]) > 100
    assert status_field(pid, "Threads") == threads
    assert status_field(pid, "VmRSS") - rss < 20 * 1024, (rss, status_field(pid, "VmRSS"))
    detailed = [line for line in listener.err if "127.0.0.2" in line and "more" not in line]
    assert len(detailed) == 1, detailed  # the first refusal in full, then only summaries

    friend_config = write_config(tmp_path, "laptop.ini", port=port, username="laptop", key=KEY)
    friend = spawn("--config", str(friend_config), "--connect", f"127.0.0.1:{port}")
    friend.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat\.$")
    assert "Traceback" not in listener.all_output()
    assert os.path.exists(f"/proc/{pid}")


class InviteFlood:
    """One precomputed invite-mode M1, replayed from FLOODER as fast as one thread can:
    each would cost the listener a SPAKE2 computation, were it let through."""

    def __init__(self, port: int) -> None:
        self.port, self.count = port, 0
        guesser = PeerProtocol(
            Role.CONNECTOR, None, "guesser", time.monotonic(), code="7-aardvark-adroitness"
        )
        self.m1 = guesser.data_to_send()
        self.stop = threading.Event()
        self.under_way = threading.Event()  # set after 50 tries
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InviteFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self._thread.join(TIMEOUT)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind((FLOODER, 0))
                sock.settimeout(TIMEOUT)
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(self.m1)
                sock.recv(4096)  # its M2 (a SPAKE2 answer) or a refusal: then gone
                self.count += 1
                if self.count >= 50:
                    self.under_way.set()


def test_a_flood_of_invite_tries_is_budgeted_and_contacts_still_get_in(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    for name in ("desktop", "laptop"):
        (tmp_path / name).mkdir()
        write_config(tmp_path / name, port=port, username=name, key="")
    first = spawn("--listen", cwd=tmp_path / "desktop")
    code = first.expect(r"^Invite code: ").removeprefix("Invite code: ")
    first.expect(r"^Listening on ")
    laptop = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=tmp_path / "laptop")
    first.expect(r"^laptop joined the chat \(verified\)\.$")
    laptop.send("exit", "")
    assert first.wait() == 0 and laptop.wait() == 0
    listener = spawn("--invite", cwd=tmp_path / "desktop")  # contacts, and an open invite
    listener.expect(r"^Listening on ")
    with InviteFlood(port) as flood:
        assert flood.under_way.wait(TIMEOUT)  # at most a few tries a second are computed
        contact = spawn("--connect", f"127.0.0.1:{port}", cwd=tmp_path / "laptop")
        contact.expect(r"^WELCOME Welcome to the chat! I am desktop$")
        listener.expect(r"^laptop joined the chat \(verified\)\.$")
    contact.send("exit", "")
    listener.expect(r"^Connection closed by peer\.$")

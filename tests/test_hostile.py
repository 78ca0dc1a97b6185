"""Hostile peers against a real listener process, on 127.0.0.1 only: plain sockets play
attackers that never learned the key (silent, trickling, garbage, a 4 GiB length
prefix), one attacker runs the real handshake to become an authenticated peer that
then misbehaves, and peers vanish right after their WELCOME. The man in the middle is
in test_hostile_relay.py. Every wait is on process output, a socket read or an Event,
each with a timeout."""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import signal
import socket
import struct
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from conftest import KEY, OTHER_KEY, TIMEOUT, ChatProcess, Spawn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hostile import (
    chat_both_ways,
    connect,
    frame,
    joined,
    read_until_closed,
    says,
    start_connector,
    start_listener,
)
from pair import OTHER_PSK, drive

from chatclient.config import decode_key
from chatclient.handshake import (
    HELLO_SIZE,
    MAGIC,
    VERSION,
    ConnectorHandshake,
    ListenerHandshake,
    Mode,
    Role,
    derive_psk,
    welcome_signed_data,
)
from chatclient.messages import Chat, FrameDecoder, Welcome
from chatclient.peer import Established, Failed, PeerProtocol
from chatclient.room import MAX_PENDING_HANDSHAKES
from chatclient.session import Session

PSK = derive_psk(decode_key(KEY, program="chatclient"))
Role = Role
# Memory may grow this much (KiB) while a huge frame is refused.
GROWTH_KIB = 20 * 1024


# --- Processes ---------------------------------------------------------------


def memory_kib(pid: int, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status (has the process exited?)")


def frozen_peak_kib(process: ChatProcess) -> int | None:
    """VmHWM (peak resident KiB) of a process that may be exiting, or None if it is gone.

    The process is stopped while /proc is read, so it cannot let go of its
    memory halfway, and is let go on afterwards.
    """
    pid = process.proc.pid
    os.kill(pid, signal.SIGSTOP)  # a zombie (not reaped yet) takes signals harmlessly
    try:
        return memory_kib(pid, "VmHWM")
    except AssertionError:
        return None
    finally:
        os.kill(pid, signal.SIGCONT)


def reap(process: ChatProcess, timeout: float = TIMEOUT) -> tuple[int, int]:
    """Exit status and ru_maxrss (KiB) of a process, reaped here with os.wait4.

    Linux counts in ru_maxrss the memory the child inherited from pytest when
    it was spawned, so it is an upper bound on the child's own peak.
    """
    result: list[tuple[int, int, resource.struct_rusage]] = []
    pid = process.proc.pid
    waiter = threading.Thread(target=lambda: result.append(os.wait4(pid, 0)), daemon=True)
    waiter.start()
    waiter.join(timeout)
    if not result:
        os.kill(pid, signal.SIGKILL)
        waiter.join(TIMEOUT)
        raise AssertionError(
            f"process did not exit within {timeout} s\nstdout: {process.out}\nstderr: {process.err}"
        )
    _, status, usage = result[0]
    process.proc.returncode = os.waitstatus_to_exitcode(status)
    return process.proc.returncode, usage.ru_maxrss


# --- Plain-socket and wrong-key attackers -----------------------------------------


def test_wrong_key_is_refused_on_both_sides_and_the_listener_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    stranger = start_connector(spawn, tmp_path, port, key=OTHER_KEY)
    stranger.expect(r"^error: .*fernet_key", stream="err")
    assert stranger.wait() != 0
    assert "WELCOME" not in stranger.all_output()
    listener.expect(r"^Refused a connection from .*fernet_key", stream="err")

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the wrong key")


def test_silent_connection_does_not_delay_a_real_peer(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as silent:
        friend = start_connector(spawn, tmp_path, port)
        joined(listener, friend)
        chat_both_ways(listener, friend, "beside a silent one")
        # The silent one is still waiting for its deadline: the real peer never queued behind it.
        assert not any("did not finish" in line for line in listener.err)
        silent.settimeout(0.1)
        with pytest.raises(TimeoutError):
            silent.recv(1)  # the listener answered the silent connection nothing


def test_huge_length_prefix_before_the_handshake_is_refused_without_memory(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    pid = listener.proc.pid
    rss_before, peak_before = memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM")
    with connect(port) as sock:
        sock.sendall(b"\xff\xff\xff\xff")
        assert read_until_closed(sock, 3.0) == b""
    listener.expect(r"^Refused a connection from .*4294967295-byte frame", stream="err")
    rss_after, peak_after = memory_kib(pid, "VmRSS"), memory_kib(pid, "VmHWM")
    assert rss_after - rss_before < GROWTH_KIB, (rss_before, rss_after)
    assert peak_after - peak_before < GROWTH_KIB, (peak_before, peak_after)

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the huge prefix")


def test_huge_length_prefix_from_an_authenticated_peer_ends_the_chat_without_memory(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as sock:
        mallory = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(sock, mallory, Established)
        assert mallory.peer_name == "desktop"
        listener.expect(r"^mallory joined the chat\.$")
        sock.sendall(mallory.send(Chat("I am in"), time.monotonic()))
        listener.expect(r"^mallory says: I am in$")
        rss_before = memory_kib(listener.proc.pid, "VmRSS")
        inherited = memory_kib(os.getpid(), "VmHWM")  # pytest's own peak, see reap()

        sock.sendall(b"\xff\xff\xff\xff")
        listener.expect(r"^Connection lost: .*4294967295-byte frame")
        peak = frozen_peak_kib(listener)  # it exits right after that line
        status, maxrss = reap(listener)
        assert status != 0
        if peak is not None:
            assert peak - rss_before < GROWTH_KIB, (rss_before, peak)
        else:  # it had already exited: fall back on the kernel's upper bound
            assert maxrss - max(rss_before, inherited) < GROWTH_KIB, (rss_before, maxrss)
        read_until_closed(sock, 3.0)
    assert "Connection closed by peer." not in listener.out


def test_trickling_hello_is_dropped_at_the_handshake_deadline(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path)
    m1 = frame(ConnectorHandshake(PSK).m1)
    closed = threading.Event()
    received: list[bytes] = []
    with connect(port) as sock:

        def watch() -> None:
            with suppress(OSError):
                received.append(read_until_closed(sock, 20.0))
            closed.set()

        threading.Thread(target=watch, daemon=True).start()
        # 41 bytes, one per 0.3 s: the whole hello would take 12 s.
        for byte in m1:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            if closed.wait(0.3):
                break
        assert closed.wait(TIMEOUT)
    # When it closes is the pure protocol's deadline, tested with a fake clock
    # (test_peer.py); here: the trickler got no M2 and the listener says why.
    assert received == [b""]  # no M2: the hello never completed
    listener.expect(r"^Refused a connection from .*did not finish within 10 s", stream="err")

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the trickle")


def test_garbage_connections_are_refused_and_the_listener_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    rng = random.Random(1234)
    zero_key = bytes(32)
    hello_head = MAGIC + bytes([VERSION, Mode.SHARED_KEY])
    garbage = [
        (rng.randbytes(1000), r""),
        (frame(rng.randbytes(HELLO_SIZE)), r"not speaking the chatclient protocol"),
        (frame(MAGIC + bytes([1]) + rng.randbytes(32)), r"protocol version 1"),
        (
            frame(hello_head + rng.randbytes(32)) + frame(rng.randbytes(64)),
            r"commitment",
        ),
        (
            frame(hello_head + hashlib.sha256(zero_key).digest())
            + frame(zero_key + rng.randbytes(32)),
            r"all-zero key",
        ),
        (b"", r"closed the connection during the handshake"),
    ]
    listener, port = start_listener(spawn, tmp_path)
    # Each from an address of its own: refusals from one address are summarised.
    for number, (data, reason) in enumerate(garbage, start=2):
        source = f"127.0.0.{number}"
        with connect(port, source) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            read_until_closed(sock, 5.0)
        listener.expect(
            rf"^Refused a connection from \('{re.escape(source)}', \d+\): .*{reason}",
            stream="err",
        )

    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)
    chat_both_ways(listener, friend, "after the garbage")
    assert says(listener) == ["laptop says: hello after the garbage"]


def test_third_connection_is_refused_while_two_are_chatting(spawn: Spawn, tmp_path: Path) -> None:
    listener, port = start_listener(spawn, tmp_path, "--max-members", "1")
    friend = start_connector(spawn, tmp_path, port)
    joined(listener, friend)

    # "Full" is only told to a connector that proved the key: a stranger who
    # sends a hello learns nothing about whether a chat is going on.
    with connect(port) as sock:
        stranger = PeerProtocol(Role.CONNECTOR, OTHER_PSK, "stranger", time.monotonic())
        events = drive(sock, stranger, Established)
        assert isinstance(events[-1], Failed)
        assert "could not authenticate" in str(events[-1].error)
        assert "full" not in str(events[-1].error)
    with connect(port) as sock:
        knows_key = PeerProtocol(Role.CONNECTOR, PSK, "third", time.monotonic())
        busy = drive(sock, knows_key, Established)[-1]
        assert isinstance(busy, Failed)
        assert str(busy.error) == "the chat is full (1 person)"

    intruder = start_connector(spawn, tmp_path, port, name="intruder")
    intruder.expect(r"^error: the chat is full \(1 person\)$", stream="err")
    assert intruder.wait() != 0
    assert "WELCOME" not in intruder.all_output()

    chat_both_ways(listener, friend, "still two")
    assert "intruder" not in listener.all_output()


# --- Authenticated peers that vanish mid-handshake ---------------------------------


def next_frame(sock: socket.socket, decoder: FrameDecoder) -> bytes:
    """The next frame body from a plain socket (its timeout bounds each read)."""
    while (body := decoder.next_frame()) is None:
        data = sock.recv(65536)
        assert data, "the peer closed the connection"
        decoder.feed(data)
    return body


def vanish_after_welcome(port: int) -> None:
    """Complete the handshake as a peer that knows the key, then reset the connection.

    M3, the WELCOME and the reset leave together, so the listener reads a valid
    WELCOME from a connection that is already gone.
    """
    with connect(port) as sock:
        handshake = ConnectorHandshake(PSK)
        decoder = FrameDecoder()
        sock.sendall(frame(handshake.m1))
        m3, keys = handshake.respond(next_frame(sock, decoder))
        identity = Ed25519PrivateKey.generate()
        signed = welcome_signed_data(Role.CONNECTOR, keys.transcript, "mallory", bytes(16))
        public = identity.public_key().public_bytes_raw()
        welcome = Welcome("mallory", public, identity.sign(signed))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(frame(m3) + Session(keys).encode(welcome))


def test_peer_vanishing_right_after_its_welcome_leaves_no_traceback_on_the_listener(
    spawn: Spawn, tmp_path: Path
) -> None:
    # The reset races the listener's last steps; five fresh listeners make
    # a traceback, if there is one to see, near certain to show.
    for attempt in range(5):
        listener, port = start_listener(spawn, tmp_path)
        vanish_after_welcome(port)
        line = listener.expect(r"^(Refused a connection from |Connection lost: |Traceback)", 5.0)
        assert not line.startswith("Traceback"), "\n".join(listener.err)
        if line.startswith("Connection lost: "):  # admitted, then lost: a fair ending too
            assert listener.wait() != 0
        else:
            friend = start_connector(spawn, tmp_path, port)
            joined(listener, friend)
            chat_both_ways(listener, friend, f"after vanished peer {attempt}")
        listener.kill()
        assert "Traceback" not in listener.all_output()


def test_listener_vanishing_right_after_its_welcome_leaves_no_traceback_on_the_connector(
    spawn: Spawn, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        connector = start_connector(spawn, tmp_path, server.getsockname()[1])
        sock, _ = server.accept()
        with sock:
            sock.settimeout(TIMEOUT)
            decoder = FrameDecoder()
            handshake = ListenerHandshake(PSK)
            sock.sendall(frame(handshake.receive_commit(next_frame(sock, decoder))))
            keys = handshake.receive_confirm(next_frame(sock, decoder))
            sock.sendall(Session(keys).encode(Welcome("desktop")))
        # Closed at once: the connector's own WELCOME then draws a reset.
        assert connector.wait() != 0
    assert "Traceback" not in connector.all_output(), "\n".join(connector.err)
    assert any(
        line.startswith(("error: ", "Connection lost: ")) for line in connector.out + connector.err
    )


def test_more_silent_connections_than_slots_do_not_lock_out_a_real_peer(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    silent = [connect(port) for _ in range(MAX_PENDING_HANDSHAKES + 4)]
    try:
        friend = start_connector(spawn, tmp_path, port)
        joined(listener, friend)
        chat_both_ways(listener, friend, "beside twenty silent ones")
        assert not any("did not finish" in line for line in listener.err)
    finally:
        for sock in silent:
            sock.close()
    assert any(line.startswith("Dropped a connection from") for line in listener.err)


def test_messages_that_verified_are_shown_even_when_the_next_frame_in_the_read_breaks(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, port = start_listener(spawn, tmp_path)
    with connect(port) as sock:
        mallory = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(sock, mallory, Established)
        listener.expect(r"^mallory joined the chat\.$")
        good = b"".join(mallory.send(Chat(f"fine {n}"), 0.0) for n in range(3))
        sock.sendall(good + frame(b"not a token"))  # one write: read as one chunk
        listener.expect(r"^Connection lost: .*integrity")
        assert listener.wait() != 0
    assert says(listener) == [f"mallory says: fine {n}" for n in range(3)]

"""Round trips, bursts, Fernet alone and handshakes: the chat against raw TCP and the seed."""

from __future__ import annotations

import socket
import statistics
import sys
import time
from collections.abc import Callable

from cryptography.fernet import Fernet

from bench.common import (
    BURST_DONE,
    HOST,
    INDEX_DIGITS,
    KEY,
    SOCKET_SECONDS,
    STEP_SECONDS,
    TEXT_SIZE,
    BenchError,
    Counts,
    WorkerQueue,
    peers,
    percentile,
)
from bench.users import (
    Arrivals,
    BenchUser,
    BurstCounter,
    Echo,
    accept_plain,
    await_close,
    chat_texts,
    connect_plain,
    end_listener,
    join_chat,
    leave_chat,
    listen_chat,
    open_listener,
    plain_frames,
    shared_psk,
)
from chatclient.messages import Chat, encode_frame, encode_payload
from chatclient.network import Network
from chatclient.peer import Established, MessageReceived
from chatclient.sockets import connect_socket


def echo_chat(out: WorkerQueue) -> None:
    """Listener: send every Chat back until the peer says goodbye."""
    user = Echo()
    net = listen_chat(open_listener(out), user)
    user.expect(Established)
    if error := end_listener(user, net):
        raise BenchError(f"the echo's connection failed: {error}")
    out.put(("result", None))


def ping_chat(out: WorkerQueue, port: int, rounds: int, warmup: int) -> None:
    """Connector: time `rounds` Chat round trips, net.send to the echo's arrival (ns).

    Both ends take the program's path: this (main) thread posts the message to the network
    thread, which encrypts and writes it; the echo comes back through connection_events.
    """
    user = BenchUser()
    net = join_chat(port, user)
    message = Chat("x" * TEXT_SIZE)
    echoed = MessageReceived(message)

    def exchange() -> object:
        net.send(message)
        return user.next_event()

    samples = time_round_trips(exchange, echoed, rounds, warmup)
    leave_chat(net)
    out.put(("result", samples))


def time_round_trips(
    exchange: Callable[[], object], expected: object, rounds: int, warmup: int
) -> list[int]:
    """Nanoseconds of each of `rounds` calls of `exchange` after `warmup`; each must echo."""
    samples: list[int] = []
    for i in range(warmup + rounds):
        start = time.perf_counter_ns()
        reply = exchange()
        elapsed = time.perf_counter_ns() - start
        if reply != expected:
            raise BenchError(f"the echo returned {reply!r}")
        if i >= warmup:
            samples.append(elapsed)
    return samples


def receive_chat_burst(out: WorkerQueue, count: int) -> None:
    """Listener: count Chat messages arriving in order until the peer leaves."""
    user = BurstCounter(count)
    net = listen_chat(open_listener(out), user)
    user.expect(Established)
    user.seen.error = end_listener(user, net)
    out.put(("result", user.seen.report()))


def send_chat_burst(out: WorkerQueue, port: int, count: int) -> None:
    """Connector: net.send `count` Chat messages as fast as the main thread can post them.

    Then it waits for the receiver's acknowledgement of the last one before leaving, so the
    goodbye's drain limit never cuts the burst short. A connection lost midway is not a
    failure of the benchmark: the receiver's count then shows the loss.
    """
    messages = [Chat(text) for text in chat_texts(count)]
    user = BenchUser()
    net = join_chat(port, user)
    for message in messages:
        net.send(message)
    reply = user.next_event(STEP_SECONDS)
    if reply != MessageReceived(Chat(BURST_DONE)):
        print(f"warning: the chat burst's sender got {reply!r}", file=sys.stderr)
    leave_chat(net)
    out.put(("result", count))


def serve_handshakes(out: WorkerQueue, count: int) -> None:
    """Listener: one Network admitting `count` connectors, one after another."""
    user = BenchUser()
    net = listen_chat(open_listener(out), user)
    for _ in range(count):
        user.expect(Established)
        if error := user.wait_end():
            raise BenchError(f"a handshake's connection failed: {error}")
    net.stop()
    out.put(("result", None))


def time_handshakes(out: WorkerQueue, port: int, count: int, warmup: int) -> None:
    """Connector: time connect start to Established on this thread (ns), as main() connects.

    Each connection gets its own Network, built before the clock starts as main() builds
    it before connecting; the network thread's start is inside the timing.
    """
    psk = shared_psk()
    samples: list[int] = []
    for i in range(warmup + count):
        user = BenchUser()
        net = Network(psk, "connector", user)
        user.net = net
        start = time.perf_counter_ns()
        net.connect(connect_socket(HOST, port, SOCKET_SECONDS))
        net.start()
        user.expect(Established)
        elapsed = time.perf_counter_ns() - start
        leave_chat(net)
        if i >= warmup:
            samples.append(elapsed)
    out.put(("result", samples))


# The baselines' peers: blocking sockets, the same framing, no session layer.


def _unchanged(body: bytes) -> bytes:
    return body


def sealing(fernet: bool) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """How a framed baseline seals and opens a body: unchanged (raw), or as the seed did.

    The seed: one Fernet object keyed directly by the shared key, a token per message.
    """
    if not fernet:
        return _unchanged, _unchanged
    token = Fernet(KEY)
    return token.encrypt, token.decrypt


def echo_framed(out: WorkerQueue, fernet: bool) -> None:
    """Listener: open every frame and send it back sealed anew, until EOF."""
    seal, unseal = sealing(fernet)
    sock = accept_plain(open_listener(out))
    for body in plain_frames(sock):
        sock.sendall(encode_frame(seal(unseal(body))))
    sock.close()
    out.put(("result", None))


def ping_framed(out: WorkerQueue, port: int, rounds: int, warmup: int, fernet: bool) -> None:
    """Connector: time `rounds` framed round trips (ns)."""
    seal, unseal = sealing(fernet)
    sock = connect_plain(port)
    incoming = plain_frames(sock)
    body = b"x" * TEXT_SIZE

    def exchange() -> object:
        sock.sendall(encode_frame(seal(body)))
        return unseal(next(incoming))

    samples = time_round_trips(exchange, body, rounds, warmup)
    await_close(sock)
    out.put(("result", samples))


def receive_framed_burst(out: WorkerQueue, fernet: bool) -> None:
    """Listener: count frames arriving in order until EOF."""
    _, unseal = sealing(fernet)
    sock = accept_plain(open_listener(out))
    seen = Arrivals()
    for body in plain_frames(sock):
        seen.see(int(unseal(body)[:INDEX_DIGITS]))
    sock.close()
    out.put(("result", seen.report()))


def send_framed_burst(out: WorkerQueue, port: int, count: int, fernet: bool) -> None:
    """Connector: send `count` framed bodies, one sendall each."""
    seal, _ = sealing(fernet)
    bodies = [text.encode("ascii") for text in chat_texts(count)]
    sock = connect_plain(port)
    for body in bodies:
        sock.sendall(encode_frame(seal(body)))
    await_close(sock)
    out.put(("result", count))


def serve_accepts(out: WorkerQueue, count: int) -> None:
    """Listener: accept and close `count` connections."""
    server = open_listener(out)
    for _ in range(count):
        accept_plain(server).close()
    out.put(("result", None))


def time_connects(out: WorkerQueue, port: int, count: int, warmup: int) -> None:
    """Connector: time bare TCP connects (ns)."""
    samples: list[int] = []
    for i in range(warmup + count):
        start = time.perf_counter_ns()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(SOCKET_SECONDS)
        sock.connect((HOST, port))
        elapsed = time.perf_counter_ns() - start
        sock.close()
        if i >= warmup:
            samples.append(elapsed)
    out.put(("result", samples))


# --- Figures ---------------------------------------------------------------------


def measure_round_trips(counts: Counts) -> dict[str, float]:
    """RTT p50/p99 of a 100-byte Chat ping-pong, of the raw one and of the seed's."""
    figures: dict[str, float] = {}
    rounds = (counts.round_trips, counts.warmup)
    with peers() as pool:
        _, chat = pool.pair(echo_chat, (), ping_chat, *rounds)
        _, raw = pool.pair(echo_framed, (False,), ping_framed, *rounds, False)
        _, seed = pool.pair(echo_framed, (True,), ping_framed, *rounds, True)
    for prefix, samples in (("", chat), ("raw_", raw), ("seed_", seed)):
        figures[f"{prefix}rtt_p50_us"] = percentile(samples, 50) / 1000
        figures[f"{prefix}rtt_p99_us"] = percentile(samples, 99) / 1000
    return figures


def measure_bursts(counts: Counts) -> dict[str, float]:
    """One-way burst rates and losses: Chat, raw and seed."""
    count = counts.burst
    with peers() as pool:
        chat, _ = pool.pair(receive_chat_burst, (count,), send_chat_burst, count)
        raw, _ = pool.pair(receive_framed_burst, (False,), send_framed_burst, count, False)
        seed, _ = pool.pair(receive_framed_burst, (True,), send_framed_burst, count, True)
    if chat["error"]:
        print(f"warning: the chat burst ended early: {chat['error']}", file=sys.stderr)
    return {
        "burst_msgs_per_s": chat["rate"],
        "burst_lost": count - chat["received"],
        "raw_burst_msgs_per_s": raw["rate"],
        "raw_burst_lost": count - raw["received"],
        "seed_burst_msgs_per_s": seed["rate"],
        "seed_burst_lost": count - seed["received"],
    }


def measure_fernet(counts: Counts) -> dict[str, float]:
    """Fernet encrypt+decrypt of a Chat payload alone, in this process."""
    fernet = Fernet(KEY)
    payload = encode_payload(0, Chat("x" * TEXT_SIZE))  # the plaintext a session encrypts
    for _ in range(counts.warmup):
        fernet.decrypt(fernet.encrypt(payload))
    start = time.perf_counter()
    for _ in range(counts.fernet):
        fernet.decrypt(fernet.encrypt(payload))
    return {"fernet_msgs_per_s": counts.fernet / (time.perf_counter() - start)}


def measure_handshakes(counts: Counts) -> dict[str, float]:
    """Median connect-to-WELCOME, and median bare TCP connect."""
    total = counts.warmup + counts.handshakes
    with peers() as pool:
        _, chat = pool.pair(
            serve_handshakes, (total,), time_handshakes, counts.handshakes, counts.warmup
        )
        _, plain = pool.pair(
            serve_accepts, (total,), time_connects, counts.handshakes, counts.warmup
        )
    return {
        "handshake_ms": statistics.median(chat) / 1e6,
        "handshake_p99_ms": percentile(chat, 99) / 1e6,
        "tcp_connect_ms": statistics.median(plain) / 1e6,
    }

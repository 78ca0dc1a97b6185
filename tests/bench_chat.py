#!/usr/bin/env python3
"""Benchmarks: the chat against the limits of this machine, side by side in one run.

    python tests/bench_chat.py [--quick] [--json PATH]

Every figure drives the real code path of chatclient.py (this repository's copy, not an
installed one): the handshake, Session, codec and Fernet over real TCP on 127.0.0.1 port 0,
each peer in its own process (multiprocessing 'spawn'), and start-up and memory from real
`python chatclient.py` processes. Each has a baseline measured in the same run:

- round trip of a 100-byte Chat, p50 and p99, against the same ping-pong over plain sockets
  with the same 4-byte length framing and no crypto;
- a one-way burst of 100-byte Chat messages, messages/s at the receiver from the first to the
  last, and how many did not arrive in order; against plain sockets with the same framing, and
  against Fernet encrypt+decrypt alone in one process;
- connect to WELCOME (handshake_as_connector returned), median, against a bare TCP connect;
- start-up to the listen/connect prompt, median, against `python -c "import cryptography.fernet"`;
- resident memory of an idle connected `python chatclient.py --connect`, against a bare
  `python -c` waiting on stdin.

Targets are printed as met or not met; nothing here asserts a timing. The exit status is
non-zero only when a measurement could not be made.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "chatclient.py"
# This repository's chatclient.py, never a copy installed in site-packages.
sys.path.insert(0, str(ROOT))

from chatclient import (  # noqa: E402
    Chat,
    Connection,
    ConnectionLost,
    FrameDecoder,
    Terminate,
    connect_socket,
    decode_key,
    derive_psk,
    encode_frame,
    encode_payload,
    handshake_as_connector,
    handshake_as_listener,
    listen_socket,
)

KEY = "DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0="
HOST = "127.0.0.1"
TEXT_SIZE = 100
INDEX_DIGITS = 10  # each burst message starts with its index, so order can be checked
PROMPT = "Do you want to listen or connect?"
IDLE_CHECK = "idle-check"
STEP_SECONDS = 90.0  # no single step may take longer than this
SOCKET_SECONDS = 30.0
EXIT_SECONDS = 5.0

Report = tuple[str, Any]  # ("port" | "result" | "error", value)
WorkerQueue: TypeAlias = "Queue[Report]"  # not subscriptable at run time


@dataclass(frozen=True)
class Counts:
    """How many samples each figure takes."""

    round_trips: int
    burst: int
    fernet: int
    handshakes: int
    startups: int
    warmup: int


FULL = Counts(
    round_trips=2000, burst=100_000, fernet=100_000, handshakes=200, startups=10, warmup=50
)
QUICK = Counts(round_trips=50, burst=1000, fernet=1000, handshakes=10, startups=3, warmup=5)


class BenchError(Exception):
    """A measurement could not be made."""


# --- Peers: run in their own processes -------------------------------------------


def shared_psk() -> bytes:
    """The PSK both peers derive from the fixed benchmark key."""
    return derive_psk(decode_key(KEY))


def open_listener(out: WorkerQueue) -> socket.socket:
    """A listening socket on 127.0.0.1 port 0; its port goes to the parent."""
    server = listen_socket(HOST, 0)
    server.settimeout(SOCKET_SECONDS)
    out.put(("port", server.getsockname()[1]))
    return server


def accept_plain(server: socket.socket) -> socket.socket:
    """The next connection, with a timeout on every read."""
    sock, _ = server.accept()
    sock.settimeout(SOCKET_SECONDS)
    return sock


def accept_chat(server: socket.socket, psk: bytes) -> Connection:
    """The next connection after the listener's side of the handshake."""
    sock = accept_plain(server)
    return Connection(handshake_as_listener(sock, psk, "listener"))


def connect_chat(port: int, psk: bytes) -> Connection:
    """A connection after the connector's side of the handshake."""
    sock = connect_socket(HOST, port, SOCKET_SECONDS)
    return Connection(handshake_as_connector(sock, psk, "connector"))


def connect_plain(port: int) -> socket.socket:
    """A plain TCP connection set up like connect_socket's (TCP_NODELAY)."""
    sock = socket.create_connection((HOST, port), SOCKET_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def await_close(sock: socket.socket) -> None:
    """Half-close, then read until the peer closes too, so nothing in flight is cut off."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


def plain_frames(sock: socket.socket) -> Iterator[bytes]:
    """Frame bodies from a plain socket until EOF, read as Connection.messages reads."""
    decoder = FrameDecoder()
    while data := sock.recv(65536):
        decoder.feed(data)
        yield from decoder.frames()


def chat_texts(count: int) -> list[str]:
    """Burst texts of TEXT_SIZE bytes, each starting with its index."""
    pad = "x" * (TEXT_SIZE - INDEX_DIGITS)
    return [f"{i:0{INDEX_DIGITS}d}{pad}" for i in range(count)]


def echo_chat(out: WorkerQueue) -> None:
    """Listener: send every Chat back until the peer says goodbye."""
    server = open_listener(out)
    conn = accept_chat(server, shared_psk())
    for message in conn.messages():
        if isinstance(message, Chat):
            conn.send(message)
    conn.close()
    out.put(("result", None))


def echo_plain(out: WorkerQueue) -> None:
    """Listener: send every frame back until EOF."""
    server = open_listener(out)
    sock = accept_plain(server)
    for body in plain_frames(sock):
        sock.sendall(encode_frame(body))
    sock.close()
    out.put(("result", None))


def ping_chat(out: WorkerQueue, port: int, rounds: int, warmup: int) -> None:
    """Connector: time `rounds` Chat round trips through the echoing peer (ns)."""
    conn = connect_chat(port, shared_psk())
    incoming = conn.messages()
    text = "x" * TEXT_SIZE
    samples: list[int] = []
    for i in range(warmup + rounds):
        start = time.perf_counter_ns()
        conn.send(Chat(text))
        reply = next(incoming)
        elapsed = time.perf_counter_ns() - start
        if reply != Chat(text):
            raise BenchError(f"the echo returned {reply!r}")
        if i >= warmup:
            samples.append(elapsed)
    conn.send(Terminate())
    await_close(conn.peer.sock)
    out.put(("result", samples))


def ping_plain(out: WorkerQueue, port: int, rounds: int, warmup: int) -> None:
    """Connector: time `rounds` plain framed round trips (ns)."""
    sock = connect_plain(port)
    incoming = plain_frames(sock)
    body = b"x" * TEXT_SIZE
    samples: list[int] = []
    for i in range(warmup + rounds):
        start = time.perf_counter_ns()
        sock.sendall(encode_frame(body))
        reply = next(incoming)
        elapsed = time.perf_counter_ns() - start
        if reply != body:
            raise BenchError(f"the echo returned {reply!r}")
        if i >= warmup:
            samples.append(elapsed)
    await_close(sock)
    out.put(("result", samples))


@dataclass
class Arrivals:
    """What a burst receiver saw: messages in order and when the first and last came."""

    in_order: int = 0
    first: float = 0.0
    last: float = 0.0
    error: str = ""

    def see(self, index: int) -> None:
        """Count one arrival; only the exactly next index counts as in order."""
        now = time.perf_counter()
        if self.in_order == 0:
            self.first = now
        self.last = now
        if index == self.in_order:
            self.in_order += 1

    def report(self) -> dict[str, Any]:
        """The figures the parent needs."""
        spent = self.last - self.first
        rate = (self.in_order - 1) / spent if self.in_order > 1 and spent > 0 else 0.0
        return {"received": self.in_order, "rate": rate, "error": self.error}


def receive_chat_burst(out: WorkerQueue) -> None:
    """Listener: count Chat messages arriving in order until the goodbye."""
    server = open_listener(out)
    conn = accept_chat(server, shared_psk())
    seen = Arrivals()
    try:
        for message in conn.messages():
            if isinstance(message, Chat):
                seen.see(int(message.text[:INDEX_DIGITS]))
    except ConnectionLost as exc:
        seen.error = str(exc)
    conn.close()
    out.put(("result", seen.report()))


def receive_plain_burst(out: WorkerQueue) -> None:
    """Listener: count plain frames arriving in order until EOF."""
    server = open_listener(out)
    sock = accept_plain(server)
    seen = Arrivals()
    for body in plain_frames(sock):
        seen.see(int(body[:INDEX_DIGITS]))
    sock.close()
    out.put(("result", seen.report()))


def send_chat_burst(out: WorkerQueue, port: int, count: int) -> None:
    """Connector: send `count` Chat messages as fast as Connection.send allows.

    A connection lost midway is not a failure of the benchmark: the receiver's count then
    shows the loss.
    """
    texts = chat_texts(count)
    conn = connect_chat(port, shared_psk())
    try:
        for text in texts:
            conn.send(Chat(text))
        conn.send(Terminate())
        await_close(conn.peer.sock)
    except (ConnectionLost, OSError) as exc:
        print(f"warning: the chat burst's sender stopped: {exc}", file=sys.stderr)
    out.put(("result", count))


def send_plain_burst(out: WorkerQueue, port: int, count: int) -> None:
    """Connector: send `count` plain frames, one sendall each as Connection.send does."""
    bodies = [text.encode("ascii") for text in chat_texts(count)]
    sock = connect_plain(port)
    for body in bodies:
        sock.sendall(encode_frame(body))
    await_close(sock)
    out.put(("result", count))


def serve_handshakes(out: WorkerQueue, count: int) -> None:
    """Listener: run the listener's handshake on `count` connections, one after another."""
    psk = shared_psk()
    server = open_listener(out)
    for _ in range(count):
        sock = accept_plain(server)
        try:
            handshake_as_listener(sock, psk, "listener")
        finally:
            sock.close()
    out.put(("result", None))


def serve_accepts(out: WorkerQueue, count: int) -> None:
    """Listener: accept and close `count` connections."""
    server = open_listener(out)
    for _ in range(count):
        accept_plain(server).close()
    out.put(("result", None))


def time_handshakes(out: WorkerQueue, port: int, count: int, warmup: int) -> None:
    """Connector: time connect start to handshake_as_connector returned (ns)."""
    psk = shared_psk()
    samples: list[int] = []
    for i in range(warmup + count):
        start = time.perf_counter_ns()
        sock = connect_socket(HOST, port, SOCKET_SECONDS)
        try:
            handshake_as_connector(sock, psk, "connector")
            elapsed = time.perf_counter_ns() - start
        finally:
            sock.close()
        if i >= warmup:
            samples.append(elapsed)
    out.put(("result", samples))


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


def idle_listener(out: WorkerQueue) -> None:
    """Listener for the memory figure: greet the CLI connector, then wait for its goodbye."""
    server = open_listener(out)
    conn = accept_chat(server, shared_psk())
    conn.send(Chat(IDLE_CHECK))
    try:
        for _ in conn.messages():
            pass
    except ConnectionLost:
        pass
    conn.close()
    out.put(("result", None))


WORKERS: dict[str, Callable[..., None]] = {
    worker.__name__: worker
    for worker in (
        echo_chat,
        echo_plain,
        ping_chat,
        ping_plain,
        receive_chat_burst,
        receive_plain_burst,
        send_chat_burst,
        send_plain_burst,
        serve_handshakes,
        serve_accepts,
        time_handshakes,
        time_connects,
        idle_listener,
    )
}


def run_worker(name: str, out: WorkerQueue, args: tuple[Any, ...], cpu: int | None) -> None:
    """Entry point of a spawned peer: any failure goes to the parent as a traceback."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        WORKERS[name](out, *args)
    except BaseException:
        out.put(("error", f"{name} failed:\n{traceback.format_exc()}"))
        raise


# --- Orchestration: the parent process ---------------------------------------


@dataclass
class Worker:
    """A spawned peer and the queue it reports on."""

    process: SpawnProcess
    out: WorkerQueue

    def receive(self, kind: str, timeout: float = STEP_SECONDS) -> Any:
        """The next report of `kind`, or BenchError on a failure or after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got, value = self.out.get(timeout=0.1 if self.process.is_alive() else 1.0)
            except queue.Empty:
                if self.process.exitcode is not None:
                    raise BenchError(
                        f"{self.process.name} exited ({self.process.exitcode}) "
                        f"without sending its {kind}"
                    ) from None
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.process.name} sent no {kind} within {timeout:g} s"
                    ) from None
                continue
            if got == "error":
                raise BenchError(value)
            if got != kind:
                raise BenchError(f"{self.process.name} sent {got} where {kind} was due")
            return value


def peer_cpus() -> tuple[int | None, int | None]:
    """The CPUs for the listener and the connector: two different ones when there are two.

    Pinned, the peers always run on separate cores, so every figure pays the same cross-core
    wake-up; left to the scheduler they sometimes share a core, where a wake-up is several
    times cheaper, and ratios swing from run to run.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


class Pool:
    """Spawned peers; every one is joined or killed when the pool closes."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[Worker] = []
        self._cpus = peer_cpus()

    def start(self, name: str, *args: Any, cpu: int | None = None) -> Worker:
        """Start worker `name` in a fresh process (pinned to `cpu` if given)."""
        out: WorkerQueue = self._context.Queue()
        process = self._context.Process(
            target=run_worker, args=(name, out, args, cpu), name=name, daemon=True
        )
        worker = Worker(process, out)
        self._workers.append(worker)
        process.start()
        return worker

    def pair(
        self, listener: str, listener_args: tuple[Any, ...], connector: str, *args: Any
    ) -> tuple[Any, Any]:
        """Run a listener, then a connector given its port; return both results."""
        server = self.start(listener, *listener_args, cpu=self._cpus[0])
        port = server.receive("port")
        client = self.start(connector, port, *args, cpu=self._cpus[1])
        result = client.receive("result")
        return server.receive("result"), result

    def close(self, grace: float) -> None:
        """Join every worker, killing those still running after `grace` seconds."""
        for worker in self._workers:
            worker.process.join(grace)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(EXIT_SECONDS)
            worker.out.close()
        self._workers.clear()


@contextmanager
def peers() -> Iterator[Pool]:
    """A Pool that is always cleaned up; quickly when something failed."""
    pool = Pool()
    try:
        yield pool
    except BaseException:
        pool.close(0.0)
        raise
    pool.close(EXIT_SECONDS)


class Process:
    """A child process on pipes whose output is read, with a timeout, until a text appears."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = ""

    def wait_for(self, text: str, timeout: float = STEP_SECONDS) -> None:
        """Read stdout (and stderr) until `text` appears, or BenchError."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {text!r} within {timeout:g} s; output:\n{self.output}")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise BenchError(f"exited before {text!r}; output:\n{self.output}")
            self.output += chunk.decode("utf-8", "replace")

    def finish(self) -> int:
        """Close stdin and wait for exit; kill after EXIT_SECONDS. Returns the status."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.close()
            return self.popen.wait(EXIT_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            return self.kill()

    def kill(self) -> int:
        """Kill the process (if still running) and reap it."""
        if self.popen.poll() is None:
            self.popen.kill()
        status = self.popen.wait(EXIT_SECONDS)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        return status


@contextmanager
def child(args: list[str], cwd: Path) -> Iterator[Process]:
    """A Process that is always killed at the end."""
    process = Process(args, cwd)
    try:
        yield process
    finally:
        process.kill()


def write_config(folder: Path) -> None:
    """A valid config.ini (owner-only, so no permission warning) in `folder`."""
    path = folder / "config.ini"
    path.write_text(
        f"[parameters]\nip = {HOST}\nport = 50233\nfernet_key = {KEY}\nusername = bench\n",
        encoding="utf-8",
    )
    path.chmod(0o600)


def percentile(samples: list[int], q: float) -> float:
    """The nearest-rank q-th percentile."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def vm_rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


# --- Figures ---------------------------------------------------------------------


def measure_round_trips(counts: Counts) -> dict[str, float]:
    """RTT p50/p99 of a 100-byte Chat ping-pong, and of the plain-socket one."""
    figures: dict[str, float] = {}
    with peers() as pool:
        _, chat = pool.pair("echo_chat", (), "ping_chat", counts.round_trips, counts.warmup)
        _, plain = pool.pair("echo_plain", (), "ping_plain", counts.round_trips, counts.warmup)
    for prefix, samples in (("", chat), ("raw_", plain)):
        figures[f"{prefix}rtt_p50_us"] = percentile(samples, 50) / 1000
        figures[f"{prefix}rtt_p99_us"] = percentile(samples, 99) / 1000
    return figures


def measure_bursts(counts: Counts) -> dict[str, float]:
    """One-way burst rates and losses, Chat and plain."""
    with peers() as pool:
        chat, _ = pool.pair("receive_chat_burst", (), "send_chat_burst", counts.burst)
        plain, _ = pool.pair("receive_plain_burst", (), "send_plain_burst", counts.burst)
    if chat["error"]:
        print(f"warning: the chat burst ended early: {chat['error']}", file=sys.stderr)
    return {
        "burst_msgs_per_s": chat["rate"],
        "burst_lost": counts.burst - chat["received"],
        "raw_burst_msgs_per_s": plain["rate"],
        "raw_burst_lost": counts.burst - plain["received"],
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
            "serve_handshakes", (total,), "time_handshakes", counts.handshakes, counts.warmup
        )
        _, plain = pool.pair(
            "serve_accepts", (total,), "time_connects", counts.handshakes, counts.warmup
        )
    return {
        "handshake_ms": statistics.median(chat) / 1e6,
        "handshake_p99_ms": percentile(chat, 99) / 1e6,
        "tcp_connect_ms": statistics.median(plain) / 1e6,
    }


def time_to_prompt(folder: Path) -> float:
    """Seconds from starting `python chatclient.py` to its listen/connect prompt."""
    start = time.perf_counter()
    with child([sys.executable, str(SCRIPT)], folder) as process:
        process.wait_for(PROMPT)
        return time.perf_counter() - start


def time_import(folder: Path) -> float:
    """Seconds of `python -c "import cryptography.fernet"`, timed like the program.

    The child prints a line once the import is done and that line is awaited
    exactly as the program's prompt is: waiting for the process to exit with a
    timeout would add the polling back-off of Popen.wait to the baseline.
    """
    code = "import cryptography.fernet; print('imported', flush=True)"
    start = time.perf_counter()
    with child([sys.executable, "-c", code], folder) as process:
        process.wait_for("imported")
        return time.perf_counter() - start


def measure_startup(counts: Counts, folder: Path) -> dict[str, float]:
    """Median start-up to the prompt and median bare import, interleaved, after a warm-up."""
    write_config(folder)
    time_to_prompt(folder)
    time_import(folder)
    program: list[float] = []
    bare: list[float] = []
    for _ in range(counts.startups):
        program.append(time_to_prompt(folder))
        bare.append(time_import(folder))
    return {
        "startup_ms": statistics.median(program) * 1000,
        "import_baseline_ms": statistics.median(bare) * 1000,
    }


def measure_memory(folder: Path) -> dict[str, float]:
    """VmRSS of an idle connected CLI peer, and of a bare Python waiting on stdin."""
    write_config(folder)
    with peers() as pool:
        listener = pool.start("idle_listener")
        port = listener.receive("port")
        args = [sys.executable, str(SCRIPT), "--connect", f"{HOST}:{port}"]
        with child(args, folder) as connector:
            connector.wait_for("WELCOME Welcome to the chat!")
            # The greeting printed proves the receiver thread runs; the peer is now idle.
            connector.wait_for(f"says: {IDLE_CHECK}")
            idle = vm_rss_mib(connector.popen.pid)
            connector.finish()
        listener.receive("result")
    waiting = "import sys; print('ready', flush=True); sys.stdin.readline()"
    with child([sys.executable, "-c", waiting], folder) as bare:
        bare.wait_for("ready")
        baseline = vm_rss_mib(bare.popen.pid)
        bare.finish()
    return {"idle_rss_mib": idle, "bare_rss_mib": baseline}


def measure(counts: Counts) -> dict[str, float]:
    """Every figure, in one run."""
    figures: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("round trips", lambda: measure_round_trips(counts)),
        ("bursts", lambda: measure_bursts(counts)),
        ("Fernet alone", lambda: measure_fernet(counts)),
        ("handshakes", lambda: measure_handshakes(counts)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench_chat_") as tmp:
        folder = Path(tmp)
        steps.append(("start-up", lambda: measure_startup(counts, folder)))
        steps.append(("memory", lambda: measure_memory(folder)))
        for name, step in steps:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            figures.update(step())
    figures.update(
        round_trips=counts.round_trips,
        burst_messages=counts.burst,
        handshakes=counts.handshakes,
        startups=counts.startups,
    )
    return figures


# --- Report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    figure: str
    program: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def ratio(a: float, b: float) -> str:
    """a/b as '1.23x', or '-' when b is zero."""
    return f"{a / b:.2f}x" if b else "-"


def targets(f: dict[str, float]) -> dict[str, bool]:
    """The issue's four targets, each met or not."""
    return {
        "round trip p50 <= 2.5x raw": f["rtt_p50_us"] <= 2.5 * f["raw_rtt_p50_us"],
        "burst >= 30,000/s, 0 lost, >= 0.5x Fernet": f["burst_msgs_per_s"] >= 30_000
        and f["burst_lost"] == 0
        and 2 * f["burst_msgs_per_s"] >= f["fernet_msgs_per_s"],
        "handshake median <= 3 ms": f["handshake_ms"] <= 3.0,
        "start-up <= 1.3x import": f["startup_ms"] <= 1.3 * f["import_baseline_ms"],
    }


def rows(f: dict[str, float]) -> list[Row]:
    """The table, with each target checked."""
    return [
        Row(
            "round trip p50 (us)",
            f"{f['rtt_p50_us']:.1f}",
            f"{f['raw_rtt_p50_us']:.1f} raw",
            ratio(f["rtt_p50_us"], f["raw_rtt_p50_us"]),
            "<= 2.5x raw",
            f["rtt_p50_us"] <= 2.5 * f["raw_rtt_p50_us"],
        ),
        Row(
            "round trip p99 (us)",
            f"{f['rtt_p99_us']:.1f}",
            f"{f['raw_rtt_p99_us']:.1f} raw",
            ratio(f["rtt_p99_us"], f["raw_rtt_p99_us"]),
            "",
            None,
        ),
        Row(
            "burst (msg/s)",
            f"{f['burst_msgs_per_s']:,.0f}",
            f"{f['raw_burst_msgs_per_s']:,.0f} raw",
            ratio(f["burst_msgs_per_s"], f["raw_burst_msgs_per_s"]),
            ">= 30,000/s",
            f["burst_msgs_per_s"] >= 30_000,
        ),
        Row(
            "burst vs Fernet (msg/s)",
            f"{f['burst_msgs_per_s']:,.0f}",
            f"{f['fernet_msgs_per_s']:,.0f} Fernet",
            ratio(f["burst_msgs_per_s"], f["fernet_msgs_per_s"]),
            ">= 0.5x Fernet",
            2 * f["burst_msgs_per_s"] >= f["fernet_msgs_per_s"],
        ),
        Row(
            "burst lost (messages)",
            f"{f['burst_lost']:.0f}",
            f"{f['raw_burst_lost']:.0f} raw",
            "-",
            "0",
            f["burst_lost"] == 0,
        ),
        Row(
            "connect to WELCOME (ms)",
            f"{f['handshake_ms']:.2f}",
            f"{f['tcp_connect_ms']:.3f} TCP",
            ratio(f["handshake_ms"], f["tcp_connect_ms"]),
            "<= 3 ms",
            f["handshake_ms"] <= 3.0,
        ),
        Row(
            "start-up to prompt (ms)",
            f"{f['startup_ms']:.1f}",
            f"{f['import_baseline_ms']:.1f} import",
            ratio(f["startup_ms"], f["import_baseline_ms"]),
            "<= 1.3x import",
            f["startup_ms"] <= 1.3 * f["import_baseline_ms"],
        ),
        Row(
            "idle peer RSS (MiB)",
            f"{f['idle_rss_mib']:.1f}",
            f"{f['bare_rss_mib']:.1f} bare",
            ratio(f["idle_rss_mib"], f["bare_rss_mib"]),
            "",
            None,
        ),
    ]


def render(figures: dict[str, float], counts: Counts) -> str:
    """The table as aligned text, the sample counts above it and the targets below."""
    header = Row("figure", "the program", "baseline", "ratio", "target", None)
    cells = [
        [
            r.figure,
            r.program,
            r.baseline,
            r.ratio,
            r.target,
            "met?" if r is header else {True: "met", False: "NOT met", None: ""}[r.met],
        ]
        for r in [header, *rows(figures)]
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(6)]
    cpus = peer_cpus()
    pinned = f"CPUs {cpus[0]} and {cpus[1]}" if cpus[0] is not None else "no CPU"
    lines = [
        f"{counts.round_trips} round trips, {counts.burst:,} burst messages, "
        f"{counts.handshakes} handshakes, {counts.startups} start-ups; "
        f"{os.cpu_count()} CPUs, peers pinned to {pinned}; Python {sys.version.split()[0]}"
    ]
    for line in cells:
        left = [line[0].ljust(widths[0])]
        middle = [cell.rjust(width) for cell, width in zip(line[1:4], widths[1:4], strict=True)]
        right = [cell.ljust(width) for cell, width in zip(line[4:], widths[4:], strict=True)]
        lines.append("  ".join(left + middle + right).rstrip())
    met = targets(figures)
    lines.append(f"targets met: {sum(met.values())} of {len(met)}")
    lines += [f"  {'met' if ok else 'NOT met'}: {name}" for name, ok in met.items()]
    return "\n".join(lines)


def on_terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child is still cleaned up."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, on_terminate)
    counts = QUICK if args.quick else FULL
    try:
        figures = measure(counts)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(figures, counts))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

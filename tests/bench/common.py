"""What every measurement shares: counts, limits, spawned peers (Pool) and child programs
(Process), and small statistics.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import select
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from chatclient.peer import Event

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "chatclient.py"

KEY = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM="
HOST = "127.0.0.1"
TEXT_SIZE = 100
INDEX_DIGITS = 10  # each burst message starts with its index, so order can be checked
PROMPT = "Do you want to listen or connect?"
IDLE_CHECK = "idle-check"
BURST_DONE = "burst-done"  # the burst receiver's acknowledgement of the last message
STEP_SECONDS = 90.0  # no single step may take longer than this
SOCKET_SECONDS = 30.0
EXIT_SECONDS = 5.0

Report = tuple[str, Any]  # ("port" | "result" | "error", value)
WorkerQueue: TypeAlias = "Queue[Report]"  # not subscriptable at run time
E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Counts:
    """How many samples each figure takes."""

    round_trips: int
    burst: int
    fernet: int
    handshakes: int
    startups: int
    warmup: int
    room_members: int = 20
    room_messages: int = 20_000
    file_mib: int = 256
    file_runs: int = 3  # each file figure is the median of this many transfers
    resumes: int = 10  # cable pulls, where namespaces can be made


FULL = Counts(
    round_trips=2000, burst=100_000, fernet=100_000, handshakes=200, startups=10, warmup=50
)
QUICK = Counts(
    round_trips=50,
    burst=1000,
    fernet=1000,
    handshakes=10,
    startups=3,
    warmup=5,
    room_members=4,
    room_messages=200,
    file_mib=4,
    file_runs=1,
    resumes=1,
)


class BenchError(Exception):
    """A measurement could not be made."""


def run_worker(
    worker: Callable[..., None], out: WorkerQueue, args: tuple[Any, ...], cpu: int | None
) -> None:
    """Entry point of a spawned peer: any failure goes to the parent as a traceback."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        worker(out, *args)
    except BaseException:
        out.put(("error", f"{worker.__name__} failed:\n{traceback.format_exc()}"))
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

    def start(self, work: Callable[..., None], *args: Any, cpu: int | None = None) -> Worker:
        """Run `work(queue, *args)` in a fresh process (pinned to `cpu` if given); `work` is
        a module-level function, which spawn finds again by its module and name."""
        out: WorkerQueue = self._context.Queue()
        process = self._context.Process(
            target=run_worker, args=(work, out, args, cpu), name=work.__name__, daemon=True
        )
        worker = Worker(process, out)
        self._workers.append(worker)
        process.start()
        return worker

    def pair(
        self,
        listener: Callable[..., None],
        listener_args: tuple[Any, ...],
        connector: Callable[..., None],
        *args: Any,
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

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = ""

    def wait_for(self, text: str, timeout: float = STEP_SECONDS) -> None:
        """Read stdout (and stderr) until `text` appears, or BenchError."""
        self.wait_count(text, 1, timeout)

    def wait_count(self, text: str, count: int, timeout: float = STEP_SECONDS) -> None:
        """Read stdout (and stderr) until `text` has appeared `count` times, or BenchError."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
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

    def send(self, line: str) -> None:
        """Type a line."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode("utf-8") + b"\n")
        self.popen.stdin.flush()

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
def child(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Iterator[Process]:
    """A Process that is always killed at the end."""
    process = Process(args, cwd, env)
    try:
        yield process
    finally:
        process.kill()


def write_config(folder: Path, port: int = 50233, username: str = "bench") -> None:
    """A valid config.ini (owner-only, so no permission warning) in `folder`."""
    path = folder / "config.ini"
    path.write_text(
        f"[parameters]\nip = {HOST}\nport = {port}\nfernet_key = {KEY}\nusername = {username}\n",
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


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])

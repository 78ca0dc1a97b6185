"""Shared helpers: real chatclient processes on 127.0.0.1, waited on by output."""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "chatclient.py"
sys.path.insert(0, str(ROOT))

KEY = "9RB_8x-fOAeLY6_W-0ykarW4-4i-GomhsITSbtRJuXs="
OTHER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port that nothing uses right now, below the kernel's ephemeral range.

    Port 0 would hand out an ephemeral port, which a test's own outgoing
    connections (thousands of them in the flood tests) may be using a moment
    later; the listeners under test bind 0.0.0.0 too, so the whole wildcard
    must be free.
    """
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port


# Lines that identities add around the seed's transcript (issue 9).
IDENTITY_LINES = ("Created your identity in ", "Your identity: ", "First contact with ")


def seed_lines(lines: list[str]) -> list[str]:
    """`lines` without those of identities: what the seed's own flow printed."""
    return [line for line in lines if not line.startswith(IDENTITY_LINES)]


def write_config(
    folder: Path,
    name: str = "config.ini",
    *,
    ip: str = "127.0.0.1",
    port: int | str = 50233,
    key: str = KEY,
    username: str = "desktop",
    mode: int = 0o600,
) -> Path:
    """Write a config file (owner-only by default) and return its path. It takes no part in
    LAN discovery (announce = no): the suite never multicasts onto a real network."""
    path = folder / name
    path.write_text(
        f"[parameters]\nip = {ip}\nport = {port}\nfernet_key = {key}\nusername = {username}\n"
        "announce = no\n",
        encoding="utf-8",
    )
    path.chmod(mode)
    return path


def run(
    *args: str,
    cwd: Path,
    stdin: str = "",
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run chatclient to its end with stdin piped (as `python chatclient.py` unless
    `command`); it must never print a traceback."""
    result = subprocess.run(
        [*(command or [sys.executable, str(SCRIPT)]), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


class ChatProcess:
    """`python chatclient.py` on pipes; stdout and stderr read by threads into queues."""

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, str(SCRIPT)]), *args],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        for stream, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            threading.Thread(target=self._pump, args=(stream, name), daemon=True).start()
        self._seen: list[tuple[str, str]] = []

    def _pump(self, stream: object, name: str) -> None:
        assert stream is not None
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.decode("utf-8", "replace").rstrip("\n")
            (self.out if name == "out" else self.err).append(line)
            self._lines.put((name, line))
        self._lines.put((name, None))

    def send(self, *lines: str) -> None:
        """Type lines on standard input."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def expect(self, pattern: str, timeout: float = TIMEOUT, stream: str | None = None) -> str:
        """Wait for a line (on stdout or stderr, or the named one) matching pattern."""
        regex = re.compile(pattern)
        for name, line in self._seen:
            if (stream is None or name == stream) and regex.search(line):
                self._seen.remove((name, line))
                return line
        deadline = time.monotonic() + timeout
        closed: set[str] = set()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or len(closed) == 2:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s\n"
                    f"stdout: {self.out}\nstderr: {self.err}"
                )
            try:
                name, line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                closed.add(name)
                continue
            if (stream is None or name == stream) and regex.search(line):
                return line
            self._seen.append((name, line))

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Exit status, failing the test if the process does not end in time."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"process did not exit within {timeout} s\nstdout: {self.out}\nstderr: {self.err}"
            ) from None

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)

    def all_output(self) -> str:
        return "\n".join(self.out + self.err)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    """spawn(*args, cwd=tmp_path, command=None) -> ChatProcess (`python chatclient.py`
    unless `command`); every process is killed at the end."""
    procs: list[ChatProcess] = []

    def start(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> ChatProcess:
        proc = ChatProcess(*args, cwd=cwd or tmp_path, env=env, command=command)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def start_pair(
    spawn: object, tmp_path: Path, *, extra: tuple[str, ...] = ()
) -> tuple[ChatProcess, ChatProcess]:
    """A listener (desktop) and a connector (laptop) chatting on a free port."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = spawn("--config", "desktop.ini", "--listen", *extra)  # type: ignore[operator]
    listener.expect(r"^Listening on ")
    connector = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}", *extra)  # type: ignore[operator]
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat\.$")
    return listener, connector


# --- Chats whose processes are checked (test_cli.py, test_cli_setup.py) ---------------

Spawn = Callable[..., ChatProcess]
NEVER = r"(?!)"  # a pattern no line matches: waiting on it waits for both streams to close


@pytest.fixture
def chat(spawn: Spawn) -> Iterator[Spawn]:
    """Like `spawn`, and every process's output is checked for a traceback at the end."""
    started: list[ChatProcess] = []

    def start(
        *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> ChatProcess:
        proc = spawn(*args, cwd=cwd, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        assert "Traceback" not in proc.all_output(), proc.all_output()


def finish(proc: ChatProcess, timeout: float = TIMEOUT) -> int:
    """Wait for the exit status and for both output streams to be read to their end."""
    status = proc.wait(timeout)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="no line matching"):
        proc.expect(NEVER, timeout=5.0)
    assert time.monotonic() - started < 5.0, "output streams still open after the exit"
    return status


def leave(proc: ChatProcess, goodbye: str = "") -> None:
    """Type exit and the goodbye text, and see the side close the chat itself."""
    proc.send("exit", goodbye)
    proc.expect(r"^Sent TERMINATE message\.$")
    proc.expect(r"^Connection closed by you\.$")

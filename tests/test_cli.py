"""Chatting between real `python chatclient.py` processes on 127.0.0.1, driven through
pipes: the transcript of issue 2, every way a chat ends, traffic and commands,
addresses and keepalives. Every process started by the `chat` fixture (conftest.py)
is checked for a traceback when its test ends. Nothing sleeps: each wait is on a line
of output with a timeout (or an Event for the idle-link check). Flags, config files
and start-up errors are in test_cli_setup.py."""

from __future__ import annotations

import io
import ipaddress
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest
from conftest import (
    SCRIPT,
    TIMEOUT,
    ChatProcess,
    Spawn,
    finish,
    free_port,
    leave,
    seed_lines,
    start_pair,
    write_config,
)
from pexpect.popen_spawn import PopenSpawn

from chatclient.commands import help_text

MODE_PROMPT = "Do you want to listen or connect? (listen/connect): "


# --- Helpers -------------------------------------------------------------------------------


def says(out: list[str], name: str) -> list[str]:
    """The texts of the `name says: ...` lines, in order."""
    prefix = f"{name} says: "
    return [line[len(prefix) :] for line in out if line.startswith(prefix)]


def closed_without_goodbye(connector: ChatProcess, listener: ChatProcess) -> None:
    """The connector left with no goodbye text; both sides say so and exit with 0."""
    connector.expect(r"^Sent TERMINATE message\.$")
    connector.expect(r"^Connection closed by you\.$")
    listener.expect(r"^laptop left the chat\.$")
    listener.expect(r"^Connection closed by peer\.$")
    assert finish(connector) == 0
    assert finish(listener) == 0


# --- The transcript of issue 2 -------------------------------------------------------------


def test_transcript_through_the_prompts(chat: Spawn, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini")
    listener.expect(rf"^Your IP and port are: 127\.0\.0\.1:{port}$", stream="out")
    listener.send("maybe")  # not an answer: asked again
    listener.expect(r"^try again: type listen \(or l\)", stream="err")
    listener.send("l")
    listener.expect(r"^Listening on 127\.0\.0\.1:")

    connector = chat("--config", "laptop.ini")
    connector.send("c", "127.0.0.1", str(port))
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$", stream="out")
    connected = listener.expect(r"^Connected by ", stream="out")
    match = re.fullmatch(r"Connected by \('127\.0\.0\.1', (\d+)\)", connected)
    assert match, connected
    listener.expect(r"^laptop joined the chat\.$", stream="out")

    connector.send("hello desktop")
    listener.expect(r"^laptop says: hello desktop$", stream="out")
    connector.expect(r"^Sent CHAT message\.$", stream="out")
    listener.send("hi laptop")
    connector.expect(r"^desktop says: hi laptop$", stream="out")
    listener.expect(r"^Sent CHAT message\.$", stream="out")

    listener.send("/who")  # the address in `Connected by` is the connector's
    listener.expect(rf"^Talking to laptop at 127\.0\.0\.1:{match[1]}, ")

    connector.send("exit", "bye bye")
    listener.expect(r"^laptop left the chat: bye bye$", stream="out")
    listener.expect(r"^Connection closed by peer\.$", stream="out")
    assert finish(listener) == 0
    assert finish(connector) == 0

    listener_out, connector_out = seed_lines(listener.out), seed_lines(connector.out)
    assert listener_out[:4] == [
        f"Your IP and port are: 127.0.0.1:{port}",
        listener_out[1],  # Key ID
        MODE_PROMPT,
        MODE_PROMPT,
    ]
    assert listener_out[1].startswith("Key ID: ")
    assert listener.err == [
        "try again: type listen (or l) to wait for a peer, or connect (or c) to reach one"
    ]
    prompts = connector_out[connector_out.index(MODE_PROMPT) :]
    assert prompts[:4] == [
        MODE_PROMPT,
        "Enter peer IP: ",
        "Enter peer port: ",
        "WELCOME Welcome to the chat! I am desktop",
    ]
    assert connector_out[1] == listener_out[1]  # the same Key ID on both sides
    assert connector_out[-3:] == [
        "Enter goodbye text (optional): ",
        "Sent TERMINATE message.",
        "Connection closed by you.",
    ]
    assert listener.out[-2:] == ["laptop left the chat: bye bye", "Connection closed by peer."]
    assert connector.err == []
    for proc in (listener, connector):
        assert not any(line.startswith("Connection lost") for line in proc.out + proc.err)
        assert "\x1b" not in proc.all_output()  # off a terminal: plain lines, no escapes


def test_full_word_answers_and_goodbye_without_text(chat: Spawn, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini")
    listener.send("LISTEN")
    listener.expect(r"^Listening on ")
    connector = chat("--config", "laptop.ini")
    connector.send("connect", "127.0.0.1", str(port))
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat\.$")

    leave(connector, "")
    listener.expect(r"^laptop left the chat\.$", stream="out")
    listener.expect(r"^Connection closed by peer\.$", stream="out")
    assert finish(listener) == 0
    assert finish(connector) == 0
    assert not [line for line in listener.out if line.startswith("laptop left the chat:")]


def test_both_sides_exit_at_the_same_time(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    listener.send("exit", "bye from desktop")
    connector.send("exit", "bye from laptop")
    assert finish(listener) == 0
    assert finish(connector) == 0
    for proc in (listener, connector):
        closing = [line for line in proc.out if "Connection closed by " in line]
        assert len(closing) == 1, proc.out
        assert not any("Connection lost" in line for line in proc.out + proc.err)


def test_a_line_arriving_at_the_goodbye_prompt_is_a_line_of_its_own(
    chat: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on ")
    # The connector is read as a raw stream, so the open prompt itself can be waited for.
    connector = PopenSpawn(
        [sys.executable, str(SCRIPT), "--config", "laptop.ini", "--connect", f"127.0.0.1:{port}"],
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    connector.logfile_read = log = io.StringIO()
    try:
        connector.expect_exact("WELCOME Welcome to the chat! I am desktop\n")
        listener.expect(r"^laptop joined the chat\.$")
        connector.sendline("exit")
        connector.expect_exact("Enter goodbye text (optional): ")
        listener.send("one more thing")
        connector.expect_exact("desktop says: one more thing\n")
        glued_to = connector.before
        connector.sendline("bye")
        listener.expect(r"^laptop left the chat: bye$")
        connector.expect(pexpect.EOF)
        assert connector.wait() == 0
        assert finish(listener) == 0
        assert "Traceback" not in log.getvalue()
        assert glued_to.endswith("\n"), f"the peer's line was printed after {glued_to!r}"
    finally:
        if connector.proc.poll() is None:
            connector.kill(signal.SIGKILL)


def test_eof_on_stdin_closes_the_chat_like_exit(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.close_stdin()
    closed_without_goodbye(connector, listener)


def test_sigint_while_chatting_closes_the_chat_like_exit(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.send("before ctrl-c")
    listener.expect(r"^laptop says: before ctrl-c$")
    # A line the connector's receiver prints comes a network round trip after its input
    # loop went back to reading: Ctrl-C then lands where a person presses it, at the prompt.
    listener.send("are you there?")
    connector.expect(r"^desktop says: are you there\?$")
    connector.signal(signal.SIGINT)
    closed_without_goodbye(connector, listener)


def test_sigint_while_listening_ends_quietly(chat: Spawn, tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    listener = chat("--listen")
    listener.expect(r"^Listening on ")
    listener.signal(signal.SIGINT)
    assert finish(listener) == 130
    assert listener.err == []


def test_sigint_at_a_prompt_ends_quietly(chat: Spawn, tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    proc = chat()
    proc.send("c", "127.0.0.1", "abc")  # the port is asked again: the program waits at it
    proc.expect(r"^try again: peer port must be a number", stream="err")
    proc.signal(signal.SIGINT)
    assert finish(proc) == 130
    assert len(proc.err) == 1


@pytest.mark.parametrize("victim", ["connector", "listener"])
def test_killed_peer_is_reported_as_lost(chat: Spawn, tmp_path: Path, victim: str) -> None:
    """With --reconnect-for 0 a lost connection ends the chat at once, as it always did."""
    listener, connector = start_pair(chat, tmp_path, extra=("--reconnect-for", "0"))
    dead, survivor = (connector, listener) if victim == "connector" else (listener, connector)
    dead.kill()  # SIGKILL: no goodbye
    survivor.expect(r"^Connection lost: ")
    assert finish(survivor) != 0
    assert "Connection closed by peer." not in survivor.out


def test_a_chat_ended_by_the_peer_at_once_never_waits_for_a_keypress(
    chat: Spawn, tmp_path: Path
) -> None:
    # The receiver thread ends the chat while the input loop is only just starting to read:
    # the side told goodbye must still exit by itself. Repeated, as the moment is narrow.
    for _ in range(16):
        listener, connector = start_pair(chat, tmp_path)
        connector.send("exit", "")
        listener.expect(r"^Connection closed by peer\.$")
        assert listener.wait(timeout=5.0) == 0
        assert connector.wait(timeout=5.0) == 0


# --- Traffic ---------------------------------------------------------------------------------


def test_burst_of_3000_messages_arrives_complete_and_in_order(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    texts = [f"message {i:04d} of the burst" for i in range(3000)]
    connector.send(*texts, "exit", "")
    listener.expect(r"^Connection closed by peer\.$", timeout=40.0)
    assert says(listener.out, "laptop") == texts
    assert finish(listener) == 0
    assert finish(connector) == 0
    assert connector.out.count("Sent CHAT message.") == 3000


def test_message_over_64_kib_gets_a_local_error_and_the_chat_goes_on(
    chat: Spawn, tmp_path: Path
) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.send("x" * (64 * 1024 + 1))
    line = connector.expect(r"^error: ", stream="err")
    assert "65537 bytes" in line
    assert "65536" in line
    connector.send("é" * (32 * 1024 + 1))  # 65538 bytes of UTF-8 in 32769 characters
    assert "65538 bytes" in connector.expect(r"^error: ", stream="err")
    connector.send("y" * (64 * 1024))  # exactly the limit is fine
    listener.expect(r"^laptop says: y{65536}$")
    connector.send("after the long ones")
    listener.expect(r"^laptop says: after the long ones$")
    assert len(connector.err) == 2
    assert says(listener.out, "laptop") == ["y" * 65536, "after the long ones"]
    leave(connector)
    assert finish(listener) == 0


def test_peer_control_characters_are_shown_escaped(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.send("\x1b[2J\x1b[31mred\x1b[0m\x07 and \u202ereversed")
    listener.expect(r"^laptop says: ")
    connector.send("exit", "\x1b]0;owned\x07bye")
    listener.expect(r"^Connection closed by peer\.$")
    assert finish(listener) == 0
    assert says(listener.out, "laptop") == [r"\x1b[2J\x1b[31mred\x1b[0m\x07 and \u202ereversed"]
    assert r"laptop left the chat: \x1b]0;owned\x07bye" in listener.out
    for char in ("\x1b", "\x07", "\u202e"):
        assert char not in listener.all_output()


def test_slash_commands(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    port = int(listener.expect(r"^Your IP and port are: ").rsplit(":", 1)[1])

    connector.send("/help")
    connector.expect(r"^Type a line and press Enter")
    for command in ("/help", "/who", "/verify", "/quit", "//text"):
        connector.expect(rf"^\s+{re.escape(command)}\b")

    connector.send("/who")
    who = connector.expect(rf"^Talking to desktop at 127\.0\.0\.1:{port}, connected ")
    assert re.search(
        r"connected \d+ min \d+ s, not verified\. Identity: [0-9a-f]{4}( [0-9a-f]{4}){7} ", who
    )
    listener.send("/who")
    listener.expect(r"^Talking to laptop at 127\.0\.0\.1:\d+, connected ")

    connector.send("/verify")
    listener.send("/verify")
    numbers = {
        proc: proc.expect(r"^    \d{5}( \d{5}){11}$", stream="out")
        for proc in (listener, connector)
    }
    assert numbers[listener] == numbers[connector]

    connector.send("/foo bar")
    hint = connector.expect(r"/foo", stream="err")
    assert "/help" in hint
    assert "//" in hint
    connector.send("//text")
    listener.expect(r"^laptop says: /text$")

    connector.send("/quit", "")
    closed_without_goodbye(connector, listener)
    assert says(listener.out, "laptop") == ["/text"]
    assert connector.err == [hint]


def test_commands_are_case_insensitive_take_aliases_and_blank_lines_are_not_sent(
    chat: Spawn, tmp_path: Path
) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.send("/WHO")
    connector.expect(r"^Talking to desktop at ")
    connector.send("/Who please")  # an argument a command does not take is ignored
    connector.expect(r"^Talking to desktop at .* Identity: ")
    connector.send("   ", "\t", "after blanks")
    listener.expect(r"^laptop says: after blanks$")
    connector.send("/EXIT now", "")
    closed_without_goodbye(connector, listener)
    assert says(listener.out, "laptop") == ["after blanks"]
    assert connector.err == []


def test_help_is_generated_from_the_command_table() -> None:
    text = help_text()
    for word in ("/help", "/?", "/who", "/verify", "/quit", "/exit", "//text", "exit"):
        assert word in text
    # On an 80-column terminal each description wraps under itself, never under the commands.
    rows = help_text(79).splitlines()
    assert all(len(row) <= 79 for row in rows)
    column = rows[1].index("this help")
    continued = [row for row in rows[1:-1] if row[:3].isspace()]  # not a command's own row
    assert continued and all(row[:column].isspace() and row[column] != " " for row in continued)


# --- Addresses -------------------------------------------------------------------------------


def ipv6_port() -> int | None:
    """A free port on ::1, or None when ::1 cannot be bound here."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return None


def test_ipv6_listen_and_connect(chat: Spawn, tmp_path: Path) -> None:
    port = ipv6_port()
    if port is None:
        pytest.skip("::1 cannot be bound on this machine")
    write_config(tmp_path, "desktop.ini", ip="::1", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini", "--listen")
    listener.expect(rf"^Your IP and port are: \[::1\]:{port}$")
    listener.expect(rf"^Listening on \[::1\]:{port};")
    connector = chat("--config", "laptop.ini", "--connect", f"[::1]:{port}")
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^Connected by \('::1', \d+\)$")
    listener.expect(r"^laptop joined the chat\.$")
    connector.send("over IPv6")
    listener.expect(r"^laptop says: over IPv6$")
    connector.send("/who")
    connector.expect(rf"^Talking to desktop at \[::1\]:{port}, ")
    leave(connector)
    assert finish(listener) == 0


def test_wildcard_address_shows_a_real_address(chat: Spawn, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path, ip="0.0.0.0", port=port)
    listener = chat("--listen")
    line = listener.expect(r"^Your IP and port are: ")
    host, _, shown_port = line.removeprefix("Your IP and port are: ").rpartition(":")
    assert shown_port == str(port)
    address = ipaddress.ip_address(host)
    assert not address.is_unspecified, line
    listener.expect(r"^Listening on ")
    listener.signal(signal.SIGINT)
    assert finish(listener) == 130


# --- Keepalive -------------------------------------------------------------------------------


def test_keepalive_reports_a_frozen_peer(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(
        chat, tmp_path, extra=("--keepalive", "0.5", "--reconnect-for", "0")
    )
    connector.signal(signal.SIGSTOP)  # alive for TCP, silent for the chat
    try:
        listener.expect(r"^Connection lost: ", timeout=5.0)
        assert finish(listener) != 0
        assert "Connection closed by peer." not in listener.out
    finally:
        connector.kill()


def test_keepalive_keeps_an_idle_chat_open(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(
        chat, tmp_path, extra=("--keepalive", "0.5", "--reconnect-for", "0")
    )
    threading.Event().wait(3.0)  # six intervals with nobody typing
    connector.send("still there?")
    listener.expect(r"^laptop says: still there\?$")
    listener.send("yes")
    connector.expect(r"^desktop says: yes$")
    leave(connector)
    assert finish(listener) == 0
    assert finish(connector) == 0
    for proc in (listener, connector):
        assert not any("Connection lost" in line for line in proc.out + proc.err)


# --- Mistakes a newcomer makes ---------------------------------------------------------------


def test_end_of_input_while_listening_ends_quietly(chat: Spawn, tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    listener = chat("--listen")
    listener.expect(r"^Listening on ")
    listener.close_stdin()
    assert finish(listener) == 1
    assert listener.err == []


def test_a_line_typed_while_listening_is_refused_not_sent_later(
    chat: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on ")
    listener.send("too early")
    listener.expect(r"^Nobody is connected yet: that line was not sent\.$", stream="err")
    connector = chat("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
    listener.expect(r"^laptop joined the chat\.$")
    listener.send("on time")
    connector.expect(r"^desktop says: on time$")
    leave(connector)
    assert finish(listener) == 0
    assert says(connector.out, "desktop") == ["on time"]


def test_a_goodbye_that_cannot_be_sent_is_asked_again(chat: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(chat, tmp_path)
    connector.send("exit", "x" * (64 * 1024 + 1))
    connector.expect(r"^error: the goodbye text is 65537 bytes; the limit is 65536", stream="err")
    connector.send("bye after all")
    connector.expect(r"^Connection closed by you\.$")
    listener.expect(r"^laptop left the chat: bye after all$")
    assert finish(listener) == 0
    assert finish(connector) == 0


def test_closed_standard_streams_are_no_traceback(tmp_path: Path) -> None:
    for redirect in (">&-", "<&- >/dev/null", "2>&- >/dev/null"):
        result = subprocess.run(
            ["sh", "-c", f'exec "$0" "$1" --genkey {redirect}', sys.executable, str(SCRIPT)],
            cwd=tmp_path,
            capture_output=redirect != ">&-",
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, redirect
        assert b"Traceback" not in (result.stderr or b""), redirect
    write_config(tmp_path, port=free_port())
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$1" --listen <&-', sys.executable, str(SCRIPT)],
        cwd=tmp_path,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1  # no standard input: ends quietly while listening
    assert b"Traceback" not in result.stdout + result.stderr


def test_a_reader_that_goes_away_is_no_traceback(chat: Spawn, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", "desktop.ini", "--listen"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert listener.stdout is not None and listener.stderr is not None
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"Listening on" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([listener.stdout], [], [], 0.5)
            if ready:
                seen += os.read(listener.stdout.fileno(), 4096)
        assert b"Listening on" in seen
        listener.stdout.close()  # nobody reads the listener's output any more
        connector = chat("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
        connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
        for n in range(200):  # far more than a pipe buffer holds
            connector.send(f"message {n} " + "z" * 400)
        leave(connector)
        assert listener.wait(TIMEOUT) == 0
        assert b"Traceback" not in listener.stderr.read()
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(TIMEOUT)

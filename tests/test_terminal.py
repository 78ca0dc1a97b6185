"""Real-terminal tests: chatclient on a pseudo-terminal (pexpect), its peer on pipes.

Each wait is an expect with a timeout; nothing sleeps.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
import pytest
from conftest import KEY, SCRIPT, TIMEOUT, ChatProcess, free_port, write_config

Spawn = Callable[..., ChatProcess]
Terminal = Callable[..., pexpect.spawn]

UP = "\x1b[A"
LEFT = "\x1b[D"


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    """terminal(*args, cwd=tmp_path) -> chatclient on a pty; each is closed at the end. It
    never takes part in LAN discovery (--no-announce): first runs listen on 0.0.0.0."""
    children: list[tuple[pexpect.spawn, io.StringIO]] = []

    def start(*args: str, cwd: Path | None = None, columns: int = 200) -> pexpect.spawn:
        log = io.StringIO()
        child = pexpect.spawn(
            sys.executable,
            [str(SCRIPT), "--no-announce", *args],
            cwd=str(cwd or tmp_path),
            env={**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"},
            encoding="utf-8",
            codec_errors="replace",
            timeout=TIMEOUT,
            dimensions=(24, columns),
        )
        child.logfile_read = log
        children.append((child, log))
        return child

    yield start
    for child, log in children:
        child.close(force=True)
        assert "Traceback" not in log.getvalue(), log.getvalue()


def start_listening_terminal(
    terminal: Terminal,
    spawn: Spawn,
    tmp_path: Path,
    columns: int = 200,
    extra: tuple[str, ...] = (),
) -> tuple[pexpect.spawn, ChatProcess]:
    """desktop on a terminal listening, laptop on pipes connected to it, both at the chat."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    child = terminal("--config", "desktop.ini", "--listen", *extra, columns=columns)
    child.expect_exact("Listening on ")
    connector = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    child.expect_exact("laptop joined the chat.")
    child.expect_exact("desktop> ")
    return child, connector


def says(out: list[str], name: str) -> list[str]:
    prefix = f"{name} says: "
    return [line[len(prefix) :] for line in out if line.startswith(prefix)]


def leave_from_terminal(child: pexpect.spawn, connector: ChatProcess, name: str) -> None:
    """Type exit on the terminal; both programs end with status 0."""
    child.sendline("exit")
    child.expect_exact("Enter goodbye text (optional): ")
    child.sendline("see you")
    child.expect_exact("Connection closed by you.")
    connector.expect(rf"^{re.escape(name)} left the chat: see you$")
    connector.expect(r"^Connection closed by peer\.$")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert connector.wait() == 0


# --- Typing while messages arrive --------------------------------------------------------------


def test_message_arriving_mid_typing_leaves_the_typed_text_intact(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.send("hello wor")  # no Enter yet
    child.expect_exact("hello wor")
    for n in range(3):
        connector.send(f"incoming {n}")
        child.expect_exact(f"laptop says: incoming {n}")
        child.expect_exact("desktop> hello wor")  # prompt and half line redrawn below it
    child.send("ld\r")
    connector.expect(r"^desktop says: hello world$")
    child.expect_exact("Sent CHAT message.")
    assert says(connector.out, "desktop") == ["hello world"]
    leave_from_terminal(child, connector, "desktop")


def test_cursor_stays_where_the_user_left_it_across_a_redraw(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.send("helo world")
    child.expect_exact("helo world")
    child.send(LEFT * 7)  # the cursor now sits after "hel"
    connector.send("interruption")
    child.expect_exact("laptop says: interruption")
    child.expect_exact("desktop> helo world")
    child.send("l\r")  # typed at the cursor: "hello world"
    connector.expect(r"^desktop says: hello world$")
    assert says(connector.out, "desktop") == ["hello world"]
    leave_from_terminal(child, connector, "desktop")


def test_up_arrow_recalls_the_last_line(terminal: Terminal, spawn: Spawn, tmp_path: Path) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.sendline("say it twice")
    connector.expect(r"^desktop says: say it twice$")
    child.expect_exact("Sent CHAT message.")
    child.expect_exact("desktop> ")
    child.send(UP)
    child.expect_exact("say it twice")
    child.send("\r")
    connector.expect(r"^desktop says: say it twice$")
    assert says(connector.out, "desktop") == ["say it twice", "say it twice"]
    leave_from_terminal(child, connector, "desktop")


# --- First run ---------------------------------------------------------------------------------


def answer_first_run(child: pexpect.spawn, port: int, default_port: int) -> tuple[str, str]:
    """Accept the defaults except the port; return (username, invite code shown)."""
    child.expect(r"Your username \[([^\]\r\n]+)\]: ")
    username = child.match.group(1)
    child.sendline("")
    child.expect_exact(f"Port to listen on [{default_port}]: ")
    child.sendline(str(port))
    child.expect_exact("Address to listen on (0.0.0.0 = all interfaces) [0.0.0.0]: ")
    child.sendline("")
    child.expect_exact("Saved config.ini (readable only by you).")
    child.expect_exact("Created your identity in identity.key (readable only by you")
    child.expect(r"Your identity: [0-9a-f]{4}( [0-9a-f]{4}){7}\r?\n")
    child.expect(r"Your IP and port are: (\S+)\r?\n")
    assert not child.match.group(1).startswith("0.0.0.0:")
    child.expect(r"Invite code: (\d+-[a-z]+-[a-z]+)\r?\n")
    code = child.match.group(1)
    child.expect(rf"--connect \S+:{port} --code {code}\r?\n")
    child.expect_exact(f"Listening on 0.0.0.0:{port};")
    return username, code


def check_saved_config(path: Path, port: int, username: str, key: str = "") -> None:
    assert path.stat().st_mode & 0o777 == 0o600
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    fields = dict(parser.items("parameters"))
    assert fields == {
        "ip": "0.0.0.0",
        "port": str(port),
        "fernet_key": key,
        "username": username,
        "timestamps": "no",
        "bell": "no",
        "downloads": "",
        "announce": "yes",
        "reconnect_for": "10m",
    }


def chat_with_new_listener(
    child: pexpect.spawn, spawn: Spawn, tmp_path: Path, port: int, username: str, code: str
) -> None:
    """A pipe-driven laptop, in a folder of its own, joins with the invite code; both talk."""
    (tmp_path / "laptop").mkdir()
    write_config(tmp_path / "laptop", port=port, key="", username="laptop")
    connector = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=tmp_path / "laptop")
    connector.expect(rf"^WELCOME Welcome to the chat! I am {re.escape(username)}$")
    connector.expect(rf"^{re.escape(username)} is now a verified contact \(the invite code")
    child.expect(r"Connected by \('127\.0\.0\.1', \d+\)")
    child.expect_exact("laptop joined the chat (verified).")
    connector.send("hi, new listener")
    child.expect_exact("laptop says: hi, new listener")
    child.sendline("hello laptop")
    connector.expect(rf"^{re.escape(username)} says: hello laptop$")
    leave_from_terminal(child, connector, username)


def first_run_then_chat(terminal: Terminal, spawn: Spawn, tmp_path: Path, greeting: str) -> None:
    """Start with no flags, see `greeting`, take the defaults but a free port, then chat."""
    port = free_port()
    child = terminal()
    child.expect_exact(greeting)
    username, code = answer_first_run(child, port, default_port=50233)
    check_saved_config(tmp_path / "config.ini", port, username)
    chat_with_new_listener(child, spawn, tmp_path, port, username, code)


def test_first_run_without_config_creates_it_and_listens(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    first_run_then_chat(terminal, spawn, tmp_path, "No config.ini here yet")


def test_example_config_is_filled_in_and_listens_with_an_invite(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    # Shaped like the repository's example; never the checkout's own file, which
    # README's quick start fills in.
    example = "[parameters]\nip = 0.0.0.0\nport = 50233\nfernet_key =\nusername =\n"
    (tmp_path / "config.ini").write_text(example, encoding="utf-8")
    (tmp_path / "config.ini").chmod(0o644)  # as a checkout leaves it
    first_run_then_chat(terminal, spawn, tmp_path, "config.ini is not filled in yet")


def test_the_command_to_copy_is_never_broken_into_rows(terminal: Terminal, tmp_path: Path) -> None:
    """Newcomer run: on a narrow terminal the invite's command was wrapped at a blank, and
    a copy of the two rows was a broken command. The terminal wraps it now (a soft wrap)."""
    port = free_port()
    write_config(tmp_path, port=port, username="desktop", key="")
    child = terminal("--listen", columns=60)
    child.expect(r"Invite code: (\d+-[a-z]+-[a-z]+)\r?\n")
    code = child.match.group(1)
    child.expect(r"who runs:\r?\n")
    child.expect(r"( +)(\S[^\r\n]*)\r?\n")
    assert child.match.group(1) == "    "
    assert child.match.group(2).endswith(f" --connect 127.0.0.1:{port} --code {code}")


def test_first_run_asks_again_for_a_port_that_is_in_use(terminal: Terminal, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        free = free_port()
        child = terminal()
        child.expect(r"Your username \[[^\]\r\n]+\]: ")
        child.sendline("")
        child.expect_exact("Port to listen on [50233]: ")
        child.sendline(str(busy))
        child.expect_exact("Address to listen on (0.0.0.0 = all interfaces) [0.0.0.0]: ")
        child.sendline("")
        child.expect_exact(f"try again: port {busy} is already in use")
        child.expect(r"Port to listen on \[(\d+)\]: ")
        assert int(child.match.group(1)) != busy  # the busy port is not offered again
        child.sendline(str(free))
        child.expect_exact("Address to listen on (0.0.0.0 = all interfaces) [0.0.0.0]: ")
        child.sendline("")
        child.expect_exact("Saved config.ini (readable only by you).")
        child.expect_exact(f"Listening on 0.0.0.0:{free};")
    assert f"port = {free}" in (tmp_path / "config.ini").read_text(encoding="utf-8")


def test_typing_while_a_stream_of_messages_arrives_never_garbles_the_line(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    typed = "the quick brown fox jumps over the lazy dog"
    count = 300
    connector.send(*(f"stream {n}" for n in range(count)))
    for ch in typed:  # keystrokes interleave with the incoming lines
        child.send(ch)
    for n in range(count):
        child.expect_exact(f"laptop says: stream {n}\r\n")
    child.sendline("")
    connector.expect(rf"^desktop says: {typed}$")
    leave_from_terminal(child, connector, "desktop")


# --- What a peer cannot do to the screen ---------------------------------------------------


def screen_rows(child: pexpect.spawn, columns: int) -> list[str]:
    """The terminal's rows as a person sees them (everything printed, replayed by pyte)."""
    screen = pyte.Screen(columns, 24)
    pyte.Stream(screen).feed(child.logfile_read.getvalue())
    return [row.rstrip() for row in screen.display]


def test_a_padded_message_cannot_fake_whole_lines_by_wrapping(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path, columns=80)
    # On an 80-column terminal that wraps by itself, the padding would put these
    # two texts at the start of rows of their own while the chat goes on.
    spoof = " " * 67 + "laptop left the chat: bye" + " " * 55 + "Connection closed by peer."
    connector.send(spoof)
    child.expect_exact("peer.")
    connector.send("still here")
    child.expect_exact("laptop says: still here")
    rows = screen_rows(child, 80)
    assert any(row.startswith("laptop says: ") for row in rows)
    assert not any(row.startswith(("laptop left", "Connection closed")) for row in rows), rows
    assert any(row.strip() == "laptop left the chat: bye" for row in rows)  # shown, indented
    leave_from_terminal(child, connector, "desktop")


def test_a_first_connect_without_key_asks_for_an_invite_code(
    terminal: Terminal, tmp_path: Path
) -> None:
    port = free_port()
    child = terminal("--connect", f"127.0.0.1:{port}")
    child.expect(r"Your username \[[^\]\r\n]+\]: ")
    child.sendline("laptop")  # a connector is asked nothing about listening
    child.expect_exact("Saved config.ini (readable only by you).")
    child.expect_exact("Enter invite code: ")
    child.sendline("7-guitarist-gazelle")
    child.expect_exact("try again: the words of '7-guitarist-gazelle' are swapped")
    child.expect_exact("Enter invite code: ")
    child.sendline("7-gazelle-guitarist")
    child.expect(pexpect.EOF)  # nobody listens there: connection refused
    saved = (tmp_path / "config.ini").read_text(encoding="utf-8")
    assert "fernet_key = \n" in saved and "port = 50233\n" in saved
    assert "Port to listen on" not in child.logfile_read.getvalue()


def test_init_with_key_from_input_asks_without_echo(terminal: Terminal, tmp_path: Path) -> None:
    child = terminal("--init", "--key", "-", "--username", "laptop")
    child.expect_exact("Paste the key your peer gave you (it is not shown): ")
    child.sendline(KEY)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert KEY not in child.logfile_read.getvalue()
    assert f"fernet_key = {KEY}" in (tmp_path / "config.ini").read_text(encoding="utf-8")


def test_ctrl_c_while_a_burst_arrives_leaves_cleanly(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    # Ctrl-C lands while lines are being handed to the main thread to print:
    # it must leave as Ctrl-C always does, never hang or print a traceback.
    for attempt in range(3):
        child, connector = start_listening_terminal(terminal, spawn, tmp_path)
        connector.send(*(f"burst {n}" for n in range(20000)))
        child.expect_exact(f"laptop says: burst {200 + 100 * attempt}")
        child.sendintr()
        connector.expect(r"^desktop left the chat\.$", timeout=30)
        connector.expect(r"^Connection closed by peer\.$")
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        assert child.exitstatus == 0, attempt
        assert connector.wait() == 0
        assert "Traceback" not in child.logfile_read.getvalue()


# --- Pasting, leaving mid-line, the bell -------------------------------------------------


def test_a_bracketed_paste_is_one_message_shown_with_indented_lines(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    # The terminal is asked to mark pastes (CPython's readline leaves that off) ...
    assert "\x1b[?2004h" in child.logfile_read.getvalue()
    # ... and a marked paste is one message.
    child.send("\x1b[200~first line\nsecond line\n\tindented\x1b[201~\r")
    child.expect_exact("Sent CHAT message.")
    connector.expect(r"^desktop says: first line$")
    connector.expect(r"^  second line$")
    connector.expect(r"^      indented$")
    assert connector.out.count("desktop says: first line") == 1
    child.expect_exact("desktop> ")
    child.sendline("one\\")  # a trailing backslash goes on in the next line
    child.expect_exact("... ")
    child.sendline("two")
    connector.expect(r"^desktop says: one$")
    connector.expect(r"^  two$")
    child.sendline("C:\\\\")  # two backslashes at the end send one
    connector.expect(r"^desktop says: C:\\$")
    leave_from_terminal(child, connector, "desktop")


def test_lines_collected_after_a_backslash_are_not_lost_when_the_peer_leaves(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.sendline("first part \\")
    child.expect_exact("... ")
    child.send("second")
    child.expect_exact("second")
    connector.send("exit", "")
    child.expect_exact("Not sent (the chat had ended): first part")
    child.expect_exact("  second")
    child.expect(pexpect.EOF)


def test_ctrl_c_with_a_half_typed_line_says_it_was_not_sent(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.send("half typed")
    child.expect_exact("half typed")
    child.sendintr()
    child.expect_exact("Not sent: half typed")
    child.expect_exact("Sent TERMINATE message.")
    connector.expect(r"^desktop left the chat\.$")
    child.expect(pexpect.EOF)
    child.close()
    assert says(connector.out, "desktop") == []


def test_a_half_typed_line_is_shown_as_not_sent_when_the_peer_leaves(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.send("I was just about to say")
    child.expect_exact("I was just about to say")
    connector.send("exit", "bye")
    child.expect_exact("Connection closed by peer.")
    child.expect_exact("Not sent (the chat had ended): I was just about to say")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert connector.wait() == 0


def test_the_bell_rings_for_incoming_messages_only_when_asked(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path, extra=("--bell",))
    before = child.logfile_read.getvalue().count("\a")
    connector.send("ding")
    child.expect_exact("laptop says: ding")
    child.expect_exact("\a")
    child.sendline("no bell for what I send")
    connector.expect(r"^desktop says: no bell for what I send$")
    child.expect_exact("Sent CHAT message.")
    assert child.logfile_read.getvalue().count("\a") == before + 1
    leave_from_terminal(child, connector, "desktop")


# --- Without readline and without signals (macOS libedit, Windows) -----------------------


def test_without_readline_and_signals_it_runs_line_by_line(spawn: Spawn, tmp_path: Path) -> None:
    """Both facilities are taken away before the program starts, as on Windows."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    bootstrap = (
        "import runpy, signal, sys; sys.modules['readline'] = None; del signal.pthread_kill; "
        f"sys.argv = [{str(SCRIPT)!r}, '--config', 'desktop.ini', '--listen']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    log = io.StringIO()
    child = pexpect.spawn(
        sys.executable,
        ["-c", bootstrap],
        cwd=str(tmp_path),
        env={**os.environ, "TERM": "xterm", "PYTHONUNBUFFERED": "1"},
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.logfile_read = log
    try:
        child.expect_exact("Listening on ")
        connector = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
        child.expect_exact("laptop joined the chat.")
        connector.send("plain lines")
        child.expect_exact("laptop says: plain lines")
        child.sendline("and back")
        connector.expect(r"^desktop says: and back$")
        connector.send("exit", "")
        child.expect_exact("Connection closed by peer.")
        child.expect_exact("Press Enter to exit.")  # input() cannot be interrupted here
        child.sendline("")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert "Traceback" not in log.getvalue()
        assert "Sent CHAT message." in log.getvalue()
    finally:
        child.close(force=True)


def test_tab_completes_commands_and_the_names_in_the_room(
    terminal: Terminal, spawn: Spawn, tmp_path: Path
) -> None:
    child, connector = start_listening_terminal(terminal, spawn, tmp_path)
    child.send("/ms\t")
    child.expect_exact("/msg ")
    child.send("la\t")
    child.expect_exact("laptop ")  # readline writes only what it adds
    child.sendline("psst")
    connector.expect(r"^desktop says privately: psst$")
    leave_from_terminal(child, connector, "desktop")

"""Resuming a chat between real `python chatclient.py` processes on 127.0.0.1 (issue 18):
a restarted host cannot resume the chat, and a window that passes ends it. The pulled
cable itself is in test_resume_namespaces.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import ChatProcess, Spawn, free_port, write_config

WAIT = 30.0


def pair(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, ChatProcess, int]:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    desk = spawn("--config", "desktop.ini", "--listen", "--keepalive", "1")
    desk.expect(r"^Listening on ")
    lap = spawn(
        "--config", "laptop.ini", "--connect", f"127.0.0.1:{port}", "--keepalive", "1", *flags
    )
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^laptop joined the chat\.$")
    return desk, lap, port


def test_a_restarted_host_answers_without_the_chat_and_the_connector_ends(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, lap, _ = pair(spawn, tmp_path, "--reconnect-for", "2m")
    desk.kill()  # no goodbye: the host is gone, and its sessions with it
    lap.expect(r"^Connection to desktop lost: reconnecting \(Ctrl-C to give up\)$", timeout=WAIT)
    again = spawn("--config", "desktop.ini", "--listen", "--keepalive", "1")
    again.expect(r"^Listening on ")
    lap.expect(
        r"^Connection lost: the peer no longer has this chat \(it was restarted, or the time "
        r"to come back has passed\): start a new one$",
        timeout=WAIT,
    )
    assert lap.wait(WAIT) == 1


def test_the_connector_gives_up_once_the_window_has_passed(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap, _ = pair(spawn, tmp_path, "--reconnect-for", "3")
    desk.kill()
    lap.expect(r"^Connection to desktop lost: reconnecting \(Ctrl-C to give up\)$", timeout=WAIT)
    lap.expect(r"^Connection lost: desktop could not be reached again within 3 s$", timeout=WAIT)
    assert lap.wait(WAIT) == 1


def test_a_host_leaving_while_a_member_is_away_ends_at_once(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap, _ = pair(spawn, tmp_path, "--reconnect-for", "2m")
    lap.kill()  # gone without a goodbye: the host keeps the place
    desk.expect(r"^laptop lost the connection; keeping their place for 10 minutes\.$", timeout=WAIT)
    desk.send("exit", "")
    assert desk.wait(WAIT) == 0


def test_the_same_person_connecting_anew_takes_the_kept_place(spawn: Spawn, tmp_path: Path) -> None:
    """Found by a newcomer: a connector that gave up (or restarted) was refused as 'the name
    is taken' for the whole window the host kept its place."""
    desk, lap, port = pair(spawn, tmp_path, "--reconnect-for", "2m")
    lap.kill()
    desk.expect(r"^laptop lost the connection; keeping their place for 10 minutes\.$", timeout=WAIT)
    again = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}", "--keepalive", "1")
    again.expect(r"^WELCOME Welcome to the chat! I am desktop$", timeout=WAIT)
    desk.expect(r"^laptop joined the chat\.$", timeout=WAIT)
    again.send("a new chat")
    desk.expect(r"^laptop says: a new chat$")


def test_a_chat_begun_with_an_invite_code_resumes_after_a_freeze(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Found by a newcomer: the first chat of two people (by invite code) could not resume.
    The host is frozen (SIGSTOP) past the silence limit, then thawed."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop", key="")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop", key="")
    desk = spawn("--config", "desktop.ini", "--listen", "--keepalive", "1", "--no-announce")
    code = desk.expect(r"^Invite code: ").split(": ", 1)[1]
    lap = spawn(
        "--config",
        "laptop.ini",
        "--connect",
        f"127.0.0.1:{port}",
        "--code",
        code,
        "--keepalive",
        "1",
        "--reconnect-for",
        "2m",
    )
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^laptop joined the chat\.$")
    os.kill(desk.proc.pid, signal.SIGSTOP)
    try:
        lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
        lap.send("while frozen")
    finally:
        os.kill(desk.proc.pid, signal.SIGCONT)
    lap.expect(r"^Back with desktop after \d+ s: 1 waiting message sent", timeout=WAIT)
    desk.expect(r"^laptop says: while frozen$", timeout=WAIT)

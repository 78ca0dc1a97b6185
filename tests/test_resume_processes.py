"""Resuming a chat between real `python chatclient.py` processes on 127.0.0.1 (issue 18):
a restarted host cannot resume the chat, and a window that passes ends it. The pulled
cable itself is in test_resume_namespaces.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from conftest import ChatProcess, Spawn, free_port, write_config
from tap import Tap

from chatclient.handshake import MAGIC, Mode, Reject, reject_frame
from chatclient.messages import FRAME_HEADER, encode_frame

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
    desk.expect(
        r"^Left while laptop was away: they were not told, and find the chat gone when they "
        r"reconnect\.$"
    )
    assert desk.wait(WAIT) == 0
    assert "Sent TERMINATE message." not in desk.out


def test_giving_up_while_reconnecting_says_what_was_not_sent(spawn: Spawn, tmp_path: Path) -> None:
    desk, lap, _ = pair(spawn, tmp_path, "--reconnect-for", "2m")
    desk.kill()
    lap.expect(r"^Connection to desktop lost: reconnecting \(Ctrl-C to give up\)$", timeout=WAIT)
    lap.send("one", "two")
    lap.expect(r"^Waiting: it goes when desktop is back\.$")
    lap.expect(r"^Waiting: it goes when desktop is back\.$")
    lap.signal(signal.SIGINT)
    lap.expect(
        r"^Gave up reconnecting to desktop: they were not told you left, and keep your place "
        r"until their time to wait runs out \(2 lines typed meanwhile not sent\)\.$",
        timeout=WAIT,
    )
    assert lap.wait(WAIT) == 0
    assert "Sent TERMINATE message." not in lap.out


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


def through_tap(
    spawn: Spawn, tmp_path: Path, tap_to: int, keepalive: str
) -> tuple[ChatProcess, ChatProcess, Tap]:
    """desktop listens on `tap_to`; laptop connects to it through a Tap."""
    write_config(tmp_path, "desktop.ini", port=tap_to, username="desktop")
    write_config(tmp_path, "laptop.ini", port=tap_to, username="laptop")
    desk = spawn("--config", "desktop.ini", "--listen", "--keepalive", keepalive)
    desk.expect(r"^Listening on ")
    tap = Tap(tap_to)
    lap = spawn(
        "--config",
        "laptop.ini",
        "--connect",
        f"127.0.0.1:{tap.port}",
        "--keepalive",
        keepalive,
        "--reconnect-for",
        "2m",
    )
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^laptop joined the chat\.$")
    return desk, lap, tap


def test_a_host_that_has_not_noticed_the_loss_gives_the_chat_to_the_resumed_connection(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The connector's end is reset (a NAT, say) while the host hears nothing: the connector
    resumes at once, while the host still holds the old connection (its silence limit is
    25 s)."""
    desk, lap, tap = through_tap(spawn, tmp_path, free_port(), "10")
    with tap:
        tap.holding = True  # laptop's tries wait until it has typed
        tap.reset_connectors()
        lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
        lap.send("typed while away")
        lap.expect(r"^Waiting: it goes when desktop is back\.$")
        tap.release()
        lap.expect(
            r"^Back with desktop after \d+ s: 1 waiting message sent, nothing missed\.$",
            timeout=WAIT,
        )
        desk.expect(r"^laptop says: typed while away$", timeout=WAIT)
        sent = [line for line in lap.out if line == "Sent CHAT message."]
        assert len(sent) == 1  # once it really went, after the line that says it did
        assert lap.out.index("Sent CHAT message.") > lap.out.index(
            next(line for line in lap.out if line.startswith("Back with desktop"))
        )
        desk.send("still here")
        lap.expect(r"^desktop says: still here$", timeout=WAIT)
        first = desk.out[desk.out.index("laptop joined the chat.") - 1]  # Connected by (...)
        desk.send("/who")  # from where it is now (found by a newcomer: the old port stayed)
        now = desk.expect(r"^Talking to laptop at 127\.0\.0\.1:\d+, ")
        assert now.split(" at ")[1].split(",")[0] != first.split(", ")[1].rstrip(")")
        lap.send("exit", "")
        desk.expect(r"^Connection closed by peer\.$", timeout=WAIT)
        assert lap.wait(WAIT) == 0 and desk.wait(WAIT) == 0
    assert not [line for line in desk.out if "lost the connection" in line]
    assert [line for line in desk.out if line.startswith("laptop says: ")] == [
        "laptop says: typed while away"
    ]


def test_a_stranger_replaying_a_captured_resume_is_refused_and_the_chat_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Someone on the path captures laptop's resume and keeps it from arriving, then
    replays it while the host keeps the session; later, once the session has resumed, the
    same capture is replayed again. Neither takes laptop's place."""
    port = free_port()
    desk, lap, tap = through_tap(spawn, tmp_path, port, "1")
    with tap:
        tap.holding = True
        tap.freeze()
        desk.expect(r"^laptop lost the connection; keeping their place", timeout=WAIT)
        lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
        captured = tap.captured(1, WAIT)  # laptop's first try
        assert captured[FRAME_HEADER.size + len(MAGIC) + 1] == Mode.RESUME  # its M1
        replay(port, captured, answer=None)  # reads M2 and goes: not a warning's worth
        replay(port, captured, answer=True)
        desk.expect(
            r"^Refused a connection from \('127\.0\.0\.1', \d+\): the peer's key does not match "
            r"its commitment",  # M1 committed to a key whose private half the capture lacks
            timeout=WAIT,
        )
        tap.release()  # laptop's next try arrives
        lap.expect(r"^Back with desktop after \d+ s: ", timeout=WAIT)
        desk.expect(r"^laptop is back\.$", timeout=WAIT)
        # The session's resume id has changed with the resume: the capture names none.
        assert replay(port, captured, answer=False) == encode_frame(reject_frame(Reject.NO_SESSION))
        lap.send("still mine")
        desk.expect(r"^laptop says: still mine$", timeout=WAIT)
        desk.send("and still yours")
        lap.expect(r"^desktop says: and still yours$", timeout=WAIT)
    assert [line for line in desk.out if "joined" in line] == ["laptop joined the chat."]
    assert not [line for line in desk.err if "abandoned" in line]


def replay(port: int, captured: bytes, answer: bool | None) -> bytes:
    """Send a captured M1 to the listener; with `answer`, read its M2 and confirm with
    made-up keys (the secret the resume needs is not in the capture); with None, read M2
    and go. What the listener answered, after M2."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as stranger:
        stranger.sendall(captured)
        if answer is not False:
            head = stranger.recv(FRAME_HEADER.size, socket.MSG_WAITALL)
            (length,) = FRAME_HEADER.unpack(head)
            stranger.recv(length, socket.MSG_WAITALL)  # M2
            if answer is None:
                return b""
            stranger.sendall(encode_frame(os.urandom(64)))  # a public key and a tag
        answered = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := stranger.recv(65536):  # until the listener closes it
                answered += chunk
    return bytes(answered)


def test_lines_past_the_bound_are_counted_on_both_sides_never_silently(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Found by a hostile review: of 1,010 lines typed while away the host showed 1,000,
    and neither side said that 10 were let go."""
    desk, lap, tap = through_tap(spawn, tmp_path, free_port(), "10")
    with tap:
        tap.holding = True
        tap.reset_connectors()
        lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
        lap.send(*(f"line {number}" for number in range(1010)))
        for _ in range(1010):
            lap.expect(r"^Waiting: it goes when desktop is back\.$")
        tap.release()
        lap.expect(
            r"^Back with desktop after \d+ s: 1000 waiting messages sent, 10 more let go "
            r"\(more than 1,000 or 4 MiB waited\), nothing missed\.$",
            timeout=WAIT,
        )
        desk.expect(
            r"^laptop is back; 10 of their messages never came \(more than 1,000 or 4 MiB "
            r"waited\)\.$",
            timeout=WAIT,
        )
        desk.expect(r"^laptop says: line 1009$", timeout=WAIT)
    shown = [line for line in desk.out if line.startswith("laptop says: ")]
    assert shown == [f"laptop says: line {number}" for number in range(10, 1010)]


def test_a_goodbye_the_other_side_never_answers_says_so(spawn: Spawn, tmp_path: Path) -> None:
    """Found by a newcomer: `exit` typed just after the link went down (before either side
    noticed) said the goodbye was sent, and the host kept the place for its whole window."""
    _, lap, tap = through_tap(spawn, tmp_path, free_port(), "10")
    with tap:
        tap.freeze()  # nobody notices for 25 s
        lap.send("exit", "")
        lap.expect(r"^Sent TERMINATE message\.$")
        lap.expect(
            r"^desktop did not answer the goodbye: if the link is down, they were not told you "
            r"left, and keep your place until their time to wait runs out\.$",
            timeout=WAIT,
        )
        assert lap.wait(WAIT) == 0

"""Real rooms of real processes on 127.0.0.1: people join, talk, leave and are invited;
the seed's two-person lines still hold."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import SCRIPT, TIMEOUT, ChatProcess, free_port, run, write_config
from rooms import (
    A_JOIN,
    HOST,
    ROOM,
    Mallory,
    Spawn,
    folder,
    host,
    join,
    key,
)

from chatclient.cli import parse_args
from chatclient.messages import (
    Left,
    Refusal,
    Said,
)
from chatclient.peer import refusal_error
from chatclient.room import (
    Voice,
)

# --- Real rooms ------------------------------------------------------------------------------


def test_five_people_chat_as_one_room(spawn: Spawn, tmp_path: Path) -> None:
    desk, port = host(spawn, tmp_path, "--keepalive", "1", "--reconnect-for", "0")
    members: dict[str, ChatProcess] = {}
    for name in ("alice", "bob", "carol", "dave"):
        members[name] = join(spawn, tmp_path, name, port, "--keepalive", "1")
        desk.expect(rf"^{name} joined the chat\.$")
        if len(members) > 1:
            earlier = ", ".join(list(members)[:-1])
            members[name].expect(rf"^Also in the chat: {earlier}$")
        for other in list(members)[:-1]:
            members[other].expect(rf"^{name} joined the chat\.$")
    alice, bob, carol, dave = members.values()

    alice.send("hello all")
    alice.expect(r"^Sent CHAT message\.$")
    for listener in (desk, bob, carol, dave):
        listener.expect(r"^alice says: hello all$")
    desk.send("hi everyone")
    for member in members.values():
        member.expect(r"^desktop says: hi everyone$")

    bob.send("/msg alice psst, alice")
    alice.expect(r"^bob says privately: psst, alice$")
    bob.send("/msg nobody hi")
    bob.expect(r"^error: nobody named nobody is in the chat", stream="err")

    alice.send("exit", "bye all")
    alice.expect(r"^Connection closed by you\.$")
    assert alice.wait() == 0
    for listener in (desk, bob, carol, dave):
        listener.expect(r"^alice left the chat: bye all$")

    carol.kill()
    desk.expect(r"^carol lost the connection \(.+\)\.$")  # the host says why
    for listener in (bob, dave):
        listener.expect(r"^carol lost the connection\.$")

    dave.signal(signal.SIGSTOP)
    try:
        bob.send("still here?")
        desk.expect(r"^bob says: still here\?$")  # the stopped one stalls nobody
        desk.expect(r"^dave lost the connection \(.+\)\.$")
        bob.expect(r"^dave lost the connection\.$")
    finally:
        dave.signal(signal.SIGCONT)

    desk.send("/who")
    desk.expect(r"^Talking to bob at 127\.0\.0\.1:\d+, connected ")
    desk.send("exit", "good night")
    bob.expect(r"^desktop left the chat: good night$")
    bob.expect(r"^Connection closed by peer\.$")
    assert bob.wait() == 0 and desk.wait() == 0
    for member in (alice, bob, carol):
        assert not any("psst" in line for line in member.out if member is not alice)
    assert not any("psst" in line for line in desk.out)  # private: only its recipient
    assert not any("Traceback" in m.all_output() for m in (desk, *members.values()))


def test_who_lists_everyone_host_first_and_verify_takes_a_name(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port = host(spawn, tmp_path)
    alice = join(spawn, tmp_path, "alice", port)
    bob = join(spawn, tmp_path, "bob", port)
    alice.expect(r"^bob joined the chat\.$")
    alice.send("/who")
    alice.expect(r"^In the chat \(3 people\):$")
    alice.expect(r"^  desktop \(host\) at 127\.0\.0\.1:\d+, 0 min \d+ s, not verified$")
    alice.expect(r"^  bob at 127\.0\.0\.1:\d+, 0 min \d+ s, not verified$")
    alice.expect(r"^  alice \(you\)$")
    alice.send("/verify bob")
    on_alice = alice.expect(r"^    \d{5}( \d{5}){11}$")
    bob.send("/verify alice")
    assert bob.expect(r"^    \d{5}( \d{5}){11}$") == on_alice
    alice.send("/verify")
    alice.expect(r"^try again: /verify NAME", stream="err")
    alice.send("/verify bob ok")
    alice.expect(r"^bob is now verified in known_peers")
    desk.send("/who")
    desk.expect(r"^  desktop \(you, host\)$")
    desk.send("exit", "")
    for member in (alice, bob):
        member.expect(r"^Connection closed by peer\.$")


def test_a_taken_name_and_a_full_room_are_refused_and_the_room_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port = host(spawn, tmp_path, "--max-members", "2")
    alice = join(spawn, tmp_path, "alice", port)
    again = run(
        "--connect",
        f"127.0.0.1:{port}",
        "--username",
        "alice",
        cwd=folder(tmp_path, "alice2", port),
    )
    assert again.returncode == 1
    assert again.stderr.splitlines()[-1] == (
        "error: the name alice is already taken in this chat: choose another with --username"
    )
    join(spawn, tmp_path, "bob", port)
    full = run("--connect", f"127.0.0.1:{port}", cwd=folder(tmp_path, "carol", port))
    assert full.returncode == 1
    assert full.stderr.splitlines()[-1] == "error: the chat is full (2 people)"
    alice.send("still fine")
    desk.expect(r"^alice says: still fine$")


def test_the_default_room_is_twenty_and_says_so(tmp_path: Path) -> None:
    assert parse_args(["--listen"], "chatclient").max_members == 20
    refused = refusal_error(Refusal(5, "desktop", 20), "zoe")
    assert str(refused) == "the chat is full (20 people)"


def test_two_people_keep_the_seed_lines(spawn: Spawn, tmp_path: Path) -> None:
    desk, port = host(spawn, tmp_path)
    laptop = join(spawn, tmp_path, "laptop", port)
    desk.expect(r"^Connected by \('127\.0\.0\.1', \d+\)$")
    desk.expect(r"^laptop joined the chat\.$")
    laptop.send("hello desktop")
    desk.expect(r"^laptop says: hello desktop$")
    laptop.expect(r"^Sent CHAT message\.$")
    laptop.send("exit", "bye bye")
    desk.expect(r"^laptop left the chat: bye bye$")
    desk.expect(r"^Connection closed by peer\.$")
    assert desk.wait() == 0 and laptop.wait() == 0
    assert not any(re.match(r"Also in the chat|.* lost the connection", line) for line in desk.out)


def test_a_member_sending_what_only_a_host_sends_is_put_out(spawn: Spawn, tmp_path: Path) -> None:
    desk, port = host(spawn, tmp_path)
    alice = join(spawn, tmp_path, "alice", port)
    mallory = Mallory(port)
    alice.expect(r"^mallory joined the chat\.$")
    forged = Said("desktop", Voice(key(), "desktop", HOST, ROOM, A_JOIN).say("I am the host"))
    for message in (forged, Left("alice")):
        mallory.sock.sendall(mallory.peer.send(message, time.monotonic()))
    alice.expect(r"^mallory lost the connection\.$")
    desk.expect(r"^mallory lost the connection \(it sent SAID, which only a host sends\)\.$")
    desk.send("/who")
    desk.expect(r"^Talking to alice at ")  # alice is still in, as far as the host knows
    for side in (desk, alice):
        assert not any("I am the host" in line or "alice left" in line for line in side.out)
    mallory.sock.close()


def test_a_host_screen_that_takes_nothing_never_stalls_the_room(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The host's output is a pipe nobody reads (as a terminal paused with Ctrl-S): once it
    is full, the host's own printing waits, and the relaying does not."""
    port = free_port()
    desk = folder(tmp_path, "desktop", port)
    with subprocess.Popen(
        [sys.executable, str(SCRIPT), "--listen"],
        cwd=desk,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.DEVNULL,
    ) as host_process:
        try:
            assert host_process.stdout is not None
            seen = b""
            while b"Listening on" not in seen:  # then its output is never read again
                ready, _, _ = select.select([host_process.stdout], [], [], TIMEOUT)
                assert ready, f"the host did not start listening: {seen!r}"
                seen += os.read(host_process.stdout.fileno(), 4096)
            alice = join(spawn, tmp_path, "alice", port)
            bob = join(spawn, tmp_path, "bob", port)
            alice.expect(r"^bob joined the chat\.$")
            lines = [
                f"line {n:04d} of a long paste, long enough to fill a pipe" for n in range(3000)
            ]
            alice.send(*lines)
            bob.expect(r"^alice says: line 2999 ", timeout=60.0)
            assert [line for line in bob.out if line.startswith("alice says: ")] == [
                f"alice says: {line}" for line in lines
            ]
        finally:
            host_process.kill()


def test_the_host_invites_one_more_person_at_a_time(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    places = {}
    for name in ("desktop", "alice", "bob"):
        places[name] = tmp_path / name
        places[name].mkdir()
        write_config(places[name], port=port, key="", username=name)
    desk = spawn("--listen", cwd=places["desktop"])
    first = desk.expect(r"^Invite code: ").split(": ")[1]
    desk.expect(r"^Listening on ")
    alice = spawn("--connect", f"127.0.0.1:{port}", "--code", first, cwd=places["alice"])
    desk.expect(r"^alice joined the chat \(verified\)\.$")
    desk.send("/invite")
    second = desk.expect(r"^Invite code: ").split(": ")[1]
    assert second != first
    used = run("--connect", f"127.0.0.1:{port}", "--code", first, cwd=places["bob"])
    assert "the invite code is wrong" in used.stderr  # only the newest code is open
    bob = spawn("--connect", f"127.0.0.1:{port}", "--code", second, cwd=places["bob"])
    desk.expect(r"^bob joined the chat \(verified\)\.$")
    alice.expect(r"^bob joined the chat\.$")
    bob.expect(r"^Also in the chat: alice$")
    alice.send("/invite")
    alice.expect(
        r"^only the host \(the one who listens\) can make invite codes: ask them to type /invite$",
        stream="err",
    )


def test_a_host_waiting_for_its_invite_code_stays_when_its_room_empties(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Newcomer run: the host typed /invite for one more person, the only member left, and
    the host ended with the code still unused. Without a /invite code, it ends as ever."""
    desk, port = host(spawn, tmp_path)
    laptop = join(spawn, tmp_path, "laptop", port)
    desk.expect(r"^laptop joined the chat\.$")
    desk.send("/invite")
    code = desk.expect(r"^Invite code: ").split(": ")[1]
    laptop.send("exit", "back soon")
    desk.expect(r"^laptop left the chat: back soon$")
    desk.expect(
        rf"^Nobody else is in the chat now; the invite code {code} is still open \(/quit to "
        r"leave\)\.$"
    )
    assert laptop.wait() == 0
    desk.send("anyone?")
    desk.expect(r"^Nobody else is in the chat: that line was not sent\.$", stream="err")
    friend = tmp_path / "friend"
    friend.mkdir()
    write_config(friend, port=port, key="", username="friend")
    guest = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=friend)
    desk.expect(r"^friend joined the chat \(verified\)\.$")
    guest.send("hello")
    desk.expect(r"^friend says: hello$")
    guest.send("exit", "")
    desk.expect(r"^Connection closed by peer\.$")  # no code open now: it ends as ever
    assert desk.wait() == 0 and guest.wait() == 0

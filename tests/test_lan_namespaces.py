"""Finding each other on a LAN, for real: two network namespaces made by the test, joined
by a veth pair, where multicast DNS works as on a home network, and real chatclient
processes in each. Skipped where namespaces cannot be made (not root, or no `ip`).
Nothing here multicasts outside the namespaces."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SCRIPT, ChatProcess
from netns import Host, Unavailable, two_hosts

Spawn = Callable[..., ChatProcess]
CODE = re.compile(r"^Invite code: ((\d+)-[a-z]+-[a-z]+)$")


@dataclass
class Lan:
    """Two hosts on one link, and a way to run chatclient on either."""

    a: Host
    b: Host
    spawn: Spawn
    root: Path

    def person(self, host: Host, name: str, port: int = 50233) -> Path:
        """A folder of `name`'s own, listening (if ever) on the host's LAN address."""
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        config = folder / "config.ini"
        config.write_text(
            f"[parameters]\nip = {host.address}\nport = {port}\nfernet_key =\nusername = {name}\n",
            encoding="utf-8",
        )
        config.chmod(0o600)
        return folder

    def run(self, host: Host, folder: Path, *args: str) -> ChatProcess:
        command = ["ip", "netns", "exec", host.netns, sys.executable, str(SCRIPT)]
        return self.spawn(*args, cwd=folder, command=command)


@pytest.fixture
def lan(spawn: Spawn, tmp_path: Path) -> Iterator[Lan]:
    with contextlib.ExitStack() as stack:
        try:
            a, b = stack.enter_context(two_hosts())
        except Unavailable as exc:
            pytest.skip(str(exc))
        yield Lan(a, b, spawn, tmp_path)


def invite_of(listener: ChatProcess) -> tuple[str, int]:
    """The invite code a listener shows, and its slot."""
    match = CODE.match(listener.expect(CODE.pattern))
    assert match is not None
    return match[1], int(match[2])


def leave(quitter: ChatProcess, other: ChatProcess) -> None:
    quitter.send("exit", "")
    other.expect(r"^Connection closed by peer\.$")
    assert quitter.wait() == 0 and other.wait() == 0


def test_a_newcomer_joins_with_the_code_alone_and_then_by_name(lan: Lan) -> None:
    desktop, laptop = lan.person(lan.a, "desktop"), lan.person(lan.b, "laptop")
    listener = lan.run(lan.a, desktop, "--listen")
    code, _ = invite_of(listener)
    listener.expect(rf"^    .*chatclient\.py --code {code}$")  # the short form first
    listener.expect(rf"^    .* --connect {re.escape(lan.a.address)}:50233 --code {code}$")
    listener.expect(r"^Listening on ")
    newcomer = lan.run(lan.b, laptop, "--code", code)
    newcomer.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    leave(newcomer, listener)

    # Contacts now: the listener opens no invite, and is found by name.
    listener = lan.run(lan.a, desktop, "--listen")
    listener.expect(r"^Your contacts \(laptop\) can connect now")
    listener.expect(r"^Listening on ")
    listed = lan.run(lan.b, laptop, "--list")
    listed.expect(rf"^  desktop \(your contact, verified\) at {re.escape(lan.a.address)}:50233$")
    assert listed.wait() == 0
    contact = lan.run(lan.b, laptop, "--connect", "desktop")
    contact.expect(r"^Looking for desktop on this network\.\.\.$")
    contact.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    leave(contact, listener)

    # At the seed's prompt, the listeners found are shown, and a contact's name will do.
    listener = lan.run(lan.a, desktop, "--listen")
    listener.expect(r"^Listening on ")
    asked = lan.run(lan.b, laptop)
    asked.expect(r"^Do you want to listen or connect\? \(listen/connect\): $")
    asked.send("c")
    asked.expect(r"^  desktop \(your contact, verified\) at ")
    asked.expect(r"^Enter peer IP: $")
    asked.send("desktop")
    asked.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    leave(asked, listener)


def test_a_stranger_sees_no_name_and_no_announce_hides_the_listener(lan: Lan) -> None:
    desktop, stranger = lan.person(lan.a, "desktop"), lan.person(lan.b, "stranger")
    listener = lan.run(lan.a, desktop, "--listen")
    _, slot = invite_of(listener)
    listener.expect(r"^Listening on ")
    listed = lan.run(lan.b, stranger, "--list")
    line = listed.expect(r"^  someone who is not your contact")
    assert line == (
        f"  someone who is not your contact, with invite slot {slot} open at {lan.a.address}:50233"
    )
    assert listed.wait() == 0
    assert "desktop" not in listed.all_output()
    listener.kill()

    hidden = lan.run(lan.a, desktop, "--listen", "--no-announce")
    code, _ = invite_of(hidden)
    hidden.expect(r"^Listening on ")
    assert not any(" --code " in line and "--connect" not in line for line in hidden.out)
    started = time.monotonic()
    result = lan.run(lan.b, stranger, "--code", code)
    line = result.expect(r"^error: ", stream="err")
    assert result.wait() == 1
    assert time.monotonic() - started < 10  # 5 s of looking, and a start-up
    assert line.startswith(
        f"error: invite slot {code.split('-')[0]} was not found on this network within 5 s: "
        "multicast may be blocked"
    )
    assert f"--connect HOST:PORT --code {code}`" in line


def test_a_name_that_is_not_a_contact_is_one_line(lan: Lan) -> None:
    folder = lan.person(lan.b, "laptop")
    result = lan.run(lan.b, folder, "--connect", "desktop")
    line = result.expect(r"^error: ", stream="err")
    assert result.wait() == 1
    assert line.startswith("error: desktop is not one of your contacts: for someone new, run `")
    assert "--code CODE` with the invite code they show you, or `" in line
    assert line.endswith("--connect HOST:PORT`")


def test_two_listeners_with_open_invites_take_different_slots(lan: Lan) -> None:
    first = lan.run(lan.a, lan.person(lan.a, "one", 50301), "--invite")
    _, one = invite_of(first)
    first.expect(r"^Listening on ")
    second = lan.run(lan.a, lan.person(lan.a, "two", 50302), "--invite")
    _, two = invite_of(second)
    assert one != two
    looker = lan.person(lan.b, "looker")
    for _ in range(3):  # each --list looks for 2 s; a loaded machine may answer late
        listed = lan.run(lan.b, looker, "--list")
        assert listed.wait() == 0
        found = {int(m[1]) for line in listed.out if (m := re.search(r"invite slot (\d+)", line))}
        if len(found) == 2:
            break
    assert found == {one, two}


def test_a_loopback_listener_announces_nothing(lan: Lan) -> None:
    desktop = lan.person(lan.a, "desktop")
    config = desktop / "config.ini"
    config.write_text(config.read_text().replace(f"ip = {lan.a.address}", "ip = 127.0.0.1"))
    listener = lan.run(lan.a, desktop, "--listen")
    code, _ = invite_of(listener)
    listener.expect(r"^Listening on 127\.0\.0\.1:")
    assert not any(
        line.endswith(f"--code {code}") and "--connect" not in line for line in listener.out
    )
    listed = lan.run(lan.b, lan.person(lan.b, "looker"), "--list")
    listed.expect(r"^No chatclient listeners found on this network in 2 s")
    assert listed.wait() == 0

"""Identities, contacts and invite codes with real processes, each person in a folder of
their own (their own config.ini, identity.key and known_peers), on 127.0.0.1."""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import KEY, TIMEOUT, ChatProcess, free_port, run, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, drive

from chatclient.handshake import Role
from chatclient.identity import MAX_INVITE_FAILURES, update_known_peers
from chatclient.messages import Chat
from chatclient.peer import Established, Event, Failed, KeyProven, MessageReceived, PeerProtocol

Spawn = Callable[..., ChatProcess]
SAFETY = r"^    \d{5}( \d{5}){11}$"
CODE = re.compile(r"^Invite code: (\d+-[a-z]+-[a-z]+)$")


def person(tmp_path: Path, name: str, port: int, key: str = "") -> Path:
    """A folder of `name`'s own with a config.ini (no key unless given)."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    write_config(folder, port=port, key=key, username=name)
    return folder


def listen(spawn: Spawn, folder: Path, *flags: str) -> tuple[ChatProcess, str | None]:
    """A listener in `folder`; the invite code it shows, if any."""
    listener = spawn(*(flags or ("--listen",)), cwd=folder)
    line = listener.expect(r"^(Invite code: |Listening on )")
    code = None
    if match := CODE.match(line):
        code = match[1]
        listener.expect(r"^Listening on ")
    return listener, code


def leave(quitter: ChatProcess, other: ChatProcess) -> None:
    quitter.send("exit", "")
    other.expect(r"^Connection closed by peer\.$")
    assert quitter.wait() == 0 and other.wait() == 0


def test_strangers_become_contacts_by_invite_then_chat_with_no_key(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop, laptop = person(tmp_path, "desktop", port), person(tmp_path, "laptop", port)

    listener, code = listen(spawn, desktop)  # no fernet_key: the listen path invites
    assert code is not None
    assert any(f"--connect 127.0.0.1:{port} --code {code}" in line for line in listener.out)
    connector = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=laptop)
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    connector.expect(r"^desktop is now a verified contact \(the invite code proved it\)")
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    listener.expect(r"^laptop is now a verified contact")
    connector.send("hello by invite")
    listener.expect(r"^laptop says: hello by invite$")
    for side in (listener, connector):
        side.send("/verify")
    numbers = {side: side.expect(SAFETY) for side in (listener, connector)}
    assert numbers[listener] == numbers[connector]
    leave(connector, listener)
    for folder, other in ((desktop, "laptop"), (laptop, "desktop")):
        assert re.search(
            rf"^{other} ed25519:\S+ \S+ verified$", (folder / "known_peers").read_text(), re.M
        )
        assert (folder / "known_peers").stat().st_mode & 0o777 == 0o600
        assert (folder / "identity.key").stat().st_mode & 0o777 == 0o600

    # Later: no key, no code: the pinned identities are enough, and no invite is opened.
    listener, code = listen(spawn, desktop)
    assert code is None
    listener.expect(
        r"^Your contacts \(laptop\) can connect now\. For someone new, type /invite for a "
        r"one-time code \(or start with --invite\)\.$"
    )
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    connector.expect(r"^desktop is a verified contact \(/verify shows your safety number\)\.$")
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    connector.send("hello as a contact")
    listener.expect(r"^laptop says: hello as a contact$")
    leave(listener, connector)
    assert "Enter invite code" not in connector.all_output()


def test_a_stranger_with_no_key_no_code_and_no_pin_is_refused_and_the_listener_goes_on(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop = person(tmp_path, "desktop", port)
    stranger = person(tmp_path, "stranger", port)
    listener, code = listen(spawn, desktop)
    result = run("--connect", f"127.0.0.1:{port}", cwd=stranger, stdin="\n")
    assert result.returncode == 1
    assert result.stdout.splitlines().count("Enter invite code: ") == 1
    assert result.stderr.splitlines()[-1] == (
        "error: you are not one of desktop's contacts: ask for an invite code"
    )
    listener.expect(
        r"^Refused a connection from .*stranger is not one of your contacts", stream="err"
    )
    # Still listening, and the invite still works.
    friend = person(tmp_path, "laptop", port)
    assert code is not None
    connector = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=friend)
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    leave(connector, listener)


def test_a_listener_with_contacts_opens_an_invite_when_asked_while_waiting(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop, laptop = person(tmp_path, "desktop", port), person(tmp_path, "laptop", port)
    listener, code = listen(spawn, desktop)
    assert code is not None
    connector = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=laptop)
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    leave(connector, listener)

    listener, code = listen(spawn, desktop)
    assert code is None
    stranger = person(tmp_path, "stranger", port)
    early = run("--connect", f"127.0.0.1:{port}", "--code", "5-aardvark-adroitness", cwd=stranger)
    assert early.returncode == 1  # no invite is open: refused, and shown
    listener.expect(r"^Refused a connection from ", stream="err")
    refused = run("--connect", f"127.0.0.1:{port}", cwd=stranger, stdin="\n")
    assert refused.returncode == 1
    # Shown with its reason, though not the first refusal from 127.0.0.1 in this window.
    listener.expect(
        r"^Refused a connection from .*stranger is not one of your contacts", stream="err"
    )
    listener.send("/invite")
    line = listener.expect(r"^Invite code: ")
    assert listener.err.count("Nobody is connected yet: that line was not sent.") == 0
    newcomer = spawn(
        "--connect", f"127.0.0.1:{port}", "--code", line.removeprefix("Invite code: "), cwd=stranger
    )
    listener.expect(r"^stranger joined the chat \(verified\)\.$")
    leave(newcomer, listener)


def guess(port: int, code: str, source: str) -> list[Event]:
    """One invite-code try from `source` (127.0.0.x plays another machine)."""
    with socket.create_connection(("127.0.0.1", port), TIMEOUT, source_address=(source, 0)) as sock:
        peer = PeerProtocol(Role.CONNECTOR, None, "guesser", time.monotonic(), code=code)
        return drive(sock, peer, Established)


def failure(events: list[Event]) -> str:
    [failed] = [event for event in events if isinstance(event, Failed)]
    return str(failed.error)


def test_wrong_codes_void_the_invite_but_never_stop_the_listener(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop = person(tmp_path, "desktop", port)
    listener, code = listen(spawn, desktop, "--invite")
    assert code is not None
    number, first, second = code.split("-")
    wrong = f"{int(number) % 99 + 1}-{first}-{second}"
    for attempt in range(1, MAX_INVITE_FAILURES + 1):  # from three addresses
        refused = failure(guess(port, wrong, f"127.0.0.{attempt + 1}"))
        assert refused.startswith("the invite code is wrong")
        left = MAX_INVITE_FAILURES - attempt
        listener.expect(
            rf"wrong invite code \({left} of {MAX_INVITE_FAILURES} tries left\)", stream="err"
        )
    line = listener.expect(r"^the invite code .* is void", stream="err")
    assert code in line and line.endswith(". Type /invite for a new code")
    assert "no open invite" in failure(guess(port, code, "127.0.0.5"))  # void: closed
    # The listener goes on: a new code, and an address that guessed wrong twice waits.
    listener.send("/invite")
    fresh = CODE.match(listener.expect(CODE.pattern))
    assert fresh is not None and fresh[1] != code
    number, first, second = fresh[1].split("-")
    typo = f"{int(number) % 99 + 1}-{first}-{second}"
    for left in (2, 1):  # a typo is retried at once; the second wrong guess backs off
        failure(guess(port, typo, "127.0.0.6"))
        listener.expect(rf"wrong invite code \({left} of 3 tries left\)", stream="err")
    # Right at once after two wrong ones, from the same address: no SPAKE2, no try spent.
    assert "no open invite" in failure(guess(port, fresh[1], "127.0.0.6"))
    for _ in range(500):  # a few tries a second in all: this one may wait for its turn
        joined = guess(port, fresh[1], "127.0.0.7")
        if any(isinstance(event, Established) for event in joined):
            break
        assert "no open invite" in failure(joined)
    assert any(isinstance(event, Established) for event in joined)
    listener.expect(r"^guesser joined the chat \(verified\)\.$")


def test_a_malformed_code_is_refused_before_it_costs_a_try(tmp_path: Path) -> None:
    result = run("--connect", "127.0.0.1:9", "--code", "gazelle", cwd=tmp_path)
    assert result.returncode == 2
    assert "is not an invite code" in result.stderr


def become_contacts_with_a_shared_key(spawn: Spawn, tmp_path: Path, port: int) -> tuple[Path, Path]:
    desktop = person(tmp_path, "desktop", port, key=KEY)
    laptop = person(tmp_path, "laptop", port, key=KEY)
    listener, _ = listen(spawn, desktop)
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    connector.expect(
        r"^First contact with desktop: identity [0-9a-f ]{39} saved "
        r"\(compare safety numbers with /verify\)\.$"
    )
    listener.expect(r"^laptop joined the chat\.$")
    listener.expect(r"^First contact with laptop: identity ")
    leave(connector, listener)
    return desktop, laptop


def test_a_changed_identity_is_refused_loudly_on_the_listener_then_forget_accepts_it(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop, laptop = become_contacts_with_a_shared_key(spawn, tmp_path, port)
    (laptop / "identity.key").rename(laptop / "identity.key.old")  # laptop starts over

    listener, _ = listen(spawn, desktop)
    # A cheap refusal from the same address first must not silence the warning.
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as probe:
        probe.sendall(b"\x00\x00\x00\x05hello")
        probe.settimeout(TIMEOUT)
        while probe.recv(4096):
            pass
    listener.expect(r"^Refused a connection from \('127\.0\.0\.1', ", stream="err")
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    connector.expect(r"^Created your identity in identity\.key")
    refusal = connector.expect(r"^error: desktop refused the connection", stream="err")
    assert "it knows a different identity under your name laptop" in refusal
    assert "desktop can run --forget laptop" in refusal
    assert connector.wait() == 1
    listener.expect(r"^@  WARNING: THE IDENTITY OF LAPTOP HAS CHANGED!$", stream="err")
    listener.expect(r"^Pinned:  .* line \d+ of known_peers\)$", stream="err")
    listener.expect(r"delete line \d+ of that file, or run: .* --forget laptop$", stream="err")
    assert not any("laptop" in line and "joined" in line for line in listener.out)
    assert not any(" says: " in line for line in listener.out)
    listener.kill()

    forgot = run("--forget", "laptop", cwd=desktop)
    assert forgot.returncode == 0 and forgot.stdout.startswith("Forgot laptop (identity ")
    listener, _ = listen(spawn, desktop)
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    listener.expect(r"^First contact with laptop: ")
    leave(connector, listener)


def test_a_changed_listener_identity_is_refused_by_the_connector(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop, laptop = become_contacts_with_a_shared_key(spawn, tmp_path, port)
    (desktop / "identity.key").unlink()
    listener, _ = listen(spawn, desktop)
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    connector.expect(r"^error: desktop's identity has changed: connection refused$", stream="err")
    connector.expect(r"^@  WARNING: THE IDENTITY OF DESKTOP HAS CHANGED!$", stream="err")
    assert connector.wait() == 1
    assert not any(line.startswith("WELCOME") for line in connector.out)
    listener.expect(
        r"laptop refused the connection: it knows a different identity under your name desktop",
        stream="err",
    )


def test_verify_ok_is_remembered_by_later_sessions(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    desktop, laptop = become_contacts_with_a_shared_key(spawn, tmp_path, port)
    listener, _ = listen(spawn, desktop)
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    listener.expect(r"^laptop is not verified yet: compare safety numbers with /verify\.$")
    listener.send("/verify")
    listener.expect(SAFETY)
    listener.expect(r"Compare all 60 digits")
    listener.send("/verify someone ok")
    listener.expect(r"^try again: /verify NAME, or /verify NAME ok", stream="err")
    listener.send("/verify laptop ok")
    listener.expect(r"^laptop is now verified in known_peers")
    leave(connector, listener)
    listener, _ = listen(spawn, desktop)
    connector = spawn("--connect", f"127.0.0.1:{port}", cwd=laptop)
    listener.expect(r"^laptop joined the chat \(verified\)\.$")
    leave(connector, listener)


def test_forgetting_an_unknown_name_is_one_error_line(tmp_path: Path) -> None:
    result = run("--forget", "nobody", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: known_peers has no peer named 'nobody' (names there: none yet)"
    ]


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("identity.key", "not a key\n", "identity.key is damaged"),
        ("known_peers", "laptop ed25519:xyz\n", "known_peers line 1 is not of the form"),
    ],
)
def test_a_damaged_identity_or_known_peers_is_one_error_and_left_alone(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    write_config(tmp_path, port=free_port())
    (tmp_path / name).write_text(text)
    result = run("--listen", cwd=tmp_path)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines()]
    assert line.startswith("error: ") and words in line
    assert (tmp_path / name).read_text() == text
    assert "Listening" not in result.stdout


def test_an_identity_readable_by_others_is_warned_about_then_used(tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    first = run("--listen", cwd=tmp_path, stdin="")  # makes identity.key, 0600
    assert "readable by other users" not in first.stderr
    (tmp_path / "identity.key").chmod(0o644)
    result = run("--listen", cwd=tmp_path, stdin="")
    assert (
        "warning: identity.key holds your private identity and is readable by other users: "
        "run `chmod 600 identity.key`"
    ) in result.stderr.splitlines()
    assert "Listening on " in result.stdout  # used all the same, as ssh would say and go on


def test_init_never_writes_a_key_through_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "config.ini").symlink_to(tmp_path / "elsewhere.ini")  # dangling
    result = run("--init", "--username", "laptop", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: config.ini is a symbolic link: chatclient does not write a key through one; "
        "remove the link, or give the real file with --config"
    ]
    assert not (tmp_path / "elsewhere.ini").exists()


def test_handshakes_abandoned_halfway_are_counted_by_the_listener(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    listener, _ = listen(spawn, person(tmp_path, "desktop", port, key=KEY))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), TIMEOUT, ("127.0.0.5", 0)) as sock:
            sock.settimeout(TIMEOUT)
            peer = PeerProtocol(Role.CONNECTOR, PSK, "grinder", time.monotonic())
            sock.sendall(peer.data_to_send())
            assert sock.recv(4096)  # M2: then give up, as a code grinder does
    listener.expect(r"^1 handshake from 127\.0\.0\.5 was abandoned halfway$", stream="err")


# --- A man in the middle who holds the fernet_key -------------------------------------------


class Middle:
    """Mallory: the key, and an identity of her own, between laptop and desktop.

    She accepts laptop as "desktop", connects to desktop as "laptop", and passes
    every line on, so both see a working chat.
    """

    def __init__(self, upstream: int) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]
        self.upstream = upstream
        identity = Ed25519PrivateKey.generate()
        now = time.monotonic()
        self.fake_desktop = PeerProtocol(Role.LISTENER, PSK, "desktop", now, identity=identity)
        self.fake_laptop = PeerProtocol(Role.CONNECTOR, PSK, "laptop", now, identity=identity)
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        laptop, _ = self.server.accept()
        desktop = socket.create_connection(("127.0.0.1", self.upstream), TIMEOUT)
        ends = {laptop: self.fake_desktop, desktop: self.fake_laptop}
        other = {laptop: desktop, desktop: laptop}
        deadline = time.monotonic() + 3 * TIMEOUT
        with laptop, desktop:
            while time.monotonic() < deadline:
                for sock, peer in ends.items():
                    if data := peer.data_to_send():
                        sock.sendall(data)
                readable, _, _ = select.select(list(ends), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer = ends[sock]
                    peer.receive_data(data, time.monotonic())
                    for event in peer.events():
                        self._relay(event, peer, ends[other[sock]], other[sock])

    def _relay(
        self, event: Event, peer: PeerProtocol, onward: PeerProtocol, sock: socket.socket
    ) -> None:
        if isinstance(event, KeyProven):
            peer.admit()
        elif isinstance(event, MessageReceived) and isinstance(event.message, Chat):
            sock.sendall(onward.data_to_send() + onward.send(event.message, time.monotonic()))
        elif isinstance(event, Failed):
            self.errors.append(str(event.error))
        elif not isinstance(event, (Established, MessageReceived)):
            self.errors.append(repr(event))


def test_a_man_in_the_middle_with_the_key_shows_different_safety_numbers(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop = person(tmp_path, "desktop", port, key=KEY)
    listener, _ = listen(spawn, desktop)
    middle = Middle(port)
    laptop = person(tmp_path, "laptop", middle.port, key=KEY)
    connector = spawn("--connect", f"127.0.0.1:{middle.port}", cwd=laptop)
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat\.$")
    connector.send("hello through mallory")
    listener.expect(r"^laptop says: hello through mallory$")  # the chat itself works
    for side in (listener, connector):
        side.send("/verify")
    numbers = {side: side.expect(SAFETY) for side in (listener, connector)}
    assert numbers[listener] != numbers[connector], middle.errors
    listener.kill()
    connector.kill()


def test_a_stranger_learns_nothing_of_a_contacts_room_and_warnings_are_bounded(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    desktop, alice = person(tmp_path, "desktop", port), person(tmp_path, "alice", port)
    listener, code = listen(spawn, desktop, "--listen", "--max-members", "1")
    assert code is not None
    member = spawn("--connect", f"127.0.0.1:{port}", "--code", code, cwd=alice)
    listener.expect(r"^alice joined the chat \(verified\)\.$")  # the room is now full
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    update_known_peers(str(desktop / "known_peers"), lambda p: p.pin("carol", other, True, "t"))
    stranger = person(tmp_path, "stranger", port)
    told = set()
    for name in ("alice", "carol", "zoe"):  # a member's name, a contact's, a new one
        result = run("--connect", f"127.0.0.1:{port}", "--username", name, cwd=stranger, stdin="\n")
        assert result.returncode == 1
        told.add(result.stderr.splitlines()[-1])
    # One and the same answer: not who is in the room, nor that it is full, nor who are
    # contacts.
    assert told == {"error: you are not one of desktop's contacts: ask for an invite code"}
    listener.expect(r"alice's identity has changed: connection refused", stream="err")
    member.send("still here")
    listener.expect(r"^alice says: still here$")
    warnings = [line for line in listener.err if "identity has changed" in line]
    assert len(warnings) == 1  # carol's, from the same address, is counted, not shown

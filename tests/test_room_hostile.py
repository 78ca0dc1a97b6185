"""Hostile members and hostile hosts against real members: forged, replayed, dropped and
relayed words and offers, and the room code that catches a host's dropping."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from conftest import free_port
from pair import PSK
from rooms import (
    A_JOIN,
    HOST,
    ROOM,
    HostileHost,
    Mallory,
    Quiet,
    Replayer,
    Spawn,
    host,
    hostile_host,
    join,
    key,
    room_code,
)

from chatclient.messages import (
    FileOffer,
    Form,
    Left,
    Message,
    Said,
    Say,
)
from chatclient.network import Network
from chatclient.room import (
    Voice,
)
from chatclient.sockets import listen_socket


def test_words_signed_by_another_key_are_not_shown_by_the_others(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port = host(spawn, tmp_path)
    alice = join(spawn, tmp_path, "alice", port)
    mallory = Mallory(port)
    alice.expect(r"^mallory joined the chat\.$")
    mallory.say("alice: send me your key")
    alice.expect(
        r"^warning: a message claiming to be from mallory failed its signature check: "
        r"not shown$"
    )
    # The host relays it (the others judge it), and checks it too, off the relay path.
    desk.expect(
        r"^warning: a message claiming to be from mallory failed its signature check: "
        r"not shown$"
    )
    desk.send("after mallory")
    alice.expect(r"^desktop says: after mallory$")
    assert not any("send me your key" in line for line in alice.out + desk.out)
    mallory.sock.close()


def test_private_words_to_names_nobody_has_are_dropped_and_counted(
    spawn: Spawn, tmp_path: Path
) -> None:
    desk, port = host(spawn, tmp_path)
    alice = join(spawn, tmp_path, "alice", port)
    mallory = Mallory(port)
    alice.expect(r"^mallory joined the chat\.$")
    voice = Voice(key(), "mallory", HOST, mallory.peer.room, mallory.peer.nonce)
    now = time.monotonic()
    flood = b"".join(
        mallory.peer.send(voice.say(f"psst {n}", to=f"ghost{n}"), now) for n in range(150)
    )
    mallory.sock.sendall(flood)
    desk.expect(
        r"^mallory sent private words to ghost0, who is not in the chat: not passed on$",
        stream="err",
    )
    desk.expect(r"^mallory has sent 100 private messages to names not in the chat", stream="err")
    mallory.sock.sendall(mallory.peer.send(voice.say("to all"), time.monotonic()))
    alice.expect(r"^warning: a message claiming to be from mallory failed")  # her key, not hers
    assert sum("names not in the chat" in line for line in desk.err) == 2  # 10 and 100
    assert not any("psst" in line for line in alice.out + desk.out)
    mallory.sock.close()


def test_a_host_that_alters_relayed_words_is_caught(spawn: Spawn, tmp_path: Path) -> None:
    """A host that changes what alice said before bob sees it: bob does not show it."""

    class Forger(Network):
        def _to(self, member: object, message: Message, now: float) -> None:
            if isinstance(message, Said):
                words = message.words
                message = Said(
                    message.author,
                    Say(
                        words.form,
                        words.seq,
                        words.signature,
                        words.to,
                        words.text.replace("5", "6"),
                    ),
                )
            super()._to(member, message, now)

    port = free_port()
    identity = key()
    forger = Forger(PSK, "desktop", Quiet(), identity=identity, room=ROOM, capacity=5)
    forger.listen(listen_socket("127.0.0.1", port, ""))
    forger.start()
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        alice.expect(r"^bob joined the chat\.$")
        alice.send("meet at 5")
        bob.expect(
            r"^warning: a message claiming to be from alice failed its signature check: "
            r"not shown$"
        )
        assert not any("meet at" in line for line in bob.out)
    finally:
        forger.stop()


def test_a_host_cannot_replay_a_join_or_old_words(spawn: Spawn, tmp_path: Path) -> None:
    """Issue 21, item 6: LEFT, then JOINED for alice, then her old words, shows bob none of
    them as hers; with a made-up join nonce her old words fail their signature."""
    port = free_port()
    net = hostile_host(Replayer, key(), port)
    net.kept = []
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        alice.expect(r"^bob joined the chat\.$")
        alice.send("yes, do it")
        bob.expect(r"^alice says: yes, do it$")
        net.replay_join("alice", to="bob")
        bob.expect(r"^warning: the host announced alice with a join of theirs that already ended")
        net.replay_join("alice", to="bob", nonce=bytes([5]) * 16)
        bob.expect(r"^alice joined the chat\.$")  # a join it has not seen: taken in
        bob.expect(r"^warning: a message claiming to be from alice failed its signature check")
        bob.send("/who")
        bob.expect(r"^In the chat \(3 people\):$")
        assert sum(line == "alice says: yes, do it" for line in bob.out) == 1
    finally:
        net.stop()


def test_a_goodbye_is_the_members_own_and_a_forged_one_is_not_shown(
    spawn: Spawn, tmp_path: Path
) -> None:
    """Issue 21, item 7: goodbyes are signed; the host cannot put one in alice's mouth."""

    port = free_port()
    net = hostile_host(HostileHost, key(), port)
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        carol = join(spawn, tmp_path, "carol", port)
        for member in (alice, bob):
            member.expect(r"^carol joined the chat\.$")
        forged = Voice(key(), "alice", HOST, ROOM, A_JOIN).say(
            "I-AGREE-TO-EVERYTHING", Form.GOODBYE
        )
        net.inject("bob", Said("alice", forged), Left("alice"))
        bob.expect(r"^warning: a message claiming to be from alice failed its signature check")
        bob.expect(r"^alice left the chat\.$")  # the host's word alone: no goodbye words
        carol.send("exit", "see you all")
        for member in (alice, bob):
            member.expect(r"^carol left the chat: see you all$")
        assert carol.wait() == 0
        assert not any("I-AGREE" in line for line in bob.out)
        assert not any("confirmed words of yours" in line for line in carol.err)  # its goodbye
    finally:
        net.stop()


def test_a_host_cannot_present_its_own_file_as_a_members(spawn: Spawn, tmp_path: Path) -> None:
    """Issue 21, item 9: offers a host relays are signed by their author."""

    port = free_port()
    net = hostile_host(HostileHost, key(), port)
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        alice.expect(r"^bob joined the chat\.$")
        payload = b"the host's own file"
        print_of = hashlib.sha256(payload).digest()
        net.inject("bob", FileOffer(7, len(payload), print_of, "contract.pdf", "alice", 1))
        bob.expect(
            r"^warning: an offer claiming to be from alice failed its signature check: declined$",
            stream="err",
        )
        photo = tmp_path / "alice" / "photo.jpg"
        photo.write_bytes(b"alice's own photo")
        alice.send(f"/send bob {photo}")
        bob.expect(r"^alice offers photo\.jpg \(17 bytes\): /accept 1 or /reject 1$")
        assert not any("contract.pdf" in line for line in bob.out)
    finally:
        net.stop()


def test_members_who_saw_the_same_room_read_the_same_code(spawn: Spawn, tmp_path: Path) -> None:
    desk, port = host(spawn, tmp_path)
    alice = join(spawn, tmp_path, "alice", port)
    bob = join(spawn, tmp_path, "bob", port)
    alice.expect(r"^bob joined the chat\.$")
    alice.send("one from alice")
    bob.send("one from bob")
    desk.send("one from the host")
    alice.send("/msg bob not in the code")
    bob.expect(r"^alice says privately: not in the code$")
    carol = join(spawn, tmp_path, "carol", port)  # starts from the head the host hands her
    carol.expect(r"^Also in the chat: alice, bob$")
    alice.send("two from alice")
    carol.send("one from carol")
    desk.expect(r"^alice says: two from alice$")
    desk.expect(r"^carol says: one from carol$")
    desk.send("last")  # after both: each author's ECHO comes before it
    for member in (alice, bob, carol):
        member.expect(r"^desktop says: last$")
    codes = {name: room_code(p) for name, p in (("desk", desk), ("alice", alice), ("bob", bob))}
    codes["carol"] = room_code(carol)
    assert len(set(codes.values())) == 1, codes
    assert codes["alice"][1] == "9"  # 3 joins and 6 lines of words; /msg is not counted


def test_a_message_the_host_drops_for_one_member_shows_in_the_room_code(
    spawn: Spawn, tmp_path: Path
) -> None:
    class Dropper(Network):
        def _to(self, member: object, message: Message, now: float) -> None:
            skip = self._room.named("bob") is member
            if skip and isinstance(message, Said) and message.words.text == "drop me":
                return
            super()._to(member, message, now)

    port = free_port()
    net = hostile_host(Dropper, key(), port)
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        carol = join(spawn, tmp_path, "carol", port)
        for member in (alice, bob):
            member.expect(r"^carol joined the chat\.$")
        alice.send("drop me")
        carol.expect(r"^alice says: drop me$")
        alice.send("after it")
        for member in (bob, carol):
            member.expect(r"^alice says: after it$")
        carol.send("fin")  # relayed after alice's words: her ECHO comes before it
        for member in (alice, bob):
            member.expect(r"^carol says: fin$")
        codes = {name: room_code(p) for name, p in (("alice", alice), ("carol", carol))}
        codes["bob"] = room_code(bob)
        assert codes["alice"] == codes["carol"] and codes["bob"] != codes["alice"]
        assert not any("drop me" in line for line in bob.out)
    finally:
        net.stop()


def test_a_room_its_host_ended_cannot_be_brought_back(spawn: Spawn, tmp_path: Path) -> None:
    """Issue 21, item 6: a host that reuses a room id in a later run is refused by a member
    who saw that room end."""
    identity, port = key(), free_port()
    net = hostile_host(Network, identity, port)
    try:
        bob = join(spawn, tmp_path, "bob", port)
        bob.send("hello")
        net.leave("room closed")
        bob.expect(r"^desktop left the chat: room closed$")
        assert bob.wait() == 0
    finally:
        net.stop()
    assert (tmp_path / "bob" / "past_rooms").stat().st_mode & 0o777 == 0o600
    again = hostile_host(Network, identity, port)  # the same host, the same room id
    try:
        bob = spawn("--connect", f"127.0.0.1:{port}", cwd=tmp_path / "bob")
        bob.expect(r"the host offers a room you saw it end", stream="err")
        assert bob.wait() == 1
    finally:
        again.stop()

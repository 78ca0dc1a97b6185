"""Group chat: the room's rules (room.py: places, names, audiences, and the listener's
admission of handshakes and its summaries of refusals) and the check of relayed words
(pure), then real rooms of real processes on 127.0.0.1, each person in a folder of
their own."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY, SCRIPT, TIMEOUT, ChatProcess, free_port, run, write_config
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pair import PSK, FakeClock, drive

from chatclient.cli import parse_args
from chatclient.errors import ProtocolError
from chatclient.handshake import Role
from chatclient.messages import (
    NO_NONCE,
    Chat,
    Echo,
    FieldReader,
    FileOffer,
    Form,
    Joined,
    Left,
    Members,
    Message,
    Person,
    Refusal,
    Said,
    Say,
)
from chatclient.network import Network
from chatclient.peer import Established, PeerProtocol, refusal_error
from chatclient.room import (
    MAX_HANDSHAKES_PER_ADDRESS,
    MAX_PENDING_HANDSHAKES,
    AbandonLog,
    Hearing,
    InviteBudget,
    Pending,
    RefusalLog,
    Room,
    RoomLog,
    Voice,
    handshake_to_evict,
    public_line,
)
from chatclient.sockets import listen_socket
from chatclient.text import name_problem

Spawn = Callable[..., ChatProcess]
HOST = bytes(range(32))
ROOM = bytes(range(16))


def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public(identity: Ed25519PrivateKey) -> bytes:
    return identity.public_key().public_bytes_raw()


# --- The room's rules ----------------------------------------------------------------------


def test_a_room_seats_people_in_order_and_names_are_unique_handles() -> None:
    room = Room(3)
    a, b, c, d = object(), object(), object(), object()
    assert room.claim(a) and room.claim(b) and room.claim(c) and not room.claim(d)
    assert room.full and room.people(0.0) == ()  # claimed is not yet in
    room.seat(a, Person("alice", HOST, "h:1"), 10.0)
    room.seat(b, Person("bob", HOST, "h:2"), 12.0)
    assert [p.name for p in room.people(20.0)] == ["alice", "bob"]
    assert [p.seconds for p in room.people(20.0)] == [10, 8]
    assert room.named("bob") is b and room.named("carol") is None
    assert room.others(a) == [b]
    assert room.release(a) == Person("alice", HOST, "h:1") and not room.full


def test_words_go_to_everyone_else_or_only_to_the_one_they_are_for() -> None:
    room = Room(5)
    members = {name: object() for name in ("alice", "bob", "carol")}
    for name, member in members.items():
        room.claim(member)
        room.seat(member, Person(name, HOST, "h:1"), 0.0)
    everyone = Say(Form.CHAT, 0, bytes(64), "", "hi")
    assert room.audience(members["alice"], everyone) == [members["bob"], members["carol"]]
    private = Say(Form.CHAT, 0, bytes(64), "carol", "psst")
    assert room.audience(members["alice"], private) == [members["carol"]]
    assert room.audience(members["alice"], Say(Form.CHAT, 0, bytes(64), "zoe", "x")) == []


def test_the_room_hands_out_places_up_to_its_capacity() -> None:
    room = Room(capacity=1)
    first, second = object(), object()
    assert room.claim(first) and first in room and room.full
    assert not room.claim(second)  # told busy: the place went to the first proven connector
    room.release(first)
    assert not room and room.claim(second)
    room.release(object())  # releasing someone without a place changes nothing
    assert len(room) == 1


def test_the_host_holds_a_name_from_the_check_until_its_owner_is_in_or_gone() -> None:
    room = Room(5)
    first, second = object(), object()
    room.claim(first)
    room.hold(first, "zed")
    assert room.taken("zed") and room.named("zed") is None
    room.claim(second)
    assert room.taken("zed")  # the second zed is refused while the first one comes in
    room.release(first)
    assert not room.taken("zed")


def test_the_host_wants_each_members_words_in_sequence() -> None:
    room = Room(2)
    alice = object()
    room.claim(alice)
    words = [Say(Form.CHAT, n, bytes(64), "", "x") for n in range(3)]
    assert room.in_sequence(alice, words[0]) and room.in_sequence(alice, words[1])
    assert not room.in_sequence(alice, words[1])  # the same number again
    private = Say(Form.CHAT, 0, bytes(64), "bob", "x")
    assert room.in_sequence(alice, private)  # each audience is numbered apart


# --- The listener's admission rules ---------------------------------------------------------


def pending(host: str, since: float, greeted: bool, key: int) -> Pending:
    return Pending(host, since, greeted, key)


def test_room_for_a_new_connection_needs_no_eviction() -> None:
    assert handshake_to_evict([pending("127.0.0.2", 0, False, 1)], "127.0.0.1") is None


def test_a_third_handshake_from_one_address_evicts_that_addresss_oldest() -> None:
    flood = [pending("127.0.0.2", t, False, t) for t in range(MAX_HANDSHAKES_PER_ADDRESS)]
    real = pending("127.0.0.1", 0.5, True, 99)
    victim, reason = handshake_to_evict([*flood, real], "127.0.0.2")  # type: ignore[misc]
    assert victim.key == 0 and "from 127.0.0.2" in reason


def test_at_the_global_cap_a_silent_connection_goes_before_a_greeted_one() -> None:
    greeted = [pending(f"10.0.0.{n}", n, True, n) for n in range(MAX_PENDING_HANDSHAKES - 1)]
    silent = pending("10.0.1.1", 100, False, 500)
    victim, reason = handshake_to_evict([*greeted, silent], "10.0.2.1")  # type: ignore[misc]
    assert victim is silent and "silent" in reason
    everyone_greeted = [pending(f"10.0.0.{n}", n, True, n) for n in range(MAX_PENDING_HANDSHAKES)]
    victim, _ = handshake_to_evict(everyone_greeted, "10.0.2.1")  # type: ignore[misc]
    assert victim.key == 0  # then the oldest


def test_refusals_show_the_first_then_one_summary_per_address_per_window() -> None:
    log = RefusalLog(window=10.0)
    assert log.refused("127.0.0.2", "first", 0.0) == "first"
    assert all(log.refused("127.0.0.2", "again", t / 1000) is None for t in range(1, 1713))
    assert log.refused("127.0.0.3", "other host", 1.0) == "other host"
    assert log.summaries(9.9) == []
    assert log.next_deadline() == 10.0
    assert log.summaries(10.0) == ["Refused 1712 more connections from 127.0.0.2 in the last 10 s"]
    assert log.summaries(11.0) == []  # 127.0.0.3 had nothing more: forgotten
    assert log.refused("127.0.0.3", "shown again", 12.0) == "shown again"
    assert log.summaries(20.0) == []  # 127.0.0.2 stayed quiet for a window: forgotten
    assert log.refused("127.0.0.2", "new", 21.0) == "new"


def test_each_kind_of_refusal_from_an_address_is_shown_once_in_full() -> None:
    log = RefusalLog()
    assert log.refused("127.0.0.1", "wrong code", 0.0) == "wrong code"
    assert log.refused("127.0.0.1", "wrong code again", 1.0) is None
    stranger = "stranger is not one of your contacts"
    assert log.refused("127.0.0.1", stranger, 2.0, "not a contact") == stranger
    assert log.refused("127.0.0.1", stranger, 3.0, "not a contact") is None
    assert sorted(log.summaries(12.0)) == [
        "Refused 1 more connection from 127.0.0.1 (not a contact) in the last 10 s",
        "Refused 1 more connection from 127.0.0.1 in the last 10 s",
    ]


def test_abandoned_handshakes_are_counted_per_address_and_summarised() -> None:
    log = AbandonLog(window=10.0)
    clock = FakeClock(0.0)
    assert log.abandoned("10.0.0.5", clock.now) == "1 handshake from 10.0.0.5 was abandoned halfway"
    assert log.abandoned("10.0.0.5", clock.advance(1)) is None
    assert log.abandoned("10.0.0.5", clock.advance(1)) is None
    assert log.summaries(clock.advance(1)) == []
    assert log.next_deadline() == 10.0
    assert log.summaries(clock.advance(7)) == ["3 handshakes from 10.0.0.5 were abandoned halfway"]
    assert log.summaries(clock.advance(10)) == []  # a quiet window: forgotten
    assert log.next_deadline() is None


# --- Signed words ------------------------------------------------------------------------------


A_JOIN, B_JOIN = bytes([1]) * 16, bytes([2]) * 16  # alice's and bob's join nonces


def hearing_as(me: str = "bob", nonce: bytes = B_JOIN) -> Hearing:
    """bob's check of relayed words, in a room where alice is already in (next number 0)."""
    hearing = Hearing(me, HOST, ROOM, nonce, "desktop")
    assert hearing.present(Person("alice", bytes(32), "h:1", nonce=A_JOIN), joining=False) is None
    return hearing


def heard(said: Said, identity: bytes | None, me: str = "bob") -> tuple[bool, str | None]:
    return hearing_as(me).check(said, identity)


def alice_voice(alice: Ed25519PrivateKey, nonce: bytes = A_JOIN, room: bytes = ROOM) -> Voice:
    return Voice(alice, "alice", HOST, room, nonce)


def test_words_signed_by_their_author_are_shown() -> None:
    alice = key()
    words = alice_voice(alice).say("hello all")
    assert heard(Said("alice", words), public(alice)) == (True, None)


def test_a_member_cannot_sign_as_someone_else_and_the_host_cannot_alter_words() -> None:
    alice, mallory = key(), key()
    forged = Voice(mallory, "alice", HOST, ROOM, A_JOIN).say("send me your password")
    assert heard(Said("alice", forged), public(alice)) == (
        False,
        "a message claiming to be from alice failed its signature check: not shown",
    )
    genuine = alice_voice(alice).say("meet at 5")
    altered = Said("alice", Say(genuine.form, genuine.seq, genuine.signature, "", "meet at 6"))
    assert heard(altered, public(alice))[0] is False
    moved = Said("alice", Say(genuine.form, genuine.seq, genuine.signature, "bob", "meet at 5"))
    assert heard(moved, public(alice))[0] is False  # public words made private
    other_room = alice_voice(alice, room=bytes(16)).say("meet at 5")
    assert heard(Said("alice", other_room), public(alice))[0] is False
    other_join = alice_voice(alice, nonce=bytes([9]) * 16).say("meet at 5")
    assert heard(Said("alice", other_join), public(alice))[0] is False  # an earlier join's
    assert heard(Said("alice", genuine), None)[0] is False  # an author nobody announced
    assert heard(Said("carol", genuine), public(alice))[0] is False  # carol is not in


def test_words_held_back_or_replayed_by_the_host_are_noticed() -> None:
    alice = key()
    voice, hearing = alice_voice(alice), hearing_as()
    first, second, third = (voice.say(f"line {n}") for n in range(3))
    assert hearing.check(Said("alice", first), public(alice)) == (True, None)
    show, note = hearing.check(Said("alice", third), public(alice))
    assert show and note == "1 message(s) from alice never arrived (held back by the host?)"
    show, note = hearing.check(Said("alice", second), public(alice))
    assert not show and note is not None and "came again" in note


def test_a_newcomer_expects_each_members_next_number_from_the_roster() -> None:
    """The late-joiner gap: the host cannot drop alice's next words to a newcomer unseen."""
    alice = key()
    voice = alice_voice(alice)
    said = [voice.say(f"line {n}") for n in range(6)]  # 0-4 before bob came
    hearing = Hearing("bob", HOST, ROOM, B_JOIN, "desktop")
    alice_now = Person("alice", public(alice), "h:1", nonce=A_JOIN, next=5)
    assert hearing.present(alice_now, joining=False) is None
    show, note = hearing.check(Said("alice", said[4]), public(alice))
    assert not show and note is not None and "came again" in note  # from before bob came
    assert hearing.check(Said("alice", said[5]), public(alice)) == (True, None)


def test_private_words_are_numbered_per_recipients_join_and_only_for_their_reader() -> None:
    alice = key()
    voice = alice_voice(alice)
    to_bob, to_carol = voice.say("psst", to="bob", to_nonce=B_JOIN), voice.say("hey", to="carol")
    public_words = voice.say("all")
    assert (to_bob.seq, to_carol.seq, public_words.seq) == (0, 0, 0)
    assert heard(Said("alice", to_bob), public(alice)) == (True, None)
    show, note = heard(Said("alice", to_carol), public(alice))
    assert not show and note is not None and "someone else" in note
    # Words to bob's earlier join do not pass as words to this one.
    earlier = voice.say("old secret", to="bob", to_nonce=bytes([7]) * 16)
    assert heard(Said("alice", earlier), public(alice))[0] is False


def test_a_host_that_replays_a_join_is_refused_and_old_words_fail() -> None:
    """Issue 21, item 6: LEFT then JOINED for alice, then her old words, shows nothing."""
    alice = key()
    voice, hearing = alice_voice(alice), hearing_as()
    old = voice.say("yes, do it")
    assert hearing.check(Said("alice", old), public(alice)) == (True, None)
    assert hearing.left("alice") == A_JOIN  # her join ended for good
    again = Person("alice", public(alice), "h:1", nonce=A_JOIN)
    assert hearing.present(again, joining=True) == (
        "a join of theirs that already ended (a replay by the host?)"
    )
    assert hearing.check(Said("alice", old), public(alice))[0] is False
    fresh = Person("alice", public(alice), "h:1", nonce=bytes([3]) * 16)
    assert hearing.present(fresh, joining=True) is None  # her real rejoin: a new nonce
    assert hearing.check(Said("alice", old), public(alice))[0] is False  # signed for the old
    mine = Person("bobby", public(alice), "h:1", nonce=B_JOIN)
    assert hearing.present(mine, joining=True) == "a join already announced (a replay by the host?)"
    ended = Hearing("bob", HOST, ROOM, B_JOIN, "desktop", frozenset({A_JOIN}))  # past_rooms
    assert ended.present(again, joining=False) is not None
    late = Person("carol", public(alice), "h:1", nonce=bytes([4]) * 16, next=3)
    assert hearing.present(late, joining=True) == "a new join whose words start at 3, not 0"


def test_a_hosts_flood_of_joins_costs_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("chatclient.room.MAX_ENDED_JOINS", 3)
    hearing = hearing_as()
    for n in range(10):
        person = Person(f"p{n}", bytes(32), "h:1", nonce=bytes([100 + n]) * 16)
        assert hearing.present(person, joining=True) is None
        assert hearing.left(f"p{n}") == person.nonce
    assert len(hearing._seen) == 3 and len(hearing._ended) == 3
    for nonce in (B_JOIN, NO_NONCE):  # ours and the host's are never forgotten
        again = Person("x", bytes(32), "h:1", nonce=nonce)
        assert hearing.present(again, joining=True) == (
            "a join already announced (a replay by the host?)"
        )


def test_a_goodbye_is_signed_and_nothing_after_it_is_shown() -> None:
    """Issue 21, item 7: the host cannot write alice's goodbye."""
    alice = key()
    voice, hearing = alice_voice(alice), hearing_as()
    goodbye = voice.say("see you", Form.GOODBYE)
    forged = Voice(key(), "alice", HOST, ROOM, A_JOIN).say("I-AGREE-TO-EVERYTHING", Form.GOODBYE)
    assert hearing.check(Said("alice", forged), public(alice))[0] is False
    assert hearing.check(Said("alice", goodbye), public(alice)) == (True, None)
    assert "alice" in hearing.gone
    show, note = hearing.check(Said("alice", voice.say("one more")), public(alice))
    assert not show and note == "a message from alice came after their goodbye: not shown"
    with pytest.raises(ProtocolError, match="goodbye to one person"):
        Say.decode_body(FieldReader(Say(3, 0, bytes(64), "bob", "x").encode_body(), "SAY"))


@given(
    name=st.text(min_size=1, max_size=12).filter(lambda t: name_problem(t) is None),
    text=st.text(max_size=40),
    seq=st.integers(0, 2**64 - 1),
    seconds=st.integers(0, 2**32 - 1),
)
def test_room_messages_round_trip(name: str, text: str, seq: int, seconds: int) -> None:
    words = Say(Form.ACTION, seq, bytes(range(64)), name, text)
    person = Person(name, bytes(range(32)), "[::1]:50233", seconds, bytes(range(16)), seq)
    for message in (
        words,
        Said(name, words),
        Members((person, person)),
        Joined(person),
        Left(name, True),
    ):
        decoded = type(message).decode_body(FieldReader(message.encode_body(), "m"))
        assert decoded == message


@given(body=st.binary(max_size=300))
def test_room_message_bodies_fail_only_with_protocol_errors(body: bytes) -> None:
    for kind in (Say, Said, Members, Joined, Left):
        with contextlib.suppress(ProtocolError):
            kind.decode_body(FieldReader(body, kind.__name__))


def test_a_relayed_name_that_could_not_be_shown_safely_is_refused() -> None:
    body = Joined(Person("ok", HOST, "h:1")).encode_body().replace(b"ok", b"\x1b]")
    with pytest.raises(ProtocolError, match="control characters"):
        Joined.decode_body(FieldReader(body, "joined"))


# --- Real rooms ------------------------------------------------------------------------------


def folder(tmp_path: Path, name: str, port: int) -> Path:
    place = tmp_path / name
    place.mkdir(exist_ok=True)
    write_config(place, port=port, key=KEY, username=name)
    return place


def host(spawn: Spawn, tmp_path: Path, *flags: str) -> tuple[ChatProcess, int]:
    port = free_port()
    desk = spawn("--listen", *flags, cwd=folder(tmp_path, "desktop", port))
    desk.expect(r"^Listening on ")
    return desk, port


def join(spawn: Spawn, tmp_path: Path, name: str, port: int, *flags: str) -> ChatProcess:
    member = spawn("--connect", f"127.0.0.1:{port}", *flags, cwd=folder(tmp_path, name, port))
    member.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    return member


def test_five_people_chat_as_one_room(spawn: Spawn, tmp_path: Path) -> None:
    desk, port = host(spawn, tmp_path, "--keepalive", "1")
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


class Mallory:
    """An in-process member who signs her words with a key other than her identity."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.peer = PeerProtocol(Role.CONNECTOR, PSK, "mallory", time.monotonic())
        drive(self.sock, self.peer, Established)

    def say(self, text: str) -> None:
        voice = Voice(key(), "mallory", HOST, self.peer.room, self.peer.nonce)  # not her key
        self.sock.sendall(self.peer.send(voice.say(text), time.monotonic()))


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


class Quiet:
    """A host's user that shows nothing (the test reads the members' screens)."""

    def connection_events(self, link: Any, events: Any) -> None: ...
    def refused(self, line: str) -> None: ...
    def network_failed(self, error: Any) -> None: ...
    def invite_void(self, line: str) -> None: ...


class Replayer(Network):
    """A hostile host that keeps what it relays and can play it again later."""

    kept: list[Said]

    def _to(self, member: object, message: Message, now: float) -> None:
        if isinstance(message, Said):
            self.kept.append(message)
        super()._to(member, message, now)

    def replay_join(self, name: str, to: str, nonce: bytes | None = None) -> None:
        """LEFT then JOINED for `name` (with her old join nonce, or `nonce`), then her old
        words again, all to `to`."""

        def run(now: float) -> None:
            target, gone = self._room.named(to), self._room.named(name)
            person = self._room.person(gone)
            assert target is not None and person is not None
            self._to(target, Left(name), now)
            self._to(target, Joined(person._replace(nonce=nonce or person.nonce, next=0)), now)
            for said in [s for s in self.kept if s.author == name]:
                self._to(target, said, now)

        self.post(run)


def hostile_host(kind: type[Network], identity: Ed25519PrivateKey, port: int) -> Network:
    net = kind(PSK, "desktop", Quiet(), identity=identity, room=ROOM, capacity=5)
    net.listen(listen_socket("127.0.0.1", port, ""))
    net.start()
    return net


def test_the_host_admits_no_join_that_ended_and_no_nonce_twice() -> None:
    """Hostile review: a member rejoining with its old nonce was let in by the host and
    refused by the others, who blamed the host."""
    room = Room(5)
    for member, nonce in (("a", A_JOIN), ("b", B_JOIN)):
        room.claim(member)
        room.seat(member, Person(member, bytes(32), "h:1", nonce=nonce), 0.0)
    assert room.nonce_taken(A_JOIN) and not room.nonce_taken(bytes([9]) * 16)
    room.release("a")
    assert room.nonce_taken(A_JOIN)  # gone, but never again


def test_a_host_cannot_replay_a_join_or_old_words(spawn: Spawn, tmp_path: Path) -> None:
    """Issue 21, item 6: LEFT, then JOINED for alice, then her old words, shows bob none of
    them as hers; with a made-up join nonce her old words fail their signature."""
    port = free_port()
    net = hostile_host(Replayer, key(), port)
    assert isinstance(net, Replayer)
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

    class Forger(Network):
        def forge_goodbye(self, name: str, to: str, text: str) -> None:
            def run(now: float) -> None:
                target = self._room.named(to)
                words = Voice(key(), name, HOST, ROOM, A_JOIN).say(text, Form.GOODBYE)
                self._to(target, Said(name, words), now)
                self._to(target, Left(name), now)

            self.post(run)

    port = free_port()
    net = hostile_host(Forger, key(), port)
    assert isinstance(net, Forger)
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        carol = join(spawn, tmp_path, "carol", port)
        for member in (alice, bob):
            member.expect(r"^carol joined the chat\.$")
        net.forge_goodbye("alice", "bob", "I-AGREE-TO-EVERYTHING")
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

    class Presenter(Network):
        def offer_as(self, author: str, to: str, origin: int) -> None:
            def run(now: float) -> None:
                target = self._room.named(to)
                payload = b"the host's own file"
                digest = hashlib.sha256(payload).digest()
                offer = FileOffer(7, len(payload), digest, "contract.pdf", author, origin)
                self._to(target, offer, now)

            self.post(run)

    port = free_port()
    net = hostile_host(Presenter, key(), port)
    assert isinstance(net, Presenter)
    try:
        alice = join(spawn, tmp_path, "alice", port)
        bob = join(spawn, tmp_path, "bob", port)
        alice.expect(r"^bob joined the chat\.$")
        net.offer_as("alice", "bob", origin=1)
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


def test_the_room_log_is_a_running_hash_of_public_lines() -> None:
    log = RoomLog(HOST, ROOM)
    head = hashlib.sha256(b"chatclient/3 room head\0" + HOST + ROOM).digest()
    assert log.state == (head, 0)
    hello = Chat("hello")
    log.fold(hello)
    head = hashlib.sha256(head + bytes([2]) + (5).to_bytes(4, "big") + b"hello").digest()
    assert log.state == (head, 1)
    code, count = log.code()
    assert count == 1 and re.fullmatch(r"\d{4}( \d{4}){4}", code)
    assert code.replace(" ", "") == f"{int.from_bytes(head[:9], 'big') % 10**20:020d}"
    assert public_line(hello) and public_line(Left("bob")) and not public_line(Echo(1))
    assert not public_line(Said("alice", Say(1, 0, bytes(64), "bob", "psst")))


ROOM_CODE = r"^Room code: ([\d ]+) \((\d+) public lines? so far\)\.$"


def room_code(process: ChatProcess) -> tuple[str, str]:
    """`/verify room` on `process`: its code and count."""
    process.send("/verify room")
    found = re.match(ROOM_CODE, process.expect(ROOM_CODE))
    assert found is not None
    return found.group(1), found.group(2)


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


def test_invite_tries_are_one_at_a_time_per_address_and_a_few_a_second() -> None:
    budget = InviteBudget()
    host = "127.0.0.2"
    assert not budget.allow(host, busy=True, now=0.0)  # its address is mid-handshake
    assert [budget.allow(host, busy=False, now=0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert budget.allow(host, busy=False, now=0.2)  # 5 a second: one more after 0.2 s
    assert not budget.allow(host, busy=False, now=0.2)
    assert [budget.allow(host, busy=False, now=100.0) for _ in range(6)] == [True] * 5 + [False]


def test_an_address_that_guessed_wrong_twice_backs_off_and_a_typo_does_not() -> None:
    budget = InviteBudget()
    budget.guessed_wrong("127.0.0.2", 0.0)  # a typo: retried at once
    assert budget.allow("127.0.0.2", busy=False, now=0.0)
    budget.guessed_wrong("127.0.0.2", 0.0)
    assert not budget.allow("127.0.0.2", busy=False, now=4.9)  # 5 s
    assert budget.allow("127.0.0.3", busy=False, now=4.9)  # other addresses go on
    assert budget.allow("127.0.0.2", busy=False, now=5.0)
    budget.guessed_wrong("127.0.0.2", 5.0)
    assert not budget.allow("127.0.0.2", busy=False, now=14.9)  # then 10 s

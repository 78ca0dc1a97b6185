"""The room's rules (room.py, pure): places, names, audiences, the listener's admission
of handshakes, its summaries of refusals, the invite budget, and the room code's hash."""

from __future__ import annotations

import hashlib
import re

from pair import FakeClock
from rooms import (
    A_JOIN,
    B_JOIN,
    HOST,
    ROOM,
)

from chatclient.messages import (
    Chat,
    Echo,
    Form,
    Left,
    Person,
    Said,
    Say,
)
from chatclient.room import (
    MAX_HANDSHAKES_PER_ADDRESS,
    MAX_PENDING_HANDSHAKES,
    AbandonLog,
    InviteBudget,
    Pending,
    RefusalLog,
    Room,
    RoomLog,
    handshake_to_evict,
    public_line,
)

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

"""Members' signed words (pure): Voice and Hearing, join nonces, goodbyes, and the room
messages' codec."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from rooms import (
    A_JOIN,
    B_JOIN,
    HOST,
    ROOM,
    key,
    public,
)

from chatclient.errors import ProtocolError
from chatclient.messages import (
    NO_NONCE,
    FieldReader,
    Form,
    Joined,
    Left,
    Members,
    Person,
    Said,
    Say,
)
from chatclient.room import (
    Hearing,
    Voice,
)
from chatclient.text import name_problem

# --- Signed words ------------------------------------------------------------------------------


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

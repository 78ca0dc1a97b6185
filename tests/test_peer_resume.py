"""A session that survives a dropped link (issue 18), between two PeerProtocols on an
in-memory link and a fake clock: numbering, acknowledgements, and a resume that shows
every message once and in order."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PeerPair

from chatclient.errors import KeyMismatch
from chatclient.handshake import NoSession, resume_id
from chatclient.messages import Chat, FileAccept, Members, Message
from chatclient.peer import Caught, Established, Failed, KeyProven, MessageReceived
from chatclient.resume import Carry

LAPTOP, DESKTOP = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def first_pair() -> PeerPair:
    pair = PeerPair(connector={"identity": LAPTOP}, listener={"identity": DESKTOP})
    pair.pump()
    assert pair.established()
    return pair


def said(events: list[object]) -> list[str]:
    return [e.message.text for e in events if isinstance(e, MessageReceived)]  # type: ignore[attr-defined]


def resume(old: PeerPair, kept: dict[bytes, Carry[Message]] | None = None) -> PeerPair:
    """A new connection for `old`'s session; the listener keeps `kept` (else its own)."""
    carry = old.listener.carry
    assert carry is not None and old.connector.carry is not None
    kept = {resume_id(carry.secret): carry} if kept is None else kept
    new = PeerPair(
        connector={"identity": LAPTOP, "resume": old.connector.carry},
        listener={"identity": DESKTOP, "sessions": kept.get},
    )
    new.pump()
    return new


def connector_in(new: PeerPair) -> None:
    """Run a resume's handshake until the connector is in (it has the listener's WELCOME),
    its READY not yet delivered."""
    c, listener, now = new.connector, new.listener, new.clock.now
    listener.receive_data(c.data_to_send(), now)  # M1
    c.receive_data(listener.data_to_send(), now)  # M2
    listener.receive_data(c.data_to_send(), now)  # M3 and WELCOME
    assert isinstance(listener.next_event(), KeyProven)
    listener.admit()
    c.receive_data(listener.data_to_send(), now)  # the listener's WELCOME: c is in


def test_every_message_is_numbered_and_acknowledged_by_the_other_side() -> None:
    pair = first_pair()
    now = pair.clock.now
    wire = pair.connector.send(Chat("one"), now) + pair.connector.send(Chat("two"), now)
    pair.listener.receive_data(wire, now)
    carry = pair.connector.carry
    assert carry is not None and carry.outbox.sent == 2 and carry.outbox.waiting == 2
    frame = pair.listener.send(Chat("back"), now)  # the acknowledgement rides along
    pair.connector.receive_data(frame, now)
    assert carry.outbox.waiting == 0
    assert said(list(pair.connector.events())) == ["back"]
    pair.listener.receive_data(pair.connector.send(Chat("three"), now), now)
    pair.listener.timers(pair.clock.advance(10.0))  # nothing to say: its KEEPALIVE carries it
    pair.connector.receive_data(pair.listener.data_to_send(), pair.clock.now)
    assert carry.outbox.waiting == 0


def test_a_resume_shows_what_was_lost_in_flight_once_and_in_order() -> None:
    pair = first_pair()
    now = pair.clock.now
    arrived = pair.connector.send(Chat("c0"), now)
    lost = [pair.connector.send(Chat(f"c{n}"), now) for n in (1, 2)]  # in flight at the cut
    pair.listener.receive_data(arrived, now)
    for n in range(3):
        pair.listener.send(Chat(f"l{n}"), now)  # none of these arrives
    assert said(list(pair.listener.events())) == ["c0"] and lost
    new = resume(pair)
    assert new.established()
    assert next(e for e in new.events[new.connector] if isinstance(e, Established)).resumed
    assert said(new.events[new.listener]) == ["c1", "c2"]
    assert said(new.events[new.connector]) == ["l0", "l1", "l2"]
    assert Caught(2, 0) in new.events[new.connector] and Caught(3, 0) in new.events[new.listener]
    later = new.connector.send(Chat("c3"), new.clock.now)
    new.listener.receive_data(later, new.clock.now)
    assert said(list(new.listener.events())) == ["c3"]
    again = resume(new)  # and once more: nothing is sent twice
    assert said(again.events[again.listener]) == [] and said(again.events[again.connector]) == []


def test_what_the_bounds_let_go_is_counted_not_shown_twice() -> None:
    pair = first_pair()
    carry = pair.listener.carry
    assert carry is not None
    carry.outbox.max_messages = 2
    for n in range(5):
        pair.listener.send(Chat(f"l{n}"), pair.clock.now)  # lost: only the last 2 are kept
    new = resume(pair)
    assert said(new.events[new.connector]) == ["l3", "l4"]
    assert Caught(0, 3) in new.events[new.connector]  # three were missed, and said so


def test_a_resume_of_a_session_the_listener_does_not_have_is_refused() -> None:
    pair = first_pair()
    new = resume(pair, kept={})
    [failed] = [e for e in new.events[new.connector] if isinstance(e, Failed)]
    assert isinstance(failed.error, NoSession)


def test_a_stranger_with_a_captured_resume_id_cannot_take_the_place() -> None:
    pair = first_pair()
    carry = pair.listener.carry
    assert carry is not None
    stolen = Carry[Message](b"\x00" * 32, "laptop", LAPTOP.public_key().public_bytes_raw())
    kept = {resume_id(carry.secret): carry}
    mallory = PeerPair(
        connector={"identity": LAPTOP, "resume": stolen},
        listener={"identity": DESKTOP, "sessions": kept.get},
    )
    # Its M1 names the real session (the id it captured), with a secret of its own.
    mallory.connector._outgoing[-16:] = resume_id(carry.secret)
    mallory.pump()
    assert not mallory.established()
    [failed] = [e for e in mallory.events[mallory.listener] if isinstance(e, Failed)]
    assert isinstance(failed.error, KeyMismatch)
    assert "without proving its secret" in str(failed.error)


def test_the_resumed_session_belongs_to_its_identities() -> None:
    pair = first_pair()
    carry = pair.connector.carry
    assert carry is not None
    other = Ed25519PrivateKey.generate()
    new = PeerPair(
        connector={"identity": other, "resume": carry},  # a leaked secret, someone else
        listener={
            "identity": DESKTOP,
            "sessions": {resume_id(carry.secret): pair.listener.carry}.get,
        },
    )
    new.pump()
    assert not new.established()
    failures = [e for side in new.events.values() for e in side if isinstance(e, Failed)]
    assert any("another identity answered" in str(f.error) for f in failures)


def test_nothing_new_goes_out_before_the_peers_resumed() -> None:
    """A line typed as the resume completes waits for the peer's RESUMED, then follows
    what was in flight: in order, once."""
    pair = first_pair()
    pair.connector.send(Chat("lost"), pair.clock.now)
    carry = pair.listener.carry
    assert carry is not None
    new = PeerPair(
        connector={"identity": LAPTOP, "resume": pair.connector.carry},
        listener={"identity": DESKTOP, "sessions": {resume_id(carry.secret): carry}.get},
    )
    c, listener, now = new.connector, new.listener, new.clock.now
    connector_in(new)
    assert c.send(Chat("typed"), now) == b""  # kept: the listener's RESUMED has not come
    new.pump()
    assert said(new.events[listener]) == ["lost", "typed"]


def test_how_a_connection_ended_stays_as_the_first_cause_said() -> None:
    """Found in CI: the silence rule said "lost", then the transport's own check of unread
    data ran in the same pass and cleared it, so a transfer's cut was not resumed."""
    pair = first_pair()
    pair.connector.timers(pair.clock.advance(25.0))  # silent 2.5 intervals: lost
    assert pair.connector.link_lost
    pair.connector.connection_failed("the peer has not read anything for 25 s")
    assert pair.connector.link_lost


def test_a_resumed_that_claims_more_let_go_than_can_be_ends_the_session_cleanly() -> None:
    """Found by a hostile review: `first` near 2**64 made the count of taken messages too
    big to encode, and the network thread died."""
    pair = first_pair()
    carry = pair.connector.carry
    assert carry is not None
    carry.outbox.sent = 2**64 - 2  # its RESUMED says its oldest kept is 2**64 - 1
    new = resume(pair)
    [failed] = [e for e in new.events[new.listener] if isinstance(e, Failed)]
    assert "RESUMED says its oldest kept message is number 18446744073709551615" in str(
        failed.error
    )


def test_a_resume_says_how_many_of_each_sides_messages_were_let_go_past_the_bounds() -> None:
    pair = first_pair()
    carry = pair.connector.carry
    assert carry is not None
    carry.outbox.max_messages = 3
    for number in range(5):  # none arrives: the link is down; the two oldest are let go
        pair.connector.send(Chat(f"line {number}"), pair.clock.now)
    new = resume(pair)
    [mine] = [e for e in new.events[new.connector] if isinstance(e, Caught)]
    [theirs] = [e for e in new.events[new.listener] if isinstance(e, Caught)]
    assert (mine.resent, mine.lost) == (3, 2)
    assert theirs.missed == 2
    assert said(new.events[new.listener]) == ["line 2", "line 3", "line 4"]


def test_a_resume_names_the_files_whose_accept_it_sends_again() -> None:
    """The receiver then asks for the rest of those only once (found by a hostile review:
    a second drop made it ask twice, and the sender ended the session)."""
    pair = first_pair()
    pair.connector.send(FileAccept(7, 65536, 4 * 2**20), pair.clock.now)  # lost in flight
    new = resume(pair)
    [caught] = [e for e in new.events[new.connector] if isinstance(e, Caught)]
    assert caught.again == frozenset({7})


def test_a_resume_whose_ready_was_lost_can_be_resumed_by_either_secret() -> None:
    """Found by a hostile review: the connector holds a resumed connection's secret once it
    has sent READY; the listener only once READY came. A READY lost on the way made the
    next resume name a session the listener did not know, and the chat ended for good."""
    pair = first_pair()
    carry = pair.listener.carry
    assert carry is not None

    def sessions(named: bytes) -> Carry[Message] | None:
        return carry if carry.secret_named(named, resume_id) is not None else None

    cut = PeerPair(
        connector={"identity": LAPTOP, "resume": pair.connector.carry},
        listener={"identity": DESKTOP, "sessions": sessions},
    )
    connector_in(cut)
    c = cut.connector
    assert any(isinstance(e, Established) for e in c.events())
    c.data_to_send()  # its READY is lost with the link
    again = PeerPair(
        connector={"identity": LAPTOP, "resume": pair.connector.carry},
        listener={"identity": DESKTOP, "sessions": sessions},
    )
    again.pump()
    assert again.established()


def test_members_comes_once_a_session_even_across_a_resume() -> None:
    """Found by a hostile review: a host sent MEMBERS again after a resume and reset the
    member's room code (/verify room), which could hide a public line it dropped."""
    pair = first_pair()
    now = pair.clock.now
    pair.connector.receive_data(pair.listener.send(Members(), now), now)
    assert not [e for e in pair.connector.events() if isinstance(e, Failed)]
    new = resume(pair)
    assert new.established()
    new.connector.receive_data(new.listener.send(Members(), now), now)
    [failed] = [e for e in new.connector.events() if isinstance(e, Failed)]
    assert "the host sent MEMBERS again" in str(failed.error)

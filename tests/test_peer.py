"""The sans-IO core (peer.py): PeerProtocol's handshake order, and its deadlines and
keepalives on a fake clock. No sockets, no threads, no sleeps. Protocol 2 between two
PeerProtocols (signed WELCOMEs, contacts, invite codes) is in test_identity.py."""

from __future__ import annotations

import pytest
from pair import OTHER_PSK, PSK, PeerPair

from chatclient.errors import HandshakeError, KeyMismatch, ProtocolError
from chatclient.handshake import Mode, Reject, Role, reject_frame
from chatclient.messages import Chat, Terminate, encode_frame
from chatclient.peer import (
    Closed,
    Established,
    Failed,
    KeyProven,
    MessageReceived,
    PeerProtocol,
    Stage,
)

# --- Handshake order ------------------------------------------------------------------


def test_a_pair_handshakes_and_each_learns_the_others_identity() -> None:
    pair = PeerPair()
    pair.pump()
    assert pair.established()
    [proven, listener_done] = pair.events[pair.listener]
    assert isinstance(proven, KeyProven)
    [connector_done] = pair.events[pair.connector]
    nonce = pair.connector.nonce  # the connector's join nonce, which both learn
    assert connector_done == Established(
        "desktop", pair.listener.identity, Mode.SHARED_KEY, nonce=nonce
    )
    assert listener_done == Established(
        "laptop", pair.connector.identity, Mode.SHARED_KEY, nonce=nonce
    )
    assert pair.connector.identity != pair.listener.identity


def test_the_listener_says_nothing_before_m1_and_nothing_encrypted_before_admit() -> None:
    pair = PeerPair()
    assert pair.listener.data_to_send() == b""
    m1 = pair.connector.data_to_send()
    pair.listener.receive_data(m1, pair.clock.now)
    m2 = pair.listener.data_to_send()
    assert len(m2) == 4 + 37
    pair.connector.receive_data(m2, pair.clock.now)
    pair.listener.receive_data(pair.connector.data_to_send(), pair.clock.now)
    assert list(pair.listener.events()) == [KeyProven()]
    assert pair.listener.stage is Stage.PROVEN
    assert pair.listener.data_to_send() == b""  # no WELCOME until admitted
    pair.listener.admit()  # the connector's WELCOME came with M3: ours answers it
    assert pair.listener.stage is Stage.READY
    assert pair.listener.data_to_send() != b""
    assert list(pair.listener.events()) == []  # in the chat only once the connector is READY


def test_bytes_fed_one_at_a_time_give_the_same_handshake() -> None:
    pair = PeerPair()
    for sender in (pair.connector, pair.listener, pair.connector):
        data = sender.data_to_send()
        receiver = pair.other(sender)
        for byte in data:
            receiver.receive_data(bytes([byte]), pair.clock.now)
        for event in receiver.events():
            if isinstance(event, KeyProven):
                receiver.admit()
    pair.pump()
    assert pair.established()


def test_messages_after_the_handshake_arrive_in_order_and_keepalives_are_silent() -> None:
    pair = PeerPair()
    pair.pump()
    now = pair.clock.now
    wire = pair.connector.send(Chat("one"), now) + pair.connector.send(Chat("two"), now)
    pair.listener.receive_data(wire, now)
    assert list(pair.listener.events()) == [
        MessageReceived(Chat("one")),
        MessageReceived(Chat("two")),
    ]
    pair.clock.advance(10.0)
    assert pair.connector.timers(pair.clock.now) is not None
    pair.listener.receive_data(pair.connector.data_to_send(), pair.clock.now)  # a keepalive
    assert list(pair.listener.events()) == []


def test_the_listener_refuses_busy_and_the_connector_hears_why() -> None:
    pair = PeerPair()
    pair.pump(admit=False)
    assert pair.listener.stage is Stage.PROVEN
    pair.listener.refuse(Reject.BUSY)
    assert pair.listener.stage is Stage.CLOSED
    pair.pump()
    [failed] = pair.events[pair.connector]
    assert isinstance(failed, Failed) and "not taking connections now" in str(failed.error)


def test_a_wrong_key_is_refused_on_both_sides_before_anything_encrypted() -> None:
    pair = PeerPair(connector_psk=OTHER_PSK)
    pair.pump()
    [listener_failed] = pair.events[pair.listener]
    [connector_failed] = pair.events[pair.connector]
    assert isinstance(listener_failed, Failed) and isinstance(listener_failed.error, KeyMismatch)
    assert isinstance(connector_failed, Failed)
    assert str(connector_failed.error) == (
        "could not authenticate the peer: your fernet_keys differ, "
        "or someone tampered with the connection"
    )
    assert not pair.established()


def test_a_forged_rejection_gets_the_unauthenticated_wording() -> None:
    connector = PeerProtocol(Role.CONNECTOR, PSK, "laptop", 0.0)
    connector.receive_data(encode_frame(reject_frame(Reject.KEY_MISMATCH)), 0.0)
    [failed] = connector.events()
    assert isinstance(failed, Failed) and "could not authenticate the peer" in str(failed.error)


def test_a_hello_of_another_version_gets_a_version_rejection() -> None:
    listener = PeerProtocol(Role.LISTENER, PSK, "desktop", 0.0)
    listener.receive_data(encode_frame(b"CCHT\x07" + bytes(32)), 0.0)
    [failed] = listener.events()
    assert isinstance(failed, Failed) and "version 7" in str(failed.error)
    assert listener.data_to_send() == encode_frame(reject_frame(Reject.BAD_VERSION))


def test_an_oversized_frame_during_the_handshake_is_a_foreign_protocol() -> None:
    listener = PeerProtocol(Role.LISTENER, PSK, "desktop", 0.0)
    listener.receive_data(b"\xff\xff\xff\xff", 0.0)
    [failed] = listener.events()
    assert isinstance(failed, Failed) and "not speaking the chatclient protocol" in str(
        failed.error
    )


def test_end_of_stream_during_the_handshake_and_after_a_goodbye() -> None:
    listener = PeerProtocol(Role.LISTENER, PSK, "desktop", 0.0)
    listener.receive_data(b"", 0.0)
    [failed] = listener.events()
    assert isinstance(failed, Failed) and "during the handshake" in str(failed.error)

    pair = PeerPair()
    pair.pump()
    pair.listener.receive_data(pair.connector.send(Terminate("bye"), pair.clock.now), 0.0)
    pair.listener.receive_data(b"", 0.0)
    assert list(pair.listener.events()) == [MessageReceived(Terminate("bye")), Closed()]


def test_end_of_stream_without_a_goodbye_is_a_lost_connection() -> None:
    pair = PeerPair()
    pair.pump()
    pair.listener.receive_data(b"", pair.clock.now)
    [failed] = pair.listener.events()
    assert isinstance(failed, Failed) and "without saying goodbye" in str(failed.error)


def test_a_broken_frame_after_good_ones_keeps_the_good_ones() -> None:
    pair = PeerPair()
    pair.pump()
    good = b"".join(pair.connector.send(Chat(f"fine {n}"), 0.0) for n in range(3))
    pair.listener.receive_data(good + encode_frame(b"not a token"), 0.0)
    events = list(pair.listener.events())
    assert events[:3] == [MessageReceived(Chat(f"fine {n}")) for n in range(3)]
    assert isinstance(events[3], Failed) and "integrity" in str(events[3].error)
    assert pair.listener.stage is Stage.CLOSED


def test_send_before_the_chat_is_open_is_refused_locally() -> None:
    connector = PeerProtocol(Role.CONNECTOR, PSK, "laptop", 0.0)
    with pytest.raises(ProtocolError, match="cannot send CHAT"):
        connector.send(Chat("too early"), 0.0)


# --- Time: the handshake deadline, keepalives and silence (fake clock) ---------------------


def test_the_handshake_deadline_is_ten_seconds_from_the_start_however_bytes_trickle() -> None:
    pair = PeerPair()
    start = pair.clock.now
    m1 = pair.connector.data_to_send()
    assert pair.listener.timers(start) == start + 10.0
    for byte in m1[:30]:  # 9 s of trickle never moves the deadline
        pair.listener.receive_data(bytes([byte]), pair.clock.advance(0.3))
        assert pair.listener.timers(pair.clock.now) == start + 10.0
    assert pair.listener.timers(start + 9.999) == start + 10.0
    assert list(pair.listener.events()) == []
    assert pair.listener.timers(start + 10.0) is None
    [failed] = pair.listener.events()
    assert isinstance(failed, Failed) and isinstance(failed.error, HandshakeError)
    assert str(failed.error) == "the handshake did not finish within 10 s"
    assert pair.listener.data_to_send() == b""  # never an M2 for the trickler


def test_the_deadline_covers_the_connectors_welcome_too() -> None:
    pair = PeerPair(handshake_seconds=3.0)
    m1 = pair.connector.data_to_send()
    pair.listener.receive_data(m1, pair.clock.now)
    pair.connector.receive_data(pair.listener.data_to_send(), pair.clock.now)
    pair.listener.receive_data(pair.connector.data_to_send(), pair.clock.now)
    pair.listener.admit()
    pair.listener.timers(pair.clock.advance(3.0))  # the connector never sent its WELCOME
    assert isinstance(list(pair.listener.events())[-1], Failed)


def test_an_idle_open_chat_sends_a_keepalive_each_interval() -> None:
    pair = PeerPair(keepalive=10.0)
    pair.pump()
    start = pair.clock.now
    assert pair.connector.timers(start) == start + 10.0
    assert pair.connector.timers(start + 9.9) == start + 10.0
    assert pair.connector.data_to_send() == b""
    pair.connector.timers(start + 10.0)
    keepalive = pair.connector.data_to_send()
    assert keepalive != b""
    pair.listener.receive_data(keepalive, start + 10.0)
    assert list(pair.listener.events()) == []  # verified, counted, not shown
    pair.connector.send(Chat("typing resets the idle time"), start + 15.0)
    pair.connector.timers(start + 20.0)
    assert pair.connector.data_to_send() == b""


def test_a_peer_silent_for_two_and_a_half_intervals_is_lost() -> None:
    pair = PeerPair(keepalive=10.0)
    pair.pump()
    start = pair.clock.now
    pair.listener.timers(start + 24.9)
    assert not any(isinstance(e, Failed) for e in pair.listener.events())
    pair.listener.data_to_send()
    pair.listener.timers(start + 25.0)
    [failed] = [e for e in pair.listener.events() if isinstance(e, Failed)]
    assert "nothing heard from the peer for 25 s" in str(failed.error)


def test_anything_heard_resets_the_silence_limit() -> None:
    pair = PeerPair(keepalive=10.0)
    pair.pump()
    start = pair.clock.now
    pair.connector.timers(start + 10.0)
    pair.listener.receive_data(pair.connector.data_to_send(), start + 10.0)
    pair.listener.timers(start + 30.0)
    assert not any(isinstance(e, Failed) for e in pair.listener.events())


def test_no_keepalive_after_our_goodbye() -> None:
    pair = PeerPair(keepalive=10.0)
    pair.pump()
    pair.connector.send(Terminate(), pair.clock.now)
    pair.connector.timers(pair.clock.advance(20.0))
    assert pair.connector.data_to_send() == b""


def test_a_listener_name_that_breaks_the_rules_is_named_not_blamed_on_the_keys() -> None:
    pair = PeerPair()
    pair.listener.name = "desktop  padded"  # two spaces: refused since issue 21 (item 13)
    pair.pump()
    [failed] = [event for event in pair.events[pair.connector] if isinstance(event, Failed)]
    assert not isinstance(failed.error, KeyMismatch)
    assert "fernet_key" not in str(failed.error)
    assert str(failed.error) == (
        "the listener's answer breaks the protocol: the peer's name must not hold blanks "
        "other than single spaces"
    )

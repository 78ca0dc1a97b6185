"""The sans-IO core: PeerProtocol's handshake order, deadlines and keepalives on a fake
clock, the message registry and field codec, the listener's admission rules, wrapping
and the command table. No sockets, no threads, no sleeps."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pair import OTHER_PSK, PSK, PeerPair

from chatclient.chat import help_text
from chatclient.errors import HandshakeError, KeyMismatch, ProtocolError
from chatclient.handshake import Mode, Reject, Role, reject_frame
from chatclient.messages import (
    MESSAGES,
    Action,
    Chat,
    FieldReader,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Form,
    Joined,
    Keepalive,
    Left,
    Members,
    Message,
    Person,
    Phase,
    Ready,
    Refusal,
    Refuse,
    Said,
    Say,
    Terminate,
    Welcome,
    bytes_field,
    decode_payload,
    encode_frame,
    encode_payload,
    int_field,
)
from chatclient.peer import (
    Closed,
    Established,
    Failed,
    KeyProven,
    MessageReceived,
    PeerProtocol,
    Stage,
)
from chatclient.room import (
    MAX_HANDSHAKES_PER_ADDRESS,
    MAX_PENDING_HANDSHAKES,
    Pending,
    RefusalLog,
    Room,
    handshake_to_evict,
)
from chatclient.session import transitions
from chatclient.text import CONTINUATION, char_width, wrap_rows

# --- Handshake order ------------------------------------------------------------------


def test_a_pair_handshakes_and_each_learns_the_others_identity() -> None:
    pair = PeerPair()
    pair.pump()
    assert pair.established()
    [proven, listener_done] = pair.events[pair.listener]
    assert isinstance(proven, KeyProven)
    [connector_done] = pair.events[pair.connector]
    assert connector_done == Established("desktop", pair.listener.identity, Mode.SHARED_KEY)
    assert listener_done == Established("laptop", pair.connector.identity, Mode.SHARED_KEY)
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
    assert isinstance(failed, Failed) and "already chatting" in str(failed.error)


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


# --- Messages: the registry and the field codec -------------------------------------------


SAY = Say(Form.ACTION, 7, bytes(range(64)), "bob", "waves")


def test_every_registered_message_round_trips_through_its_tag() -> None:
    samples = {
        Welcome: Welcome("laptop"),
        Chat: Chat("hi"),
        Terminate: Terminate("bye"),
        Action: Action("waves"),
        Refusal: Refusal(Refuse.ROOM_FULL, "desktop", 20),
        Say: SAY,
        Said: Said("alice", SAY),
        Members: Members((Person("alice", bytes(32), "10.0.0.2:4000", 61),)),
        Joined: Joined(Person("bob", bytes(range(32)), "[::1]:5", 0)),
        Left: Left("bob", lost=True),
        FileOffer: FileOffer(1, 2, bytes(32), "a.txt", "bob"),
        FileAccept: FileAccept(1, 2, 3),
        FileReject: FileReject(1),
        FileCredit: FileCredit(1, 2),
        FileDone: FileDone(1),
        FileReceived: FileReceived(1),
        FileCancel: FileCancel(1, True, "why"),
    }
    for tag, kind in MESSAGES.items():
        message = samples[kind] if kind in samples else kind()
        assert tag == kind.TAG
        assert decode_payload(encode_payload(5, message)) == (5, message)


def test_the_phase_table_is_derived_from_the_classes() -> None:
    assert transitions() == {
        Phase.AWAIT_WELCOME: {Welcome: Phase.OPEN, Refusal: Phase.CLOSED},
        Phase.OPEN: {
            Chat: Phase.OPEN,
            Terminate: Phase.CLOSED,
            Keepalive: Phase.OPEN,
            Action: Phase.OPEN,
            Ready: Phase.OPEN,
            Refusal: Phase.CLOSED,
            Say: Phase.OPEN,
            Said: Phase.OPEN,
            Members: Phase.OPEN,
            Joined: Phase.OPEN,
            Left: Phase.OPEN,
            FileOffer: Phase.OPEN,
            FileAccept: Phase.OPEN,
            FileReject: Phase.OPEN,
            FileCredit: Phase.OPEN,
            FileDone: Phase.OPEN,
            FileReceived: Phase.OPEN,
            FileCancel: Phase.OPEN,
        },
        Phase.CLOSED: {},
    }


def test_a_message_with_several_fields_is_one_class() -> None:
    """A new message type touches one place: its class (here a test-only tag 250)."""

    @dataclasses.dataclass(frozen=True)
    class Offer(Message):
        TAG: ClassVar[int] = 250
        name: str
        size: int
        digest: bytes

        def encode_body(self) -> bytes:
            return bytes_field(self.name.encode()) + int_field(self.size, 8) + self.digest

        @classmethod
        def decode_body(cls, body: FieldReader) -> Message:
            name = body.text(255, "name")
            size = body.integer(8, "size")
            digest = body.integer(32, "digest").to_bytes(32, "big")
            body.end()
            return cls(name, size, digest)

    try:
        offer = Offer("holiday.jpg", 2_400_000, bytes(range(32)))
        assert decode_payload(encode_payload(0, offer)) == (0, offer)
        payload = encode_payload(0, offer)
        with pytest.raises(ProtocolError, match="unexpected bytes"):
            decode_payload(payload + b"x")
        with pytest.raises(ProtocolError, match="cut short"):
            decode_payload(payload[:-1])
        with pytest.raises(ProtocolError, match="over the 255 limit"):
            decode_payload(encode_payload(0, Offer("x" * 256, 1, bytes(32))))
        with pytest.raises(TypeError, match="taken"):

            class Again(Message):
                TAG: ClassVar[int] = 250

    finally:
        del MESSAGES[250]


def test_field_reader_refuses_bad_utf8_and_a_length_beyond_the_body() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        FieldReader(bytes_field(b"\xff"), "OFFER").text(10, "name")
    with pytest.raises(ProtocolError, match="cut short"):
        FieldReader(int_field(5, 4) + b"ab", "OFFER").blob(10, "name")


@given(st.binary(max_size=64))
def test_field_reader_only_ever_raises_protocol_error(data: bytes) -> None:
    reader = FieldReader(data, "OFFER")
    try:
        reader.text(16, "name")
        reader.integer(8, "size")
        reader.end()
    except ProtocolError:
        pass


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


# --- Wrapping peer text on a terminal ----------------------------------------------------


def test_a_padded_line_cannot_fake_a_line_of_its_own() -> None:
    spoof = "laptop says: " + " " * 67 + "laptop left the chat: bye" + " " * 55
    spoof += "Connection closed by peer."
    rows = wrap_rows(spoof, 79)
    assert rows[0].startswith("laptop says: ")
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    assert all(sum(char_width(ch) for ch in row) <= 79 for row in rows)


def test_rows_end_after_a_space_so_words_stay_whole() -> None:
    line = "Session code: 123456 (the same on both screens means nobody is in the middle)"
    rows = wrap_rows(line, 30)
    assert rows == [
        "Session code: 123456 (the ",
        "  same on both screens means ",
        "  nobody is in the middle)",
    ]
    assert wrap_rows("x" * 25, 10) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]


def test_wide_and_combining_characters_are_measured() -> None:
    assert char_width("界") == 2 and char_width("\u0301") == 0 and char_width("a") == 1
    assert sum(char_width(ch) for ch in "\u2764\ufe0f") == 2  # a red heart, drawn wide
    rows = wrap_rows("界" * 30, 20)
    assert [sum(char_width(ch) for ch in row) for row in rows][:2] == [20, 20]


@given(st.text(max_size=300), st.integers(min_value=1, max_value=200))
def test_wrapped_rows_fit_and_only_the_first_starts_at_column_zero(text: str, width: int) -> None:
    line = "laptop says: " + text.replace("\n", " ")
    rows = wrap_rows(line, width)
    assert (
        "".join(row.removeprefix(CONTINUATION) if i else row for i, row in enumerate(rows)) == line
    )
    assert all(row.startswith(CONTINUATION) for row in rows[1:])
    limit = max(width, len(CONTINUATION) + 8)
    assert all(sum(char_width(ch) for ch in row) <= limit for row in rows if len(row) > 3)


# --- Commands ----------------------------------------------------------------------------


def test_help_is_generated_from_the_command_table() -> None:
    text = help_text()
    for word in ("/help", "/?", "/who", "/verify", "/quit", "/exit", "//text", "exit"):
        assert word in text


def test_the_room_hands_out_places_up_to_its_capacity() -> None:
    room = Room(capacity=1)
    first, second = object(), object()
    assert room.claim(first) and first in room and room.full
    assert not room.claim(second)  # told busy: the place went to the first proven connector
    room.release(first)
    assert not room and room.claim(second)
    room.release(object())  # releasing someone without a place changes nothing
    assert len(room) == 1

"""session.py between two sessions joined in memory (pair.ConnectionPair): every message
through a session and back, the tokens and payloads a session must refuse (garbage,
truncated, reflected, replayed, from another session or direction), the order rules
of the phase table, and the sealed file chunks. The same rules against arbitrary and
tampered input, as properties, are in test_properties.py."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.fernet import Fernet
from pair import ConnectionPair, Endpoint, MessageType, body_of, handshake_keys

from chatclient.errors import MessageTooLong, ProtocolError
from chatclient.handshake import Reject, reject_frame
from chatclient.messages import (
    CHUNK_SIZE,
    FRAME_HEADER,
    MAX_FRAME,
    MAX_TEXT,
    Absent,
    Action,
    Chat,
    Echo,
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
    Resumed,
    Said,
    Say,
    Terminate,
    Welcome,
    chunk_nonce,
)
from chatclient.session import Session, transitions
from chatclient.text import MAX_NAME_BYTES

# --- helpers -------------------------------------------------------------------


KEYS = bytes(112)  # identity key, signature, room: the session does not check them


def forge(receiver: Endpoint, seq: int, tag: int, body: bytes = b"") -> bytes:
    """A validly encrypted frame body for `receiver`, laid out by hand: seq, ack, type,
    body."""
    fernet = Fernet(base64.urlsafe_b64encode(receiver.session.keys.recv_key))
    return fernet.encrypt(seq.to_bytes(8, "big") + bytes(8) + bytes([tag]) + body)


# --- messages through a session pair -------------------------------------------


ALL_MESSAGES: list[Message] = [Chat("hello desktop"), Chat(""), Keepalive(), Terminate("bye bye")]


@pytest.mark.parametrize("direction", ["connector", "listener"])
def test_every_message_round_trips(direction: str) -> None:
    pair = ConnectionPair()
    sender = pair.connector if direction == "connector" else pair.listener
    assert pair.send(sender, *ALL_MESSAGES) == ALL_MESSAGES


def test_welcome_round_trips_both_ways() -> None:
    pair = ConnectionPair(welcome=False)
    assert pair.send(pair.listener, Welcome("desktop")) == [Welcome("desktop")]
    assert pair.send(pair.connector, Welcome("laptop")) == [Welcome("laptop")]


@pytest.mark.parametrize("text", ["", "bye bye", "\N{WAVING HAND SIGN}"])
def test_terminate_carries_goodbye_text(text: str) -> None:
    pair = ConnectionPair()
    assert pair.send(pair.connector, Terminate(text)) == [Terminate(text)]


def test_messages_fed_one_byte_at_a_time() -> None:
    pair = ConnectionPair()
    wire = b"".join(pair.connector.session.encode(m) for m in ALL_MESSAGES)
    received: list[Message] = []
    for i in range(len(wire)):
        pair.listener.receive(wire[i : i + 1], received)
    assert received == ALL_MESSAGES


UNICODE_TEXTS = [
    "\N{WAVING HAND SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # family: ZWJ sequence
    "\u4f60\u597d\uff0c\u4e16\u754c",  # CJK
    "\u3053\u3093\u306b\u3061\u306f \ud55c\uad6d\uc5b4",
    "e\u0301 n\u0303 a\u030a\u0323",  # combining marks
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd",  # right-to-left scripts
    "\U0001d54f\U0001f600\U00010348",  # astral plane
]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips(text: str) -> None:
    pair = ConnectionPair()
    assert pair.send(pair.connector, Chat(text)) == [Chat(text)]
    assert pair.send(pair.listener, Chat(text), Terminate(text)) == [Chat(text), Terminate(text)]


def test_unicode_username_round_trips() -> None:
    pair = ConnectionPair(welcome=False)
    name = "\u00e9l\u00e8ve \u5b66\u751f \U0001f393"
    assert pair.send(pair.listener, Welcome(name)) == [Welcome(name)]


def test_64_kib_chat_fits_one_frame_and_round_trips() -> None:
    text = "\u20ac" * (MAX_TEXT // 3) + "a"  # three-byte characters and one ASCII byte
    assert len(text.encode("utf-8")) == MAX_TEXT == 65536
    pair = ConnectionPair()
    frame = pair.connector.session.encode(Chat(text))
    assert len(frame) - FRAME_HEADER.size <= MAX_FRAME
    assert pair.listener.receive(frame) == [Chat(text)]
    assert pair.listener.decoder.buffered == 0


@pytest.mark.parametrize(
    "message",
    [Chat("a" * (MAX_TEXT + 1)), Chat("\u20ac" * (MAX_TEXT // 3 + 1)), Terminate("b" * 70000)],
)
def test_over_64_kib_raises_without_consuming_a_sequence_number(message: Message) -> None:
    pair = ConnectionPair()
    with pytest.raises(MessageTooLong, match=str(MAX_TEXT)):
        pair.connector.session.encode(message)
    # The next message takes the number the refused one did not use.
    assert pair.send(pair.connector, Chat("after")) == [Chat("after")]


def test_long_username_refused_locally() -> None:
    pair = ConnectionPair(welcome=False)
    with pytest.raises(MessageTooLong):
        pair.listener.session.encode(Welcome("n" * (MAX_NAME_BYTES + 1)))
    longest = Welcome("n" * MAX_NAME_BYTES)
    assert pair.send(pair.listener, longest) == [longest]


# --- bad tokens and payloads ---------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"garbage",
        b"\x00" * 100,
        b"gAAAAAB" + b"A" * 100,
        "\u00e9\u00e8".encode(),
        bytes(range(256)),
    ],
)
def test_garbage_token_raises_protocol_error(body: bytes) -> None:
    pair = ConnectionPair()
    with pytest.raises(ProtocolError, match="integrity"):
        pair.listener.session.decode(body)


@pytest.mark.parametrize("keep", [0, 1, 10, 57, -1, -2, -5, -40])
def test_truncated_token_raises_protocol_error(keep: int) -> None:
    pair = ConnectionPair()
    token = body_of(pair.connector.session.encode(Chat("hello")))
    with pytest.raises(ProtocolError):
        pair.listener.session.decode(token[:keep])


def test_reflected_frame_raises_protocol_error() -> None:
    pair = ConnectionPair()
    frame = pair.connector.session.encode(Chat("hello"))
    # The connector's own frame comes back to it: its receive key is the other direction's.
    with pytest.raises(ProtocolError):
        pair.connector.receive(frame)


def test_token_under_the_wrong_direction_key_raises_protocol_error() -> None:
    pair = ConnectionPair()
    own_key = Fernet(base64.urlsafe_b64encode(pair.listener.session.keys.send_key))
    # Sequence number and type are right: only the direction key is wrong.
    token = own_key.encrypt((1).to_bytes(8, "big") + bytes(8) + bytes([MessageType.CHAT]) + b"hi")
    with pytest.raises(ProtocolError, match="integrity"):
        pair.listener.session.decode(token)


def test_frame_from_an_earlier_session_raises_protocol_error() -> None:
    earlier = ConnectionPair(welcome=False)
    recorded = earlier.listener.session.encode(Welcome("desktop"))
    now = ConnectionPair(welcome=False)
    with pytest.raises(ProtocolError, match="integrity"):
        now.connector.receive(recorded)


def test_replayed_frame_raises_protocol_error() -> None:
    pair = ConnectionPair()
    frame = pair.connector.session.encode(Chat("pay 10"))
    assert pair.listener.receive(frame) == [Chat("pay 10")]
    with pytest.raises(ProtocolError, match=r"number 1 arrived where 2 was due"):
        pair.listener.receive(frame)


def test_wrong_sequence_number_names_both_numbers() -> None:
    pair = ConnectionPair()
    with pytest.raises(ProtocolError, match=r"number 7 arrived where 1 was due"):
        pair.listener.session.decode(forge(pair.listener, 7, MessageType.CHAT, b"hi"))


def test_non_canonical_base64_token_is_refused() -> None:
    """A frame whose bytes differ from what was sent must not be accepted.

    Fernet tokens are base64; the last character before '=' padding has unused
    low bits. Changing them changes the frame on the wire but not the decoded
    bytes, so a lenient decoder accepts a frame nobody sent.
    """
    pair = ConnectionPair()
    token = body_of(pair.connector.session.encode(Chat("h" * 40)))
    assert token.endswith(b"==")  # a 121-byte token: its last data character has 4 unused bits
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = len(token) - 3
    altered = bytearray(token)
    altered[last] = alphabet[alphabet.index(token[last]) ^ 1]
    assert base64.urlsafe_b64decode(bytes(altered)) == base64.urlsafe_b64decode(token)
    with pytest.raises(ProtocolError):
        pair.listener.session.decode(bytes(altered))


def test_bytes_after_token_padding_are_refused() -> None:
    """A token followed by extra bytes is not the frame that was sent."""
    pair = ConnectionPair()
    token = body_of(pair.connector.session.encode(Chat("hi")))
    assert token.endswith(b"=")
    with pytest.raises(ProtocolError):
        pair.listener.session.decode(token + b"AAAA")


@pytest.mark.parametrize("extra", [b"\n", b"\x00", b" ", b"*", b"\xff"])
def test_bytes_inserted_inside_a_token_are_refused(extra: bytes) -> None:
    """Bytes outside the base64 alphabet, inserted into a token, are not the frame that was sent."""
    pair = ConnectionPair()
    token = body_of(pair.connector.session.encode(Chat("hi")))
    with pytest.raises(ProtocolError):
        pair.listener.session.decode(token[:20] + extra + token[20:])


def test_invalid_utf8_inside_a_valid_token_raises_protocol_error() -> None:
    pair = ConnectionPair()
    with pytest.raises(ProtocolError, match="UTF-8"):
        pair.listener.session.decode(forge(pair.listener, 1, MessageType.CHAT, b"ok \xff\xfe"))


@pytest.mark.parametrize(
    ("tag", "body", "words"),
    [
        (MessageType.CHAT, b"\xc3", "UTF-8"),  # a truncated two-byte sequence
        (MessageType.TERMINATE, b"\xed\xa0\x80", "UTF-8"),  # an encoded surrogate
        (MessageType.CHAT, b"a" * (MAX_TEXT + 1), "limit"),
        (MessageType.KEEPALIVE, b"x", "keepalive"),
        (0, b"", "unknown message type 0"),
        (99, b"hi", "unknown message type 99"),
    ],
)
def test_bad_payload_inside_a_valid_token(tag: int, body: bytes, words: str) -> None:
    pair = ConnectionPair()
    with pytest.raises(ProtocolError, match=words):
        pair.listener.session.decode(forge(pair.listener, 1, tag, body))


@pytest.mark.parametrize("payload", [b"", b"\x00" * 8])
def test_truncated_payload_inside_a_valid_token(payload: bytes) -> None:
    pair = ConnectionPair()
    fernet = Fernet(base64.urlsafe_b64encode(pair.listener.session.keys.recv_key))
    with pytest.raises(ProtocolError, match="truncated"):
        pair.listener.session.decode(fernet.encrypt(payload))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (KEYS, "name is empty"),
        (KEYS + b"n" * (MAX_NAME_BYTES + 1), "limit"),
        (KEYS + b"\xff", "UTF-8"),
        (b"", "cut short in its identity key"),
        (bytes(95), "cut short in its signature"),
    ],
)
def test_bad_welcome_is_refused(body: bytes, words: str) -> None:
    pair = ConnectionPair(welcome=False)
    with pytest.raises(ProtocolError, match=words):
        pair.listener.session.decode(forge(pair.listener, 0, MessageType.WELCOME, body))


# --- session rules ---------------------------------------------------------------


def refusal(receiver: Endpoint, seq: int, tag: int, body: bytes = b"") -> str:
    with pytest.raises(ProtocolError) as caught:
        receiver.session.decode(forge(receiver, seq, tag, body))
    return str(caught.value)


@pytest.mark.parametrize("tag", [MessageType.CHAT, MessageType.KEEPALIVE, MessageType.TERMINATE])
def test_nothing_but_welcome_before_welcome(tag: MessageType) -> None:
    pair = ConnectionPair(welcome=False)
    text = refusal(pair.listener, 0, tag)
    assert tag.name in text
    assert Phase.AWAIT_WELCOME.value in text


def test_second_welcome_refused() -> None:
    pair = ConnectionPair()
    text = refusal(pair.listener, 1, MessageType.WELCOME, KEYS + b"mallory")
    assert "WELCOME" in text
    assert Phase.OPEN.value in text


@pytest.mark.parametrize("tag", list(MessageType))
def test_anything_after_terminate_refused(tag: MessageType) -> None:
    pair = ConnectionPair()
    assert pair.send(pair.connector, Terminate("bye")) == [Terminate("bye")]
    words = Say(Form.CHAT, 0, bytes(64), "", "x")
    bodies = {
        MessageType.WELCOME: KEYS + b"x",
        MessageType.CHAT: b"x",
        MessageType.REFUSAL: b"\x01\x00\x00x",
        MessageType.SAY: words.encode_body(),
        MessageType.SAID: Said("alice", words).encode_body(),
        MessageType.MEMBERS: Members().encode_body(),
        MessageType.JOINED: Joined(Person("bob", bytes(32), "h:1")).encode_body(),
        MessageType.LEFT: Left("bob").encode_body(),
        MessageType.FILEOFFER: FileOffer(1, 1, bytes(32), "a").encode_body(),
        MessageType.FILEACCEPT: FileAccept(1, 0, 1).encode_body(),
        MessageType.FILECREDIT: FileCredit(1, 1).encode_body(),
        MessageType.FILECANCEL: FileCancel(1, True).encode_body(),
    }
    bodies[MessageType.FILEREJECT] = bytes(4)
    bodies[MessageType.FILEDONE] = bytes(4 + 32 + 64)
    bodies[MessageType.FILERECEIVED] = bytes(4)
    bodies[MessageType.ECHO] = bytes(8)
    bodies[MessageType.RESUMED] = bytes(16)
    bodies[MessageType.ABSENT] = Absent("bob", 0).encode_body()
    text = refusal(pair.listener, 2, tag, bodies.get(tag, b""))
    assert tag.name in text
    assert Phase.CLOSED.value in text


def test_refused_message_is_not_counted() -> None:
    pair = ConnectionPair(welcome=False)
    refusal(pair.listener, 0, MessageType.CHAT, b"too early")
    assert pair.send(pair.connector, Welcome("laptop")) == [Welcome("laptop")]


def test_this_side_cannot_send_out_of_order() -> None:
    pair = ConnectionPair(welcome=False)
    with pytest.raises(ProtocolError, match="CHAT before its welcome"):
        pair.connector.session.encode(Chat("too early"))
    assert pair.send(pair.connector, Welcome("laptop")) == [Welcome("laptop")]
    assert pair.send(pair.connector, Terminate()) == [Terminate()]
    with pytest.raises(ProtocolError, match="CHAT after its goodbye"):
        pair.connector.session.encode(Chat("too late"))


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
            Echo: Phase.OPEN,
            Resumed: Phase.OPEN,
            Absent: Phase.OPEN,
        },
        Phase.CLOSED: {},
    }


def test_session_of_fresh_pair_starts_at_zero() -> None:
    pair = ConnectionPair(welcome=False)
    welcome = forge(pair.listener, 0, MessageType.WELCOME, KEYS + b"x")
    assert pair.listener.session.decode(welcome) == Welcome("x")


def test_session_refuses_handshake_frames() -> None:
    pair = ConnectionPair(welcome=False)
    for body in (reject_frame(Reject.BUSY), pair.listener.session.keys.transcript):
        with pytest.raises(ProtocolError):
            pair.listener.session.decode(body)


# --- Chunks: AES-256-GCM with a counter nonce (pure) ---------------------------------


def sessions() -> tuple[Session, Session]:
    connector_keys, listener_keys = handshake_keys()
    connector, listener = Session(connector_keys), Session(listener_keys)
    for session in (connector, listener):  # both past the WELCOMEs, as in a chat
        session._send_phase = session._recv_phase = Phase.OPEN
    return connector, listener


def body(frame: bytes) -> bytes:
    return frame[FRAME_HEADER.size :]


def test_chunks_open_in_order_with_their_id_and_offset() -> None:
    connector, listener = sessions()
    for offset in range(0, 5 * CHUNK_SIZE, CHUNK_SIZE):
        data = os.urandom(CHUNK_SIZE)
        assert listener.open_chunk(body(connector.seal_chunk(7, offset, data))) == (7, offset, data)


def test_no_nonce_repeats_under_a_key_and_the_directions_differ() -> None:
    connector, listener = sessions()
    assert connector.keys.file_send_key == listener.keys.file_recv_key
    assert connector.keys.file_send_key != connector.keys.file_recv_key
    nonces = {chunk_nonce(d, n) for d in (0, 1) for n in range(10_000)}
    assert len(nonces) == 20_000
    assert chunk_nonce(connector.keys.direction, 0) != chunk_nonce(listener.keys.direction, 0)
    # the same data at the same place twice: two different ciphertexts
    first, second = connector.seal_chunk(1, 0, b"same"), connector.seal_chunk(1, 0, b"same")
    assert first[-20:] != second[-20:]


def tampered(frame: bytes, position: int) -> bytes:
    data = bytearray(body(frame))
    data[position] ^= 1
    return bytes(data)


@pytest.mark.parametrize("where", ["id", "offset", "data", "tag"])
def test_a_flipped_bit_anywhere_fails(where: str) -> None:
    connector, listener = sessions()
    frame = connector.seal_chunk(1, 0, b"x" * 100)
    position = {"id": 2, "offset": 12, "data": 20, "tag": -1}[where]
    with pytest.raises(ProtocolError, match="integrity check"):
        listener.open_chunk(tampered(frame, position))


def test_swapped_replayed_and_misplaced_chunks_fail() -> None:
    connector, listener = sessions()
    first, second = connector.seal_chunk(1, 0, b"a" * 10), connector.seal_chunk(1, 10, b"b" * 10)
    with pytest.raises(ProtocolError):  # swapped
        sessions()[1].open_chunk(body(second))
    connector, listener = sessions()
    first = connector.seal_chunk(1, 0, b"a" * 10)
    listener.open_chunk(body(first))
    with pytest.raises(ProtocolError):  # replayed
        listener.open_chunk(body(first))
    connector, listener = sessions()
    frame = bytearray(body(connector.seal_chunk(1, 0, b"a" * 10)))
    frame[1:5] = (2).to_bytes(4, "big")  # presented as a chunk of another transfer
    with pytest.raises(ProtocolError):
        listener.open_chunk(bytes(frame))
    connector, listener = sessions()
    reflected = listener.seal_chunk(1, 0, b"a")  # our own chunk sent back to us
    with pytest.raises(ProtocolError):
        listener.open_chunk(body(reflected))


def test_short_and_oversized_chunks_fail_before_any_work() -> None:
    _, listener = sessions()
    for bad in (b"\0" * 20, b"\0" * (13 + CHUNK_SIZE + 17)):
        with pytest.raises(ProtocolError):
            listener.open_chunk(bad)

"""messages.py without a socket: frames fed one byte at a time and split at every offset,
the registry and the field codec, and the bodies of the file and identity messages,
round-tripped and refused when malformed. Messages through a whole session are in
test_session.py."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.errors import ProtocolError
from chatclient.handshake import MAX_HELLO_SIZE
from chatclient.messages import (
    FRAME_HEADER,
    MAX_FRAME,
    MESSAGES,
    Absent,
    Action,
    Bundle,
    Chat,
    Echo,
    FieldReader,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Form,
    FrameDecoder,
    Joined,
    Left,
    Members,
    Message,
    Person,
    Ready,
    Refusal,
    Refuse,
    Resumed,
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
from chatclient.text import name_problem

# --- frames --------------------------------------------------------------------


def frames_of(decoder: FrameDecoder) -> list[bytes]:
    return list(decoder.frames())


SAMPLE_BODIES = [b"", b"x", b"hello", bytes(range(256)), b"\x00\x00\x00\x05"]


def test_encode_frame_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"hello") == b"\x00\x00\x00\x05hello"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_frames_fed_one_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(body) for body in SAMPLE_BODIES)
    decoder = FrameDecoder()
    received: list[bytes] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        received += frames_of(decoder)
    assert received == SAMPLE_BODIES
    assert decoder.buffered == 0


@pytest.mark.parametrize("body", SAMPLE_BODIES)
def test_frame_split_at_every_offset(body: bytes) -> None:
    stream = encode_frame(body) + encode_frame(b"next")
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        received = frames_of(decoder)
        decoder.feed(stream[cut:])
        received += frames_of(decoder)
        assert received == [body, b"next"], cut


def test_several_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(body) for body in SAMPLE_BODIES) + b"\x00\x00")
    assert frames_of(decoder) == SAMPLE_BODIES
    assert decoder.buffered == 2  # the start of a header waits for the rest


def test_incomplete_frame_waits() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"hello")[:-1])
    assert decoder.next_frame() is None
    decoder.feed(b"o")
    assert decoder.next_frame() == b"hello"
    assert decoder.next_frame() is None


def test_exactly_max_frame_is_accepted() -> None:
    body = bytes(range(256)) * (MAX_FRAME // 256)
    assert len(body) == MAX_FRAME
    decoder = FrameDecoder()
    decoder.feed(encode_frame(body)[:-1])
    assert decoder.next_frame() is None
    decoder.feed(body[-1:])
    assert decoder.next_frame() == body


def test_max_frame_plus_one_refused_as_soon_as_the_header_arrives() -> None:
    header = FRAME_HEADER.pack(MAX_FRAME + 1)
    decoder = FrameDecoder()
    decoder.feed(header[:3])
    assert decoder.next_frame() is None  # three header bytes say nothing yet
    decoder.feed(header[3:])
    with pytest.raises(ProtocolError, match=f"{MAX_FRAME + 1}-byte frame"):
        decoder.next_frame()
    assert decoder.buffered == FRAME_HEADER.size  # no body byte was needed


def test_four_gib_header_refused_without_a_body() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError, match=str(0xFFFFFFFF)):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        list(decoder.frames())


def test_hello_limit_applies_to_handshake_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(FRAME_HEADER.pack(MAX_HELLO_SIZE + 1))
    with pytest.raises(ProtocolError):
        decoder.next_frame(MAX_HELLO_SIZE)


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
        Members: Members(
            (Person("alice", bytes(32), "10.0.0.2:4000", 61, bytes([3]) * 16, 7),),
            bytes(range(32)),
            42,
        ),
        Echo: Echo(7),
        Resumed: Resumed(3, 4),
        Absent: Absent("alice", 600),
        Joined: Joined(Person("bob", bytes(range(32)), "[::1]:5", 0)),
        Left: Left("bob", lost=True),
        FileOffer: FileOffer(1, 2, bytes(32), "a.txt", "bob", 9, bytes(range(64))),
        FileAccept: FileAccept(1, 2, 3),
        FileReject: FileReject(1),
        FileCredit: FileCredit(1, 2),
        FileDone: FileDone(1, bytes(range(32)), bytes(64)),
        FileReceived: FileReceived(1),
        FileCancel: FileCancel(1, True, "why"),
    }
    for tag, kind in MESSAGES.items():
        message = samples[kind] if kind in samples else kind()
        assert tag == kind.TAG
        assert decode_payload(encode_payload(5, message, 7)) == (5, 7, message)


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
        assert decode_payload(encode_payload(0, offer)) == (0, 0, offer)
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


# --- The file messages ----------------------------------------------------------------


FILE_MESSAGES = [
    FileOffer(1, 2_400_000, bytes(32), "holiday.jpg", "alice"),
    FileOffer(2**32 - 1, 2**64 - 1, b"\xff" * 32, "x" * 1024),
    FileAccept(1, 0, 4 * 2**20),
    FileReject(3),
    FileCredit(3, 2**20),
    FileOffer(3, 10**9, bytes(32), "Holiday", "", 0, bytes(64), Bundle.FOLDER, 214),
    FileDone(4, b"\xaa" * 32),
    FileReceived(5),
    FileCancel(6, True, "changed while it was being sent"),
    FileCancel(6, False),
]


@pytest.mark.parametrize("message", FILE_MESSAGES)
def test_file_messages_round_trip(message: Message) -> None:
    assert decode_payload(encode_payload(9, message)) == (9, 0, message)


@given(st.sampled_from([13, 14, 15, 16, 17, 18, 19]), st.binary(max_size=80))
def test_file_message_bodies_fail_only_with_protocol_errors(tag: int, data: bytes) -> None:
    kind = MESSAGES[tag]
    with contextlib.suppress(ProtocolError):
        kind.decode_body(FieldReader(data, kind.__name__))


def test_an_offer_of_one_file_that_claims_more_or_of_no_kind_is_a_protocol_error() -> None:
    for offer, problem in [
        (FileOffer(1, 1, bytes(32), "a", count=2), "holds 2 files"),
        (FileOffer(1, 1, bytes(32), "a", bundle=3), "kind is 3"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ProtocolError, match=problem):
            FileOffer.decode_body(FieldReader(offer.encode_body(), "FileOffer"))


def test_an_offer_from_a_name_that_breaks_the_rules_is_refused() -> None:
    bad = FileOffer(1, 1, bytes(32), "a", "#x").encode_body()
    with pytest.raises(ProtocolError):
        FileOffer.decode_body(FieldReader(bad, "FileOffer"))


# --- The new message fields: properties ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("#\nlaptop", "control characters"),
        ("zz ", "start or end with a space"),
        ("#ops", "must not start with '#'"),
        ("e\x1b[2Jx", "control characters"),
        ("", "is empty"),
    ],
)
def test_a_peer_name_that_could_not_be_pinned_safely_is_refused(name: str, words: str) -> None:
    body = bytes(112) + name.encode()
    with pytest.raises(ProtocolError, match=f"the peer's name .*{re.escape(words)}"):
        Welcome.decode_body(FieldReader(body, "welcome"))
    with pytest.raises(ProtocolError, match=re.escape(words)):
        Refusal.decode_body(FieldReader(b"\x01\x00\x00" + name.encode(), "refusal"))


@given(
    name=st.text(min_size=1, max_size=20).filter(lambda t: name_problem(t) is None),
    identity=st.binary(min_size=32, max_size=32),
    signature=st.binary(min_size=64, max_size=64),
)
def test_welcome_round_trips(name: str, identity: bytes, signature: bytes) -> None:
    welcome = Welcome(name, identity, signature)
    assert Welcome.decode_body(FieldReader(welcome.encode_body(), "welcome")) == welcome


@given(
    reason=st.integers(0, 255),
    name=st.text(min_size=1, max_size=20).filter(lambda t: name_problem(t) is None),
)
def test_refusal_round_trips(reason: int, name: str) -> None:
    refusal = Refusal(reason, name)
    assert Refusal.decode_body(FieldReader(refusal.encode_body(), "refusal")) == refusal


@given(body=st.binary(max_size=200))
def test_new_message_bodies_fail_only_with_protocol_errors(body: bytes) -> None:
    for kind in (Welcome, Refusal, Ready):
        with contextlib.suppress(ProtocolError):
            kind.decode_body(FieldReader(body, kind.__name__))


def test_a_refusal_needs_a_name() -> None:
    with pytest.raises(ProtocolError, match="name is empty"):
        Refusal.decode_body(FieldReader(b"\x01\x00\x00", "refusal"))

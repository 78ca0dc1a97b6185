"""Property tests: the decoder and the session rules against arbitrary and tampered input."""

from __future__ import annotations

import base64
import itertools
import unicodedata

from cryptography.fernet import Fernet
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pair import ConnectionPair, Endpoint, MessageType, handshake_keys

from chatclient.errors import ProtocolError
from chatclient.messages import (
    FRAME_HEADER,
    Chat,
    FrameDecoder,
    Keepalive,
    Message,
    Terminate,
    encode_frame,
)
from chatclient.session import Session
from chatclient.text import sanitize

SETTINGS = settings(max_examples=200, deadline=None)

# One handshake for the whole module; every example starts a fresh Session from it.
CONNECTOR_KEYS, LISTENER_KEYS = handshake_keys()
TO_LISTENER = Fernet(base64.urlsafe_b64encode(LISTENER_KEYS.recv_key))


def seal(seq: int, tag: int, body: bytes) -> bytes:
    """A frame the listener can decrypt, holding any sequence number, type and body."""
    return encode_frame(TO_LISTENER.encrypt(seq.to_bytes(8, "big") + bytes([tag]) + body))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """data cut at the given offsets (taken modulo its length)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def deliver(receiver: Endpoint, frames: list[bytes]) -> tuple[list[Message], bool]:
    """What the receiver delivers from the frames, and whether it stopped with ProtocolError."""
    delivered: list[Message] = []
    try:
        receiver.receive(b"".join(frames), delivered)
    except ProtocolError:
        return delivered, True
    return delivered, False


# --- arbitrary input ---------------------------------------------------------------

pieces = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=300).map(encode_frame),
        st.integers(0, 2**32 - 1).map(FRAME_HEADER.pack),
        st.builds(
            seal,
            st.integers(0, 3),
            st.one_of(st.sampled_from(list(MessageType)), st.integers(0, 255)),
            st.one_of(st.binary(max_size=80), st.text(max_size=20).map(str.encode)),
        ),
    ),
    max_size=10,
)


@SETTINGS
@given(pieces=pieces, cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_arbitrary_bytes_only_ever_raise_protocol_error(
    pieces: list[bytes], cuts: list[int]
) -> None:
    receiver = Endpoint(Session(LISTENER_KEYS))
    delivered: list[Message] = []
    try:
        for chunk in split(b"".join(pieces), cuts):
            receiver.receive(chunk, delivered)
    except ProtocolError:
        pass
    assert all(isinstance(message, Message) for message in delivered)


@SETTINGS
@given(
    frames=st.lists(st.binary(max_size=60).map(encode_frame), max_size=8),
    tail=st.binary(max_size=8),
    cuts=st.lists(st.integers(0, 10**6), max_size=12),
)
def test_frame_decoder_splits_never_matter(
    frames: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    data = b"".join(frames) + tail

    def outcome(chunks: list[bytes]) -> tuple[list[bytes], bool, int]:
        decoder = FrameDecoder()
        bodies: list[bytes] = []
        try:
            for chunk in chunks:
                decoder.feed(chunk)
                bodies += decoder.frames()
        except ProtocolError:
            return bodies, True, 0
        return bodies, False, decoder.buffered

    assert outcome(split(data, cuts)) == outcome([data])


# --- round trips -------------------------------------------------------------------


@SETTINGS
@given(
    texts=st.lists(st.text(), max_size=20),
    cuts=st.lists(st.integers(0, 10**7), max_size=12),
    from_connector=st.booleans(),
)
def test_any_chats_round_trip_in_order(
    texts: list[str], cuts: list[int], from_connector: bool
) -> None:
    pair = ConnectionPair()
    sender = pair.connector if from_connector else pair.listener
    receiver = pair.peer(sender)
    sent = [Chat(text) for text in texts]
    wire = b"".join(sender.session.encode(message) for message in sent)
    received: list[Message] = []
    for chunk in split(wire, cuts):
        receiver.receive(chunk, received)
    assert received == sent
    assert receiver.decoder.buffered == 0


# --- tampering ----------------------------------------------------------------------

texts = st.text(max_size=30)
message = st.one_of(st.builds(Chat, texts), st.just(Keepalive()))


@st.composite
def traffic(draw: st.DrawFn) -> list[Message]:
    """Two or more messages, sometimes ending with a goodbye."""
    sent: list[Message] = draw(st.lists(message, min_size=2, max_size=8))
    if draw(st.booleans()):
        sent.append(Terminate(draw(texts)))
    return sent


def exchange(sent: list[Message], from_connector: bool) -> tuple[Endpoint, list[bytes]]:
    """The receiving endpoint of a fresh pair, and the frames its peer sent."""
    pair = ConnectionPair()
    sender = pair.connector if from_connector else pair.listener
    return pair.peer(sender), [sender.session.encode(m) for m in sent]


@SETTINGS
@given(sent=traffic(), from_connector=st.booleans(), data=st.data())
def test_dropped_frame_stops_the_receiver(
    sent: list[Message], from_connector: bool, data: st.DataObject
) -> None:
    receiver, frames = exchange(sent, from_connector)
    i = data.draw(st.integers(0, len(frames) - 2), label="dropped")  # a later frame shows it
    delivered, stopped = deliver(receiver, frames[:i] + frames[i + 1 :])
    assert stopped
    assert delivered == sent[:i]


@SETTINGS
@given(sent=traffic(), from_connector=st.booleans(), data=st.data())
def test_duplicated_frame_stops_the_receiver(
    sent: list[Message], from_connector: bool, data: st.DataObject
) -> None:
    receiver, frames = exchange(sent, from_connector)
    i = data.draw(st.integers(0, len(frames) - 1), label="duplicated")
    j = data.draw(st.integers(i + 1, len(frames)), label="copy inserted at")
    delivered, stopped = deliver(receiver, [*frames[:j], frames[i], *frames[j:]])
    assert stopped
    assert delivered == sent[:j]


@SETTINGS
@given(sent=traffic(), from_connector=st.booleans(), data=st.data())
def test_swapped_frames_stop_the_receiver(
    sent: list[Message], from_connector: bool, data: st.DataObject
) -> None:
    receiver, frames = exchange(sent, from_connector)
    i = data.draw(st.integers(0, len(frames) - 2), label="first")
    j = data.draw(st.integers(i + 1, len(frames) - 1), label="second")
    frames[i], frames[j] = frames[j], frames[i]
    delivered, stopped = deliver(receiver, frames)
    assert stopped
    assert delivered == sent[:i]


# Always tried: bit 24 is the lowest bit of the length (byte 3, bit 0); flipping it in
# a keepalive's frame (a 100-byte token) makes the body one byte longer than what was sent.
@example(sent=[Keepalive(), Keepalive()], from_connector=True, frame=0, bit=24)
@SETTINGS
@given(
    sent=traffic(),
    from_connector=st.booleans(),
    frame=st.integers(0, 10**6),
    bit=st.integers(0, 10**7),
)
def test_flipped_bit_stops_the_receiver(
    sent: list[Message], from_connector: bool, frame: int, bit: int
) -> None:
    receiver, frames = exchange(sent, from_connector)
    i = frame % len(frames)
    bit %= len(frames[i]) * 8  # bit b of byte n is number 8n + b
    altered = bytearray(frames[i])
    altered[bit // 8] ^= 1 << (bit % 8)
    frames[i] = bytes(altered)
    delivered, stopped = deliver(receiver, frames)
    assert delivered == sent[:i]
    if bit < FRAME_HEADER.size * 8:
        # A changed length may leave the receiver waiting for bytes that never come;
        # the transport then reports the connection lost.
        assert stopped or receiver.decoder.buffered > 0
    else:
        assert stopped


@SETTINGS
@given(sent=traffic(), from_connector=st.booleans(), echo=texts, data=st.data())
def test_reflected_frame_stops_the_receiver(
    sent: list[Message], from_connector: bool, echo: str, data: st.DataObject
) -> None:
    receiver, frames = exchange(sent, from_connector)
    # A frame the receiver itself sent comes back to it.
    own = receiver.session.encode(Chat(echo))
    at = data.draw(st.integers(0, len(frames)), label="reflected at")
    delivered, stopped = deliver(receiver, [*frames[:at], own, *frames[at:]])
    assert stopped
    assert delivered == sent[:at]


# --- printing ------------------------------------------------------------------------

UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
JOINERS = {"\u200c", "\u200d"}


@SETTINGS
@given(text=st.text(alphabet=st.characters(codec="utf-8")))
def test_sanitize_leaves_no_control_or_format_character(text: str) -> None:
    shown = sanitize(text)
    assert not [ch for ch in shown if unicodedata.category(ch) in UNSAFE and ch not in JOINERS]
    if text.isprintable():
        assert shown == text

"""Socket-free tests of the pure layers: keys and handshake, frames and messages, session rules."""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
from hashlib import sha256
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pair import (
    KEY,
    OTHER_PSK,
    PSK,
    ConnectionPair,
    Endpoint,
    MessageType,
    handshake_keys,
    one_frame,
)

from chatclient.cli import parse_target
from chatclient.config import decode_key, parse_port
from chatclient.errors import (
    ConfigError,
    HandshakeError,
    KeyMismatch,
    MessageTooLong,
    ProtocolError,
)
from chatclient.handshake import (
    HELLO_SIZE,
    MAGIC,
    MAX_HELLO_SIZE,
    REJECT_SIZE,
    VERSION,
    ConnectorHandshake,
    ListenerHandshake,
    Mode,
    Reject,
    key_id,
    parse_reject,
    reject_frame,
)
from chatclient.messages import (
    FRAME_HEADER,
    MAX_FRAME,
    MAX_TEXT,
    Chat,
    FileAccept,
    FileCancel,
    FileCredit,
    FileOffer,
    Form,
    FrameDecoder,
    Joined,
    Keepalive,
    Left,
    Members,
    Message,
    Person,
    Phase,
    Said,
    Say,
    Terminate,
    Welcome,
    encode_frame,
)
from chatclient.text import MAX_NAME_BYTES, sanitize

# --- helpers -------------------------------------------------------------------


def frames_of(decoder: FrameDecoder) -> list[bytes]:
    return list(decoder.frames())


KEYS = bytes(112)  # identity key, signature, room: the session does not check them


def forge(receiver: Endpoint, seq: int, tag: int, body: bytes = b"") -> bytes:
    """A validly encrypted frame body for `receiver`, laid out by hand: seq, type, body."""
    fernet = Fernet(base64.urlsafe_b64encode(receiver.session.keys.recv_key))
    return fernet.encrypt(seq.to_bytes(8, "big") + bytes([tag]) + body)


def body_of(frame: bytes) -> bytes:
    """The body of one complete frame."""
    return one_frame(frame, MAX_FRAME)


SAMPLE_BODIES = [b"", b"x", b"hello", bytes(range(256)), b"\x00\x00\x00\x05"]


# --- frames --------------------------------------------------------------------


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
    token = own_key.encrypt((1).to_bytes(8, "big") + bytes([MessageType.CHAT]) + b"hi")
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
    token = body_of(pair.connector.session.encode(Chat("hi")))
    assert token.endswith(b"==")  # a 73-byte token: its last data character has 4 unused bits
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
    bodies.update(dict.fromkeys((MessageType.FILEREJECT, MessageType.FILEDONE), bytes(4)))
    bodies[MessageType.FILERECEIVED] = bytes(4)
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


# --- sanitize --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "forbidden"),
    [
        ("\x1b]0;owned\x07title", "\x1b\x07"),
        ("\x1b[2J\x1b[31mred", "\x1b"),
        ("\x9b31mred", "\x9b"),  # C1 CSI
        ("\x85next line\x8d", "\x85\x8d"),
        ("ring\x07", "\x07"),
        ("fake\nlaptop says: hi", "\n"),
        ("overwrite\rthis", "\r"),
        ("abc\u202egpj.exe", "\u202e"),  # right-to-left override
        ("isolate\u2066x\u2069", "\u2066\u2069"),
        ("line\u2028sep\u2029para", "\u2028\u2029"),
        ("nul\x00del\x7f", "\x00\x7f"),
        ("tab\there", "\t"),
    ],
)
def test_sanitize_neutralises_controls(text: str, forbidden: str) -> None:
    shown = sanitize(text)
    assert not set(forbidden) & set(shown)
    assert shown.isprintable()
    assert shown == "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def test_sanitize_escapes_visibly() -> None:
    assert sanitize("\x1b[31mred") == "\\x1b[31mred"
    assert sanitize("a\nb\rc") == "a\\nb\\rc"
    assert sanitize("\x9b") == "\\x9b"
    assert sanitize("x\u202ey") == "x\\u202ey"


@pytest.mark.parametrize(
    "text",
    [
        "hello desktop",
        "",
        "50% off! <b>&amp;</b> \\x1b",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # ZWJ family
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: variation selector + ZWJ
        "\u0928\u094d\u200d\u092f",  # Devanagari with ZWJ
        "\u4f60\u597d e\u0301",
    ],
)
def test_sanitize_keeps_text(text: str) -> None:
    assert sanitize(text) == text


# --- configuration values --------------------------------------------------------


def test_decode_key_accepts_a_canonical_key() -> None:
    raw = decode_key(KEY, program="chatclient")
    assert raw == base64.urlsafe_b64decode(KEY)
    assert len(raw) == 32
    assert decode_key(f"  {KEY}\n", program="chatclient") == raw


def test_decode_key_accepts_urlsafe_characters() -> None:
    raw = bytes.fromhex("fbefbeffffff") * 5 + b"\x00\x01"
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    assert "-" in text and "_" in text
    assert decode_key(text, program="chatclient") == raw


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_decode_key_refuses_empty_and_mentions_init(text: str) -> None:
    with pytest.raises(ConfigError, match="--init"):
        decode_key(text, "my.ini", program="chatclient")


@pytest.mark.parametrize(
    "text",
    [
        KEY[:-2] + "=",  # 42 characters and '='
        KEY[:-1],  # padding missing
        KEY + "A",
        KEY[:-1] + "A",  # 44 characters, no '='
        base64.urlsafe_b64encode(bytes(16)).decode("ascii"),
        base64.urlsafe_b64encode(bytes(33)).decode("ascii"),
        KEY.replace("_", "*"),
        KEY[:10] + " " + KEY[11:],
    ],
)
def test_decode_key_refuses_wrong_length_or_alphabet(text: str) -> None:
    with pytest.raises(ConfigError, match="fernet_key"):
        decode_key(text, program="chatclient")


def test_decode_key_refuses_non_canonical_last_character() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # Flipping the lowest bit changes only the two bits a 32-byte key leaves unused.
    noncanonical = KEY[:-2] + alphabet[alphabet.index(KEY[-2]) ^ 1] + "="
    assert base64.urlsafe_b64decode(noncanonical) == base64.urlsafe_b64decode(KEY)
    with pytest.raises(ConfigError, match="canonical"):
        decode_key(noncanonical, program="chatclient")


def test_decode_key_refuses_standard_base64_characters() -> None:
    raw = bytes.fromhex("fbefbeffffff") * 5 + b"\x00\x01"
    standard = base64.b64encode(raw).decode("ascii")
    assert "+" in standard and "/" in standard
    with pytest.raises(ConfigError):
        decode_key(standard, program="chatclient")
    with pytest.raises(ConfigError):
        decode_key(KEY.replace("_", "/"), program="chatclient")


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("65535", 65535), (" 50233 ", 50233)])
def test_parse_port_accepts(text: str, port: int) -> None:
    assert parse_port(text, "port") == port


@pytest.mark.parametrize(
    "text", ["0", "65536", "-1", "+80", "abc", "", "1.5", "5 0", "99999999999999999999"]
)
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.ini: port must be a number from 1 to 65535"):
        parse_port(text, "config.ini: port")


@pytest.mark.parametrize("text", ["\u00b2", "1\u00b2", "\u2460"])
def test_parse_port_refuses_digit_like_characters_with_config_error(text: str) -> None:
    # str.isdigit() is true for superscripts and circled digits, but int() refuses them.
    with pytest.raises(ConfigError):
        parse_port(text, "port")


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("192.168.1.112:50233", ("192.168.1.112", 50233)),
        ("[::1]:50233", ("::1", 50233)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("laptop.local", ("laptop.local", None)),
        ("192.168.1.112", ("192.168.1.112", None)),
        ("[::1]", ("::1", None)),
        (" host:80 ", ("host", 80)),
    ],
)
def test_parse_target_accepts(text: str, target: tuple[str, int | None]) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("::1", "brackets"),
        ("fe80::1:50233", "brackets"),
        ("[::1]50233", r"\[::1\]:50233"),
        ("[::1", r"\[::1\]:50233"),
        (":50233", "no host"),
        ("", "no host"),
        ("host:0", "1 to 65535"),
        ("host:", "1 to 65535"),
        ("host:port", "1 to 65535"),
        ("[::1]:70000", "1 to 65535"),
    ],
)
def test_parse_target_refuses(text: str, words: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        parse_target(text)


# --- key ID ----------------------------------------------------------------------


def test_key_id_is_deterministic_and_short() -> None:
    assert key_id(PSK) == key_id(bytes(PSK))
    assert re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}", key_id(PSK))
    assert key_id(PSK) != key_id(OTHER_PSK)
    digest = hashlib.sha256(PSK).hexdigest()
    assert key_id(PSK) == f"{digest[:4]}-{digest[4:8]}"


def test_key_id_does_not_contain_the_key() -> None:
    shown = key_id(PSK).replace("-", "")
    raw = decode_key(KEY, program="chatclient")
    for secret in (KEY, raw.hex(), PSK.hex(), base64.urlsafe_b64encode(PSK).decode("ascii")):
        assert shown not in secret.lower()
    assert shown != hashlib.sha256(raw).hexdigest()[:8]  # not a hash of the raw key either


# --- handshake -------------------------------------------------------------------


def test_handshake_agrees_on_mirrored_keys_and_transcript() -> None:
    connector, listener = handshake_keys()
    assert connector.send_key == listener.recv_key
    assert connector.recv_key == listener.send_key
    assert connector.send_key != connector.recv_key
    assert connector.transcript == listener.transcript


def test_every_handshake_gives_fresh_keys() -> None:
    first, _ = handshake_keys()
    second, _ = handshake_keys()
    assert first.send_key != second.send_key
    assert first.transcript != second.transcript


def test_hello_frames_have_exact_sizes() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    assert len(connector.m1) == len(listener.m2) + 1 == HELLO_SIZE + 1  # M1 names its mode
    assert connector.m1.startswith(MAGIC + bytes([VERSION, Mode.SHARED_KEY]))
    assert listener.m2.startswith(MAGIC + bytes([VERSION]))
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    assert len(m3) == 64


@pytest.mark.parametrize(("connector_psk", "listener_psk"), [(PSK, OTHER_PSK), (OTHER_PSK, PSK)])
def test_wrong_psk_raises_key_mismatch_at_receive_confirm(
    connector_psk: bytes, listener_psk: bytes
) -> None:
    connector = ConnectorHandshake(connector_psk)
    listener = ListenerHandshake(listener_psk)
    m2 = listener.receive_commit(connector.m1)
    m3, _ = connector.respond(m2)  # the connector cannot tell yet
    with pytest.raises(KeyMismatch, match="fernet_key"):
        listener.receive_confirm(m3)


def test_commitment_mismatch_raises_handshake_error() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HandshakeError, match="commitment") as caught:
        listener.receive_confirm(other + m3[32:])
    assert not isinstance(caught.value, KeyMismatch)


def test_commitment_to_a_different_key_raises_handshake_error() -> None:
    # A man in the middle swaps M3 for one made by a connector it controls.
    honest = ConnectorHandshake(PSK)
    mallory = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m2 = listener.receive_commit(honest.m1)
    m3, _ = mallory.respond(m2)
    with pytest.raises(HandshakeError, match="commitment"):
        listener.receive_confirm(m3)


def test_tampered_confirm_tag_raises_key_mismatch() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    with pytest.raises(KeyMismatch):
        listener.receive_confirm(m3[:-1] + bytes([m3[-1] ^ 1]))


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_confirm_of_wrong_size_raises_protocol_error(size: int) -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    listener.receive_commit(connector.m1)
    with pytest.raises(ProtocolError):
        listener.receive_confirm(bytes(size))


LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_listener_key_refused(point: str) -> None:
    connector = ConnectorHandshake(PSK)
    with pytest.raises(HandshakeError, match="key"):
        connector.respond(MAGIC + bytes([VERSION]) + bytes.fromhex(point))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_connector_key_refused(point: str) -> None:
    public = bytes.fromhex(point)
    listener = ListenerHandshake(PSK)
    listener.receive_commit(MAGIC + bytes([VERSION, Mode.SHARED_KEY]) + sha256(public).digest())
    with pytest.raises(HandshakeError, match="key"):
        listener.receive_confirm(public + bytes(32))


def test_all_zero_key_message_says_so() -> None:
    with pytest.raises(HandshakeError, match="all-zero"):
        ConnectorHandshake(PSK).respond(MAGIC + bytes([VERSION]) + bytes(32))


@pytest.mark.parametrize("version", [0, 1, 255])
@pytest.mark.parametrize("extra", [0, 7])
def test_hello_of_another_version_raises_handshake_error(version: int, extra: int) -> None:
    hello = MAGIC + bytes([version]) + bytes(range(1, 33)) + bytes(extra)
    with pytest.raises(HandshakeError, match="version"):
        ListenerHandshake(PSK).receive_commit(hello)
    with pytest.raises(HandshakeError, match="version"):
        ConnectorHandshake(PSK).respond(hello)


@pytest.mark.parametrize(
    "hello",
    [b"", b"CCHT", b"GET / HTTP/1.1\r\n", MAGIC + bytes([VERSION]) + bytes(31), bytes(37)],
)
def test_hello_that_is_not_chatclient_raises_protocol_error(hello: bytes) -> None:
    with pytest.raises(ProtocolError):
        ListenerHandshake(PSK).receive_commit(hello)
    with pytest.raises(ProtocolError):
        ConnectorHandshake(PSK).respond(hello)


# --- rejections ------------------------------------------------------------------


def test_reject_frame_layout() -> None:
    for reason in Reject:
        frame = reject_frame(reason)
        assert frame == MAGIC + bytes([VERSION, reason])
        assert len(frame) == REJECT_SIZE


def test_parse_reject_key_mismatch() -> None:
    error = parse_reject(reject_frame(Reject.KEY_MISMATCH))
    assert isinstance(error, KeyMismatch)
    assert "fernet_key" in str(error)


def test_parse_reject_bad_version() -> None:
    error = parse_reject(reject_frame(Reject.BAD_VERSION))
    assert isinstance(error, HandshakeError)
    assert not isinstance(error, KeyMismatch)
    assert "version" in str(error)


def test_parse_reject_busy() -> None:
    error = parse_reject(reject_frame(Reject.BUSY))
    assert type(error) is HandshakeError
    assert "already chatting" in str(error)


def test_parse_reject_from_another_version_names_it() -> None:
    error = parse_reject(MAGIC + bytes([7, Reject.KEY_MISMATCH]))
    assert type(error) is HandshakeError
    assert "version 7" in str(error)


def test_parse_reject_unknown_reason() -> None:
    error = parse_reject(MAGIC + bytes([VERSION, 200]))
    assert type(error) is HandshakeError
    assert "200" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        MAGIC,
        MAGIC + bytes([VERSION]),
        MAGIC + bytes([VERSION, 1, 0]),
        b"XXXX" + bytes([VERSION, 1]),
        ListenerHandshake(PSK).m2,
    ],
)
def test_parse_reject_ignores_other_frames(body: bytes) -> None:
    assert parse_reject(body) is None


def test_first_encrypted_frame_is_never_a_rejection() -> None:
    pair = ConnectionPair(welcome=False)
    assert parse_reject(body_of(pair.listener.session.encode(Welcome("d")))) is None


def test_session_of_fresh_pair_starts_at_zero() -> None:
    pair = ConnectionPair(welcome=False)
    welcome = forge(pair.listener, 0, MessageType.WELCOME, KEYS + b"x")
    assert pair.listener.session.decode(welcome) == Welcome("x")


def test_session_refuses_handshake_frames() -> None:
    pair = ConnectionPair(welcome=False)
    for body in (reject_frame(Reject.BUSY), pair.listener.session.keys.transcript):
        with pytest.raises(ProtocolError):
            pair.listener.session.decode(body)


@pytest.mark.parametrize(
    "text",
    [
        "DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0=",  # the original example config's key
        base64.urlsafe_b64encode(bytes(32)).decode("ascii"),
        base64.urlsafe_b64encode(b"A" * 32).decode("ascii"),
        base64.urlsafe_b64encode(b"\xff" * 32).decode("ascii"),
    ],
)
def test_decode_key_refuses_public_and_weak_keys_and_says_to_run_genkey(text: str) -> None:
    with pytest.raises(ConfigError, match="--genkey") as caught:
        decode_key(text, program="chatclient")
    assert "fernet_key" in str(caught.value)


def test_readme_prints_no_key_that_would_be_accepted() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for candidate in set(re.findall(r"[A-Za-z0-9_-]{43}=", readme)):
        with pytest.raises(ConfigError, match="--genkey"):
            decode_key(candidate, program="chatclient")

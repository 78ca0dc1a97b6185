"""Frames, the field codec and every message type (pure). Each message class
registers itself under its wire tag in MESSAGES, all of them here, so decoding
never depends on which modules were imported.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import ClassVar, NamedTuple

from .errors import ChatError, MessageTooLong, ProtocolError
from .handshake import NONCE_SIZE, ROOM_ID_SIZE, check_size
from .text import LONGEST_WAIT, MAX_NAME_BYTES, name_problem, sanitize

# --- Frames, fields and messages (pure) --------------------------------------

FRAME_HEADER = struct.Struct("!I")
MAX_FRAME = 128 * 1024
MAX_TEXT = 64 * 1024
PAYLOAD_HEADER = struct.Struct("!QQB")  # seq, ack (the count of the peer's messages taken), tag


def encode_frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian length, then the body."""
    return FRAME_HEADER.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies, refusing oversized frames early.

    Frames are taken from a read offset, and the buffer is compacted only when
    the stream is fed: a 64 KiB read holding hundreds of frames costs no
    memmove per frame.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self, limit: int = MAX_FRAME) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive.

        A length above `limit` raises ProtocolError before the body is read.
        """
        start = self._start
        if len(self._buffer) - start < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buffer, start)
        if length > limit:
            raise ProtocolError(f"the peer announced a {length}-byte frame; the limit is {limit}")
        end = start + FRAME_HEADER.size + length
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:  # one copy, where slicing makes two
            body = bytes(view[start + FRAME_HEADER.size : end])
        self._start = end
        return body

    def frames(self, limit: int = MAX_FRAME) -> Iterator[bytes]:
        """Every complete frame buffered so far."""
        while (body := self.next_frame(limit)) is not None:
            yield body

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer) - self._start


# The field codec: messages with several fields write each as a fixed-width
# integer or a length-prefixed byte string; a single text field, or the last
# one, may take the rest of the body. Reading is strict: every length is
# checked against its limit before the bytes are taken, and nothing may be
# left over.
FIELD_LENGTH = struct.Struct("!I")


def int_field(value: int, size: int) -> bytes:
    """A fixed-width big-endian unsigned integer."""
    return value.to_bytes(size, "big")


def bytes_field(data: bytes) -> bytes:
    """A length-prefixed byte string (4-byte big-endian length)."""
    return FIELD_LENGTH.pack(len(data)) + data


def encode_text(text: str, limit: int, what: str) -> bytes:
    """UTF-8 bytes of text, or MessageTooLong/ChatError naming what is wrong."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatError(f"the {what} is not valid text (undecodable input): not sent") from exc
    if len(data) > limit:
        raise MessageTooLong(
            f"the {what} is {len(data)} bytes; the limit is {limit} bytes "
            f"({limit // 1024} KiB): split it and send it in parts"
        )
    return data


def decode_text(data: bytes, limit: int, what: str) -> str:
    """Strict UTF-8 decoding of a peer's text."""
    if len(data) > limit:
        raise ProtocolError(f"the peer's {what} is {len(data)} bytes, over the {limit} limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the peer's {what} is not valid UTF-8") from exc


class FieldReader:
    """Reads a message body field by field; any violation is a ProtocolError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what.upper()  # the message's name, as errors show it

    def integer(self, size: int, name: str) -> int:
        """A fixed-width big-endian unsigned integer."""
        return int.from_bytes(self._take(size, name), "big")

    def blob(self, limit: int, name: str) -> bytes:
        """A length-prefixed byte string of at most `limit` bytes."""
        length = FIELD_LENGTH.unpack(self._take(FIELD_LENGTH.size, name))[0]
        if length > limit:
            raise ProtocolError(
                f"the peer's {self._what} has a {length}-byte {name}, over the {limit} limit"
            )
        return self._take(length, name)

    def fixed(self, size: int, name: str) -> bytes:
        """Exactly `size` bytes."""
        return self._take(size, name)

    def text(self, limit: int, name: str) -> str:
        """A length-prefixed UTF-8 string of at most `limit` bytes."""
        return decode_text(self.blob(limit, name), limit, name)

    def rest_text(self, limit: int, name: str) -> str:
        """The rest of the body as UTF-8 text."""
        data = self._data[self._offset :]
        self._offset = len(self._data)
        return decode_text(data, limit, name)

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._offset

    def end(self) -> None:
        """Nothing may follow the last field."""
        if self._offset != len(self._data):
            extra = len(self._data) - self._offset
            raise ProtocolError(f"the peer's {self._what} has {extra} unexpected bytes at its end")

    def _take(self, size: int, name: str) -> bytes:
        if len(self._data) - self._offset < size:
            raise ProtocolError(f"the peer's {self._what} is cut short in its {name}")
        data = self._data[self._offset : self._offset + size]
        self._offset += size
        return data


class Phase(Enum):
    """Where one direction of a session stands."""

    AWAIT_WELCOME = "before its welcome"
    OPEN = "during the chat"
    CLOSED = "after its goodbye"


# Every message class registers itself here under its wire tag.
MESSAGES: dict[int, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    """Base of everything that travels inside an encrypted frame.

    A subclass names its wire TAG, the phase it may be sent in (AFTER) and the
    phase it leads to (LEADS_TO), and encodes and decodes its own body; defining
    it is all it takes to add a message type.
    """

    TAG: ClassVar[int] = 0
    AFTER: ClassVar[Phase] = Phase.OPEN
    ALSO_AFTER: ClassVar[tuple[Phase, ...]] = ()  # further phases it may be sent in
    LEADS_TO: ClassVar[Phase] = Phase.OPEN

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TAG == 0 and "TAG" in cls.__dict__:
            return  # a base for messages that share a body, not one itself
        if cls.TAG in MESSAGES or not 0 < cls.TAG < 256:
            raise TypeError(f"{cls.__name__}: wire tag {cls.TAG} is taken or out of range")
        MESSAGES[cls.TAG] = cls

    @classmethod
    def kind(cls) -> str:
        """The message's name as errors show it, e.g. CHAT."""
        return cls.__name__.upper()

    def encode_body(self) -> bytes:
        """The message's bytes after the payload header."""
        return b""

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        """The message from its body; ProtocolError if the body is not exactly right."""
        body.end()
        return cls()


@dataclass(frozen=True)
class Welcome(Message):
    """The first message each side sends: who it is, signed by its identity key."""

    TAG: ClassVar[int] = 1
    AFTER: ClassVar[Phase] = Phase.AWAIT_WELCOME
    name: str
    identity: bytes = bytes(32)  # Ed25519 public key
    signature: bytes = bytes(64)  # over welcome_signed_data(sender's role, th, room, name)
    room: bytes = bytes(ROOM_ID_SIZE)  # the host's room, which members' words are signed for

    def encode_body(self) -> bytes:
        check_size("identity key", self.identity, 32)
        check_size("signature", self.signature, 64)
        check_size("room", self.room, ROOM_ID_SIZE)
        name = encode_text(self.name, MAX_NAME_BYTES, "username")
        return self.identity + self.signature + self.room + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        identity = body.fixed(32, "identity key")
        signature = body.fixed(64, "signature")
        room = body.fixed(ROOM_ID_SIZE, "room")
        return cls(peer_name(body), identity, signature, room)


@dataclass(frozen=True)
class Chat(Message):
    """A line of text typed by a person."""

    TAG: ClassVar[int] = 2
    text: str

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "message")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "message"))


@dataclass(frozen=True)
class Terminate(Message):
    """The last message of a side that leaves, with optional goodbye text."""

    TAG: ClassVar[int] = 3
    LEADS_TO: ClassVar[Phase] = Phase.CLOSED
    text: str = ""

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "goodbye text")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "goodbye text"))


@dataclass(frozen=True)
class Keepalive(Message):
    """Sent on an idle link so a vanished peer is noticed."""

    TAG: ClassVar[int] = 4

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        if body.remaining:
            raise ProtocolError("the peer sent a keepalive with a body")
        return cls()


@dataclass(frozen=True)
class Action(Message):
    """An action in the third person (`/me waves`), shown as `* laptop waves`."""

    TAG: ClassVar[int] = 5
    text: str

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "action")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "action"))


@dataclass(frozen=True)
class Ready(Message):
    """The connector accepts the listener's identity: the chat starts on both sides."""

    TAG: ClassVar[int] = 6


class Refuse(IntEnum):
    """Why a side refuses the other's identity (a REFUSAL's reason)."""

    IDENTITY_CHANGED = 1  # a different identity is pinned under the sender's name
    NOT_A_CONTACT = 2  # no key, no code, and an identity the listener does not know
    UNKNOWN_LISTENER = 3  # a connector expected a contact and met a stranger
    NAME_TAKEN = 4  # someone in the room already has that name
    ROOM_FULL = 5  # the room has its most members (the number says how many)
    ENDED_ROOM = 6  # a connector saw this host's room (its id) end before


@dataclass(frozen=True)
class Refusal(Message):
    """A side refuses the other's identity, in place of its WELCOME or READY."""

    TAG: ClassVar[int] = 7
    AFTER: ClassVar[Phase] = Phase.AWAIT_WELCOME
    ALSO_AFTER: ClassVar[tuple[Phase, ...]] = (Phase.OPEN,)
    LEADS_TO: ClassVar[Phase] = Phase.CLOSED
    reason: int
    name: str  # who refuses: the connector has not seen the listener's WELCOME
    number: int = 0  # ROOM_FULL: the room's size

    def encode_body(self) -> bytes:
        name = encode_text(self.name, MAX_NAME_BYTES, "username")
        return int_field(self.reason, 1) + int_field(self.number, 2) + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        reason = body.integer(1, "reason")
        number = body.integer(2, "number")
        return cls(reason, peer_name(body), number)


class Form(IntEnum):
    """What a member's words are: said, an action (/me), or their goodbye."""

    CHAT = 1
    ACTION = 2
    GOODBYE = 3  # for the room only, and the member's last words: TERMINATE follows


@dataclass(frozen=True)
class Say(Message):
    """A member's own words, for the room or (with `to`) one person, signed by the member.

    Only members send it; the host relays it as SAID, and every receiver checks the
    signature against the author's identity, so the host cannot put words in anyone's
    mouth. `seq` counts the author's words to each audience (the room, or one person).
    """

    TAG: ClassVar[int] = 8
    form: int
    seq: int
    signature: bytes  # over words_signed_data(host identity, room, author, this)
    to: str  # "" for the whole room
    text: str

    def encode_body(self) -> bytes:
        to = bytes_field(encode_text(self.to, MAX_NAME_BYTES, "name"))
        head = int_field(self.form, 1) + int_field(self.seq, 8) + self.signature + to
        return head + encode_text(self.text, MAX_TEXT, "message")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(*read_words(body))


@dataclass(frozen=True)
class Said(Message):
    """Words the host relays: the author's SAY, unchanged, with the author's name."""

    TAG: ClassVar[int] = 9
    author: str
    words: Say

    def encode_body(self) -> bytes:
        author = bytes_field(encode_text(self.author, MAX_NAME_BYTES, "name"))
        return author + self.words.encode_body()

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        author = checked_name(body.text(MAX_NAME_BYTES, "author"))
        return cls(author, Say(*read_words(body)))


def read_words(body: FieldReader) -> tuple[int, int, bytes, str, str]:
    """The fields of a SAY, strictly."""
    form = body.integer(1, "form")
    if form not in {f.value for f in Form}:
        raise ProtocolError(f"the peer sent words of an unknown form {form}")
    seq = body.integer(8, "sequence")
    signature = body.fixed(64, "signature")
    to = body.text(MAX_NAME_BYTES, "recipient")
    if to:
        checked_name(to)
    if to and form == Form.GOODBYE:
        raise ProtocolError("the peer sent a goodbye to one person (goodbyes are for the room)")
    return form, seq, signature, to, body.rest_text(MAX_TEXT, "message")


NO_NONCE = bytes(NONCE_SIZE)  # the host's, and the room's as an audience: it has no join


class Person(NamedTuple):
    """Someone in a room, as the host announces them."""

    name: str
    identity: bytes
    address: str  # as the host sees it
    seconds: int = 0  # in the room so far
    nonce: bytes = NO_NONCE  # chosen by the person for this join; their words are signed over it
    next: int = 0  # the number their next words to the room will carry


@dataclass(frozen=True)
class Members(Message):
    """Who else is in the room: the host's first message to a member after READY."""

    TAG: ClassVar[int] = 10
    people: tuple[Person, ...] = ()
    # The room's running hash, and how many public messages it covers, just after this
    # member's own JOINED: where this member's /verify room starts.
    head: bytes = bytes(32)
    count: int = 0

    def encode_body(self) -> bytes:
        head = check_size("room head", self.head, 32) + int_field(self.count, 8)
        return head + int_field(len(self.people), 1) + b"".join(map(encode_person, self.people))

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        head, count = body.fixed(32, "room head"), body.integer(8, "count of messages")
        people = tuple(decode_person(body) for _ in range(body.integer(1, "count")))
        body.end()
        return cls(people, head, count)


@dataclass(frozen=True)
class Echo(Message):
    """The host to a member: its words to the room up to number SEQ went to the room, at
    this point of what the host sends it (for /verify room)."""

    TAG: ClassVar[int] = 20
    seq: int

    def encode_body(self) -> bytes:
        return int_field(self.seq, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        seq = body.integer(8, "sequence")
        body.end()
        return cls(seq)


@dataclass(frozen=True)
class Joined(Message):
    """Someone joined the room (host -> members)."""

    TAG: ClassVar[int] = 11
    person: Person

    def encode_body(self) -> bytes:
        return encode_person(self.person)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        person = decode_person(body)
        body.end()
        return cls(person)


def encode_person(person: Person) -> bytes:
    """identity, join nonce, next number, seconds, address, name: one person's fields."""
    address = bytes_field(encode_text(person.address, MAX_NAME_BYTES, "address"))
    name = bytes_field(encode_text(person.name, MAX_NAME_BYTES, "name"))
    return (
        check_size("identity key", person.identity, 32)
        + check_size("join nonce", person.nonce, NONCE_SIZE)
        + int_field(person.next, 8)
        + int_field(person.seconds, 4)
        + (address + name)
    )


def decode_person(body: FieldReader) -> Person:
    """One person, strictly (the name held to the rules of a username)."""
    identity = body.fixed(32, "identity key")
    nonce = body.fixed(NONCE_SIZE, "join nonce")
    following = body.integer(8, "next number")
    seconds = body.integer(4, "seconds")
    address = sanitize(body.text(MAX_NAME_BYTES, "address"))
    name = checked_name(body.text(MAX_NAME_BYTES, "name"))
    return Person(name, identity, address, seconds, nonce, following)


@dataclass(frozen=True)
class Left(Message):
    """Someone left the room (host -> members): said goodbye, or lost. The goodbye's words
    come before it, as the member's own signed SAY (form GOODBYE)."""

    TAG: ClassVar[int] = 12
    name: str
    lost: bool = False

    def encode_body(self) -> bytes:
        name = bytes_field(encode_text(self.name, MAX_NAME_BYTES, "name"))
        return int_field(int(self.lost), 1) + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        lost = body.integer(1, "how") == 1
        name = checked_name(body.text(MAX_NAME_BYTES, "name"))
        body.end()
        return cls(name, lost)


# Files. A sender numbers its offers on each connection (ID); the receiver's ACCEPT,
# REJECT, CREDIT and RECEIVED name that number, and a CANCEL says whose it is.
# Through a host, each leg has its own numbers, and WHO names the far end: on the
# way to the host the one a file is for, on the way from it the one who offers it
# ("" is the host itself).
MAX_OFFERED_NAME = 1024  # bytes of a file name on the wire (a safe one is made of it)
MAX_REASON = 256


class Bundle(IntEnum):
    """What an offer carries: one file, a folder, or several files."""

    FILE = 0
    FOLDER = 1
    FILES = 2


MAX_BUNDLE_FILES = 10_000  # files in one folder or multi-file offer


@dataclass(frozen=True)
class FileOffer(Message):
    """A file, a folder or several files offered: the name, the size and a fingerprint.

    The SHA-256 comes with FILEDONE, so the offer leaves before the file is read. A
    FOLDER or FILES offer moves as one stream: its list of entries, then their data.
    """

    TAG: ClassVar[int] = 13
    id: int
    size: int
    fingerprint: bytes
    name: str
    who: str = ""
    # A member's offer for another member, relayed by the host: the author's own id for it
    # (on its connection to the host) and the author's signature (offer_signed_data).
    origin: int = 0
    signature: bytes = bytes(64)
    bundle: Bundle = Bundle.FILE
    count: int = 1  # files in it

    def encode_body(self) -> bytes:
        return (
            int_field(self.id, 4)
            + int_field(self.size, 8)
            + check_size("fingerprint", self.fingerprint, 32)
            + int_field(self.bundle, 1)
            + int_field(self.count, 4)
            + bytes_field(encode_text(self.who, MAX_NAME_BYTES, "a name"))
            + int_field(self.origin, 4)
            + check_size("signature", self.signature, 64)
            + encode_text(self.name, MAX_OFFERED_NAME, "a file name")
        )

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, size = body.integer(4, "id"), body.integer(8, "size")
        fingerprint = body.fixed(32, "fingerprint")
        kind, count = body.integer(1, "kind"), body.integer(4, "count")
        if kind not in {int(b) for b in Bundle}:
            raise ProtocolError(f"an OFFER's kind is {kind}, not 0, 1 or 2")
        if kind == Bundle.FILE and count != 1:
            raise ProtocolError(f"an OFFER of one file says it holds {count} files")
        who = body.text(MAX_NAME_BYTES, "who")
        if who:
            checked_name(who)
        origin, signature = body.integer(4, "origin"), body.fixed(64, "signature")
        name = body.rest_text(MAX_OFFERED_NAME, "name")
        return cls(number, size, fingerprint, name, who, origin, signature, Bundle(kind), count)


@dataclass(frozen=True)
class FileAccept(Message):
    """The receiver takes an offer from OFFSET on (past it, a resume) and grants CREDIT
    bytes: the sender sends no more than it was granted."""

    TAG: ClassVar[int] = 14
    id: int
    offset: int
    credit: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4) + int_field(self.offset, 8) + int_field(self.credit, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, offset = body.integer(4, "id"), body.integer(8, "offset")
        credit = body.integer(8, "credit")
        body.end()
        return cls(number, offset, credit)


@dataclass(frozen=True)
class FileAbout(Message):
    """A base: a file message whose body is the transfer's id alone."""

    TAG: ClassVar[int] = 0
    id: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number = body.integer(4, "id")
        body.end()
        return cls(number)


@dataclass(frozen=True)
class FileReject(FileAbout):
    """The receiver declines an offer."""

    TAG: ClassVar[int] = 15


@dataclass(frozen=True)
class FileCredit(Message):
    """The receiver has written AMOUNT more bytes to disk: the sender may send them."""

    TAG: ClassVar[int] = 16
    id: int
    amount: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4) + int_field(self.amount, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, amount = body.integer(4, "id"), body.integer(8, "amount")
        body.end()
        return cls(number, amount)


@dataclass(frozen=True)
class FileDone(Message):
    """The sender has sent every byte, found the file unchanged, and gives its SHA-256
    (for a member's file relayed by the host, signed by the member: done_signed_data)."""

    TAG: ClassVar[int] = 17
    id: int
    digest: bytes
    signature: bytes = bytes(64)

    def encode_body(self) -> bytes:
        return (
            int_field(self.id, 4)
            + check_size("SHA-256", self.digest, 32)
            + check_size("signature", self.signature, 64)
        )

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, digest = body.integer(4, "id"), body.fixed(32, "SHA-256")
        signature = body.fixed(64, "signature")
        body.end()
        return cls(number, digest, signature)


@dataclass(frozen=True)
class FileReceived(FileAbout):
    """The receiver has every byte, the SHA-256 matched, and the file is saved."""

    TAG: ClassVar[int] = 18


@dataclass(frozen=True)
class FileCancel(Message):
    """A transfer stops. MINE: the one cancelling sends it (else it receives it). KEEP: a
    pause, the receiver keeps what arrived so that offering the file again resumes it."""

    TAG: ClassVar[int] = 19
    id: int
    mine: bool
    reason: str = ""
    keep: bool = False

    def encode_body(self) -> bytes:
        reason = encode_text(self.reason, MAX_REASON, "a reason")
        flags = int_field(int(self.mine), 1) + int_field(int(self.keep), 1)
        return int_field(self.id, 4) + flags + reason

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, mine = body.integer(4, "id"), body.integer(1, "mine")
        keep = body.integer(1, "keep")
        if mine > 1 or keep > 1:
            raise ProtocolError(f"a CANCEL's flags are {mine} and {keep}, not 0 or 1")
        return cls(number, bool(mine), body.rest_text(MAX_REASON, "reason"), bool(keep))


@dataclass(frozen=True)
class Resumed(Message):
    """The first message of each side on a resumed connection: how many of the peer's
    messages it has taken (the peer sends the rest again), and the number of the oldest
    of its own it still keeps (older ones unacknowledged were let go: missed)."""

    TAG: ClassVar[int] = 21
    taken: int
    first: int

    def encode_body(self) -> bytes:
        return int_field(self.taken, 8) + int_field(self.first, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        taken, first = body.integer(8, "count"), body.integer(8, "first kept")
        body.end()
        return cls(taken, first)


@dataclass(frozen=True)
class Absent(Message):
    """The host to the other members: NAME lost the connection and its place is kept for
    SECONDS to resume (0: NAME is back)."""

    TAG: ClassVar[int] = 22
    name: str
    seconds: int

    def encode_body(self) -> bytes:
        name = bytes_field(encode_text(self.name, MAX_NAME_BYTES, "name"))
        return int_field(self.seconds, 4) + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        seconds = body.integer(4, "seconds")
        if seconds > LONGEST_WAIT:
            raise ProtocolError(f"the host says it keeps a place for {seconds} s: over a week")
        name = checked_name(body.text(MAX_NAME_BYTES, "name"))
        body.end()
        return cls(name, seconds)


# Not numbered: they carry the numbering itself, or nothing (every other message after
# READY is numbered, from 1, per session).
UNNUMBERED = (Keepalive, Resumed)

FILE_MESSAGES = (FileOffer, FileAccept, FileReject, FileCredit, FileDone, FileReceived, FileCancel)

# A chunk of file data travels as a frame of its own, not a Fernet token: MARK, the
# transfer's id (4), the offset (8), then the data sealed with AES-256-GCM under the
# direction's file key. The nonce is the direction (4) and the number of chunks sent
# before on this connection in that direction (8), so it never repeats under a key;
# the associated data binds the label, the id and the offset. A Fernet token starts
# with "g", so MARK (0) never begins one.
CHUNK_MARK = 0
CHUNK_HEADER = struct.Struct("!BIQ")
CHUNK_LABEL = b"chatclient/2 chunk\0"
CHUNK_SIZE = 64 * 1024
CHUNK_TAG_SIZE = 16


def chunk_nonce(direction: int, counter: int) -> bytes:
    """A chunk's AES-GCM nonce: the direction, then the counter."""
    return struct.pack("!IQ", direction, counter)


def chunk_associated_data(transfer: int, offset: int) -> bytes:
    """What a chunk's tag covers besides its data."""
    return CHUNK_LABEL + struct.pack("!IQ", transfer, offset)


def checked_name(name: str) -> str:
    """`name` if it follows the rules of a username, else ProtocolError."""
    if (problem := name_problem(name)) is not None:
        raise ProtocolError(f"the peer's name {problem}")
    return name


def peer_name(body: FieldReader) -> str:
    """The rest of the body as a name, held to the rules of our own usernames."""
    return checked_name(body.rest_text(MAX_NAME_BYTES, "username"))


def encode_payload(seq: int, message: Message, ack: int = 0, body: bytes | None = None) -> bytes:
    """The plaintext inside a Fernet token: sequence, acknowledgement, type, body (`body`:
    the message's, encoded already)."""
    return PAYLOAD_HEADER.pack(seq, ack, message.TAG) + (
        message.encode_body() if body is None else body
    )


def decode_payload(data: bytes) -> tuple[int, int, Message]:
    """Parse a decrypted payload into its sequence number, acknowledgement and message."""
    if len(data) < PAYLOAD_HEADER.size:
        raise ProtocolError("the peer sent a truncated message")
    seq, ack, tag = PAYLOAD_HEADER.unpack_from(data)
    kind = MESSAGES.get(tag)
    if kind is None:
        raise ProtocolError(f"the peer sent an unknown message type {tag}")
    body = FieldReader(data[PAYLOAD_HEADER.size :], kind.__name__)
    return seq, ack, kind.decode_body(body)

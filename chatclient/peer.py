"""One connection's state machine (pure), shaped like h11's Connection: bytes in,
events out, bytes to send, and the clock passed in.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from .config import DEAD_AFTER_INTERVALS, HANDSHAKE_SECONDS, KEEPALIVE_SECONDS
from .errors import (
    ChatError,
    ConnectionLost,
    HandshakeError,
    KeyMismatch,
    NotAuthentic,
    ProtocolError,
)
from .handshake import (
    MAX_HELLO_SIZE,
    NONCE_SIZE,
    ROOM_ID_SIZE,
    UNAUTHENTICATED_TEXT,
    WRONG_CODE_TEXT,
    ConnectorHandshake,
    ListenerHandshake,
    Mode,
    Reject,
    Rejected,
    Role,
    SessionKeys,
    parse_reject,
    reject_frame,
    resume_id,
    verify_signature,
    welcome_signed_data,
)
from .identity import Invite
from .messages import (
    CHUNK_MARK,
    MAX_FRAME,
    UNNUMBERED,
    FileAccept,
    FrameDecoder,
    Keepalive,
    Members,
    Message,
    Ready,
    Refusal,
    Refuse,
    Resumed,
    Welcome,
    encode_frame,
)
from .resume import ACK_EVERY, MAX_MISSED, Carry
from .session import Session
from .text import sanitize

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


# --- Peer protocol: one connection's state machine (pure) ---------------------
#
# Shaped like h11's Connection: bytes in with receive_data(), events out with
# next_event(), bytes out with send() and data_to_send(), and the clock passed
# in, so the handshake order, its deadline and the keepalive and silence rules
# all live here and are tested without sockets.


class Stage(Enum):
    """Where a connection stands, in the order the handshake goes through."""

    HELLO = "before the hello"  # listener: waits for M1; connector: waits for M2
    CONFIRM = "before the confirmation"  # listener: waits for M3
    PROVEN = "waiting to be admitted"  # listener: key proven; admit() or refuse()
    WELCOME = "before the welcome"  # both: wait for the peer's WELCOME
    READY = "before the peer is ready"  # listener: waits for the connector's READY
    OPEN = "chatting"
    CLOSED = "closed"


HANDSHAKE_STAGES = frozenset({Stage.HELLO, Stage.CONFIRM, Stage.PROVEN, Stage.WELCOME, Stage.READY})


class IdentityRefused(HandshakeError):
    """This side refuses the identity the peer offered under `name`; the peer is told why."""

    def __init__(
        self,
        reason: Refuse,
        text: str,
        name: str = "",
        number: int = 0,
        told: Refuse | None = None,
    ) -> None:
        super().__init__(text)
        self.reason = reason
        self.name = name
        self.number = number
        # What the peer is told, when it must learn less than this side knows (a stranger
        # claiming a contact's name is told what any stranger is told).
        self.told = reason if told is None else told


# Decides whether the identity a peer offers under a name may in (for this mode):
# returns, or raises IdentityRefused.
Judge = Callable[[str, bytes, Mode], None]


def accept_anyone(name: str, identity: bytes, mode: Mode) -> None:
    """A judge that lets every identity in (tests, benchmarks)."""


# A connector's check of the host's room (host identity, room id): why it must not join
# (a room that ended before), or "".
RoomCheck = Callable[[bytes, bytes], str]


def any_room(host: bytes, room: bytes) -> str:
    """A room check that lets every room through (tests, benchmarks)."""
    return ""


def refusal_error(refusal: Refusal, our_name: str) -> HandshakeError:
    """What a peer's REFUSAL means, told from this side."""
    them, us = sanitize(refusal.name), sanitize(our_name)
    if refusal.reason == Refuse.NOT_A_CONTACT:
        return HandshakeError(f"you are not one of {them}'s contacts: ask for an invite code")
    if refusal.reason == Refuse.IDENTITY_CHANGED:
        return HandshakeError(
            f"{them} refused the connection: it knows a different identity under your name "
            f"{us}. If you made a new identity, {them} can run --forget {us}; if not, "
            "someone else may be using your name"
        )
    if refusal.reason == Refuse.NAME_TAKEN:
        return HandshakeError(
            f"the name {us} is already taken in this chat: choose another with --username"
        )
    if refusal.reason == Refuse.ROOM_FULL:
        people = "person" if refusal.number == 1 else "people"
        return HandshakeError(f"the chat is full ({refusal.number} {people})")
    if refusal.reason == Refuse.ENDED_ROOM:
        return HandshakeError(
            f"{them} refused to join: your room id is one of a room it saw end. A host "
            "starts a new room each time it is started; one that brings an old room back "
            "could replay what was said there"
        )
    if refusal.reason == Refuse.UNKNOWN_LISTENER:
        return HandshakeError(
            f"{them} refused the connection: it connected to reach one of its contacts, "
            "and your identity is not one of them"
        )
    return HandshakeError(f"{them} refused the connection (reason {refusal.reason})")


@dataclass(frozen=True)
class Event:
    """Something that happened on a connection."""


@dataclass(frozen=True)
class KeyProven(Event):
    """The connector proved it holds the key (listener only): admit() or refuse() it."""


@dataclass(frozen=True)
class Established(Event):
    """Both WELCOMEs went through: the peer's name and verified identity key."""

    name: str
    identity: bytes
    mode: Mode
    room: bytes = bytes(ROOM_ID_SIZE)  # the host's room id
    nonce: bytes = bytes(NONCE_SIZE)  # the member's join nonce (the connector's, fresh)
    resumed: bool = False  # a session that lost its connection goes on (mode 4)


@dataclass(frozen=True)
class Away(Event):
    """The chat's connection was lost and the session is kept for `seconds` to resume (the
    connector tries to reconnect; the host keeps the member's place)."""

    name: str
    reason: str
    seconds: float


@dataclass(frozen=True)
class Back(Event):
    """A session that was away goes on: after `seconds`, this side sent `resent` messages
    again and `missed` of the peer's were let go before they reached it."""

    name: str
    seconds: float
    resent: int
    missed: int
    lost: int = 0  # of this side's, let go before they reached the peer (its bounds)


@dataclass(frozen=True)
class Caught(Event):
    """A resumed session is in step again: this side sent `resent` messages again, `lost`
    of its own were let go before the peer had them, and `missed` of the peer's were let go
    before they reached it (each side's bounds). `again` holds the ids of the transfers a
    FILEACCEPT sent again was about."""

    resent: int
    missed: int
    lost: int = 0
    again: frozenset[int] = frozenset()


@dataclass(frozen=True)
class MessageReceived(Event):
    """A verified message from the peer (keepalives are not reported)."""

    message: Message


@dataclass(frozen=True)
class ChunkReceived(Event):
    """A chunk of file data, opened: its transfer's id on this connection, offset, bytes."""

    transfer: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Closed(Event):
    """The connection ended cleanly: end of stream after a goodbye."""


@dataclass(frozen=True)
class Failed(Event):
    """The connection failed; nothing more comes from it."""

    error: ChatError


class PeerProtocol:
    """One connection: handshake, frame decoder, session and timers, with no I/O.

    The order, once the keys are agreed: the connector sends M3 and its signed
    WELCOME; the listener checks it and answers with its own WELCOME (or a
    REFUSAL); the connector checks that and answers READY (or a REFUSAL). Each
    side reports Established only when the other has accepted it.
    """

    def __init__(
        self,
        role: Role,
        psk: bytes | None,
        name: str,
        now: float,
        *,
        identity: Ed25519PrivateKey | None = None,
        judge: Judge = accept_anyone,
        code: str | None = None,
        invite: Invite | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
        room_check: RoomCheck = any_room,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        keepalive: float = KEEPALIVE_SECONDS,
        private_key: X25519PrivateKey | None = None,
        resume: Carry[Message] | None = None,
        sessions: Callable[[bytes], Carry[Message] | None] | None = None,
    ) -> None:
        self.role = role
        self.name = name
        self.room = room  # the listener's own; the connector learns the host's
        # The member's join nonce: the connector's own, fresh for each connection, sent in
        # its WELCOME's room field; the listener learns it there.
        self.nonce = secrets.token_bytes(NONCE_SIZE) if role is Role.CONNECTOR else b""
        self._room_check = room_check
        self.stage = Stage.HELLO
        self.peer_name = ""
        self.peer_identity = b""
        self.greeted = False  # a valid M1 arrived (listener): evicted after silent ones
        self.abandoned = False  # the connector went away between M2 and M3 (listener)
        self.link_lost = False  # the link broke (not the peer's doing): the session may resume
        self.keepalive = keepalive
        self.silence_limit = keepalive * DEAD_AFTER_INTERVALS
        if identity is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity = Ed25519PrivateKey.generate()
        self._identity = identity
        self.identity = identity.public_key().public_bytes_raw()
        self._judge = judge
        self._handshake_seconds = handshake_seconds
        self._deadline = now + handshake_seconds
        self._last_received = now
        self._last_sent = now
        self._decoder = FrameDecoder()
        self._events: deque[Event] = deque()
        self._outgoing = bytearray()
        self._session: Session | None = None
        self._keys: SessionKeys | None = None
        self._connector: ConnectorHandshake | None = None
        self._listener: ListenerHandshake | None = None
        # What outlives this connection (the session's numbering, what is kept for the
        # peer, the resume secret): the one being resumed, or a new one once established.
        self.carry = resume
        self._caught_up = resume is None  # a resume: nothing goes out before the peer's RESUMED
        if role is Role.CONNECTOR:
            secret = resume.secret if resume is not None else None
            self._connector = ConnectorHandshake(psk, private_key, code=code, resume=secret)
            self.mode = self._connector.mode
            self._outgoing += encode_frame(self._connector.m1)
        else:

            def kept(named: bytes) -> bytes | None:
                self.carry = sessions(named) if sessions is not None else None
                self._caught_up = self.carry is None
                return self.carry.secret_named(named, resume_id) if self.carry else None

            self._listener = ListenerHandshake(psk, private_key, invite=invite, sessions=kept)
            self.mode = Mode.SHARED_KEY  # until M1 says

    # Bytes and events -------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer; b"" means the peer closed its end."""
        if self.stage is Stage.CLOSED:
            return
        if not data:
            self._end_of_stream()
            return
        self._last_received = now
        self._decoder.feed(data)
        self._process()

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        """Every event not yet taken, oldest first."""
        while (event := self.next_event()) is not None:
            yield event

    def data_to_send(self) -> bytes:
        """Bytes this side owes the peer (hellos, WELCOME, rejections, keepalives)."""
        if not self._outgoing:
            return b""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def pending(self) -> bool:
        """True when events or bytes are waiting to be taken."""
        return bool(self._events or self._outgoing)

    def send(self, message: Message, now: float) -> bytes:
        """The frame carrying `message`, for the transport to write after data_to_send().

        Every message but KEEPALIVE and RESUMED is numbered and kept until the peer
        acknowledges it (each message carries this side's count of the peer's); on a
        resumed connection nothing new goes out (it is kept, and sent in order) until the
        peer's RESUMED says where it stands."""
        if self.stage is not Stage.OPEN or self._session is None:
            raise ProtocolError(f"cannot send {message.kind()} {self.stage.value}")
        body = message.encode_body()  # once: its size is what the outbox counts
        if self.carry is not None and not isinstance(message, UNNUMBERED):
            self.carry.outbox.add(message, len(body))
            if not self._caught_up:
                return b""
        frame = self._encode(message, body)
        self._last_sent = now
        return frame

    def _encode(self, message: Message, body: bytes | None = None) -> bytes:
        """`message` (`body`: its body, encoded already) with this side's acknowledgement
        of what it took of the peer's."""
        assert self._session is not None
        carry = self.carry
        if carry is None:
            return self._session.encode(message, 0, body)
        carry.acknowledged = carry.inbox.taken
        return self._session.encode(message, carry.inbox.taken, body)

    def send_chunk(self, transfer: int, offset: int, data: bytes, now: float) -> bytes:
        """The frame carrying a chunk of file data, sealed with the next nonce."""
        if self.stage is not Stage.OPEN or self._session is None:
            raise ProtocolError(f"cannot send file data {self.stage.value}")
        frame = self._session.seal_chunk(transfer, offset, data)
        self._last_sent = now
        return frame

    # The listener's decision once the key is proven -------------------------

    def admit(self) -> None:
        """Let a proven connector on to its WELCOME (which may already be here)."""
        if self.stage is not Stage.PROVEN or self._keys is None:
            raise ProtocolError(f"cannot admit a connection {self.stage.value}")
        self._session = Session(self._keys)
        self.stage = Stage.WELCOME
        self._process()

    def refuse(self, reason: Reject) -> None:
        """Tell the connector why it is refused; the connection is over."""
        self._outgoing += encode_frame(reject_frame(reason))
        self.stage = Stage.CLOSED

    # Time ---------------------------------------------------------------------

    def timers(self, now: float) -> float | None:
        """Apply the deadlines due by `now`; the time of the next one, or None.

        The handshake has one deadline from the start, so a peer trickling bytes
        cannot stretch it. An open chat sends a keepalive after `keepalive` idle
        seconds and gives up on a peer silent for `silence_limit`.
        """
        if self.stage in HANDSHAKE_STAGES:
            if now >= self._deadline:
                self.abandoned = self.stage is Stage.CONFIRM
                self._fail(
                    HandshakeError(
                        f"the handshake did not finish within {self._handshake_seconds:g} s"
                    )
                )
                return None
            return self._deadline
        if self.stage is not Stage.OPEN or self._session is None:
            return None
        if now - self._last_received >= self.silence_limit:
            self.link_lost = True
            self._fail(
                ConnectionLost(
                    f"nothing heard from the peer for {self.silence_limit:g} s "
                    "(it may be offline or the network is down)"
                )
            )
            return None
        silence_due = self._last_received + self.silence_limit
        if self._session.we_left:
            return silence_due
        if now - self._last_sent >= self.keepalive:
            self._outgoing += self._encode(Keepalive())
            self._last_sent = now
        return min(silence_due, self._last_sent + self.keepalive)

    def connection_failed(self, reason: str, lost: bool = False) -> None:
        """The connection ends with `reason` (`lost`: the transport broke, a reset or a
        read error, so the session may resume; else this side put the peer out)."""
        if self.stage is Stage.OPEN:  # once closed, how it ended stays as it was
            self.link_lost = lost
        if self.stage in HANDSHAKE_STAGES:
            self.abandoned = self.stage is Stage.CONFIRM
            self._fail(HandshakeError(f"the connection failed during the handshake: {reason}"))
        elif self.stage is Stage.OPEN:
            self._fail(ConnectionLost(reason))

    @property
    def peer_left(self) -> bool:
        """True once the peer's goodbye (TERMINATE) has arrived."""
        return self._session is not None and self._session.peer_left

    # The handshake order ------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete frame, in the order the stages allow."""
        try:
            while self.stage not in (Stage.PROVEN, Stage.CLOSED):
                body = self._next_frame()
                if body is None:
                    return
                self._handle(body)
        except ChatError as exc:
            self._fail(exc)

    def _next_frame(self) -> bytes | None:
        if self.stage is Stage.OPEN:
            return self._decoder.next_frame(MAX_FRAME)
        limit = MAX_FRAME if self.stage in (Stage.WELCOME, Stage.READY) else MAX_HELLO_SIZE
        try:
            return self._decoder.next_frame(limit)
        except ProtocolError as exc:
            raise HandshakeError(
                f"the other side is not speaking the chatclient protocol ({exc})"
            ) from exc

    def _handle(self, body: bytes) -> None:
        if self.stage is Stage.OPEN:
            self._on_message(body)
        elif self.stage is Stage.HELLO and self._listener is not None:
            self._on_commit(self._listener, body)
        elif self.stage is Stage.HELLO and self._connector is not None:
            self._on_listener_hello(self._connector, body)
        elif self.stage is Stage.CONFIRM and self._listener is not None:
            self._on_confirm(self._listener, body)
        elif self.stage is Stage.WELCOME:
            self._on_welcome(body)
        elif self.stage is Stage.READY:
            self._on_ready(body)

    def _on_commit(self, handshake: ListenerHandshake, m1: bytes) -> None:
        try:
            m2 = handshake.receive_commit(m1)
        except Rejected as exc:
            self._outgoing += encode_frame(reject_frame(exc.reason))
            raise
        self.mode = handshake.mode
        self.greeted = True
        self._outgoing += encode_frame(m2)
        self.stage = Stage.CONFIRM

    def _on_listener_hello(self, handshake: ConnectorHandshake, m2: bytes) -> None:
        if (refusal := parse_reject(m2)) is not None:
            raise refusal
        m3, self._keys = handshake.respond(m2)
        self._session = Session(self._keys)
        self._outgoing += encode_frame(m3) + self._session.encode(self._welcome())
        self.stage = Stage.WELCOME

    def _on_confirm(self, handshake: ListenerHandshake, m3: bytes) -> None:
        try:
            self._keys = handshake.receive_confirm(m3)
        except KeyMismatch as exc:
            self._outgoing += encode_frame(reject_frame(Reject.KEY_MISMATCH))
            if self.mode is Mode.RESUME:
                raise KeyMismatch(
                    "it tried to resume a chat without proving its secret (a replay, or not "
                    "the peer that held it)"
                ) from exc
            raise
        except Rejected as exc:
            self._outgoing += encode_frame(reject_frame(exc.reason))
            raise
        if self.carry is not None:  # the connector holds this secret once it sends READY
            self.carry.pending = self._keys.resume_secret
        self.stage = Stage.PROVEN
        self._events.append(KeyProven())

    def _on_welcome(self, body: bytes) -> None:
        assert self._session is not None
        if self.role is Role.LISTENER:
            message = self._session.decode(body)
        else:
            # The listener counts as proven when its WELCOME decrypts.
            if (refusal := parse_reject(body)) is not None:
                raise self._unauthenticated() if isinstance(refusal, KeyMismatch) else refusal
            try:
                message = self._session.decode(body)
            except NotAuthentic as exc:  # only this says the keys (or the code) differ
                raise self._unauthenticated() from exc
            except ProtocolError as exc:  # it decrypted: the keys match, the content does not
                raise ProtocolError(f"the listener's answer breaks the protocol: {exc}") from exc
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        assert isinstance(message, Welcome)  # the session's phase table guarantees it
        self._check_identity(message)
        if self.role is Role.LISTENER:
            self._outgoing += self._session.encode(self._welcome())
            self.stage = Stage.READY
        else:
            self._outgoing += self._session.encode(Ready())
            self._establish()

    def _on_ready(self, body: bytes) -> None:
        assert self._session is not None
        message = self._session.decode(body)
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        if not isinstance(message, Ready):
            raise ProtocolError(f"the peer sent {message.kind()} before READY")
        self._establish()

    def _welcome(self) -> Welcome:
        assert self._keys is not None
        room = self.nonce if self.role is Role.CONNECTOR else self.room
        data = welcome_signed_data(self.role, self._keys.transcript, self.name, room)
        return Welcome(self.name, self.identity, self._identity.sign(data), room)

    def _check_identity(self, welcome: Welcome) -> None:
        """Verify the peer's signature, then let the judge decide; refuse it if told to."""
        assert self._keys is not None and self._session is not None
        sender = Role.LISTENER if self.role is Role.CONNECTOR else Role.CONNECTOR
        data = welcome_signed_data(sender, self._keys.transcript, welcome.name, welcome.room)
        verify_signature(welcome.identity, welcome.signature, data)
        carry = self.carry
        if carry is not None and (welcome.identity, welcome.name) != (
            carry.peer_identity,
            carry.peer_name,
        ):  # only a leaked resume secret gets this far
            raise HandshakeError(
                f"the chat being resumed was with {sanitize(carry.peer_name)}, and another "
                "identity answered: not resumed"
            )
        try:
            self._judge(welcome.name, welcome.identity, self.mode)
            if self.role is Role.CONNECTOR and (
                why := self._room_check(welcome.identity, welcome.room)
            ):
                raise IdentityRefused(Refuse.ENDED_ROOM, why, welcome.name)
        except IdentityRefused as exc:
            refusal = Refusal(exc.told, self.name, exc.number)
            self._outgoing += self._session.encode(refusal)
            raise
        self.peer_name, self.peer_identity = welcome.name, welcome.identity
        if self.role is Role.CONNECTOR:
            self.room = welcome.room  # the host's room: what our words are signed for
        else:
            self.nonce = welcome.room  # the member's join nonce

    def _establish(self) -> None:
        self.stage = Stage.OPEN
        assert self._keys is not None and self._session is not None
        resumed = self.carry is not None
        if self.carry is None:
            self.carry = Carry(self._keys.resume_secret, self.peer_name, self.peer_identity)
        else:  # the next resume proves this connection's secret
            self.carry.secret, self.carry.pending = self._keys.resume_secret, None
            resumed_message = Resumed(self.carry.inbox.taken, self.carry.outbox.first)
            self._outgoing += self._encode(resumed_message)
        event = Established(
            self.peer_name, self.peer_identity, self.mode, self.room, self.nonce, resumed
        )
        self._events.append(event)

    def _unauthenticated(self) -> HandshakeError:
        if self.mode is Mode.INVITE:
            return HandshakeError(WRONG_CODE_TEXT)
        if self.mode is Mode.RESUME:
            return KeyMismatch(
                "could not resume the chat: the answer did not prove its secret (someone "
                "tampered with the connection)"
            )
        return KeyMismatch(UNAUTHENTICATED_TEXT)

    def _on_message(self, body: bytes) -> None:
        assert self._session is not None
        if body[:1] == bytes([CHUNK_MARK]):
            self._events.append(ChunkReceived(*self._session.open_chunk(body)))
            return
        message = self._session.decode(body)
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        if isinstance(message, Ready):
            raise ProtocolError("the peer sent READY twice")
        carry = self.carry
        assert carry is not None  # established
        carry.outbox.acknowledge(self._session.peer_ack)
        if isinstance(message, Members):
            if carry.members:  # a host resetting a member's room code: refused
                raise ProtocolError("the host sent MEMBERS again: it comes once, at the join")
            carry.members = True
        if isinstance(message, Resumed):
            self._on_resumed(carry, message)
        elif not self._caught_up and not isinstance(message, UNNUMBERED):
            raise ProtocolError(f"the peer sent {message.kind()} before RESUMED on a resume")
        if not isinstance(message, UNNUMBERED):
            carry.inbox.taken += 1
            # A side that only listens says what it took with a KEEPALIVE now and then,
            # so the talker's kept messages stay few.
            if carry.inbox.taken - carry.acknowledged >= ACK_EVERY and not self._session.we_left:
                self._outgoing += self._encode(Keepalive())
            self._events.append(MessageReceived(message))

    def _on_resumed(self, carry: Carry[Message], resumed: Resumed) -> None:
        """The peer's first word on a resumed connection: send again what it has not
        taken, in order, and learn what of its own it let go."""
        assert self._session is not None
        if self._caught_up:
            raise ProtocolError("the peer sent RESUMED where no session was resumed")
        missed = max(0, resumed.first - carry.inbox.taken - 1)
        if resumed.first < 1 or missed > MAX_MISSED:
            raise ProtocolError(
                f"the peer's RESUMED says its oldest kept message is number {resumed.first}, "
                f"with {carry.inbox.taken} taken here"
            )
        carry.inbox.skip(missed)
        lost, again = carry.outbox.after(resumed.taken)
        self._caught_up = True
        for message in again:
            self._outgoing += self._encode(message)
        accepts = frozenset(m.id for m in again if isinstance(m, FileAccept))
        self._events.append(Caught(len(again), missed, max(0, lost), accepts))

    def _end_of_stream(self) -> None:
        if self.stage in HANDSHAKE_STAGES:
            self.abandoned = self.stage is Stage.CONFIRM
            self._fail(HandshakeError("the peer closed the connection during the handshake"))
        elif self._session is not None and (self._session.peer_left or self._session.we_left):
            self.stage = Stage.CLOSED
            self._events.append(Closed())
        else:
            self.link_lost = True
            self._fail(ConnectionLost("the peer closed the connection without saying goodbye"))

    def _fail(self, error: ChatError) -> None:
        if self.stage is Stage.OPEN and not isinstance(error, ConnectionLost):
            error = ConnectionLost(str(error))
        self.stage = Stage.CLOSED
        self._events.append(Failed(error))

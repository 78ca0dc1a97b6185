"""The host's rules (pure): admission of handshakes, the room's members, and the
signing and checking of members' words (Voice and Hearing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from .errors import HandshakeError
from .handshake import DONE_LABEL, OFFER_LABEL, ROOM_HEAD_LABEL, WORDS_LABEL, verify_signature
from .messages import (
    NO_NONCE,
    Action,
    Chat,
    FileDone,
    FileOffer,
    Form,
    Joined,
    Keepalive,
    Left,
    Message,
    Person,
    Said,
    Say,
    Terminate,
    bytes_field,
    int_field,
)
from .text import name_skeleton, sanitize

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


MAX_PENDING_HANDSHAKES = 16
MAX_HANDSHAKES_PER_ADDRESS = 2
MAX_ENDED_JOINS = 65536  # join nonces of members who left, kept so none comes back
REFUSAL_SUMMARY_SECONDS = 10.0


# --- Listener: admission rules (pure) -----------------------------------------


class Pending(NamedTuple):
    """An unfinished handshake as the admission rules see it."""

    host: str
    since: float
    greeted: bool  # it sent a valid M1, as a real connector does at once
    key: int  # which connection (the transport's own handle)


def handshake_to_evict(pending: Sequence[Pending], host: str) -> tuple[Pending, str] | None:
    """Which unfinished handshake makes room for a new connection from `host`, and why.

    At most MAX_HANDSHAKES_PER_ADDRESS per source address, so one host's flood
    only ever competes with itself; at most MAX_PENDING_HANDSHAKES in all, where
    a connection that never sent a valid hello goes before one that did.
    """
    same = [p for p in pending if p.host == host]
    if len(same) >= MAX_HANDSHAKES_PER_ADDRESS:
        victim = min(same, key=lambda p: (p.greeted, p.since))
        reason = f"{MAX_HANDSHAKES_PER_ADDRESS} unfinished handshakes from {host}"
    elif len(pending) >= MAX_PENDING_HANDSHAKES:
        victim = min(pending, key=lambda p: (p.greeted, p.since))
        reason = f"{MAX_PENDING_HANDSHAKES} unfinished handshakes"
    else:
        return None
    kind = "the oldest" if victim.greeted else "the oldest silent one"
    return victim, f"it was {kind} of {reason}"


class Room:
    """The chat's places: the listener hands each proven connector one while it has room.

    A place is claimed before our WELCOME goes out, taken by a person once they
    are in (READY), and freed when that connection ends. Who hears what follows
    from it: pure, so the relay rules are tested without sockets.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seats: dict[object, tuple[Person, float] | None] = {}  # joined: (who, since)
        self._coming: dict[object, str] = {}  # names held for those on their way in
        self._next: dict[object, int] = {}  # each member's next number for the room
        self._ended: dict[bytes, None] = {}  # join nonces of those who left, oldest first

    def claim(self, member: object) -> bool:
        """A place for `member`, or False when the room is full."""
        if self.full:
            return False
        self._seats[member] = None
        return True

    def hold(self, member: object, name: str) -> None:
        """Keep `name` for `member` until it is in (or gone): nobody else may take it."""
        self._coming[member] = name

    def seat(self, member: object, person: Person, now: float) -> None:
        """`member` is in the room as `person`."""
        self._coming.pop(member, None)
        self._seats[member] = (person, now)

    def move(self, old: object, new: object) -> None:
        """`old`'s place, name and numbering are `new`'s now (a connection resumed)."""
        if old in self._seats:
            self._seats[new] = self._seats.pop(old)
        if old in self._coming:
            self._coming[new] = self._coming.pop(old)
        if old in self._next:
            self._next[new] = self._next.pop(old)

    def release(self, member: object) -> Person | None:
        """Free `member`'s place; who it was, if they had got in."""
        self._coming.pop(member, None)
        self._next.pop(member, None)
        seat = self._seats.pop(member, None)
        if seat:
            if len(self._ended) >= MAX_ENDED_JOINS:
                del self._ended[next(iter(self._ended))]
            self._ended[seat[0].nonce] = None
        return seat[0] if seat else None

    def in_sequence(self, member: object, words: Say) -> bool:
        """True when `words` for the room carry the member's next number. (Words for one
        person are numbered per recipient's join, which only the recipient can check.)"""
        if words.to:
            return True
        due = self._next.get(member, 0)
        self._next[member] = due + 1
        return words.seq == due

    def person(self, member: object) -> Person | None:
        """Who `member` is, once in."""
        seat = self._seats.get(member)
        return seat[0] if seat else None

    def named(self, name: str) -> object | None:
        """The member in the room under `name`."""
        return next((m for m, seat in self._seats.items() if seat and seat[0].name == name), None)

    def taken(self, name: str) -> bool:
        """True when someone in the room, or on the way in, has `name` or a name that looks
        like it (one skeleton)."""
        skeleton = name_skeleton(name)
        present = [seat[0].name for seat in self._seats.values() if seat]
        return any(name_skeleton(other) == skeleton for other in [*present, *self._coming.values()])

    def nonce_taken(self, nonce: bytes) -> bool:
        """True when someone in the room joined with `nonce`, or someone who left did (each
        join has its own: members refuse one they saw end, and would blame the host)."""
        if nonce in self._ended:
            return True
        return any(seat and seat[0].nonce == nonce for seat in self._seats.values())

    def people(self, now: float, but: object = None) -> tuple[Person, ...]:
        """Everyone in, in the order they came, with their seconds in the room."""
        return tuple(
            seat[0]._replace(seconds=int(now - seat[1]), next=self._next.get(member, 0))
            for member, seat in self._seats.items()
            if seat and member is not but
        )

    def others(self, but: object = None) -> list[object]:
        """Everyone in the room but `but`."""
        return [m for m, seat in self._seats.items() if seat and m is not but]

    def audience(self, author: object, words: Say) -> list[object]:
        """Who hears `author`'s words: the one they are for, or everyone else in."""
        if words.to:
            return [m] if (m := self.named(words.to)) is not None and m is not author else []
        return self.others(author)

    def __contains__(self, member: object) -> bool:
        return member in self._seats

    def __len__(self) -> int:
        return len(self._seats)

    @property
    def full(self) -> bool:
        """True when every place is taken."""
        return len(self._seats) >= self.capacity


# What a member may send the host once in the room; SAID, MEMBERS, JOINED and LEFT are
# the host's alone.
MEMBER_SENDS = (Say, Chat, Action, Terminate, Keepalive)


def words_signed_data(
    host: bytes, room: bytes, author_nonce: bytes, audience_nonce: bytes, author: str, words: Say
) -> bytes:
    """What a member signs: the room (host identity and room id), the author's join and the
    audience's (the recipient's join; none for the room), the form, the author's number for
    that audience, the author, the audience, the text."""
    return b"".join(
        [
            WORDS_LABEL + host + room + author_nonce + audience_nonce,
            int_field(words.form, 1) + int_field(words.seq, 8),
            bytes_field(author.encode("utf-8")),
            bytes_field(words.to.encode("utf-8")),
            words.text.encode("utf-8"),
        ]
    )


def offer_signed_data(
    host: bytes,
    room: bytes,
    author_nonce: bytes,
    audience_nonce: bytes,
    author: str,
    to: str,
    offer: FileOffer,
) -> bytes:
    """What a member signs when it offers a file to another member through the host: the
    room, both joins, its own id for the offer, the size, the fingerprint, the bundle
    kind and count, both names, the offer's name."""
    return b"".join(
        [
            OFFER_LABEL + host + room + author_nonce + audience_nonce,
            int_field(offer.origin, 4) + int_field(offer.size, 8) + offer.fingerprint,
            int_field(offer.bundle, 1) + int_field(offer.count, 4),
            bytes_field(author.encode("utf-8")),
            bytes_field(to.encode("utf-8")),
            offer.name.encode("utf-8"),
        ]
    )


def done_signed_data(
    host: bytes, room: bytes, author_nonce: bytes, audience_nonce: bytes, origin: int, digest: bytes
) -> bytes:
    """What a member signs when its file relayed by the host is all sent: the room, both
    joins, its own id for the offer and the SHA-256 of what it sent."""
    return DONE_LABEL + host + room + author_nonce + audience_nonce + int_field(origin, 4) + digest


def signed_by(identity: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `identity`'s Ed25519 signature of `data`."""
    try:
        verify_signature(identity, signature, data)
    except HandshakeError:
        return False
    return True


class Voice:
    """One person's words in a room: numbered per audience and signed.

    `nonce` is this join's (NO_NONCE for the host). Words for one person are numbered
    per that person's join, so a rejoin starts at 0 on both sides.
    """

    def __init__(
        self, identity: Ed25519PrivateKey, name: str, host: bytes, room: bytes, nonce: bytes
    ) -> None:
        self._identity, self.name, self.host, self.room = identity, name, host, room
        self.nonce = nonce
        self._next: dict[tuple[str, bytes], int] = {}

    def say(
        self, text: str, form: Form = Form.CHAT, to: str = "", to_nonce: bytes = NO_NONCE
    ) -> Say:
        """`text` as a signed SAY (ChatError if it is too long to send); `to_nonce` is the
        recipient's join nonce (NO_NONCE for the room and for the host)."""
        seq = self._next.get((to, to_nonce), 0)
        unsigned = Say(form, seq, bytes(64), to, text)
        unsigned.encode_body()  # too long: refused here, before it is counted
        data = words_signed_data(self.host, self.room, self.nonce, to_nonce, self.name, unsigned)
        self._next[(to, to_nonce)] = seq + 1
        return replace(unsigned, signature=self._identity.sign(data))


def sign_offer(voice: Voice, offer: FileOffer, to: str, to_nonce: bytes) -> FileOffer:
    """`offer` (for member `to`, whose join is `to_nonce`) signed by `voice`'s author, with
    its own id as the origin."""
    offer = replace(offer, origin=offer.id)
    data = offer_signed_data(voice.host, voice.room, voice.nonce, to_nonce, voice.name, to, offer)
    return replace(offer, signature=voice._identity.sign(data))


def offer_forgery(
    host: bytes,
    room: bytes,
    offer: FileOffer,
    me: str,
    my_nonce: bytes,
    identity: bytes | None,
    author_nonce: bytes | None,
) -> str | None:
    """Why a relayed `offer` (offer.who is its author) is not its author's, or None."""
    if identity is not None and author_nonce is not None:
        data = offer_signed_data(host, room, author_nonce, my_nonce, offer.who, me, offer)
        if signed_by(identity, offer.signature, data):
            return None
    return f"an offer claiming to be from {sanitize(offer.who)} failed its signature check"


def sign_done(voice: Voice, origin: int, digest: bytes, to_nonce: bytes) -> bytes:
    """`voice`'s author's signature of the SHA-256 of its offer `origin` to `to_nonce`'s join."""
    data = done_signed_data(voice.host, voice.room, voice.nonce, to_nonce, origin, digest)
    return voice._identity.sign(data)


def done_forgery(
    host: bytes,
    room: bytes,
    done: FileDone,
    origin: int,
    my_nonce: bytes,
    identity: bytes | None,
    author_nonce: bytes | None,
) -> bool:
    """True when a relayed FILEDONE's SHA-256 is not signed by the offer's author."""
    if identity is None or author_nonce is None:
        return True
    data = done_signed_data(host, room, author_nonce, my_nonce, origin, done.digest)
    return not signed_by(identity, done.signature, data)


def forgery(
    host: bytes,
    room: bytes,
    said: Said,
    identity: bytes | None,
    author_nonce: bytes | None,
    audience_nonce: bytes = NO_NONCE,
) -> str | None:
    """Why `said` is not shown as its author's (its signature is not theirs, for their join
    and its audience's), or None."""
    if identity is not None and author_nonce is not None:
        data = words_signed_data(host, room, author_nonce, audience_nonce, said.author, said.words)
        if signed_by(identity, said.words.signature, data):
            return None
    author = sanitize(said.author)
    return f"a message claiming to be from {author} failed its signature check: not shown"


def remember(kept: dict[bytes, None], nonce: bytes) -> None:
    """Add `nonce` to an ordered set of at most MAX_ENDED_JOINS, forgetting the oldest."""
    if len(kept) >= MAX_ENDED_JOINS:
        del kept[next(iter(kept))]
    kept[nonce] = None


class Hearing:
    """What one person makes of the words the host relays: checked, in order, or not shown.

    Every author's join nonce comes first (the host's WELCOME, MEMBERS or JOINED), and
    with it the number their next words carry, so nothing is taken on trust: a replay
    from an earlier join fails its signature, a join that ended cannot come back, and
    words held back show as a gap.
    """

    def __init__(
        self,
        me: str,
        host: bytes,
        room: bytes,
        nonce: bytes,
        host_name: str,
        ended: frozenset[bytes] = frozenset(),
    ) -> None:
        self.me, self.host, self.room, self.nonce = me, host, room, nonce
        self._joins: dict[str, bytes] = {host_name: NO_NONCE}  # author -> their join nonce
        self._next: dict[tuple[str, str], int] = {}
        # Announced, and ended (here, or before: past_rooms): never again. Ordered, and at
        # most MAX_ENDED_JOINS each, oldest forgotten first: a host's flood of joins costs
        # bounded memory. Ours and the zero nonce are refused apart, never forgotten.
        self._seen: dict[bytes, None] = {}
        self._ended: dict[bytes, None] = dict.fromkeys(ended)
        self.gone: set[str] = set()  # said goodbye: LEFT follows, nothing else

    def present(self, person: Person, joining: bool) -> str | None:
        """Take in someone the host announces (in MEMBERS, or JOINED when `joining`); or
        why not (their words are then not shown)."""
        if person.nonce in self._ended:
            return "a join of theirs that already ended (a replay by the host?)"
        if person.nonce in self._seen or person.nonce in (self.nonce, NO_NONCE):
            return "a join already announced (a replay by the host?)"
        if joining and person.next != 0:
            return f"a new join whose words start at {person.next}, not 0"
        remember(self._seen, person.nonce)
        self._joins[person.name] = person.nonce
        self._next[(person.name, "")] = person.next
        self._next[(person.name, self.me)] = 0
        return None

    def left(self, name: str) -> bytes | None:
        """`name` left: their join has ended for good; its nonce (None: none was known)."""
        for key in [key for key in self._next if key[0] == name]:
            del self._next[key]
        self.gone.discard(name)
        nonce = self._joins.pop(name, None)
        if nonce is None or nonce == NO_NONCE:
            return None
        remember(self._ended, nonce)
        return nonce

    def check(self, said: Said, identity: bytes | None) -> tuple[bool, str | None]:
        """Whether to show `said` (`identity` is its author's, if known), and a note."""
        author, words = sanitize(said.author), said.words
        audience = self.nonce if words.to else NO_NONCE
        nonce = self._joins.get(said.author)
        if words.to and words.to != self.me:
            return False, f"a message from {author} for someone else reached you: not shown"
        if (forged := forgery(self.host, self.room, said, identity, nonce, audience)) is not None:
            return False, forged
        if said.author in self.gone:
            return False, f"a message from {author} came after their goodbye: not shown"
        key = (said.author, words.to)
        due = self._next.get(key, 0)
        if words.seq < due:
            return False, f"a message from {author} came again (replayed by the host?): not shown"
        self._next[key] = words.seq + 1
        if words.form == Form.GOODBYE:
            self.gone.add(said.author)
        if words.seq > due:
            missing = words.seq - due
            return (
                True,
                f"{missing} message(s) from {author} never arrived (held back by the host?)",
            )
        return True, None


def public_line(message: Message) -> bool:
    """Whether `message`, from the host, is a public line of the room (one /verify room
    covers): words to the room (goodbyes too), the host's own words, joins and leaves."""
    if isinstance(message, Said):
        return not message.words.to
    return isinstance(message, (Chat, Action, Joined, Left))


class RoomLog:
    """The running hash of a room's public lines, in the order the host delivered them:
    two members whose counts and codes agree saw the same public conversation since the
    later of them joined. Its state is one tuple, so another thread reads it whole."""

    def __init__(self, host: bytes, room: bytes) -> None:
        self.state = (hashlib.sha256(ROOM_HEAD_LABEL + host + room).digest(), 0)

    def start(self, head: bytes, count: int) -> None:
        """Go on from where the host says the room stood when we joined."""
        self.state = (head, count)

    def fold(self, message: Message) -> None:
        """One more public line: head = SHA-256(head || u8 tag || u32 length || body)."""
        head, count = self.state
        body = message.encode_body()
        line = int_field(message.TAG, 1) + int_field(len(body), 4) + body
        self.state = (hashlib.sha256(head + line).digest(), count + 1)

    def code(self) -> tuple[str, int]:
        """The code to read aloud (20 digits, in fours) and how many lines it covers."""
        head, count = self.state
        digits = f"{int.from_bytes(head[:9], 'big') % 10**20:020d}"
        return " ".join(digits[i : i + 4] for i in range(0, 20, 4)), count


class RefusalLog:
    """Refusal lines that stay readable in a flood.

    The first refusal of each kind from an address is shown in full (so a stranger
    refused as not a contact is seen even after a wrong invite code from the same
    address); after that, at most one summary line per address and kind every
    REFUSAL_SUMMARY_SECONDS.
    """

    def __init__(self, window: float = REFUSAL_SUMMARY_SECONDS) -> None:
        self._window = window
        # (address, kind) -> window start, refusals held back
        self._hosts: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, host: str, line: str, now: float, kind: str = "") -> str | None:
        """The line to show for this refusal now, or None when it is counted instead."""
        key = (host, kind)
        if key not in self._hosts:
            self._hosts[key] = (now, 0)
            return line
        since, count = self._hosts[key]
        self._hosts[key] = (since, count + 1)
        return None

    def summaries(self, now: float) -> list[str]:
        """Summary lines of the windows that have ended by `now`."""
        lines = []
        for key, (since, count) in list(self._hosts.items()):
            if now - since < self._window:
                continue
            host, kind = key
            if count:
                lines.append(
                    f"Refused {count} more connection{'s' if count != 1 else ''} from {host}"
                    f"{f' ({kind})' if kind else ''} in the last {self._window:g} s"
                )
                self._hosts[key] = (now, 0)
            else:
                del self._hosts[key]  # quiet for a whole window: the next one is shown
        return lines

    def next_deadline(self) -> float | None:
        """When the next window ends, or None when nothing is held."""
        return min((since + self._window for since, _ in self._hosts.values()), default=None)


class InviteBudget:
    """Who may try the invite code now. A try costs the listener about 10 ms of
    pure-Python SPAKE2 before anything is known, so: one at a time per address, at most
    RATE new tries a second in all (a bucket of BURST), and none from an address that
    guessed wrong twice, for 5 s, then 10, 20, ... up to BACKOFF_LIMIT (a first wrong
    guess, a typo, is retried at once). A connection refused a try is told no invite is
    open; contacts never need one, so they get in all the same."""

    RATE = 5.0
    BURST = 5.0
    BACKOFF_LIMIT = 60.0
    MAX_GUESSERS = 4096  # addresses remembered; the oldest is forgotten first

    def __init__(self) -> None:
        self._tokens = self.BURST
        self._at: float | None = None
        self._guessers: dict[str, tuple[float, int]] = {}  # host -> (no try until, wrong)

    def allow(self, host: str, busy: bool, now: float) -> bool:
        """Whether a new connection from `host` may try the code (`busy`: that address has
        a handshake still running)."""
        if host in self._guessers and now < self._guessers[host][0]:
            return False
        if self._at is not None:
            self._tokens = min(self.BURST, self._tokens + (now - self._at) * self.RATE)
        self._at = now
        if busy or self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def guessed_wrong(self, host: str, now: float) -> None:
        """`host` gave a wrong code: back off its next tries once it has done so twice."""
        _, wrong = self._guessers.pop(host, (0.0, 0))
        if len(self._guessers) >= self.MAX_GUESSERS:
            del self._guessers[next(iter(self._guessers))]
        pause = min(5.0 * 2.0 ** (wrong - 1), self.BACKOFF_LIMIT) if wrong else 0.0
        self._guessers[host] = (now + pause, wrong + 1)


class AbandonLog:
    """Handshakes abandoned between M2 and M3, counted per address.

    That is where a man in the middle searching for a lucky handshake gives up,
    so the count is worth showing: at once for an address, then at most once a
    window while it grows.
    """

    def __init__(self, window: float = REFUSAL_SUMMARY_SECONDS) -> None:
        self._window = window
        self._counts: dict[str, int] = {}
        self._shown: dict[str, tuple[float, int]] = {}  # when last shown, the count shown

    def abandoned(self, host: str, now: float) -> str | None:
        """The line to show for one more abandoned handshake, or None until the window ends."""
        count = self._counts[host] = self._counts.get(host, 0) + 1
        if host in self._shown and now - self._shown[host][0] < self._window:
            return None
        self._shown[host] = (now, count)
        return self._line(host, count)

    def summaries(self, now: float) -> list[str]:
        """Lines for the counts that grew in windows ended by `now`."""
        lines = []
        for host, (since, shown) in list(self._shown.items()):
            if now - since < self._window:
                continue
            if self._counts[host] > shown:
                lines.append(self._line(host, self._counts[host]))
                self._shown[host] = (now, self._counts[host])
            else:  # a quiet window: forget the address
                del self._shown[host], self._counts[host]
        return lines

    def next_deadline(self) -> float | None:
        """When the next window with something to say ends."""
        return min((since + self._window for since, _ in self._shown.values()), default=None)

    @staticmethod
    def _line(host: str, count: int) -> str:
        noun, verb = ("handshake", "was") if count == 1 else ("handshakes", "were")
        return f"{count} {noun} from {host} {verb} abandoned halfway"

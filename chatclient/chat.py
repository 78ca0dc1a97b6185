"""The chat as the person at this terminal sees it: the Conversation (what arrives,
what is typed, who is here) and the commands table; they need each other.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import deque
from dataclasses import replace
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

from .commands import COMMAND_INDEX, Commands, PeerInfo
from .config import Config
from .errors import ChatError, ConfigError
from .handshake import ROOM_ID_SIZE, Mode, Role
from .identity import (
    IDENTITY_FILE,
    KNOWN_PEERS_FILE,
    MAX_PAST_ROOMS,
    PAST_ROOMS_FILE,
    Recognition,
    Trust,
    beside,
    fingerprint,
    read_known_peers,
    read_past_rooms,
    remember_past,
    update_known_peers,
    utc_now,
)
from .messages import (
    NO_NONCE,
    Absent,
    Action,
    Chat,
    Echo,
    FileDone,
    FileOffer,
    Form,
    Joined,
    Left,
    Members,
    Message,
    Person,
    Said,
    Say,
    Terminate,
)
from .nearby import Presence
from .network import GOODBYE_DRAIN_SECONDS, Network
from .peer import Away, Back, Closed, Established, Event, Failed, MessageReceived
from .resume import MAX_KEPT_BYTES, MAX_KEPT_MESSAGES
from .room import (
    Hearing,
    RoomLog,
    Voice,
    done_forgery,
    forgery,
    offer_forgery,
    public_line,
    sign_done,
    sign_offer,
)
from .sockets import Link, format_address
from .terminal import (
    Later,
    Line,
    Terminal,
    main_thread_can_be_signalled,
    signal_until,
)
from .text import name_skeleton, peer_text, sanitize, spoken_duration
from .trust import changed_identity

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


# --- Chat: what the person at this terminal sees and types ----------------------


MAX_MEMBERS = 255  # a room's most members (--max-members), the host not counted
PAST_WRITE_SECONDS = 10.0


def later(prefix: str, text: str) -> Later:
    """`prefix` and a peer's `text`, escaped when printed (by the printer thread)."""
    return Later(lambda: prefix + peer_text(text), len(prefix) + len(text))


def words_prefix(stamp: str, author: str, words: Say) -> str:
    """How a member's words begin on the screen: an action, private words, or said."""
    if words.form == Form.ACTION:
        return f"{stamp}* {author} "
    if words.to:
        return f"{stamp}{author} says privately: "
    return f"{stamp}{author} says: "


def left_line(name: str, goodbye: str) -> str:
    """`name left the chat: goodbye`, or `name left the chat.` without one."""
    text = peer_text(goodbye)
    return f"{name} left the chat: {text}" if text else f"{name} left the chat."


class PeerEnded(BaseException):
    """Raised in the main thread when the network has ended the chat."""


class Conversation(Commands):
    """One chat: the network thread reports what arrives; the main thread sends.

    Exactly one side decides how the chat ended (`outcome`): the network thread
    (goodbye or loss from the peer) or the input loop (we left).
    """

    def __init__(
        self,
        term: Terminal,
        config: Config,
        identity: Ed25519PrivateKey | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
        *,
        program: str,
        destination: str | None = None,
        presence: Presence | None = None,
    ) -> None:
        self.term = term
        self.program = program  # the command as it was run, for hints
        # Connecting: where we asked to go (the socket's own peer is the proxy, if any).
        self.destination = destination
        self.presence = presence  # hosting: our announcement on the LAN, if any
        self.config = config
        if identity is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity = Ed25519PrivateKey.generate()
        self._identity_key = identity
        self.identity = identity.public_key().public_bytes_raw()  # for safety numbers
        self.room = room  # when hosting: ours; as a member: learnt from the host
        self.known_path = beside(config.path, KNOWN_PEERS_FILE)
        self.past_path = beside(config.path, PAST_ROOMS_FILE)
        self._past_lock = threading.Lock()
        self._past_joins: list[bytes] = []  # ended joins not written to past_rooms yet
        self._past_written = 0.0
        self.prompt = f"{config.username}> " if term.interactive else ""
        self.net: Network | None = None
        self.people: dict[str, PeerInfo] = {}  # everyone else in the chat, the host first
        self.away: set[str] = set()  # members the host says it keeps a place for (ABSENT)
        self.names: dict[Link, str] = {}  # hosting: who is on each connection
        self.voice: Voice | None = None  # our words in the room, numbered and signed
        self.hearing: Hearing | None = None  # the check of the words the host relays
        self.distrusted: set[str] = set()  # members whose pinned identity changed
        self._origins: dict[bytes, int] = {}  # each join's last relayed offer (its own id)
        self.log: RoomLog | None = None  # a member's running hash of the room's public lines
        # Our words to the room, until the host ECHOes them (a host that never does costs
        # at most this many: /verify room then cannot match, which it warns of).
        self._mine: deque[Said] = deque(maxlen=65536)
        self._echo_warned = False
        self._crowd_warned = False
        self.joined = False  # someone came: from now on, a failure is a lost chat
        self.hosting = False  # we listened: the room is ours
        self.failure: ChatError | None = None  # our connection never got into the chat
        self.outcome: int | None = None
        self.started = threading.Event()  # in the chat, or failed to get there
        self.ended = threading.Event()  # the peer's side of the chat is over
        self._lock = threading.Lock()
        self._main = threading.get_ident()
        self._can_interrupt = False
        self._interrupted = threading.Event()
        self._collected = ""  # lines of a message still being typed (a trailing backslash)
        self.invite_code: str | None = None  # hosting: the code /invite made, until it is used
        self.away_from: str | None = None  # the host we are reconnecting to, meanwhile
        # Lines typed while away_from, not sent yet: what each says once it is sent.
        self.owed: list[str] = []

    # Reported by the network thread ---------------------------------------------

    def connection_events(self, link: Link, events: list[Event]) -> None:
        """Show what happened on the chat's connection; end the chat when it is over."""
        lines: list[Line] = []
        ending: tuple[int, str] | None = None
        hosting = link.peer.role is Role.LISTENER
        for event in events:
            if isinstance(event, Away):
                lines.append(self._away_line(event, hosting))
            elif isinstance(event, Back):
                self._relink(link, event.name)
                owed, self.owed = self.owed, []
                typed = min(len(owed), event.resent)  # the last typed went; older were let go
                lines.append(self._back_line(event, hosting, typed))
                lines += owed[len(owed) - typed :]  # now really sent
            elif isinstance(event, Established) and event.resumed:
                self._relink(link, event.name)  # the same person, on a new connection
                if (known := self.people.get(event.name)) is not None:  # from where, now
                    self.people[event.name] = replace(known, address=format_address(link.address))
            elif isinstance(event, Established):
                lines += self._arrival_lines(link, event)
            elif isinstance(event, MessageReceived):
                lines += self._message_lines(link, event.message)
                if isinstance(event.message, Terminate):
                    self._depart(link)
                    if not self.people and self._still_inviting():
                        lines.append(self._waiting_line())
                    elif not self.people:  # the last one (or the host) left: it is over
                        ending = (0, "Connection closed by peer.")
            elif isinstance(event, Failed) and not self.joined:
                self.failure = event.error
            elif isinstance(event, Failed) and (gone := self._depart(link)) is not None:
                if self.people or self._still_inviting():  # the host says why: a network's
                    lines.append(f"{sanitize(gone)} lost the connection ({event.error}).")
                    if not self.people:
                        lines.append(self._waiting_line())
                else:
                    ending = (1, f"Connection lost: {event.error}")
        # Set before anything is shown: a line typed in answer to what is shown
        # is then never taken for one typed while nobody was connected.
        self.started.set()
        if lines:  # shown together: a burst of messages is one redraw
            self._show_all(lines)
            if self.config.bell and any(isinstance(e, MessageReceived) for e in events):
                self.term.bell()
        if ending is not None:
            self._end_from_network(*ending)
        if ending is not None or (
            not hosting and any(isinstance(e, (Closed, Failed)) for e in events)
        ):
            self.ended.set()

    def _away_line(self, event: Away, hosting: bool) -> str:
        """The one line a lost connection gets while its session is kept."""
        name = sanitize(event.name)
        if hosting:
            if len(self.people) == 1:  # what is typed now waits for them
                self.away_from = event.name
            return (
                f"{name} lost the connection; keeping their place for "
                f"{spoken_duration(event.seconds)}."
            )
        self.away_from = event.name
        return f"Connection to {name} lost: reconnecting (Ctrl-C to give up)"

    def _relink(self, link: Link, name: str) -> None:
        """`name`'s session goes on over `link`, a new connection."""
        for old, known in list(self.names.items()):
            if known == name and old is not link:
                del self.names[old]
                self.names[link] = name

    def _back_line(self, event: Back, hosting: bool, typed: int) -> str:
        """The one line a resumed session gets; `typed`: lines typed meanwhile, now sent."""
        name = sanitize(event.name)
        self.away_from = None
        kept = f"more than {MAX_KEPT_MESSAGES:,} or {MAX_KEPT_BYTES // 2**20} MiB waited"
        if hosting:
            losses = []
            if event.missed:
                losses.append(f"{event.missed} of their messages never came ({kept})")
            if event.lost:
                losses.append(f"{event.lost} messages for them were let go ({kept})")
            return f"{name} is back; {'; '.join(losses)}." if losses else f"{name} is back."
        sent = "nothing was waiting"
        if typed:
            sent = f"{typed} waiting message{'s' if typed != 1 else ''} sent"
        if event.lost:
            sent += f", {event.lost} more let go ({kept})"
        missed = f"{event.missed} of theirs missed" if event.missed else "nothing missed"
        return f"Back with {name} after {spoken_duration(event.seconds)}: {sent}, {missed}."

    def _still_inviting(self) -> bool:
        """Hosting, with a code from /invite that nobody has used yet: the room waits for it
        when its last member leaves (without one, the chat ends, as the seed's does)."""
        return self.hosting and self.invite_code is not None

    def _waiting_line(self) -> str:
        return (
            f"Nobody else is in the chat now; the invite code {self.invite_code} is still open "
            "(/quit to leave)."
        )

    def _depart(self, link: Link) -> str | None:
        """Forget whoever was on `link`; their name, if they were still here."""
        if link.peer.role is Role.CONNECTOR:  # the host's connection: the chat ends with it
            name = next(iter(self.people), None)
            self.people.clear()
            return name
        name = self.names.pop(link, None)
        if name is None or self.people.pop(name, None) is None:
            return None
        return name

    def refused(self, line: str) -> None:
        """A refused or dropped connection, on stderr."""
        self.term.error(line)

    def invite_void(self, line: str) -> None:
        """The invite is void: it closes, and only it. The listener and its room go on
        (strangers must not be able to stop them), and /invite makes a new code."""
        self._invite_closed()
        self.term.error(f"{line}. Type /invite for a new code")

    def network_failed(self, error: ChatError) -> None:
        """The network thread failed: end the chat, or the wait for it, with the reason."""
        if not self.joined:
            self.failure = error
            self.started.set()
        else:
            self._end_from_network(1, f"Connection lost: {error}")
        self.ended.set()

    # Reported by the file desk (on the network thread) ------------------------------------

    def file_lines(self, lines: list[str], error: bool = False) -> None:
        """Lines about file transfers."""
        (self.term.error if error else self.term.show)("\n".join(lines))

    def file_status(self, text: str) -> None:
        """The progress of the transfers moving now, in the status row."""
        self.term.status(text)

    def identity_of(self, name: str) -> bytes | None:
        """Someone's identity key (a relayed offer resumes only from the same person)."""
        person = self.people.get(name)
        return person.identity if person is not None else None

    def sign_offer(self, offer: FileOffer, to: str) -> FileOffer:
        """Our offer for member `to`, through the host: signed for their join."""
        assert self.voice is not None
        person = self.people.get(to)
        return sign_offer(self.voice, offer, to, person.nonce if person else NO_NONCE)

    def sign_done(self, to: str, origin: int, digest: bytes) -> bytes:
        """The SHA-256 of our offer `origin` to member `to`, signed for their join."""
        assert self.voice is not None
        person = self.people.get(to)
        return sign_done(self.voice, origin, digest, person.nonce if person else NO_NONCE)

    def done_forgery(self, author: str, origin: int, done: FileDone) -> bool:
        """True when member `author`'s FILEDONE for their offer `origin` is not theirs."""
        if self.voice is None or author in self.distrusted:
            return True
        person = self.people.get(author)
        identity, nonce = (person.identity, person.nonce) if person else (None, None)
        voice = self.voice
        return done_forgery(voice.host, voice.room, done, origin, voice.nonce, identity, nonce)

    def offer_forgery(self, offer: FileOffer) -> str | None:
        """Why an offer the host relays from member offer.who is not theirs, or repeats one
        (each of an author's offers has a higher origin than the one before), or None."""
        assert self.voice is not None
        if offer.who in self.distrusted:
            return f"an offer from {sanitize(offer.who)}, whose identity changed, was not shown"
        person = self.people.get(offer.who)
        identity, nonce = (person.identity, person.nonce) if person else (None, None)
        voice = self.voice
        me = self.config.username
        forged = offer_forgery(voice.host, voice.room, offer, me, voice.nonce, identity, nonce)
        if forged is not None or nonce is None:
            return forged
        if offer.origin <= self._origins.get(nonce, 0):
            return f"an offer from {sanitize(offer.who)} came again (replayed by the host?)"
        if len(self._origins) >= 4096 and nonce not in self._origins:
            del self._origins[next(iter(self._origins))]  # a host's made-up authors: bounded
        self._origins[nonce] = offer.origin
        return None

    def _arrival_lines(self, link: Link, event: Established) -> list[str]:
        """Who arrived, and what known_peers says of them (pinned here on first contact)."""
        name, shown = event.name, sanitize(event.name)
        self.joined = True
        hosting = link.peer.role is Role.LISTENER
        now = time.monotonic()
        address = self.destination if not hosting and self.destination else None
        nonce = event.nonce if hosting else NO_NONCE
        where = address or format_address(link.address)
        self.people[name] = PeerInfo(name, where, event.identity, now, not hosting, nonce)
        if hosting:
            self.names[link] = name
        else:
            self.room = event.room
        if self.voice is None:  # one numbering of our words for the whole chat
            host = self.identity if hosting else event.identity
            mine = NO_NONCE if hosting else event.nonce
            self.voice = Voice(self._identity_key, self.config.username, host, self.room, mine)
            ended = frozenset() if hosting else read_past_rooms(self.past_path).joins
            self.log = None if hosting else RoomLog(event.identity, self.room)
            self.hearing = Hearing(self.config.username, host, self.room, mine, name, ended)
            self.hosting = hosting
        verified, trust = self._trust(name, event.identity, event.mode is Mode.INVITE)
        if hosting and event.mode is Mode.INVITE:
            self._invite_closed()
        if hosting:
            joined = " (verified)." if verified else "."
            arrival = [f"Connected by {link.address!r}", f"{shown} joined the chat{joined}"]
        else:
            arrival = [f"WELCOME Welcome to the chat! I am {shown}"]
        return arrival + trust

    def _trust(self, name: str, key: bytes, by_invite: bool = False) -> tuple[bool, list[str]]:
        """What known_peers says of `name` with `key` (pinned on first contact): whether
        verified, and the lines that say so. A changed identity in a room is a warning,
        and that person's words are not shown."""
        shown = sanitize(name)
        if key == self.identity:  # two chats beside one config: nothing to pin
            return False, [
                f"{shown} has your own identity ({IDENTITY_FILE} is shared): fine for a "
                "test; two people need one each."
            ]
        try:
            seen = read_known_peers(self.known_path).recognize(name, key)
            if seen.trust is Trust.CHANGED:
                assert seen.pinned is not None
                self.distrusted.add(name)
                warning = changed_identity(self.config.path, seen.pinned, key, self.program)
                return False, [f"warning: {warning}", f"Nothing {shown} says will be shown."]
            lines = self._pin(name, key, seen, by_invite)
        except ConfigError as exc:
            return False, [f"error: {exc}"]
        return by_invite or seen.trust is Trust.VERIFIED, lines

    def _pin(self, name: str, key: bytes, seen: Recognition, by_invite: bool) -> list[str]:
        """Record someone in known_peers as needed; the lines that say what happened."""
        shown, identity = sanitize(name), fingerprint(key)
        lines = []
        if seen.aliases:
            lines.append(
                f"{shown} has the identity you know as {sanitize(', '.join(seen.aliases))}: "
                "the same person under a new name."
            )
        if seen.pinned is None or by_invite:
            # A new name for a known identity keeps that identity's trust.
            verified = by_invite or seen.trust is Trust.VERIFIED
            update_known_peers(self.known_path, lambda p: p.pin(name, key, verified, utc_now()))
        if by_invite:
            lines.append(
                f"{shown} is now a verified contact (the invite code proved it): identity "
                f"{identity}."
            )
        elif seen.trust is Trust.VERIFIED:
            lines.append(f"{shown} is a verified contact (/verify shows your safety number).")
        elif seen.trust is Trust.NEW:
            lines.append(
                f"First contact with {shown}: identity {identity} saved (compare safety "
                "numbers with /verify)."
            )
        elif seen.trust is Trust.KNOWN:
            lines.append(f"{shown} is not verified yet: compare safety numbers with /verify.")
        return lines

    def _show_all(self, lines: list[Line]) -> None:
        """Lines shown together (a burst is one redraw), a Later one on its own."""
        batch: list[str] = []
        for line in lines:
            if isinstance(line, str):
                batch.append(line)
                continue
            if batch:
                self.term.show("\n".join(batch))
                batch = []
            self.term.show(line)
        if batch:
            self.term.show("\n".join(batch))

    def _message_lines(self, link: Link, message: Message) -> list[Line]:
        if self.log is not None and link.peer.role is Role.CONNECTOR:
            self._log(message)
        if link.peer.role is Role.LISTENER:
            speaker = self.names.get(link, "someone")
        else:
            speaker = next(iter(self.people), "the peer")
        name = sanitize(speaker)
        stamp = time.strftime("[%H:%M] ") if self.config.timestamps else ""
        # A message's text (up to 64 KiB of anything) is escaped where it is printed, not
        # on the network thread, which only passes it on.
        if isinstance(message, Chat):
            return [later(f"{stamp}{name} says: ", message.text)]
        if isinstance(message, Action):
            return [later(f"{stamp}* {name} ", message.text)]
        if isinstance(message, Terminate):
            if link.peer.role is Role.CONNECTOR:  # the host ended its room: never again
                self._remember(rooms=[(link.peer.peer_identity, self.room)])
            return [stamp + left_line(name, message.text)]
        if isinstance(message, Said):
            return self._words_lines(link, message, stamp)
        if isinstance(message, Members):
            return [*self._members_lines(message)]
        if isinstance(message, Joined):
            person = message.person
            if (clash := self._name_clash(person.name)) is not None:
                return [clash]
            if len(self.people) > MAX_MEMBERS:  # no room holds more: a host's flood
                return [] if self._crowd_warned else [self._too_many()]
            if (refused := self._replayed_join(person, joining=True)) is not None:
                return [refused]
            self._meet(person)
            verified, trust = self._trust(person.name, person.identity)
            joined = " (verified)." if verified else "."
            return [f"{sanitize(person.name)} joined the chat{joined}", *trust]
        if isinstance(message, Absent):
            known = self.people.get(message.name)
            news = bool(message.seconds) is not (message.name in self.away)
            if known is None or known.host or not news:
                return []  # nobody we know, the host itself, or no change: nothing to say
            if message.seconds:
                self.away.add(message.name)
                return [
                    f"{stamp}{sanitize(message.name)} lost the connection; keeping their place "
                    f"for {spoken_duration(message.seconds)}."
                ]
            self.away.discard(message.name)
            return [f"{stamp}{sanitize(message.name)} is back."]
        if isinstance(message, Left):
            self.away.discard(message.name)
            if self.people.pop(message.name, None) is None:
                return []  # someone never taken in (refused above): nothing to say
            self.distrusted.discard(message.name)
            said_goodbye = self.hearing is not None and message.name in self.hearing.gone
            if self.hearing is not None and (nonce := self.hearing.left(message.name)):
                self._remember(joins=[nonce])
            if message.lost:
                return [f"{stamp}{sanitize(message.name)} lost the connection."]
            return [] if said_goodbye else [stamp + left_line(sanitize(message.name), "")]
        return []

    def _log(self, message: Message) -> None:
        """A member's /verify room: every public line the host sends, as sent, whatever
        the checks make of it; our own words where the host's ECHO says they went."""
        assert self.log is not None
        if isinstance(message, Members):
            self.log.start(message.head, message.count)
        elif isinstance(message, Echo):
            if not self._mine or self._mine[0].words.seq > message.seq:
                if not self._echo_warned:  # a host's mistake, or a lie: said once
                    self._echo_warned = True
                    self.term.error(
                        f"warning: the host confirmed words of yours numbered {message.seq} that "
                        "it was never sent: /verify room will not match the others'"
                    )
                return
            while self._mine and self._mine[0].words.seq <= message.seq:
                self.log.fold(self._mine.popleft())
        elif public_line(message):
            self.log.fold(message)

    def _too_many(self) -> str:
        self._crowd_warned = True
        return (
            f"warning: the host announced more than {MAX_MEMBERS} people, more than a room "
            "holds: the rest are not shown"
        )

    def _replayed_join(self, person: Person, joining: bool) -> str | None:
        """The warning for a join the host announces that cannot be new (its nonce was seen
        before, or its words do not start where a new join's do), or None."""
        assert self.hearing is not None
        if (why := self.hearing.present(person, joining)) is None:
            return None
        shown = sanitize(person.name)
        return (
            f"warning: the host announced {shown} with {why}: refused (nothing said under "
            "that join is shown)"
        )

    def _remember(
        self, rooms: list[tuple[bytes, bytes]] | None = None, joins: list[bytes] | None = None
    ) -> None:
        """Note an ended room or join in past_rooms, so a host cannot bring it back. Joins are
        written at most every PAST_WRITE_SECONDS (a host announcing joins and leaves in a loop
        costs no disk) and when the chat ends; an ended room at once."""
        with self._past_lock:
            self._past_joins = (self._past_joins + (joins or []))[-MAX_PAST_ROOMS:]
            now = time.monotonic()
            if not rooms and now - self._past_written < PAST_WRITE_SECONDS:
                return
            self._past_written, pending, self._past_joins = now, self._past_joins, []
            try:
                remember_past(self.past_path, rooms or [], pending)
            except ConfigError as exc:
                self.term.error(f"error: {exc}")

    def flush_past(self) -> None:
        """Write the ended joins still held (the chat is over)."""
        with self._past_lock:
            pending, self._past_joins = self._past_joins, []
            if pending:
                with contextlib.suppress(ConfigError):
                    remember_past(self.past_path, [], pending)

    def _words_lines(self, link: Link, said: Said, stamp: str) -> list[Line]:
        """A member's words, once the signature and the numbering are checked."""
        words, author = said.words, sanitize(said.author)
        note = None
        if link.peer.role is Role.LISTENER:  # hosting: relayed already; checked off-thread
            size = len(words.text) + len(said.author) + 40
            person = self.people.get(said.author)
            return [Later(partial(self._hosted_words_line, said, person, stamp), size)]
        assert self.hearing is not None  # a member: the host's copy, checked here
        person = self.people.get(said.author)
        show, note = self.hearing.check(said, person.identity if person else None)
        if said.author in self.distrusted:
            show, note = False, f"a message from {author} was not shown: its identity changed"
        if not show:
            return [f"warning: {note}"]
        line: Line
        if words.form == Form.GOODBYE and not words.text:
            line = f"{stamp}{author} left the chat."
        elif words.form == Form.GOODBYE:
            line = later(f"{stamp}{author} left the chat: ", words.text)
        else:
            line = later(words_prefix(stamp, author, words), words.text)
        return [line] if note is None else [f"warning: {note}", line]

    def _hosted_words_line(self, said: Said, person: PeerInfo | None, stamp: str) -> str:
        """On the printer thread: a member's words as the host shows them, only if the
        signature is theirs (110 us a check: never on the relay path)."""
        identity, nonce = (person.identity, person.nonce) if person else (None, None)
        if (forged := forgery(self.identity, self.room, said, identity, nonce)) is not None:
            return f"warning: {forged}"
        return words_prefix(stamp, sanitize(said.author), said.words) + peer_text(said.words.text)

    def _members_lines(self, members: Members) -> list[str]:
        """The room as a member finds it on arrival."""
        lines, met = [], []
        for person in members.people:
            if (clash := self._name_clash(person.name)) is not None:
                lines.append(clash.replace("joining", "in the room"))
                continue
            if (refused := self._replayed_join(person, joining=False)) is not None:
                lines.append(refused)
                continue
            self._meet(person)
            met.append(person)
            lines += self._trust(person.name, person.identity)[1]
        if met:
            names = ", ".join(sanitize(person.name) for person in met)
            lines.insert(0, f"Also in the chat: {names}")
        return lines

    def _name_clash(self, name: str) -> str | None:
        """The warning for a name the host announces that is already on this screen (ours,
        the host's, or someone's here): one name is one person, so it is refused."""
        skeleton = name_skeleton(name)
        if skeleton == name_skeleton(self.config.username):
            why = "your own name" if name == self.config.username else "a look-alike of yours"
        elif name in self.people:
            why = "the name of someone already in the chat"
        elif alike := next((o for o in self.people if name_skeleton(o) == skeleton), None):
            why = f"a look-alike of {sanitize(alike)}, who is already in the chat"
        else:
            return None
        shown = sanitize(name)
        return (
            f"warning: the host announced {shown} joining, but {shown} is {why}: refused "
            "(nothing said under that name by the newcomer is shown)"
        )

    def _meet(self, person: Person) -> None:
        since = time.monotonic() - person.seconds
        self.people[person.name] = PeerInfo(
            person.name, person.address, person.identity, since, nonce=person.nonce
        )

    # The main thread ------------------------------------------------------------------

    def wait_until_started(self, listening: bool, net: Network | None = None) -> None:
        """Block until the chat starts; while listening, refuse lines typed meanwhile,
        but for /invite, which opens an invite on `net`."""
        while not self.started.is_set():
            if listening:
                typed = self.term.watch_input(self.started)
                if typed is not None and typed.strip().lower() == "/invite" and net is not None:
                    self._open_invite(net)  # the one command that makes sense before anyone came
                elif typed is not None:
                    self.term.error("Nobody is connected yet: that line was not sent.")
            else:
                self.started.wait(0.1)  # short waits keep Ctrl-C responsive
        if self.failure is not None:
            raise self.failure

    def run(self, net: Network) -> int:
        """Chat until someone leaves; return the exit status.

        When the network ends the chat it interrupts the main thread (SIGUSR1
        raising PeerEnded), so a pending input() never waits for a keypress.
        """
        self.net = net
        self.term.complete_with(self.completions)
        with self._lock:
            if self.outcome is not None:  # the chat ended before we got here
                return self.status()
            if main_thread_can_be_signalled():
                signal.signal(signal.SIGUSR1, self._on_interrupt)
                self._can_interrupt = True
        try:
            try:
                goodbye = self._read_until_exit()
            except KeyboardInterrupt:  # Ctrl-C while sending, printing or in a long line
                self._drop_unsent("Not sent")
                goodbye = ""
            self._leave(goodbye)
        except PeerEnded:
            self._drop_unsent("Not sent (the chat had ended)", keep_row=False)
            self.ended.wait(GOODBYE_DRAIN_SECONDS)
        finally:
            self._interrupted.set()
            self.flush_past()
        return self.status()

    def _drop_unsent(self, why: str, keep_row: bool = True) -> None:
        """Leave the prompt; a half-typed line is never thrown away silently. `keep_row`:
        it stays on the screen (after Ctrl-C), so the line below says it did not go."""
        typed = "\n".join(part for part in (self._collected, self.term.typed_text()) if part)
        self._collected = ""
        if keep_row:
            self.term.newline()
        else:
            self.term.clear_prompt()
        if typed.strip():
            self.term.show(f"{why}: {peer_text(typed)}")

    def status(self) -> int:
        """The exit status: 0 after a goodbye from either side, 1 otherwise."""
        return 1 if self.outcome is None else self.outcome

    def _read_until_exit(self) -> str:
        """Send typed lines until the user leaves; return the goodbye text."""
        while True:
            try:
                line = self.term.ask(self.prompt)
            except (EOFError, KeyboardInterrupt):
                self._drop_unsent("Not sent")
                return ""
            except UnicodeDecodeError:
                self.term.error("error: that line is not valid UTF-8 text: not sent")
                continue
            if self.outcome is not None:  # ended while input() waited (no signals here)
                self._collected = line
                raise PeerEnded
            line = self._continued(line)
            stripped = line.strip()
            if stripped == "exit":
                return self._ask_goodbye()
            if stripped.startswith("/") and not stripped.startswith("//") and "\n" not in line:
                if self._run_command(stripped):
                    return self._ask_goodbye()
            elif stripped:  # a line of only whitespace is not sent
                self._send(Chat(line[1:] if line.startswith("//") else line))

    def _continued(self, line: str) -> str:
        """On a terminal, a line ending in a backslash goes on in the next one.

        A bracketed paste arrives as one line holding its newlines already; a
        line ending in two backslashes sends one. Lines taken so far are kept in
        `self._collected`, so a chat that ends meanwhile can say they were not sent.
        """
        line = line.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
        while self.term.interactive and line.endswith("\\"):
            if line.endswith("\\\\"):
                return line[:-1]
            self._collected = line[:-1]
            try:
                more = self.term.ask("... ")
            except EOFError:
                break
            line = f"{line[:-1]}\n{more}".rstrip("\n")
        self._collected = ""
        return line

    def _run_command(self, line: str) -> bool:
        """Run a slash command; True when it means leaving the chat."""
        word, _, argument = line[1:].partition(" ")
        command = COMMAND_INDEX.get(word.lower())
        if command is None:
            self.term.error(
                f"unknown command {sanitize(line.split()[0])}: type /help for the "
                "commands, or start with // to send a line beginning with /"
            )
            return False
        return command.run(self, argument.strip())

    def _ask_goodbye(self) -> str:
        """The goodbye text, asked again until it can be sent."""
        while True:
            try:
                text = self.term.ask("Enter goodbye text (optional): ")
                Terminate(text).encode_body()
            except (EOFError, KeyboardInterrupt):
                self.term.newline()
                return ""
            except UnicodeDecodeError:
                self.term.error("error: that line is not valid UTF-8 text: type it again")
            except ChatError as exc:
                self.term.error(f"error: {exc}")
            else:
                return text

    def _send(self, message: Chat | Action, to: str = "") -> None:
        """Send our words: as they are when hosting or alone with the host (the connection
        itself proves who said them); signed (SAY) when the host relays them to others."""
        assert self.net is not None and self.voice is not None
        if not self.people:  # a host whose room emptied, waiting for its invite code
            self.term.error("Nobody else is in the chat: that line was not sent.")
            return
        form = Form.ACTION if isinstance(message, Action) else Form.CHAT
        relayed = not self.hosting and len(self.people) > 1
        try:
            message.encode_body()  # a line too long is refused here, before it is queued
            to_nonce = self.people[to].nonce if to in self.people else NO_NONCE
            words = self.voice.say(message.text, form, to, to_nonce) if to or relayed else None
        except ChatError as exc:
            self.term.error(f"error: {exc}")
            return
        if words is not None and not to and not self.hosting:
            self._mine.append(Said(self.config.username, words))  # for /verify room
        if words is None:
            self.net.send(message)
        elif self.hosting:  # the host's private words go as the host's own SAID
            self.net.send_to(to, Said(self.config.username, words))
        else:
            self.net.send(words)
        if to:  # private words name who they went to: names may share a beginning
            sent = f"Sent to {sanitize(to)} privately."
        else:
            sent = "Sent CHAT message." if isinstance(message, Chat) else "Sent ACTION message."
        if self.away_from is not None:  # kept: it goes, in order, once the chat is back
            self.owed.append(sent)  # said once it is really sent
            self.term.show(f"Waiting: it goes when {sanitize(self.away_from)} is back.")
        else:
            self.term.show(sent)

    def _leave(self, goodbye: str) -> None:
        if not self._decide(0, None):
            self.ended.wait(GOODBYE_DRAIN_SECONDS)  # the peer ended it first
            return
        assert self.net is not None
        if not self.hosting and len(self.people) > 1 and self.voice is not None:
            # The others hear our goodbye from us, signed: the host cannot write it for us.
            with contextlib.suppress(ChatError):  # too long: TERMINATE alone still goes
                words = self.voice.say(goodbye, Form.GOODBYE)
                self._mine.append(Said(self.config.username, words))  # the host ECHOes it too
                self.net.send(words)
        self.net.leave(goodbye)
        if self.away_from is not None:  # nobody to say goodbye to: the link is down
            self.term.show(self._left_while_away(self.away_from))
        else:
            self.term.show("Sent TERMINATE message.")
            self.term.show("Connection closed by you.")
        # The network half-closes after the goodbye and waits for the peer to
        # close too, so nothing in flight is cut off.
        self.net.finished.wait()  # bounded by the network: a stalled write or the drain limit
        for name in self.net.unheard:  # it never closed its end: the link may be down
            self.term.show(
                f"{sanitize(name)} did not answer the goodbye: if the link is down, they were "
                "not told you left, and keep your place until their time to wait runs out."
            )

    def _left_while_away(self, name: str) -> str:
        """The line for leaving while the chat's only other person is away."""
        who = sanitize(name)
        unsent = ""
        if waiting := len(self.owed):
            lines = "line" if waiting == 1 else "lines"
            unsent = f" ({waiting} {lines} typed meanwhile not sent)"
        if self.hosting:
            return (
                f"Left while {who} was away: they were not told, and find the chat gone when "
                f"they reconnect{unsent}."
            )
        return (
            f"Gave up reconnecting to {who}: they were not told you left, and keep your place "
            f"until their time to wait runs out{unsent}."
        )

    def _decide(self, status: int, line: str | None) -> bool:
        """Record how the chat ended and print its line, unless already decided."""
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = status
            if line is not None:
                self.term.show(line)
            return True

    def _end_from_network(self, status: int, line: str) -> None:
        if not self._decide(status, line):
            return
        # Everything this side was shown comes before the prompt is taken away.
        self.term.wait_shown(GOODBYE_DRAIN_SECONDS)
        with self._lock:
            can_interrupt = self._can_interrupt
        if can_interrupt:
            signal_until(self._main, signal.SIGUSR1, self._interrupted)
        elif self.net is not None:  # input() cannot be interrupted here (no signals)
            self.term.show("Press Enter to exit.")

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if not self._interrupted.is_set():
            self._interrupted.set()
            raise PeerEnded

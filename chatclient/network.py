"""The one network thread: a selectors loop that accepts, runs each PeerProtocol,
writes each link's bounded outgoing buffer and runs the timers. Other threads
hand it work through post() and a wake-up socket; only it touches a socket.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from .config import HANDSHAKE_SECONDS, KEEPALIVE_SECONDS
from .disk import FILE_CHUNKS_PER_TURN, FILE_READ_SIZE, NOT_SENT_LOW_WATER
from .errors import ChatError, ConnectionLost, KeyMismatch, describe_os_error
from .handshake import ROOM_ID_SIZE, Mode, Reject, Role
from .identity import MAX_INVITE_FAILURES, Invite
from .messages import (
    FILE_MESSAGES,
    NO_NONCE,
    Echo,
    Form,
    Joined,
    Left,
    Members,
    Message,
    Person,
    Refuse,
    Said,
    Say,
    Terminate,
)
from .peer import (
    HANDSHAKE_STAGES,
    Caught,
    ChunkReceived,
    Closed,
    Established,
    Event,
    Failed,
    IdentityRefused,
    Judge,
    KeyProven,
    MessageReceived,
    PeerProtocol,
    RoomCheck,
    Stage,
    accept_anyone,
    any_room,
)
from .resume import Carry
from .room import (
    MEMBER_SENDS,
    AbandonLog,
    InviteBudget,
    Pending,
    RefusalLog,
    Room,
    RoomLog,
    handshake_to_evict,
    public_line,
)
from .sessions import Kept, Sessions, SessionUser
from .sockets import LISTEN_BACKLOG, Link, format_address, peer_address, unmap
from .text import sanitize
from .transfers import FileDesk, FileUser

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


GOODBYE_DRAIN_SECONDS = 2.0
# After our goodbye, a peer still sending is alive and behind (a host relaying a burst):
# closing then would reset the connection and lose what it has not read of ours, so the
# wait goes on while it sends, up to this long.
GOODBYE_BUSY_SECONDS = 30.0
INSTALL_SECONDS = 2.0  # the most /invite waits for the network thread to open its code
# What may wait unsent for one peer; a peer that lets more pile up is not reading.
MAX_OUTGOING = 4 * 1024 * 1024
# Above this much unsent, the network thread takes no more messages from this side
# until the peer has read some, and a sender waits once this many are queued.
HIGH_WATER = 1024 * 1024
MAX_QUEUED_COMMANDS = 4096
SETTLE_ROUNDS = 4  # rounds of writing per pass while links queue for one another


class NetworkUser(SessionUser, Protocol):
    """What the network thread reports to (the conversation, or a benchmark)."""

    def connection_events(self, link: Link, events: list[Event]) -> None:
        """Events of a connection in the chat: Established, MessageReceived, Closed, Failed."""

    def refused(self, line: str) -> None:
        """A line about a connection that was refused or dropped."""

    def network_failed(self, error: ChatError) -> None:
        """The network thread itself failed (a bug): nothing more will be reported."""

    def invite_void(self, line: str) -> None:
        """The invite was guessed wrong too often (`line` says so): it is closed; the
        listener goes on."""


class Network(Sessions):
    """The one thread that owns every socket, around one `selectors` loop.

    It accepts, runs every handshake, reads into each PeerProtocol, writes each
    peer's bounded outgoing buffer and runs the timers. Other threads never
    touch a socket: they post() commands, which a wake-up socket delivers.
    """

    _user: NetworkUser  # more than the sessions kept need

    def __init__(
        self,
        psk: bytes | None,
        username: str,
        user: NetworkUser,
        *,
        identity: Ed25519PrivateKey | None = None,
        judge: Judge = accept_anyone,
        code: str | None = None,
        invite: Invite | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
        room_check: RoomCheck = any_room,
        keepalive: float = KEEPALIVE_SECONDS,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        capacity: int = 1,
        clock: Callable[[], float] = time.monotonic,
        files_user: FileUser | None = None,
        downloads: str = ".",
        plain_progress: bool = True,
        reconnect_for: float = 0.0,
        dial: Callable[[float], socket.socket] | None = None,
    ) -> None:
        self._psk, self._username, self._user = psk, username, user
        # A lost session is kept this long to resume (0: never): the connector redials
        # with `dial`; the host keeps the member's place.
        self._reconnect_for, self._dial = reconnect_for, dial
        self._away: Kept | None = None  # connector: the session being resumed
        self._parked: dict[bytes, Kept] = {}  # host: by resume id
        if identity is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity = Ed25519PrivateKey.generate()
        self._identity, self._judge = identity, judge
        self._code, self._invite, self._room_id = code, invite, room
        self._room_check = room_check
        self._keepalive, self._handshake_seconds = keepalive, handshake_seconds
        self._room, self._clock = Room(capacity), clock
        # Hosting: the room's running hash of its public lines (/verify room).
        self.log = RoomLog(identity.public_key().public_bytes_raw(), room)
        self._hosting = False
        self._echoes: dict[int, Link] = {}  # members whose room words await an ECHO
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._commands: deque[Callable[[float], None]] = deque()
        self._urgent: deque[Callable[[float], None]] = deque()  # run first, never held back
        self._wake_pending = False
        self._dirty: dict[int, Link] = {}  # links written to by this pass's commands
        self._senders = threading.Condition()  # senders wait here while the queue is long
        self._senders_waiting = 0
        self._links: dict[int, Link] = {}
        self._server: socket.socket | None = None
        self._accept_paused_until: float | None = None
        self._refusals = RefusalLog()
        self._impostors = RefusalLog()
        self._impostor_hosts = RefusalLog()
        self._abandoned = AbandonLog()
        self._leaving = False
        self._invite_reported = False
        self._invite_budget = InviteBudget()
        self._running = True
        self.finished = threading.Event()
        # After our goodbye: the peers that never closed their end within the drain time
        # (the link may be down: they may not have heard it). Read once `finished` is set.
        self.unheard: list[str] = []
        self._thread = threading.Thread(target=self._run, name="network", daemon=True)
        self.files = FileDesk(self, files_user, downloads, plain_progress)

    @property
    def username(self) -> str:
        return self._username

    # Called by other threads ------------------------------------------------

    def listen(self, server: socket.socket) -> None:
        """Accept connections on `server` (call before start())."""
        server.setblocking(False)
        self._server, self._hosting = server, True
        self._selector.register(server, selectors.EVENT_READ, server)

    def connect(self, sock: socket.socket) -> None:
        """Run the connector's side on a connected socket (call before start())."""
        now = self._clock()
        link = self._add(sock, peer_address(sock), Role.CONNECTOR, now)
        self._room.claim(link)  # our own connection: the chat's one place

    def start(self) -> None:
        """Start the network thread. Ctrl-C waits until it runs: one landing inside
        Thread.start() breaks threading's own lock (a traceback, not a clean exit), and the
        thread inherits SIGINT blocked, so the signal always goes to the main thread."""
        mask = getattr(signal, "pthread_sigmask", None)
        main = threading.current_thread() is threading.main_thread()
        old = mask(signal.SIG_BLOCK, {signal.SIGINT}) if mask and main else None
        try:
            self._thread.start()
        finally:
            if mask is not None and old is not None:
                mask(signal.SIG_SETMASK, old)

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        """Run `command(now)` on the network thread, in order; `urgent` ones first.

        Urgent commands are not held back while a slow peer sets the pace, and
        always send a wake-up, so one can never wait behind a stale flag.
        """
        (self._urgent if urgent else self._commands).append(command)
        if threading.get_ident() == self._thread.ident:
            return  # the loop runs it in this pass
        if self._wake_pending and not urgent:
            return  # a wake-up is already on its way
        self._wake_pending = True
        with contextlib.suppress(OSError):  # a full wake-up buffer already means "wake up"
            self._wake_writer.send(b"\0")

    def send(self, message: Message) -> None:
        """Send a message to everyone in the chat; waits while many are still queued.

        The wait is how a peer that reads slowly slows this side down instead of
        letting unsent messages pile up without bound.
        """
        self.post(lambda now: self._broadcast(message, now))
        if len(self._commands) <= MAX_QUEUED_COMMANDS:
            return
        if threading.get_ident() == self._thread.ident:
            return
        with self._senders:
            self._senders_waiting += 1
            try:
                self._senders.wait_for(
                    lambda: (
                        len(self._commands) <= MAX_QUEUED_COMMANDS // 2 or self.finished.is_set()
                    )
                )
            finally:
                self._senders_waiting -= 1

    def leave(self, goodbye: str) -> None:
        """After what is queued, say goodbye, stop accepting, and finish once all have closed."""
        self.post(lambda now: self._leave(goodbye, now))
        # Always a wake-up of its own: Ctrl-C (the usual way to leave) may have
        # stopped an earlier post() between setting the flag and waking the loop.
        self.post(lambda now: None, urgent=True)

    def stop(self, timeout: float = GOODBYE_DRAIN_SECONDS) -> None:
        """Close every socket and end the thread, whatever is still queued."""
        self.post(self._stop, urgent=True)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # The loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                timeout = self._run_timers(self._clock())
                ready = self._selector.select(0 if self._dirty else timeout)
                now = self._clock()
                for key, mask in ready:
                    self._dispatch(key.data, mask, now)
                self._run_commands(now)
        except Exception as exc:  # a bug: end the chat (or the wait for one), never hang
            self._user.network_failed(
                ConnectionLost(f"internal error in the network thread: {exc!r} (please report it)")
            )
            raise
        finally:
            self._close_everything()
            self.finished.set()
            with self._senders:
                self._senders.notify_all()

    def _run_commands(self, now: float) -> None:
        # Cleared first: a command posted from now on sends a wake-up of its own.
        self._wake_pending = False
        while self._urgent:
            self._urgent.popleft()(now)
        while self._commands and self._running and not self._backlogged():
            self._commands.popleft()(now)
        for link in list(self._echoes.values()):  # each author learns where its words went
            if self._is_open(link):
                self._echo(link, now)
        self._echoes.clear()
        # Written once per pass, however many messages the commands queued. Writing one
        # link may queue for another (a relayed file's credit): a few rounds, and what is
        # left makes the next select return at once.
        for _ in range(SETTLE_ROUNDS):
            dirty, self._dirty = self._dirty, {}
            for link in dirty.values():
                if self._is_open(link):
                    self._settle(link, now)
            if not self._dirty:
                break
        if self._senders_waiting and len(self._commands) <= MAX_QUEUED_COMMANDS // 2:
            with self._senders:
                self._senders.notify_all()

    def _backlogged(self) -> bool:
        """True while every peer written to has over HIGH_WATER unsent: they set the pace.

        The rest of the commands wait in the queue; a writable socket wakes the
        loop again, so they run as soon as a peer has read some. One slow peer
        among faster ones holds nobody back: its buffer grows to MAX_OUTGOING
        and it is dropped as not reading.
        """
        if not self._dirty:
            return False
        for link in list(self._dirty.values()):
            if len(link.outgoing) > HIGH_WATER and self._is_open(link):
                self._settle(link, self._clock())  # write what the socket takes now
            if len(link.outgoing) <= HIGH_WATER or not self._is_open(link):
                return False
        return True

    def _dispatch(self, data: object, mask: int, now: float) -> None:
        if data is None:
            with contextlib.suppress(OSError):
                self._wake_reader.recv(4096)  # one byte per wake-up: one read empties it
        elif data is self._server:
            self._accept(now)
        elif isinstance(data, Link) and self._is_open(data):
            if mask & selectors.EVENT_READ:
                self._read(data, now)
            if mask & selectors.EVENT_WRITE and self._is_open(data):
                self._settle(data, now)

    def _is_open(self, link: Link) -> bool:
        # By identity: a closed link's descriptor number may already be a new link's.
        return self._links.get(link.fd) is link

    def _run_timers(self, now: float) -> float | None:
        """Apply every deadline due now; seconds until the next one (None: no deadline)."""
        deadlines: list[float] = []
        for link in list(self._links.values()):
            if not self._is_open(link):
                continue  # closed by an earlier link's turn in this loop
            if (due := link.peer.timers(now)) is not None:
                deadlines.append(due)
            if link.outgoing:
                stalled = link.last_write + link.peer.silence_limit
                if now >= stalled:
                    link.outgoing.clear()
                    link.peer.connection_failed(  # a link down looks like this mid-transfer
                        f"the peer has not read anything for {link.peer.silence_limit:g} s",
                        lost=True,
                    )
                deadlines.append(stalled)
            if link.leave_by is not None:
                link.leave_by = max(link.leave_by, link.last_read + GOODBYE_DRAIN_SECONDS)
                link.leave_by = min(link.leave_by, link.leave_cap)
                if now >= link.leave_by:
                    if link.peer.stage is not Stage.CLOSED and link.peer.peer_name:
                        self.unheard.append(link.peer.peer_name)
                    self._close(link)
                    continue
                deadlines.append(link.leave_by)
            if link.peer.pending() or link.peer.stage is Stage.CLOSED:
                self._settle(link, now)
        for log in (self._refusals, self._impostors, self._impostor_hosts, self._abandoned):
            for line in log.summaries(now):
                self._user.refused(line)
            if (due := log.next_deadline()) is not None:
                deadlines.append(due)
        if (due := self.files.expire(now)) is not None:
            deadlines.append(due)
        if (due := self._keep_sessions(now)) is not None:
            deadlines.append(due)
        if self._accept_paused_until is not None:
            if now >= self._accept_paused_until:
                self._resume_accepting()
            else:
                deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    # Connections ----------------------------------------------------------------

    def _accept(self, now: float) -> None:
        assert self._server is not None
        for _ in range(LISTEN_BACKLOG):  # a batch, then the other sockets get a turn
            try:
                sock, address = self._server.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of file descriptors: pause rather than spin
                self._user.refused(f"Not accepting connections for 1 s: {describe_os_error(exc)}")
                self._selector.unregister(self._server)
                self._accept_paused_until = now + 1.0
                return
            host, port = unmap(str(address[0])), int(address[1])
            pending = [
                Pending(link.host, link.since, link.peer.greeted, link.fd)
                for link in self._links.values()
                if link not in self._room and link.peer.stage in HANDSHAKE_STAGES
            ]
            if (eviction := handshake_to_evict(pending, host)) is not None:
                victim, reason = eviction
                self._report(self._links[victim.key], "Dropped a connection from", reason, now)
                self._close(self._links[victim.key])
            busy = any(p.host == host for p in pending)
            self._add(sock, (host, port), Role.LISTENER, now, busy)

    def _resume_accepting(self) -> None:
        self._accept_paused_until = None
        if self._server is not None and not self._leaving:
            self._selector.register(self._server, selectors.EVENT_READ, self._server)

    def _add(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        role: Role,
        now: float,
        busy: bool = False,
        resume: Carry[Message] | None = None,
    ) -> Link:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        links: list[Link] = []  # the judge needs the link this PeerProtocol is made for
        # An address that guessed wrong lately, or one with a handshake still running, or
        # any beyond the budget of tries a second, is told no invite is open, before any
        # SPAKE2 work: guesses slow down, the CPU is bounded, and contacts still get in.
        invite = self._invite
        if (
            role is Role.LISTENER
            and invite is not None
            and invite.open
            and not self._invite_budget.allow(address[0], busy, now)
        ):
            invite = None
        peer = PeerProtocol(
            role,
            self._psk,
            self._username,
            now,
            identity=self._identity,
            judge=self._judge if role is Role.CONNECTOR else partial(self._judge_joiner, links),
            code=self._code if role is Role.CONNECTOR else None,
            invite=invite if role is Role.LISTENER else None,
            room=self._room_id,
            room_check=self._room_check,
            handshake_seconds=self._handshake_seconds,
            keepalive=self._keepalive,
            resume=resume,
            sessions=self._parked_session if role is Role.LISTENER else None,
        )
        link = Link(sock, address, peer, since=now, fd=sock.fileno(), last_write=now)
        links.append(link)
        self._links[link.fd] = link
        self._selector.register(sock, selectors.EVENT_READ, link)
        self._settle(link, now)
        return link

    def _read(self, link: Link, now: float) -> None:
        try:
            data = link.sock.recv(FILE_READ_SIZE if self.files.busy(link) else 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            link.peer.connection_failed(describe_os_error(exc), lost=True)
        else:
            link.last_read = now
            link.peer.receive_data(data, now)
        self._settle(link, now)

    def _settle(self, link: Link, now: float) -> None:
        """Pass the link's events on, write what it owes, close it once it is over."""
        while True:
            self._hand_over_events(link, now)
            if self._write(link, now):
                break
        if link.peer.stage is Stage.CLOSED:
            self._close(link)
        elif self._is_open(link):
            writing = link.outgoing or self.files.has_data(link)
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            if link.mask != wanted:
                link.mask = wanted
                self._selector.modify(link.sock, wanted, link)

    def _hand_over_events(self, link: Link, now: float) -> None:
        shown: list[Event] = []
        while (event := link.peer.next_event()) is not None:
            if self._resuming(link, event, now):
                continue
            if isinstance(event, Caught):
                shown.append(self._back(link, event, now))
                self.files.caught_up(link, event.again, now)
                continue
            if isinstance(event, ChunkReceived):
                self.files.chunk(link, event, now)
            elif isinstance(event, MessageReceived) and isinstance(event.message, FILE_MESSAGES):
                self.files.message(link, event.message, now)
            elif isinstance(event, KeyProven):
                self._admit_or_refuse(link)
            elif link.peer.role is Role.LISTENER and (
                isinstance(event, Established) or link.established
            ):
                link.established = True
                shown += self._host(link, event, now)
            elif isinstance(event, Established) or link.established:
                link.established = True
                shown.append(event)
            elif link.peer.role is Role.CONNECTOR:
                shown.append(event)  # our own connection failed: the user says why
            elif isinstance(event, Failed):
                self._room.release(link)  # an admitted connector that vanished frees its place
                self._refused(link, event.error, now)
        link.outgoing += link.peer.data_to_send()
        if any(ends_link(event) for event in shown):
            # Its transfers stop first, so "54% kept" comes before the chat's last line.
            self.files.link_closed(link, now)
        if shown:
            self._user.connection_events(link, shown)

    def _admit_or_refuse(self, link: Link) -> None:
        # The place is claimed before our WELCOME goes out, so when two proven
        # connectors race for the last place, the second is told the room is full.
        if self._leaving:
            link.peer.refuse(Reject.BUSY)
            return
        if link.peer.mode is not Mode.RESUME:  # a resume takes over its kept place
            link.no_room = not self._room.claim(link)
        link.peer.admit()

    def _judge_joiner(self, links: list[Link], name: str, identity: bytes, mode: Mode) -> None:
        """The host's judge: a place, a free name and known_peers. With no key and no code
        (where any stranger may try) known_peers comes first, so a stranger learns nothing
        of the room: who is in it, or whether it is full. A resume keeps its own place and
        name: PeerProtocol checks it is the session's identity and name."""
        if mode is Mode.RESUME:
            return
        if mode is Mode.CONTACT:
            self._judge(name, identity, mode)
        self._replaced(links[0], name, identity)
        if links[0].no_room:
            raise IdentityRefused(
                Refuse.ROOM_FULL, "the chat is full", name, number=self._room.capacity
            )
        if name == self._username or self._room.taken(name):
            raise IdentityRefused(Refuse.NAME_TAKEN, f"the name {name} is taken here", name)
        if mode is not Mode.CONTACT:
            self._judge(name, identity, mode)
        self._room.hold(links[0], name)

    # The room (this side hosts it) -------------------------------------------------

    def _host(self, link: Link, event: Event, now: float) -> list[Event]:
        """Relay what a member's connection brings; the events this side's user sees."""
        if isinstance(event, Established):
            if event.nonce == NO_NONCE or self._room.nonce_taken(event.nonce):
                # Members would refuse it as a replayed join: it is put out here instead.
                link.established = False  # refused, as a handshake is
                link.peer.connection_failed("it chose a join nonce already in use")
                return []
            address = format_address(link.address)
            person = Person(event.name, event.identity, address, nonce=event.nonce)
            joined = Joined(person)
            self.log.fold(joined)  # the newcomer's /verify room starts just after it
            head, count = self.log.state
            self._to(link, Members(self._room.people(now), head, count), now)
            for member in self._room.others(link):
                self._to(member, joined, now)
            self._room.seat(link, person, now)
            return [event]
        author = self._room.person(link)
        if isinstance(event, MessageReceived) and author is not None:
            return self._relay(link, author, event.message, now)
        if isinstance(event, (Closed, Failed)):
            gone = self._room.release(link)
            if gone is not None and not link.said_goodbye:
                self._tell_room(Left(gone.name, lost=True), now)
        return [event]

    def _relay(self, link: Link, author: Person, message: Message, now: float) -> list[Event]:
        if not isinstance(message, MEMBER_SENDS):
            link.peer.connection_failed(f"it sent {message.kind()}, which only a host sends")
            return []
        if link.goodbye_words and not isinstance(message, Terminate):  # TERMINATE must follow
            link.peer.connection_failed(f"it sent {message.kind()} after its goodbye")
            return []
        if isinstance(message, Say):
            # The signature is not checked here: this connection already proves who sent
            # it, and the others check it (110 us an Ed25519 check, measured: the host would
            # pay it for every message of the room). The numbering costs nothing to check.
            # Before the numbering, which keeps a count per recipient: a name nobody has
            # must cost nothing to keep.
            if message.to and message.to != self._username and not self._room.named(message.to):
                self._to_nobody(link, author, message.to)
                return []
            if not self._room.in_sequence(link, message):
                link.peer.connection_failed("it sent a message out of sequence")
                return []
            said = Said(author.name, message)
            if not message.to:  # a public line: counted, and the author told where it went
                self.log.fold(said)
                link.echo_due = message.seq
                self._echoes[link.fd] = link
            for member in self._room.audience(link, message):
                self._to(member, said, now)
            if message.form == Form.GOODBYE:  # shown here from its TERMINATE, which follows
                link.goodbye_words = True
                return []
            if message.to and message.to != self._username:
                return []  # a private message between two others: relayed, not shown
            return [MessageReceived(said)]
        if isinstance(message, Terminate):
            link.said_goodbye = True
            self._tell_room(Left(author.name), now, but=link)
        # Unsigned words (CHAT, ACTION) are from a member who knew of nobody but the host:
        # shown here, relayed to no one, since nobody else could check who said them.
        return [MessageReceived(message)]

    def _to_nobody(self, link: Link, author: Person, name: str) -> None:
        """Private words for a name nobody in the room has: dropped, and counted so that the
        count is said at 1, 10, 100, ... (a flood costs a few lines, never memory)."""
        link.to_nobody += 1
        count = link.to_nobody
        if count == 1:
            self._user.refused(
                f"{sanitize(author.name)} sent private words to {sanitize(name)}, who is not in "
                "the chat: not passed on"
            )
        elif count == 10 ** (len(str(count)) - 1):
            self._user.refused(
                f"{sanitize(author.name)} has sent {count} private messages to names not in "
                "the chat: none passed on"
            )

    def _tell_room(self, message: Message, now: float, but: object = None) -> None:
        self.log.fold(message)
        for member in self._room.others(but):
            self._to(member, message, now)

    def _to(self, member: object, message: Message, now: float) -> None:
        """Queue `message` for one member (written at the end of this pass)."""
        assert isinstance(member, Link)
        if member.echo_due is not None and public_line(message):
            self._echo(member, now)  # its own words went to the room before this line
        if member.parked and (carry := member.peer.carry) is not None:
            carry.outbox.add(message, len(message.encode_body()))  # sent when it is back
            return
        if self._is_open(member) and member.peer.stage is Stage.OPEN and not member.leaving:
            member.outgoing += member.peer.data_to_send()
            member.outgoing += member.peer.send(message, now)
            self._dirty[member.fd] = member

    def _echo(self, member: Link, now: float) -> None:
        """Tell `member` that its words to the room up to echo_due went to the room here."""
        seq, member.echo_due = member.echo_due, None
        self._echoes.pop(member.fd, None)
        if seq is not None:
            self._to(member, Echo(seq), now)

    def _write(self, link: Link, now: float) -> bool:
        """Write what the socket takes now; False when writing failed (events to pass on)."""
        if len(link.outgoing) > MAX_OUTGOING:
            link.outgoing.clear()
            link.peer.connection_failed(
                f"the peer is not reading: over {MAX_OUTGOING // 2**20} MiB waiting for it",
                lost=True,
            )
            return False
        # File chunks are queued only once everything else is written, so a line typed
        # during a transfer waits behind one chunk at most; a bounded batch per turn.
        for _ in range(FILE_CHUNKS_PER_TURN):
            if link.outgoing:
                try:
                    sent = link.sock.send(link.outgoing)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    link.outgoing.clear()
                    link.peer.connection_failed(describe_os_error(exc), lost=True)
                    return False
                if sent:
                    del link.outgoing[:sent]
                    link.last_write = now
            if link.outgoing or link.leaving or link.peer.stage is not Stage.OPEN:
                break
            if not self.files.pump(link, now):
                break
        if not link.outgoing:
            link.last_write = now
            if link.leaving and link.leave_by is None:
                # Everything up to our goodbye is written: the peer reads it, then end
                # of stream; it has GOODBYE_DRAIN_SECONDS to close its end too.
                link.leave_by = now + GOODBYE_DRAIN_SECONDS
                link.leave_cap = now + GOODBYE_BUSY_SECONDS
                with contextlib.suppress(OSError):
                    link.sock.shutdown(socket.SHUT_WR)
        return True

    def _close(self, link: Link) -> None:
        if not self._is_open(link):
            return
        del self._links[link.fd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(link.sock)
        if link.outgoing and link.peer.stage is Stage.CLOSED:  # a refusal not written yet
            with contextlib.suppress(OSError):
                link.sock.send(link.outgoing)
        link.sock.close()
        kept = link.parked or (self._away is not None and self._away.link is link)
        if not link.parked:
            self._room.release(link)
        if not kept:  # a kept session's transfers wait to go on where they were
            self.files.link_closed(link, self._clock())
        if self._leaving and not self._room:
            self._running = False

    def _refused(self, link: Link, error: ChatError, now: float) -> None:
        """A connector that did not get in: said once, counted if it gave up halfway."""
        if link.peer.abandoned and link.peer.mode is Mode.RESUME:
            return  # a redial cut short by the link it is waiting for: nothing to tell
        if link.peer.abandoned:
            if (line := self._abandoned.abandoned(link.host, now)) is not None:
                self._user.refused(line)
        elif link.peer.mode is Mode.INVITE and isinstance(error, KeyMismatch):
            # Each wrong code is shown: there are only MAX_INVITE_FAILURES of them.
            self._user.refused(f"Refused a connection from {link.address!r}: {error}")
            self._invite_budget.guessed_wrong(link.host, now)
        elif isinstance(error, IdentityRefused) and error.reason is Refuse.IDENTITY_CHANGED:
            # Loud whatever else that address did, and even during a chat; one warning
            # per claimed name every REFUSAL_SUMMARY_SECONDS, the rest counted.
            line = f"Refused a connection from {link.address!r}: {error}"
            claimed = f"someone claiming to be {sanitize(error.name)}"
            # One warning per address and per claimed name in each window: an address
            # trying every contact's name costs one block of lines, the rest are counted.
            by_address = self._impostor_hosts.refused(link.host, line, now, "impostor")
            if (
                by_address is not None
                and (shown := self._impostors.refused(claimed, line, now)) is not None
            ):
                self._user.refused(shown)
        elif isinstance(error, IdentityRefused) and error.reason is Refuse.NOT_A_CONTACT:
            self._report(link, "Refused a connection from", str(error), now, "not a contact")
        else:
            self._report(link, "Refused a connection from", str(error), now)
        invite = self._invite
        if invite is not None and invite.void and not self._invite_reported:
            self._invite_reported = True
            self._user.invite_void(
                f"the invite code {invite.code} is void: it was tried {MAX_INVITE_FAILURES} "
                f"times with a wrong code, and nobody got in"
            )

    def _report(self, link: Link, what: str, reason: str, now: float, kind: str = "") -> None:
        """A refusal line, unless the chat is full (then it is on screen: stay quiet)."""
        if self._room.full:
            return
        line = f"{what} {link.address!r}: {reason}"
        if (shown := self._refusals.refused(link.host, line, now, kind)) is not None:
            self._user.refused(shown)

    # Commands (run on the network thread) ------------------------------------------

    def _broadcast(self, message: Message, now: float) -> None:
        if self._away is not None:  # kept, and sent once the session is back
            self._away.carry.outbox.add(message, len(message.encode_body()))
            self._away.waiting += 1
            return
        if self._hosting and public_line(message):
            self.log.fold(message)  # the host's own words to the room
        parked = [kept.link for kept in self._parked.values()]  # kept for them
        for link in [*self._links.values(), *parked]:  # only queued: nothing closes meanwhile
            if link in self._room and link.established:
                self._to(link, message, now)

    def offer(self, invite: Invite) -> None:
        """From now on, connections may join with `invite` (the one before is void)."""

        installed = threading.Event()

        def replace_invite(now: float) -> None:
            self._invite, self._invite_reported = invite, False
            installed.set()

        self.post(replace_invite)
        # The code is shown once it is open: a peer quick to type it is never told that no
        # invite is open. (Before start(), it is installed when the thread starts.)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            installed.wait(INSTALL_SECONDS)

    def deliver(self, link: Link, message: Message, now: float) -> None:
        """On the network thread: queue `message` for one connection in the chat (one that
        cannot be encoded is a bug here, reported; it never ends the network thread)."""
        try:
            self._to(link, message, now)
        except ChatError as exc:
            self._user.refused(f"error: could not send {message.kind()}: {exc} (please report it)")

    def nudge(self, link: Link) -> None:
        """From any thread: let `link` write again (a file chunk became ready)."""

        def mark(now: float) -> None:
            if self._is_open(link):
                self._dirty[link.fd] = link

        self.post(mark, urgent=True)

    def low_water(self, link: Link) -> None:
        """Keep little of a file unsent in the kernel, so chat never waits behind much."""
        option = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform == "linux" else None)
        if option is not None:
            with contextlib.suppress(OSError):
                link.sock.setsockopt(socket.IPPROTO_TCP, option, NOT_SENT_LOW_WATER)

    def route_to(self, name: str, is_host: bool) -> tuple[Link, str] | None:
        """On the network thread: the connection to reach `name` by, and the WHO to write."""
        if self._server is not None or any(
            link.peer.role is Role.LISTENER for link in self._links.values()
        ):
            member = self._room.named(name)
            return (member, "") if isinstance(member, Link) and member.established else None
        for link in self._links.values():
            if link.peer.role is Role.CONNECTOR and link.established:
                return link, "" if is_host else name
        return None

    def send_to(self, name: str, message: Message) -> None:
        """Send a message to the one member called `name` (the host's private words)."""

        def deliver(now: float) -> None:
            if (member := self._room.named(name)) is not None:
                self._to(member, message, now)

        self.post(deliver)

    def _leave(self, goodbye: str, now: float) -> None:
        self._leaving = True
        # Sessions kept to resume end with this side's goodbye: nobody is waited for.
        for kept in self._parked.values():
            kept.link.parked = False
            self._room.release(kept.link)
            self.files.link_closed(kept.link, now)
        self._parked.clear()
        if self._away is not None:
            self.files.link_closed(self._away.link, now)
            self._away = None
        if self._server is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._server)
            self._server.close()
            self._server = None
        for link in list(self._links.values()):
            if link in self._room and link.peer.stage is Stage.OPEN:
                link.leaving = True
                link.outgoing += link.peer.data_to_send()
                link.outgoing += link.peer.send(Terminate(goodbye), now)
                self._settle(link, now)
            else:
                self._close(link)
        if not self._room:
            self._running = False

    def _stop(self, now: float) -> None:
        self._running = False

    def _close_everything(self) -> None:
        for link in list(self._links.values()):
            self._close(link)
        if self._server is not None:
            self._server.close()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()


def ends_link(event: Event) -> bool:
    """Whether `event` is the end of its connection (a goodbye, a close or a failure)."""
    if isinstance(event, MessageReceived):
        return isinstance(event.message, Terminate)
    return isinstance(event, (Closed, Failed))

"""Sessions kept across a lost connection (issue 18): the connector's redials after a
loss, the host's parked places and what it keeps for them, the hand-over of a session to
the connection that resumes it, and the end of what was kept past its window. Network
builds on Sessions; resume.py holds the pure rules (what is kept, the tries, the window).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import ChatError, ConnectionLost, HandshakeError
from .handshake import NoSession, Role, resume_id
from .messages import Absent, Left, Message
from .peer import Away, Back, Caught, Established, Event, Failed
from .resume import LAST_TRY_SECONDS, Carry, Reconnect
from .room import Room
from .sockets import Link, peer_address
from .text import sanitize, spoken_duration
from .transfers import FileDesk

MIN_DIAL_SECONDS = 2.0  # a redial's connect and handshake may take at least this


class SessionUser(Protocol):
    """What the sessions kept tell the person: the lines of a connection's events."""

    def connection_events(self, link: Link, events: list[Event]) -> None: ...


@dataclass
class Kept:
    """A session whose connection was lost, kept until `until` to resume."""

    carry: Carry[Message]
    name: str
    since: float
    until: float
    link: Link  # its last connection (hosting: still seated in the room)
    tries: Reconnect | None = None  # the connector's redials
    dialing: bool = False
    began: float = 0.0  # when the last try began
    waiting: int = 0  # lines typed meanwhile


def unsent(away: Kept) -> str:
    """What of the lines typed while away a chat that ends there never sent."""
    if not away.waiting:
        return ""
    lines = "line" if away.waiting == 1 else "lines"
    return f" ({away.waiting} {lines} typed meanwhile not sent)"


class Sessions:
    """The network thread's sessions kept to resume; Network provides the state and the
    socket work they use (only the network thread runs any of this)."""

    _user: SessionUser
    _room: Room
    _links: dict[int, Link]
    files: FileDesk
    _clock: Callable[[], float]
    _keepalive: float
    _handshake_seconds: float
    _reconnect_for: float  # 0: a lost session is never kept
    _dial: Callable[[float], socket.socket] | None  # the connector's: connect again
    _away: Kept | None  # connector: the session being resumed
    _parked: dict[bytes, Kept]  # host: by resume id
    _leaving: bool
    _running: bool

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        raise NotImplementedError  # Network runs it on its thread

    def _add(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        role: Role,
        now: float,
        busy: bool = False,
        resume: Carry[Message] | None = None,
    ) -> Link:
        raise NotImplementedError  # Network takes the connection in

    def _to(self, member: object, message: Message, now: float) -> None:
        raise NotImplementedError  # Network queues it

    def _tell_room(self, message: Message, now: float, but: object = None) -> None:
        raise NotImplementedError  # Network tells everyone in the room

    def _close(self, link: Link) -> None:
        raise NotImplementedError  # Network closes the socket

    def _resuming(self, link: Link, event: Event, now: float) -> bool:
        """Events of a session that outlives its connection; True when taken here."""
        connector = link.peer.role is Role.CONNECTOR
        away = self._away
        if isinstance(event, Failed) and connector and away is not None and not link.established:
            if isinstance(event.error, NoSession):  # the peer was restarted: it is over
                self._away = None
                self.files.link_closed(away.link, now)
                ended = NoSession(f"{event.error}{unsent(away)}")
                self._user.connection_events(link, [Failed(ended)])
                return True
            away.dialing = False
            if away.tries is not None:
                away.tries.failed(away.began)
            return True
        if isinstance(event, Failed) and self._may_keep(link):
            self._keep(link, str(event.error), now)
            return True
        if isinstance(event, Failed) and connector and away is not None:
            # The resumed connection failed before it was in step, and not for the link:
            # the session is over (the line says why).
            self._away = None
            return False
        if isinstance(event, Established) and event.resumed:
            link.established = True
            if connector and away is not None:
                self._moved(away.link, link, now)
            if connector or self._reseat(link, now):
                # The person is now on this connection (the line comes with Caught, once
                # both are in step).
                self._user.connection_events(link, [event])
            return True
        return False

    def _may_keep(self, link: Link) -> bool:
        peer = link.peer
        return (
            self._reconnect_for > 0
            and not self._leaving
            and link.established
            and peer.link_lost
            and peer.carry is not None
            and not peer.peer_left
            and not link.said_goodbye
            and not link.leaving
        )

    def _keep(self, link: Link, reason: str, now: float) -> None:
        """The connection is lost: keep its session for the window (the connector redials;
        the host keeps the place, and what the member misses is kept for it)."""
        carry = link.peer.carry
        assert carry is not None
        kept = Kept(carry, link.peer.peer_name, now, now + self._reconnect_for, link)
        if link.peer.role is Role.CONNECTOR:
            # A try at least every keepalive interval: a link back is found within one.
            kept.tries = Reconnect(now, self._reconnect_for, min(LAST_TRY_SECONDS, self._keepalive))
            self._away = kept
        else:
            link.parked = True
            self._parked[resume_id(carry.secret)] = kept
            absent = Absent(kept.name, round(self._reconnect_for))
            for member in self._room.others(link):
                self._to(member, absent, now)
        self._user.connection_events(link, [Away(kept.name, reason, self._reconnect_for)])

    def _parked_session(self, resume: bytes) -> Carry[Message] | None:
        """The session a resuming connector names, if the host still keeps it: lost, or
        not yet found lost here (the connector noticed first)."""
        kept = self._parked.get(resume)
        if kept is not None:
            return kept.carry
        for kept in self._parked.values():  # named by a resume that never got its READY
            if kept.carry.secret_named(resume, resume_id) is not None:
                return kept.carry
        live = self._live_session(resume)
        return live.peer.carry if live is not None else None

    def _live_session(self, resume: bytes) -> Link | None:
        """The connection whose session `resume` names, while it still seems alive here."""
        for link in self._links.values():
            carry = link.peer.carry
            if (
                link.established
                and link.peer.role is Role.LISTENER
                and carry is not None
                and carry.secret_named(resume, resume_id) is not None
            ):
                return link
        return None

    def _moved(self, old: Link, new: Link, now: float) -> None:
        """The session of `old` goes on over `new`: so do its transfers."""
        self.files.link_resumed(old, new, now)

    def _reseat(self, link: Link, now: float) -> bool:
        """A member's session is back on `link`: its place, name and numbering move over,
        and the others are told."""
        for key, kept in list(self._parked.items()):
            if kept.carry is link.peer.carry:
                del self._parked[key]
                kept.link.parked = False
                self._room.move(kept.link, link)
                self._moved(kept.link, link, now)
                link.away_since = kept.since  # the others hear it is back once it is in step
                return True
        for old in list(self._links.values()):
            if old is not link and old.established and old.peer.carry is link.peer.carry:
                # The connector found the link lost before this side did, and has proved
                # the session's secret: its old connection ends here, quietly, and the
                # session goes on over the new one (nobody was told it was away).
                old.parked = True  # its place and transfers are the session's
                self._close(old)
                old.parked = False
                self._room.move(old, link)
                self._moved(old, link, now)
                return True
        # Its place was taken back by another connection of the same session meanwhile.
        link.peer.connection_failed("its chat was already resumed on another connection")
        return False

    def _back(self, link: Link, caught: Caught, now: float) -> Back:
        """Both sides are in step again: the line that says so."""
        since = link.away_since
        if link.peer.role is Role.CONNECTOR and self._away is not None:
            since, self._away = self._away.since, None
        elif since is not None:  # the others were told it was away
            for member in self._room.others(link):
                self._to(member, Absent(link.peer.peer_name, 0), now)
        seconds = now - (since or now)
        return Back(link.peer.peer_name, seconds, caught.resent, caught.missed, caught.lost)

    def _keep_sessions(self, now: float) -> float | None:
        """Redial when it is time, and end what was kept past its window."""
        deadlines = []
        away = self._away
        if away is not None and away.tries is not None and not away.dialing:
            due = away.tries.due()
            if due is None or now >= away.until:
                self._away = None
                self.files.link_closed(away.link, now)
                gone = ConnectionLost(
                    f"{sanitize(away.name)} could not be reached again within "
                    f"{spoken_duration(self._reconnect_for)}{unsent(away)}"
                )
                self._user.connection_events(away.link, [Failed(gone)])
            elif now >= due:
                self._redial(away, now)
            else:
                deadlines.append(due)
        for key, kept in list(self._parked.items()):
            if now < kept.until:
                deadlines.append(kept.until)
                continue
            why = f"it did not come back within {spoken_duration(self._reconnect_for)}"
            self._end_kept(key, kept, why, now)
        return min(deadlines) if deadlines else None

    def _end_kept(self, key: bytes, kept: Kept, why: str, now: float, say: bool = True) -> None:
        """A member's kept session ends: its place goes, and the room is told (and, with
        `say`, this side's user)."""
        del self._parked[key]
        kept.link.parked = False
        self.files.link_closed(kept.link, now)
        gone_person = self._room.release(kept.link)
        if gone_person is not None:
            self._tell_room(Left(gone_person.name, lost=True), now)
        if say:
            self._user.connection_events(kept.link, [Failed(ConnectionLost(why))])

    def _replaced(self, link: Link, name: str, identity: bytes) -> None:
        """The same person connects as a new chat (it gave up resuming, or restarted): the
        session kept for them ends, and its place is theirs."""
        for key, kept in list(self._parked.items()):
            if kept.name == name and kept.carry.peer_identity == identity:
                # Not said here: their arrival, which follows, says it (and a two-person
                # chat must not end in between).
                self._end_kept(key, kept, "connected again", self._clock(), say=False)
                if link.no_room:
                    link.no_room = not self._room.claim(link)

    def _redial(self, away: Kept, now: float) -> None:
        """Connect again, in a thread of its own (a connect may take seconds). A try lasts
        at most a keepalive interval (2 s at least): a connect left hanging while the link
        is down gives way to a fresh one."""
        dial = self._dial
        if dial is None:
            return
        away.dialing, away.began = True, now
        timeout = min(self._handshake_seconds, max(self._keepalive, MIN_DIAL_SECONDS))

        def run() -> None:
            try:
                sock: socket.socket | None = dial(timeout)
            except (ChatError, OSError):
                sock = None
            self.post(lambda now: self._dialed(sock, now))

        threading.Thread(target=run, name="redial", daemon=True).start()

    def _dialed(self, sock: socket.socket | None, now: float) -> None:
        away = self._away
        if away is None or self._leaving or not self._running:
            if sock is not None:
                sock.close()
            return
        if sock is None:
            away.dialing = False
            if away.tries is not None:
                away.tries.failed(away.began)
            return
        try:
            link = self._add(sock, peer_address(sock), Role.CONNECTOR, now, resume=away.carry)
        except HandshakeError:
            sock.close()
            away.dialing = False
            if away.tries is not None:
                away.tries.failed(away.began)
            return
        self._room.claim(link)

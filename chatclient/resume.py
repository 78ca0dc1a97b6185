"""What lets a chat survive a dropped link (pure): the messages each side keeps until the
other has them, the count each side has taken, the connector's schedule of tries, and the
window in which a session may still be resumed.

Every message after the handshake's READY is numbered per session, from 1, across every
connection the session has had. A side keeps each message it sends until the peer's
cumulative acknowledgement covers it, and on a resume sends again, in order, everything
after the count the peer says it has taken. A receiver takes only the next number: one it
has taken is a duplicate and is dropped, one past the next is a loss and ends the session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import ProtocolError

RESUME_WINDOW_SECONDS = 600.0  # --reconnect-for and reconnect_for default to this
FIRST_TRY_SECONDS = 0.5  # the connector's first try after a loss, doubling ...
LAST_TRY_SECONDS = 15.0  # ... up to this between tries (or one keepalive interval, if less)
MAX_KEPT_MESSAGES = 1000  # unacknowledged messages a side keeps for its peer
MAX_KEPT_BYTES = 4 * 1024 * 1024  # ... and their bytes
MAX_MISSED = 2**32  # a RESUMED saying more were let go is not believed
ACK_EVERY = 256  # a side that only listens acknowledges with a KEEPALIVE after this many

T = TypeVar("T")


@dataclass
class Outbox(Generic[T]):
    """The messages this side sent that the peer has not acknowledged, oldest first.

    Past MAX_KEPT_MESSAGES or MAX_KEPT_BYTES the oldest are let go and counted in
    `dropped`: a resume then tells the peer how many it missed, never silently.
    """

    max_messages: int = MAX_KEPT_MESSAGES
    max_bytes: int = MAX_KEPT_BYTES
    sent: int = 0  # messages numbered so far
    acknowledged: int = 0  # the peer's cumulative count
    dropped: int = 0  # let go unacknowledged, past the bounds
    _kept: deque[tuple[int, T, int]] = field(default_factory=deque)
    _bytes: int = 0

    def add(self, item: T, size: int) -> int:
        """Keep `item` (`size` bytes on the wire) until it is acknowledged; its number."""
        self.sent += 1
        self._kept.append((self.sent, item, size))
        self._bytes += size
        while len(self._kept) > self.max_messages or self._bytes > self.max_bytes:
            _, _, gone = self._kept.popleft()
            self._bytes -= gone
            self.dropped += 1
        return self.sent

    def acknowledge(self, count: int) -> None:
        """The peer has taken `count` messages in all; ProtocolError for a count it cannot
        have (more than were sent) or one that goes back."""
        if count > self.sent:
            raise ProtocolError(f"the peer acknowledged {count} messages of {self.sent} sent")
        if count < self.acknowledged:
            raise ProtocolError(
                f"the peer's acknowledgement went back from {self.acknowledged} to {count}"
            )
        self.acknowledged = count
        while self._kept and self._kept[0][0] <= count:
            _, _, gone = self._kept.popleft()
            self._bytes -= gone

    @property
    def first(self) -> int:
        """The number of the oldest message still kept (sent + 1 when none is)."""
        return self._kept[0][0] if self._kept else self.sent + 1

    def after(self, count: int) -> tuple[int, list[T]]:
        """What to send again to a peer that has taken `count`: (how many of those it can
        no longer get, the items it can, in order)."""
        self.acknowledge(count)
        return self.first - count - 1, [item for _, item, _ in self._kept]

    @property
    def waiting(self) -> int:
        """Messages sent and not yet acknowledged (whether still kept or not)."""
        return self.sent - self.acknowledged


@dataclass
class Inbox:
    """How many of the peer's messages this side has taken: what it acknowledges."""

    taken: int = 0

    def take(self, number: int) -> bool:
        """True if message `number` is the next one (show it); False for one taken
        before (a copy sent again after a resume: drop it); ProtocolError for a gap."""
        if number <= self.taken:
            return False
        if number != self.taken + 1:
            raise ProtocolError(f"the peer's message {number} came after {self.taken}: a loss")
        self.taken = number
        return True

    def skip(self, missed: int) -> None:
        """The peer let `missed` messages go before they reached us (its bounds)."""
        self.taken += missed


@dataclass
class Carry(Generic[T]):
    """What outlives one connection of a session: the secret a resume proves, who the peer
    is, what this side keeps for it and how much of the peer's it has taken."""

    secret: bytes
    peer_name: str
    peer_identity: bytes
    outbox: Outbox[T] = field(default_factory=Outbox)
    inbox: Inbox = field(default_factory=lambda: Inbox())
    acknowledged: int = 0  # the count this side last told the peer
    members: bool = False  # the host's MEMBERS came: once a session, never again
    # Listener: the secret of a resume proven (its M3) but not yet READY. The connector
    # holds that connection's secret once it has sent READY, which may be lost: a resume
    # may then name either.
    pending: bytes | None = None

    def secret_named(self, resume: bytes, name: Callable[[bytes], bytes]) -> bytes | None:
        """The secret that the resume id `resume` names (`name` makes an id from a secret)."""
        for secret in (self.secret, self.pending):
            if secret is not None and name(secret) == resume:
                return secret
        return None

    @property
    def owes_ack(self) -> bool:
        return self.inbox.taken > self.acknowledged


@dataclass
class Reconnect:
    """The connector's tries after a loss: 0.5 s, doubling up to `most` (15 s, or less: one
    keepalive interval, so a link that comes back is found within one), until the window
    (from the loss) has passed. Each wait counts from when the try began, so a try that
    hung until its own timeout is followed at once by the next."""

    lost_at: float
    window: float = RESUME_WINDOW_SECONDS
    most: float = LAST_TRY_SECONDS
    tries: int = 0
    _next: float | None = None

    def due(self) -> float | None:
        """When to try next; None once the window has passed."""
        if self._next is None:
            self._next = self.lost_at + min(FIRST_TRY_SECONDS, self.most, self.window)
        return self._next if self._next <= self.deadline else None

    @property
    def deadline(self) -> float:
        return self.lost_at + self.window

    def failed(self, began: float) -> None:
        """The try that began at `began` failed: the next waits twice as long as the last
        (at most `most`), from then."""
        self.tries += 1
        wait = min(FIRST_TRY_SECONDS * 2**self.tries, self.most)
        self._next = began + wait

"""The transfer desk (FileDesk): every offer, credit, chunk and check of this side,
run on the network thread, which it reaches through the Carrier protocol.
"""

from __future__ import annotations

import bisect
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import partial
from typing import Protocol

from .bundles import (
    BundleReader,
    BundleWriter,
    Collected,
    create_bundle_part,
    find_bundle_part,
    kept,
)
from .disk import (
    CREDIT_STEP,
    FILE_WINDOW,
    FILES_WORK_HERE,
    MAX_KEPT_TRANSFERS,
    MAX_OPEN_OFFERS,
    MAX_OPEN_OFFERS_PER_LINK,
    MAX_RELAYED_OFFERS,
    NO_FILES_HERE,
    PROGRESS_SECONDS,
    RELAYED_OFFER_SECONDS,
    SETTLE_SECONDS,
    FileReader,
    FileSink,
    FileSource,
    FileWriter,
    PreparedFile,
    Readable,
    Writable,
    create_part,
    find_partial,
    free_space,
    lock,
)
from .errors import ChatError, describe_os_error
from .filenames import PartialInfo, safe_file_name
from .handshake import Role
from .manifest import describe
from .messages import (
    CHUNK_SIZE,
    MAX_BUNDLE_FILES,
    MAX_REASON,
    Bundle,
    FileAbout,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Message,
)
from .peer import ChunkReceived
from .sockets import Link
from .text import format_duration, format_size, progress_text, sanitize


class Moving(Enum):
    """Where a transfer stands."""

    OFFERED = "offered"
    MOVING = "moving"
    CHECKING = "checking its SHA-256"
    DONE = "done"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    FAILED = "failed"


ENDED = frozenset({Moving.DONE, Moving.DECLINED, Moving.CANCELLED, Moving.PAUSED, Moving.FAILED})


@dataclass(eq=False)
class Transfer:
    """One file moving over one connection, seen from this side."""

    number: int  # what the person types (0: a leg the host relays, not shown)
    link: Link
    id: int  # on this connection's wire: ours when sending, the peer's when receiving
    sending: bool
    name: str  # as offered when sending; the safe name it is saved as when receiving
    size: int
    fingerprint: bytes
    person: str  # the far end: who it is for, or who offers it
    state: Moving = Moving.OFFERED
    offset: int = 0  # where the data starts (past 0: a resume)
    position: int = 0  # the next byte on the wire
    credit: int = 0  # bytes the sender may still send
    started: float = 0.0
    fd: int = -1  # sending: the file, until a FileSource takes it
    stamp: tuple[int, int, int] = (0, 0, 0)  # sending: file_stamp() when it was offered
    origin: int = 0  # receiving a member's file through the host: the author's id for it
    signed: bool = False  # sending to a member through the host: FILEDONE is signed
    digest: bytes = b""  # host: the SHA-256 (and signature) of the author's FILEDONE
    done_signature: bytes = bytes(64)
    restarted: bool = False  # a resume whose SHA-256 did not match was started over once
    resynced: bool = False  # its session resumed: sending, a FILEACCEPT says where to go on;
    # receiving, an earlier FILEDONE sent again before that is void
    bundle: Bundle = Bundle.FILE  # a folder or several files: one stream (manifest.py)
    count: int = 1  # files in it
    offered_name: str = ""  # receiving: the name as offered (a folder's paths start with it)
    collected: Collected | None = None  # sending a folder or several files: what they are
    ends: list[int] = field(default_factory=list)  # where each file of a bundle ends
    source: FileSource | None = None
    sink: FileSink | None = None
    partner: Transfer | None = None  # relayed by the host: the other leg
    relayed: deque[bytes] = field(default_factory=deque)  # host: data for the other leg
    # host, a leg it relays out: its last chunks sent (at most FILE_WINDOW bytes, what the
    # receiver may not have yet), sent again if the receiver's link is lost and resumes
    sent_tail: deque[tuple[int, bytes]] = field(default_factory=deque)
    sent_tail_bytes: int = 0
    passed: int = 0  # host, a leg it relays out: how far it went (sent again: no credit)
    written: int = 0  # receiving: bytes on disk since `offset` (the rest wait to be written)
    done: bool = False  # sender: FILEDONE came (relay) or was sent
    cancelled_here: bool = False  # we stopped it: its data still in flight is dropped
    complained: bool = False  # data after its end was reported once
    done_twice: bool = False  # a repeated FILEDONE was reported once
    quarter: int = 0  # plain progress lines shown (at 25, 50, 75%)
    ungranted: int = 0  # host: bytes of this leg passed on, not yet granted back

    @property
    def shown(self) -> str:
        """How lines name it: holiday.jpg, Holiday/, or a.jpg and 2 more."""
        return describe(self.bundle, self.name, self.count)

    @property
    def amount(self) -> str:
        """Its size as lines give it: 2.4 MB, or 214 files, 1.3 GB."""
        if self.bundle is Bundle.FILE:
            return format_size(self.size)
        files = "file" if self.count == 1 else "files"
        return f"{self.count:,} {files}, {format_size(self.size)}"

    @property
    def ours(self) -> bool:
        return self.number > 0

    @property
    def percent(self) -> int:
        return self.position * 100 // self.size if self.size else 100


def restarting(t: Transfer, accept: FileAccept) -> bool:
    """True for the one FILEACCEPT a receiver may send again: at offset 0, after the
    FILEDONE of a resumed transfer (its SHA-256 did not match what it had kept)."""
    return (
        t.state is Moving.MOVING
        and t.done
        and t.offset > 0
        and accept.offset == 0
        and not t.restarted
    )


def keep_sent(t: Transfer, start: int, data: bytes) -> None:
    """A relayed chunk sent to its receiver: kept until FILE_WINDOW bytes more have gone
    (the receiver cannot lack more than the credit it granted), to send again after a
    resume."""
    t.sent_tail.append((start, data))
    t.sent_tail_bytes += len(data)
    while t.sent_tail_bytes > FILE_WINDOW:
        _, gone = t.sent_tail.popleft()
        t.sent_tail_bytes -= len(gone)


class Legs:
    """Transfers by connection, then by their id on its wire: a connection's turn looks
    at its own transfers only, however many the others have."""

    def __init__(self) -> None:
        self._by_link: dict[Link, dict[int, Transfer]] = {}

    def get(self, link: Link, number: int) -> Transfer | None:
        """The transfer numbered `number` on `link`'s wire."""
        on_link = self._by_link.get(link)
        return on_link.get(number) if on_link is not None else None

    def put(self, t: Transfer) -> None:
        """Index `t` under its link and id."""
        self._by_link.setdefault(t.link, {})[t.id] = t

    def discard(self, t: Transfer) -> None:
        """Forget `t` (if it is still the one under its id)."""
        on_link = self._by_link.get(t.link)
        if on_link is not None and on_link.get(t.id) is t:
            del on_link[t.id]

    def on(self, link: Link) -> list[Transfer]:
        """`link`'s transfers, oldest first."""
        return list(self._by_link.get(link, {}).values())

    def drop_link(self, link: Link) -> None:
        """Forget every transfer of a closed connection."""
        self._by_link.pop(link, None)

    def __iter__(self) -> Iterator[Transfer]:
        for on_link in self._by_link.values():
            yield from on_link.values()


class FileUser(Protocol):
    """What the desk reports to (the conversation)."""

    def file_lines(self, lines: list[str], error: bool = False) -> None:
        """Lines about transfers."""

    def file_status(self, text: str) -> None:
        """The progress of the transfers moving now ('' when none is)."""

    def identity_of(self, name: str) -> bytes | None:
        """The identity key of someone in the chat."""

    def sign_offer(self, offer: FileOffer, to: str) -> FileOffer:
        """`offer`, for member `to` through the host, signed by this side."""

    def sign_done(self, to: str, origin: int, digest: bytes) -> bytes:
        """This side's signature of the SHA-256 of its offer `origin` to member `to`."""

    def done_forgery(self, author: str, origin: int, done: FileDone) -> bool:
        """True when a relayed FILEDONE of member `author`'s offer `origin` is not theirs."""

    def offer_forgery(self, offer: FileOffer) -> str | None:
        """Why an offer the host relays from member offer.who is not theirs (or repeats an
        earlier one), or None."""


class Carrier(Protocol):
    """What the desk needs of the network thread that carries its messages and chunks."""

    @property
    def username(self) -> str:
        """This side's name."""

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        """Run `command(now)` on the network thread, in order; `urgent` ones first."""

    def deliver(self, link: Link, message: Message, now: float) -> None:
        """On the network thread: queue `message` for one connection in the chat."""

    def nudge(self, link: Link) -> None:
        """From any thread: let `link` write again (a file chunk became ready)."""

    def low_water(self, link: Link) -> None:
        """Keep little of a file unsent in the kernel, so chat never waits behind much."""

    def route_to(self, name: str, is_host: bool) -> tuple[Link, str] | None:
        """On the network thread: the connection to reach `name` by, and the WHO to write."""


class FileDesk:
    """Every transfer of this side, on the network thread: offers, credit, chunks.

    It is told what arrives (message(), chunk()), asked for the next chunk when a
    connection has nothing else to write (pump()), and runs the person's commands.
    """

    def __init__(
        self,
        net: Carrier,
        user: FileUser | None,
        downloads: str,
        plain_progress: bool,
    ) -> None:
        self._net, self._user, self.downloads = net, user, downloads
        self._plain = plain_progress
        self._transfers: list[Transfer] = []
        self._sending = Legs()
        self._receiving = Legs()
        # Relayed offers by when they expire (RELAYED_OFFER_SECONDS after they came: in
        # order, so the first is the next to go).
        self._expiring: deque[tuple[float, Transfer]] = deque()
        self._next_id: dict[Link, int] = {}
        self._numbers = 0
        self._status = ""
        self._status_at = 0.0
        self._sinks: list[FileSink] = []  # every writer still running (or just finished)
        self._complained: set[tuple[Link, int | str]] = set()
        self._told_folder = False
        self._kept_cache: dict[str, int] = {}  # a bundle's NAME.part/: what it holds (_kept)

    # Reports -------------------------------------------------------------------------

    def _say(self, *lines: str) -> None:
        if self._user is not None:
            self._user.file_lines(list(lines))

    def _error(self, *lines: str) -> None:
        if self._user is not None:
            self._user.file_lines(list(lines), error=True)

    def _progress(self, now: float, force: bool = False) -> None:
        if self._user is None:
            return
        moving = [t for t in self._transfers if t.ours and t.state is Moving.MOVING]
        if self._plain:  # a file in one chunk has no quarters to report
            for t in (t for t in moving if t.size > CHUNK_SIZE):
                while t.quarter < min(3, t.percent // 25):
                    t.quarter += 1
                    way = f"sent to {sanitize(t.person)}" if t.sending else "received"
                    self._say(f"{self._label(t)}: {25 * t.quarter}% of {format_size(t.size)} {way}")
            return
        if not force and now - self._status_at < PROGRESS_SECONDS:
            return
        self._status_at = now
        text = " | ".join(
            progress_text(
                self._label(t), t.position, t.size, now - t.started, t.position - t.offset
            )
            for t in moving
        )
        if text != self._status:
            self._status = text
            self._user.file_status(text)

    def _label(self, t: Transfer) -> str:
        """A transfer in the progress line: a bundle's with its files so far."""
        if t.bundle is Bundle.FILE:
            return sanitize(t.shown)
        whole = bisect.bisect_right(t.ends, t.position)
        return f"{sanitize(t.shown)} ({whole:,} of {t.count:,} files)"

    # Offers, answers, cancels: the person's commands -------------------------------------

    def offer(
        self, prepared: PreparedFile | Collected, targets: list[tuple[str, bool]], now: float
    ) -> None:
        """Offer a file (or a folder, or several files) to each (name, is_the_host) of
        `targets`."""
        offered = []
        try:
            for name, is_host in targets:
                route = self._net.route_to(name, is_host)
                if route is None:
                    self._error(f"error: {sanitize(name)} is no longer in the chat: not offered")
                    continue
                link, who = route
                try:
                    fd = os.dup(prepared.fd) if isinstance(prepared, PreparedFile) else -1
                except OSError as exc:
                    self._error(f"error: cannot offer it to {sanitize(name)}: {exc.strerror}")
                    continue
                number = self._next_id.get(link, 0) + 1
                self._next_id[link] = number
                transfer = self._add(
                    link, number, True, prepared.name, prepared.size, prepared.fingerprint, name
                )
                offer = FileOffer(number, prepared.size, prepared.fingerprint, prepared.name, who)
                if isinstance(prepared, PreparedFile):
                    transfer.fd, transfer.stamp = fd, prepared.stamp
                else:
                    transfer.collected, transfer.ends = prepared, prepared.ends
                    transfer.bundle, transfer.count = prepared.bundle, len(prepared.items)
                    offer = replace(offer, bundle=prepared.bundle, count=len(prepared.items))
                if who and self._user is not None:  # for a member, through the host: signed
                    offer = self._user.sign_offer(offer, who)
                    transfer.signed = True
                self._net.deliver(link, offer, now)
                offered.append(sanitize(name))
                shown, amount = transfer.shown, transfer.amount
        finally:
            if isinstance(prepared, PreparedFile):
                os.close(prepared.fd)
        if offered:
            self._say(f"Offered {sanitize(shown)} ({amount}) to {', '.join(offered)}.")

    def _add(
        self,
        link: Link,
        number: int,
        sending: bool,
        name: str,
        size: int,
        fingerprint: bytes,
        person: str,
        shown: bool = True,
    ) -> Transfer:
        if shown:
            self._numbers += 1
        transfer = Transfer(
            self._numbers if shown else 0, link, number, sending, name, size, fingerprint, person
        )
        (self._sending if sending else self._receiving).put(transfer)
        self._transfers.append(transfer)
        if len(self._transfers) > MAX_KEPT_TRANSFERS:
            self._forget_ended()
        return transfer

    def _forget_ended(self) -> None:
        """Drop ended transfers (relayed ones first, then the oldest), so that a peer
        offering and cancelling forever costs bounded memory; /files shows the rest."""
        ended = [t for t in self._transfers if t.state in ENDED]
        ended.sort(key=lambda t: t.ours)  # stable: relayed legs first, then oldest first
        gone = {id(t) for t in ended[: len(self._transfers) - MAX_KEPT_TRANSFERS // 2]}
        self._transfers = [t for t in self._transfers if id(t) not in gone]
        for t in ended:
            if id(t) in gone:
                (self._sending if t.sending else self._receiving).discard(t)

    def _find(self, number: int | None, want: str) -> Transfer | None:
        """The transfer /accept, /reject or /cancel means; None after saying why not."""
        if number is None:
            for transfer in self._transfers:
                if transfer.ours and not transfer.sending and transfer.state is Moving.OFFERED:
                    return transfer
            self._error(f"try again: no offer is waiting for an answer ({want})")
            return None
        for transfer in self._transfers:
            if transfer.number == number:
                return transfer
        self._error(f"try again: there is no transfer {number} (/files lists them)")
        return None

    def _waiting_offer(self, number: int | None, hint: str = "") -> Transfer | None:
        """The offer /accept or /reject means, if it still waits for an answer."""
        transfer = self._find(number, "/files lists them")
        if transfer is not None and (transfer.sending or transfer.state is not Moving.OFFERED):
            self._error(
                f"try again: {transfer.number} is not an offer waiting for an answer "
                f"({transfer.state.value}){hint}"
            )
            return None
        return transfer

    def accept(self, number: int | None, now: float) -> None:
        transfer = self._waiting_offer(number)
        if transfer is None:
            return
        if not FILES_WORK_HERE:
            self._error(f"error: {NO_FILES_HERE}: /reject {transfer.number} it")
            return
        try:
            self._start_receiving(transfer, now)
        except ChatError as exc:
            self._error(f"error: {exc}")
        except (OSError, RuntimeError) as exc:  # RuntimeError: no thread could be started
            self._error(f"error: cannot save into {self.downloads}: {describe_os_error(exc)}")

    def _start_receiving(self, t: Transfer, now: float, again: bool = False) -> None:
        """Take `t` (`again`: from zero, a resume that did not match started over)."""
        folder, sender = self.downloads, self._sender_identity(t)
        if t.bundle is not Bundle.FILE:
            self._start_receiving_bundle(t, sender, now, again)
            return
        self._settle()  # a pause that just came writes what came, and lets go of its .part
        found = None if again else find_partial(folder, t.size, t.fingerprint, sender)
        if found is not None and self._writing(found[0]):
            found = None  # the same file, still being written by another transfer
        offset = found[1] if found is not None else 0
        self._check_space(t, offset)
        fd = -1
        if found is not None:
            part = found[0]
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW)
            if not lock(fd):  # another chatclient took it since: this one starts afresh
                os.close(fd)
                fd, offset = -1, 0
        if fd < 0:
            record = PartialInfo(t.name, t.size, t.fingerprint, sender).render()
            fd, part = create_part(folder, t.name, record)
        self._begin(t, FileWriter(fd, part, folder, t.name), offset, now, again)

    def _writing(self, part: str) -> bool:
        """True while a writer thread still writes into `part`."""
        return any(sink.part == part and sink.thread.is_alive() for sink in self._sinks)

    def _settle(self) -> bool:
        """Let the writers of ended transfers finish (a pause writes what came before it
        stops, and holds its .part's lock until then), waiting at most SETTLE_SECONDS in
        all; True if there was one."""
        moving = {id(t.sink) for t in self._transfers if t.sink is not None}
        ending = [sink for sink in self._sinks if id(sink) not in moving and sink.thread.is_alive()]
        deadline = time.monotonic() + SETTLE_SECONDS
        for sink in ending:
            sink.thread.join(max(0.0, deadline - time.monotonic()))
        return bool(ending)

    def _kept(self, part: str, t: Transfer) -> int:
        """How much of `t`'s stream `part` holds, remembered until a writer touches it
        again: reading a long list again for every offer would let a peer that offers
        the same folder over and over stall this thread."""
        if self._writing(part):
            return 0
        if part not in self._kept_cache:
            try:
                here = kept(part, t.bundle, t.count, t.offered_name)
            except (OSError, ChatError):
                here = -1  # not what it claims to be: never resumed
            if len(self._kept_cache) >= MAX_OPEN_OFFERS:
                self._kept_cache.clear()
            self._kept_cache[part] = here
        return self._kept_cache[part]

    def _check_space(self, t: Transfer, offset: int) -> None:
        """ChatError unless the downloads folder has room for the rest of `t` (beside what
        transfers already accepted will still write)."""
        reserved = sum(
            other.size - other.position
            for other in self._receiving
            if other.state is Moving.MOVING and other.sink is not None
        )
        free = max(free_space(self.downloads) - reserved, 0)
        if free < t.size - offset:
            raise ChatError(
                f"not enough space in {self.downloads} for {sanitize(t.shown)}: it needs "
                f"{format_size(t.size - offset)}, {format_size(free)} is free (make room "
                f"and /accept {t.number} again, or /reject {t.number})"
            )

    def _start_receiving_bundle(self, t: Transfer, sender: bytes, now: float, again: bool) -> None:
        """Take a folder or several files into NAME.part/ (resuming one kept, if any)."""
        folder = self.downloads
        record = PartialInfo(t.name, t.size, t.fingerprint, sender, int(t.bundle))
        self._settle()  # a pause that just came writes what came, and lets go of its .part
        found = None if again else find_bundle_part(folder, record)
        if found is not None and self._writing(found):
            found = None  # the same offer, still being written by another transfer
        offset = self._kept(found, t) if found is not None else 0
        if offset < 0:  # a NAME.part/ that is not what its record says: left alone
            found, offset = None, 0
        self._check_space(t, offset)
        args = (folder, t.size, t.bundle, t.count, t.offered_name)
        writer = None
        if found is not None:
            try:
                writer = BundleWriter(found, *args)
            except ChatError:  # another chatclient took it since: this one starts afresh
                offset = 0
        if writer is None:
            writer = BundleWriter(create_bundle_part(folder, t.name, record.render()), *args)
        self._begin(t, writer, offset, now, again)

    def _begin(self, t: Transfer, target: Writable, offset: int, now: float, again: bool) -> None:
        """Start writing `t` into `target` from `offset`, and accept it."""

        def report(kind: str, amount: int, text: str) -> None:
            self._net.post(lambda now: self._sink_report(t, kind, amount, text, now))

        try:
            sink = FileSink(target, offset, report)
        except RuntimeError:  # no thread could be started
            target.close()
            if not offset:
                target.discard()
            raise
        t.sink = sink
        self._kept_cache.pop(target.part, None)
        if isinstance(target, BundleWriter):
            t.ends = target.ends
        self._sinks = [other for other in self._sinks if other.thread.is_alive()] + [sink]
        t.state, t.offset, t.position, t.started = Moving.MOVING, offset, offset, now
        t.credit, t.written = FILE_WINDOW, 0
        self._net.deliver(t.link, FileAccept(t.id, offset, FILE_WINDOW), now)
        name = sanitize(t.shown)
        if offset:
            self._say(f"Resuming {name} at {t.percent}%")
        elif again:
            self._say(
                f"{name} did not match after the resume: receiving it again from the start "
                f"(the part kept was not this file)."
            )
        else:
            self._say(f"Receiving {name} from {sanitize(t.person)} into {self.downloads}.")

    def _sender_identity(self, t: Transfer) -> bytes:
        if t.link.peer.role is Role.LISTENER or not t.person or self._user is None:
            return t.link.peer.peer_identity
        return self._user.identity_of(t.person) or t.link.peer.peer_identity

    def reject(self, number: int | None, now: float) -> None:
        transfer = self._waiting_offer(number, "; /cancel stops a transfer")
        if transfer is None:
            return
        transfer.state = Moving.DECLINED
        self._net.deliver(transfer.link, FileReject(transfer.id), now)
        self._say(f"Declined {sanitize(transfer.shown)} from {sanitize(transfer.person)}.")

    def cancel(self, number: int | None, now: float) -> None:
        transfer = self._find(number, "/cancel N")
        if transfer is None:
            return
        if transfer.state in ENDED:
            self._error(f"try again: {transfer.number} is already {transfer.state.value}")
            return
        self._end(transfer, Moving.CANCELLED, now, tell="")
        self._say(f"Cancelled {sanitize(transfer.shown)}.")

    def pause(self, number: int | None, now: float) -> None:
        """/pause N: stop a moving transfer, either way; what arrived stays on the
        receiver's side, and offering the file again resumes there."""
        transfer = self._find(number, "/pause N")
        if transfer is None:
            return
        if transfer.state is not Moving.MOVING:
            hint = "/reject or /cancel it" if transfer.state is Moving.OFFERED else "/files"
            self._error(
                f"try again: {transfer.number} is not moving ({transfer.state.value}): {hint}"
            )
            return
        kept = format_size(transfer.position)
        self._end(transfer, Moving.PAUSED, now, tell="paused", keep=True)
        if transfer.sending:
            self._say(
                f"Paused {sanitize(transfer.shown)} ({transfer.percent}%, {kept} sent): "
                f"/send it again to resume"
            )
        else:
            self._say(
                f"Paused {sanitize(transfer.shown)} ({transfer.percent}%, {kept} kept): it "
                "resumes there when it is offered again"
            )

    def listing(self) -> None:
        shown = [t for t in self._transfers if t.ours]
        if not shown:
            self._say("No files offered or received yet: /send PATH offers one.")
            return
        rows = ["Files:"]
        for t in shown:
            way = f"to {sanitize(t.person)}" if t.sending else f"from {sanitize(t.person)}"
            state = t.state.value
            if t.state is Moving.MOVING:
                state = f"{'sending' if t.sending else 'receiving'}, {t.percent}%"
            elif t.state is Moving.OFFERED and not t.sending:
                state = f"offered: /accept {t.number} or /reject {t.number}"
            elif t.state is Moving.OFFERED:
                state = "offered, waiting for an answer"
            rows.append(f"  {t.number}. {sanitize(t.shown)} ({t.amount}) {way}: {state}")
        self._say("\n".join(rows))

    # What arrives ------------------------------------------------------------------------

    def message(self, link: Link, message: Message, now: float) -> None:
        """A file message from `link`."""
        if isinstance(message, FileOffer):
            self._on_offer(link, message, now)
            return
        assert isinstance(message, (FileAccept, FileAbout, FileCredit, FileCancel, FileDone))
        if (isinstance(message, FileCancel) and message.mine) or isinstance(message, FileDone):
            transfer = self._receiving.get(link, message.id)  # about what they send us
        else:
            transfer = self._sending.get(link, message.id)  # about what we send them
        if transfer is None or (transfer.state in ENDED and not isinstance(message, FileCancel)):
            return  # an answer crossing our cancel, or about nothing: nothing to do
        if isinstance(message, FileAccept) and restarting(transfer, message):
            self._restart(transfer, message, now)
            return
        if isinstance(message, FileAccept) and transfer.resynced and transfer.sending:
            self._go_on(transfer, message, now)
            return
        if isinstance(message, FileAccept) and (
            transfer.state is not Moving.OFFERED or message.offset > transfer.size
        ):
            link.peer.connection_failed(f"it accepted file {message.id} twice or past its end")
            return
        if transfer.partner is not None:
            self._relay(transfer, message, now)
        elif isinstance(message, FileAccept):
            self._on_accept(transfer, message, now)
        elif isinstance(message, FileCredit):
            transfer.credit = min(transfer.credit + message.amount, 2**62)
        elif isinstance(message, FileReject):
            transfer.state = Moving.DECLINED
            self._close_file(transfer)
            self._say(f"{sanitize(transfer.person)} declined {sanitize(transfer.shown)}.")
        elif isinstance(message, FileReceived):
            self._end(transfer, Moving.DONE, now)
            took = format_duration(now - transfer.started)
            resumed = f", resumed at {transfer.offset * 100 // transfer.size}%"
            self._say(
                f"{sanitize(transfer.person)} received {sanitize(transfer.shown)} "
                f"({transfer.amount} in {took}{resumed if transfer.offset else ''})."
            )
        elif isinstance(message, FileDone):
            self._on_done(transfer, message, now)
        elif isinstance(message, FileCancel) and transfer.state not in ENDED and message.keep:
            self._end(transfer, Moving.PAUSED, now, keep=True)
            who, name = sanitize(transfer.person), sanitize(transfer.shown)
            if transfer.sending:
                self._say(f"{who} paused {name} at {transfer.percent}%.")
            else:
                self._say(
                    f"{who} paused {name} at {transfer.percent}%: what came is kept, and it "
                    "resumes there when it is offered again."
                )
        elif isinstance(message, FileCancel) and transfer.state not in ENDED:
            self._end(transfer, Moving.CANCELLED, now)
            why = f": {sanitize(message.reason)}" if message.reason else ""
            self._say(f"{sanitize(transfer.person)} cancelled {sanitize(transfer.shown)}{why}.")

    def _on_offer(self, link: Link, offer: FileOffer, now: float) -> None:
        person = offer.who or link.peer.peer_name
        if self._receiving.get(link, offer.id) is not None:
            link.peer.connection_failed(f"it offered two files as number {offer.id}")
            return
        open_here = [t for t in self._receiving.on(link) if t.state is Moving.OFFERED]
        # Counted per person offering: one member's flood relayed by the host blocks only
        # that member's offers, not the host's own or another member's.
        waiting = sum(1 for t in open_here if t.person == person)
        if len(open_here) >= MAX_OPEN_OFFERS_PER_LINK:
            waiting = MAX_OPEN_OFFERS
        name = safe_file_name(offer.name)
        hosting = link.peer.role is Role.LISTENER
        if hosting and offer.who:  # a member's file for another member: relayed
            self._relay_offer(link, offer, now)
            return
        forged = None
        if offer.who and self._user is not None:  # relayed from a member: theirs?
            forged = self._user.offer_forgery(offer)
        if forged is not None:
            self._net.deliver(link, FileReject(offer.id), now)
            if self._complain(link, f"forged {offer.who}"):
                self._error(f"warning: {forged}: declined")
            return
        too_many = offer.bundle is not Bundle.FILE and not 1 <= offer.count <= MAX_BUNDLE_FILES
        if self._user is None or waiting >= MAX_OPEN_OFFERS or name is None or too_many:
            self._net.deliver(link, FileReject(offer.id), now)  # not kept: memory stays bounded
            if too_many:
                self._error(
                    f"{sanitize(person)} offered {sanitize(offer.name)}/ with "
                    f"{offer.count:,} files; one offer may hold 1 to {MAX_BUNDLE_FILES:,}: "
                    "declined"
                )
            elif name is None:
                self._error(
                    f"{sanitize(person)} offered a file named {sanitize(offer.name)!r}, which "
                    "cannot be saved under a safe name: declined"
                )
            elif self._user is not None and self._complain(link, f"offers of {person}"):
                self._error(
                    f"{sanitize(person)} offered over {MAX_OPEN_OFFERS} files at once: the "
                    "rest are declined until you answer some"
                )
            return
        t = self._add(link, offer.id, False, name, offer.size, offer.fingerprint, person)
        t.origin, t.bundle, t.count = offer.origin, offer.bundle, offer.count
        t.offered_name = offer.name
        if not self._told_folder:  # once: where accepted files will land
            self._told_folder = True
            self._say(
                f"Files you accept are saved in {self.downloads} (--downloads DIR changes it)."
            )
        sender = self._sender_identity(t)
        self._settle()  # a pause that just came writes what came, and lets go of its .part
        if t.bundle is Bundle.FILE:
            found = find_partial(self.downloads, offer.size, offer.fingerprint, sender)
        else:
            record = PartialInfo(name, t.size, t.fingerprint, sender, int(t.bundle))
            part = find_bundle_part(self.downloads, record)
            found = (part, self._kept(part, t)) if part is not None else None
        if found is not None and found[1] > 0 and offer.size:  # a pause, or a lost connection
            here = found[1] * 100 // offer.size
            self._say(
                f"{sanitize(person)} offers {sanitize(t.shown)} ({t.amount}, {here}% already "
                f"here): /accept {t.number} to resume or /reject {t.number}"
            )
            return
        self._say(
            f"{sanitize(person)} offers {sanitize(t.shown)} ({t.amount}): "
            f"/accept {t.number} or /reject {t.number}"
        )

    def _complain(self, link: Link, about: int | str) -> bool:
        """True the first time something of `link` is worth a line (a peer repeating a
        mistake gets one line, not a flood)."""
        if (link, about) in self._complained:
            return False
        if len(self._complained) >= MAX_OPEN_OFFERS:
            self._complained.clear()
        self._complained.add((link, about))
        return True

    def _on_accept(self, t: Transfer, accept: FileAccept, now: float) -> None:
        t.state, t.offset, t.position, t.credit = (
            Moving.MOVING,
            accept.offset,
            accept.offset,
            accept.credit,
        )
        t.started = now
        if not self._read_from(t, accept.offset, now):
            return
        self._net.low_water(t.link)
        resumed = f" (resuming at {t.percent}%)" if accept.offset else ""
        self._say(f"{sanitize(t.person)} accepted {sanitize(t.shown)}{resumed}.")
        self._net.nudge(t.link)

    def _read_from(self, t: Transfer, offset: int, now: float) -> bool:
        """Start reading `t` at `offset` (a reader of its own: a restart reads again)."""
        reader: Readable
        try:
            if t.collected is not None:
                reader = BundleReader(t.collected)
            else:
                reader = FileReader(os.dup(t.fd), t.stamp)
        except OSError as exc:
            self._end(t, Moving.FAILED, now, tell="it could not be read")
            self._error(f"error: cannot send {sanitize(t.shown)}: {describe_os_error(exc)}")
            return False
        try:
            t.source = FileSource(reader, t.size, offset, partial(self._net.nudge, t.link))
        except RuntimeError as exc:  # no thread could be started
            reader.close()
            self._end(t, Moving.FAILED, now, tell="it could not be read")
            self._error(f"error: cannot send {sanitize(t.shown)}: {exc}")
            return False
        return True

    def _restart(self, t: Transfer, accept: FileAccept, now: float) -> None:
        """The receiver's SHA-256 did not match after a resume: it takes the file again
        from zero, once (a FILEACCEPT at offset 0 after our FILEDONE)."""
        t.restarted, t.done = True, False
        t.offset = t.position = 0
        t.credit = accept.credit
        t.relayed.clear()
        t.sent_tail.clear()
        t.sent_tail_bytes, t.passed = 0, 0
        if t.partner is not None:  # the host: the author starts over too
            other = t.partner
            other.restarted, other.done, other.digest = True, False, b""
            other.offset = other.position = 0
            other.credit = min(accept.credit, FILE_WINDOW)
            other.ungranted = 0
            self._net.deliver(other.link, FileAccept(other.id, 0, other.credit), now)
            return
        if t.source is not None:
            t.source.close()
            t.source = None
        if self._read_from(t, 0, now):
            self._say(
                f"{sanitize(t.person)} is receiving {sanitize(t.shown)} again from the start "
                "(what they had kept did not match)."
            )
            self._net.nudge(t.link)

    def _go_on(self, t: Transfer, accept: FileAccept, now: float) -> None:
        """After a resume: send from where the receiver has the file (what was in flight
        when the link went was lost), with the credit it grants now. A FILEDONE already
        sent goes again only if data does (the one sent is sent again with the messages
        the peer had not acknowledged)."""
        t.resynced = False
        if accept.offset > t.position:
            t.link.peer.connection_failed(f"it resumed file {t.id} past what was sent")
            return
        t.done = t.done and accept.offset == t.size
        if t.partner is not None:
            self._go_on_relayed(t, accept, now)
            return
        if t.source is not None:
            t.source.close()
            t.source = None
        t.position, t.credit = accept.offset, accept.credit
        if t.done:  # all of it went, FILEDONE too: nothing to read again
            return
        if self._read_from(t, accept.offset, now):  # the SHA-256 still covers it all
            self._net.nudge(t.link)

    def _go_on_relayed(self, t: Transfer, accept: FileAccept, now: float) -> None:
        """The host, a file it relays: the receiver resumed at `accept.offset`; what it
        lacks is sent again from the chunks kept, then what waits from the author."""
        again: list[bytes] = []
        for start, data in t.sent_tail:
            if start >= accept.offset:
                again.append(data)
        if sum(map(len, again)) != t.position - accept.offset:
            # Not a chunk boundary, or further back than the credit it granted allowed.
            self._end(t, Moving.FAILED, now, tell="it resumed further back than the host keeps")
            return
        t.relayed.extendleft(reversed(again))
        t.sent_tail.clear()
        t.sent_tail_bytes = 0
        t.position, t.credit = accept.offset, accept.credit
        self._net.nudge(t.link)

    def chunk(self, link: Link, event: ChunkReceived, now: float) -> None:
        """File data from `link`, opened: checked against the transfer's state and credit."""
        t = self._receiving.get(link, event.transfer)
        data, who = event.data, sanitize(link.peer.peer_name)
        if t is None:
            if self._complain(link, event.transfer):
                self._net.deliver(link, FileCancel(event.transfer, False, "no such file"), now)
                self._error(f"{who} sent data for a file it never offered: ignored")
            return
        name = sanitize(t.shown)
        if t.state in ENDED:
            if not t.cancelled_here and not t.complained:  # else in flight as we cancelled
                t.complained = True
                self._error(f"{who} sent data for {name} after it ended: ignored")
            return
        if t.state is Moving.CHECKING:  # all of it came: the check goes on, this is dropped
            if not t.complained:
                t.complained = True
                self._error(f"{who} sent data for {name} after its end: ignored")
            return
        problem = None
        if t.state is not Moving.MOVING:
            problem = f"{who} sent data for {name} before it was accepted"
        elif event.offset != t.position:
            problem = (
                f"{who} sent data for {name} out of place (at {event.offset}, not {t.position})"
            )
        elif len(data) > t.credit:
            problem = f"{who} sent more of {name} than it was allowed (flow control)"
        elif t.position + len(data) > t.size:
            problem = f"{who} sent more of {name} than the {t.size} bytes it announced"
        if problem is not None:
            self._end(t, Moving.FAILED, now, tell=problem)
            self._error(f"error: {problem}: transfer ended, nothing saved")
            return
        t.position += len(data)
        t.credit -= len(data)
        t.resynced = False  # the data goes on: any FILEDONE from now on is the last
        if t.partner is not None:
            t.partner.relayed.append(data)
            self._net.nudge(t.partner.link)
        elif t.sink is not None:
            t.sink.put(data)
            self._progress(now)

    def _on_done(self, t: Transfer, done: FileDone, now: float) -> None:
        if t.resynced and t.position < t.size:
            return  # sent before the link was lost, and again after: the data comes first
        if t.state is Moving.CHECKING:  # a second FILEDONE: the file being checked stays
            if not t.done_twice:
                t.done_twice = True
                self._error(
                    f"{sanitize(t.link.peer.peer_name)} said twice that {sanitize(t.shown)} "
                    "was all sent: ignored"
                )
            return
        if t.state is not Moving.MOVING or t.position != t.size:
            problem = (
                f"{sanitize(t.link.peer.peer_name)} sent less of {sanitize(t.shown)} than "
                f"announced ({t.position} of {t.size} bytes)"
            )
            self._end(t, Moving.FAILED, now, tell=problem)
            self._error(f"error: {problem}: transfer ended, nothing saved")
            return
        if (
            t.origin
            and self._user is not None
            and self._user.done_forgery(t.person, t.origin, done)
        ):
            problem = f"the SHA-256 of {sanitize(t.shown)} failed its signature check"
            self._end(t, Moving.FAILED, now, tell=problem)
            self._error(f"warning: {problem}: transfer ended, nothing saved")
            return
        t.state = Moving.CHECKING
        assert t.sink is not None
        t.sink.finish(done.digest)
        self._progress(now, force=True)

    def _sink_report(self, t: Transfer, kind: str, amount: int, text: str, now: float) -> None:
        if kind == "saved" and t.state in ENDED:  # a cancel that came as it was put in place
            self._say(f"{sanitize(t.shown)} was already saved as {sanitize(text)}.")
            return
        if t.state in ENDED:
            return
        if kind == "written":
            t.written += amount
            if t.state is Moving.MOVING:
                t.credit += amount
                self._net.deliver(t.link, FileCredit(t.id, amount), now)
            return
        name, who = sanitize(t.shown), sanitize(t.person)
        if kind == "saved":
            t.state, t.sink = Moving.DONE, None
            self._net.deliver(t.link, FileReceived(t.id), now)
            self._say(
                f"Received {name} from {who} ({t.amount}, SHA-256 verified): "
                f"saved as {sanitize(text)}"
            )
        elif kind == "mismatch" and t.offset and not t.restarted:
            t.restarted, t.sink = True, None
            try:
                self._start_receiving(t, now, again=True)
            except (ChatError, OSError, RuntimeError) as exc:
                why = str(exc) if isinstance(exc, ChatError) else describe_os_error(exc)
                self._end(t, Moving.FAILED, now, tell=f"{self._net.username} could not save it")
                self._error(f"error: {name} from {who}: {why}")
        elif kind == "mismatch":
            self._end(t, Moving.FAILED, now, tell="its SHA-256 did not match: deleted")
            self._error(
                f"error: {name} from {who} does not match the SHA-256 it was sent with: "
                "the partial file was deleted"
            )
        else:
            self._end(t, Moving.FAILED, now, tell=f"{self._net.username} could not save it")
            self._error(f"error: {name} from {who}: {text}")
        self._progress(now, force=True)

    def _end(
        self, t: Transfer, state: Moving, now: float, tell: str | None = None, keep: bool = False
    ) -> None:
        """Stop a transfer here; `tell`: also tell the other side, with that reason; `keep`:
        a pause, the receiver keeps what arrived."""
        t.state = state
        t.cancelled_here = tell is not None
        self._close_file(t, keep=keep)
        if tell is not None:
            reason = tell.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore")
            self._net.deliver(t.link, FileCancel(t.id, t.sending, reason, keep), now)
        partner, t.partner = t.partner, None
        if partner is not None and partner.state not in ENDED:
            self._end(partner, state, now, tell=tell or "", keep=keep)
        self._progress(now, force=True)

    def _close_file(self, t: Transfer, keep: bool = False) -> None:
        if t.source is not None:
            t.source.close()
            t.source = None
        if t.fd >= 0:
            os.close(t.fd)
            t.fd = -1
        if t.sink is not None:
            t.sink.close(keep)
            t.sink = None
        t.relayed.clear()

    def finish_writing(self, timeout: float) -> None:
        """Wait (up to `timeout`) until every byte received is on disk."""
        deadline = time.monotonic() + timeout
        for sink in self._sinks:
            sink.thread.join(max(0.0, deadline - time.monotonic()))

    def link_resumed(self, old: Link, new: Link, now: float) -> None:
        """A session goes on over `new`: its transfers move there. One moving out waits
        for the receiver's FILEACCEPT; one moving in asks for the rest once both sides are
        in step (caught_up). A leg the host relays goes on too: in, with the credit the host
        had left for it; out, from the chunks the host keeps."""
        for t in [*self._sending.on(old), *self._receiving.on(old)]:
            (self._sending if t.sending else self._receiving).discard(t)
            t.link = new
            (self._sending if t.sending else self._receiving).put(t)
            if t.state is not Moving.MOVING:
                continue
            t.resynced = True
            if t.sending:  # nothing goes until the receiver says where it stands
                if t.source is not None:
                    t.source.close()
                    t.source = None
                t.credit = 0
            elif t.partner is None:
                # What came and is not written yet is granted back as it is written: the
                # sender may have no more than the window out (what a relaying host keeps).
                t.credit = max(0, FILE_WINDOW - (t.position - t.offset - t.written))
            # A relaying host keeps the credit it had left: it never holds more of the file.
        if old in self._next_id:
            self._next_id[new] = self._next_id.pop(old)
        self._sending.drop_link(old)
        self._receiving.drop_link(old)

    def caught_up(self, link: Link, again: frozenset[int], now: float) -> None:
        """Both sides of a resumed session are in step: each file moving in goes on where
        this side has it (FILEACCEPT at that offset), unless a FILEACCEPT for it was among
        the messages sent again (the peer never took it, and nothing came since: it says
        the same)."""
        for t in self._receiving.on(link):
            if t.resynced and t.state is Moving.MOVING and t.id not in again:
                self._net.deliver(link, FileAccept(t.id, t.position, t.credit), now)

    def link_closed(self, link: Link, now: float) -> None:
        """The connection is gone: its transfers stop; a partial download stays to resume."""
        for t in [*self._sending.on(link), *self._receiving.on(link)]:
            if t.state in ENDED or t.state is Moving.CHECKING:
                continue  # a file being checked has all its bytes: it is saved all the same
            t.state = Moving.FAILED
            kept = t.sink is not None
            self._close_file(t, keep=True)
            if t.partner is not None:
                partner, t.partner = t.partner, None
                self._end(
                    partner,
                    Moving.FAILED,
                    now,
                    tell=f"{sanitize(link.peer.peer_name)} lost the connection",
                )
            if t.ours:
                more = f" ({t.percent}% kept: offered again, it resumes there)" if kept else ""
                self._say(f"{sanitize(t.shown)} stopped: the connection ended{more}.")
        self._sending.drop_link(link)
        self._receiving.drop_link(link)
        self._next_id.pop(link, None)
        self._complained = {key for key in self._complained if key[0] is not link}
        self._progress(now, force=True)

    # Sending -------------------------------------------------------------------------------

    def pump(self, link: Link, now: float) -> bool:
        """Queue the next chunk (or DONE) for `link`, when one is due; True if it did."""
        for t in self._sending.on(link):
            if t.state is not Moving.MOVING:
                continue
            data = self._next_chunk(t) if t.position < t.size else None
            if data is not None:
                link.outgoing += link.peer.send_chunk(t.id, t.position, data, now)
                if t.partner is not None:
                    keep_sent(t, t.position, data)
                t.position += len(data)
                t.credit -= len(data)
                if t.ours:
                    self._progress(now)
                else:  # the author earns credit for new bytes only, not for those sent again
                    fresh = max(0, t.position - t.passed)
                    t.passed = max(t.passed, t.position)
                    self._relayed(t, fresh, now)
                return True
            if t.partner is not None:
                if t.position == t.size and t.partner.done and not t.done:
                    t.done = True
                    done = FileDone(t.id, t.partner.digest, t.partner.done_signature)
                    link.outgoing += link.peer.send(done, now)
                    return True
                continue
            # The source has read all it will: the file ended as hashed, or it did not.
            verdict = t.source.verdict if t.source is not None else None
            if verdict:
                self._end(t, Moving.FAILED, now, tell=f"it {verdict}")
                self._error(
                    f"error: {sanitize(t.shown)} {verdict}: cancelled; send it again once it "
                    "is final"
                )
                return True
            if verdict is None or t.position < t.size or t.done or t.source is None:
                continue
            t.done = True
            digest, signature = t.source.digest, bytes(64)
            if t.signed and self._user is not None:  # for a member, through the host
                signature = self._user.sign_done(t.person, t.id, digest)
            link.outgoing += link.peer.send(FileDone(t.id, digest, signature), now)
            self._progress(now, force=True)
            return True
        return False

    def _next_chunk(self, t: Transfer) -> bytes | None:
        """The next chunk of `t` when one is ready and the credit allows it."""
        if t.partner is not None:
            if t.relayed and len(t.relayed[0]) <= t.credit:
                return t.relayed.popleft()
            return None
        if t.source is None or t.credit < min(CHUNK_SIZE, t.size - t.position):
            return None
        return t.source.take()

    def has_data(self, link: Link) -> bool:
        """True when a chunk for `link` could go now (the loop then waits to write)."""
        for t in self._sending.on(link):
            if t.state is Moving.MOVING and t.position < t.size:
                if t.partner is not None:
                    if t.relayed and len(t.relayed[0]) <= t.credit:
                        return True
                elif t.source is not None and t.credit >= min(CHUNK_SIZE, t.size - t.position):
                    return t.source.ready()
        return False

    def busy(self, link: Link) -> bool:
        """True while a file comes in over `link` (reads are then larger)."""
        return any(t.state is Moving.MOVING for t in self._receiving.on(link))

    # The host relays members' files -----------------------------------------------------

    def _relay_offer(self, link: Link, offer: FileOffer, now: float) -> None:
        author = link.peer.peer_name
        route = self._net.route_to(offer.who, False)
        if route is None or route[0] is link:
            self._net.deliver(
                link, FileCancel(offer.id, False, f"nobody named {offer.who} is in the chat"), now
            )
            return
        target = route[0]
        if (why := self._relay_limit(link, target, offer.who)) is not None:
            self._net.deliver(link, FileCancel(offer.id, False, why), now)
            if self._complain(link, -2):
                self._error(f"{sanitize(author)} offered many files at once: {why}")
            return
        leg_in = self._add(
            link, offer.id, False, offer.name, offer.size, offer.fingerprint, offer.who, False
        )
        number = self._next_id.get(target, 0) + 1
        self._next_id[target] = number
        leg_out = self._add(
            target, number, True, offer.name, offer.size, offer.fingerprint, author, False
        )
        leg_in.partner, leg_out.partner = leg_out, leg_in
        self._expiring.append((now + RELAYED_OFFER_SECONDS, leg_in))
        relayed = replace(offer, id=number, who=author)
        self._net.deliver(target, relayed, now)

    def expire(self, now: float) -> float | None:
        """Cancel the relayed offers nobody answered in RELAYED_OFFER_SECONDS (both legs:
        the author and the receiver are told); when the next one is due, or None."""
        while self._expiring:
            due, leg_in = self._expiring[0]
            if leg_in.state is Moving.OFFERED and leg_in.partner is not None and now < due:
                return due
            self._expiring.popleft()
            if leg_in.state is Moving.OFFERED and leg_in.partner is not None:
                minutes = f"{RELAYED_OFFER_SECONDS / 60:g} minutes"
                self._end(leg_in, Moving.CANCELLED, now, tell=f"not answered in {minutes}")
        return None

    def _relay_limit(self, author: Link, target: Link, who: str) -> str | None:
        """Why an offer from `author` for `target` is not relayed now, or None: the host
        holds at most MAX_RELAYED_OFFERS unanswered offers of each author, and for each
        receiver, so one member's flood costs bounded memory and blocks only that member."""
        from_author = sum(
            1
            for t in self._receiving.on(author)
            if t.partner is not None and t.state is Moving.OFFERED
        )
        if from_author >= MAX_RELAYED_OFFERS:
            return f"{MAX_RELAYED_OFFERS} of your offers are still unanswered: wait for answers"
        for_target = sum(
            1
            for t in self._sending.on(target)
            if t.partner is not None and t.state is Moving.OFFERED
        )
        if for_target >= MAX_RELAYED_OFFERS:
            return f"{who} has {MAX_RELAYED_OFFERS} offers still unanswered: try again later"
        return None

    def _relay(self, t: Transfer, message: Message, now: float) -> None:
        """A message about a leg the host relays, passed on to the other leg. Each leg has
        its own credit: the sender is granted what the host has passed on, so the host never
        holds more than FILE_WINDOW of it, whatever the receiver grants."""
        other = t.partner
        assert other is not None
        if isinstance(message, FileAccept):
            for leg in (t, other):
                leg.state, leg.offset, leg.position = Moving.MOVING, message.offset, message.offset
                leg.started = now
            t.credit, other.credit = message.credit, min(message.credit, FILE_WINDOW)
            self._net.deliver(other.link, FileAccept(other.id, message.offset, other.credit), now)
            self._net.low_water(t.link)
        elif isinstance(message, FileCredit):
            t.credit = min(t.credit + message.amount, 2**62)
            self._net.nudge(t.link)
        elif isinstance(message, FileDone):
            if t.resynced and t.position < t.size:
                return  # sent before the link was lost, and again after: the data comes first
            if t.position != t.size:
                problem = f"{sanitize(t.link.peer.peer_name)} sent less than announced"
                self._end(t, Moving.FAILED, now, tell=problem)
                return
            t.done, t.digest, t.done_signature = True, message.digest, message.signature
            self._net.nudge(other.link)
        elif isinstance(message, FileCancel):  # a pause stays a pause on the other leg
            state = Moving.PAUSED if message.keep else Moving.CANCELLED
            t.state, t.partner, other.partner = state, None, None
            self._close_file(t)
            self._end(other, state, now, tell=message.reason, keep=message.keep)
        else:  # REJECT or RECEIVED: the far end's answer, passed back
            state = Moving.DECLINED if isinstance(message, FileReject) else Moving.DONE
            t.state = other.state = state
            t.partner = other.partner = None
            self._close_file(t)
            self._close_file(other)
            answer = FileReceived if isinstance(message, FileReceived) else FileReject
            self._net.deliver(other.link, answer(other.id), now)

    def _relayed(self, t: Transfer, size: int, now: float) -> None:
        """`size` bytes of a relayed file went on: the sender may send as much more."""
        sender = t.partner
        if sender is None or (size == 0 and not sender.ungranted):
            return
        sender.ungranted += size
        if sender.ungranted >= CREDIT_STEP or not t.relayed:
            sender.credit += sender.ungranted
            self._net.deliver(sender.link, FileCredit(sender.id, sender.ungranted), now)
            sender.ungranted = 0

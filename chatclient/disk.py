"""Files on disk: the reader thread of a file being sent (FileSource), the writer
thread of one being received (FileSink), and the .part files a resume starts from.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import queue
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .errors import ChatError, describe_os_error
from .filenames import META_SUFFIX, PART_SUFFIX, PartialInfo, numbered
from .handshake import FINGERPRINT_LABEL
from .messages import CHUNK_SIZE

# --- Files: disk workers and the transfer desk ------------------------------------
#
# The network thread keeps every transfer's state (the FileDesk) and never waits for a
# disk: a FileSource thread reads each file being sent ahead of the network, a FileSink
# thread writes each file being received, and both report back through post(). The
# receiver grants credit as it writes, so a slow disk slows its own transfer only.

FILE_WINDOW = 4 * 1024 * 1024  # what a receiver grants before it has written anything
CREDIT_STEP = 512 * 1024  # written bytes are granted back in steps of at least this
READ_AHEAD = 32  # chunks a FileSource holds ready (it reads READ_BLOCK more at a time)
READ_BLOCK = 16  # chunks read (and written) with one system call
HASH_LAG = 16  # blocks a FileSink's hashing may be behind its writing
SINK_CLOSE_SECONDS = 0.5  # a cancel waits this long for a write under way to end
SETTLE_SECONDS = 2.0  # a resume waits this long for a paused writer to write what came
HASH_BLOCK = 1024 * 1024
PROGRESS_SECONDS = 0.25  # the status line is redrawn at most this often
# While a file moves on a connection, the kernel holds at most this much of it unsent,
# so a line typed meanwhile waits behind no more than this.
NOT_SENT_LOW_WATER = 128 * 1024
MAX_OPEN_OFFERS = 64  # offers waiting for an answer, per person offering
MAX_OPEN_OFFERS_PER_LINK = 256  # ... and per connection (a host's relays included)
MAX_RELAYED_OFFERS = 16  # a host relays at most this many unanswered offers per author,
# and holds at most this many unanswered for each receiver
RELAYED_OFFER_SECONDS = 600.0  # a host cancels a relayed offer nobody answered in this time
MAX_KEPT_TRANSFERS = 1000  # ended transfers beyond this are forgotten, oldest first
# Files are read and written at offsets, never following links: POSIX calls (Linux, macOS).
FILES_WORK_HERE = all(hasattr(os, name) for name in ("pread", "pwritev", "O_NOFOLLOW", "statvfs"))
NO_FILES_HERE = "sending and receiving files needs Linux, macOS or another POSIX system"
FINISH_WRITING_SECONDS = 30.0  # at exit, received data still queued is written first
FILE_CHUNKS_PER_TURN = 32  # chunks written to one connection before the others get a turn
FILE_READ_SIZE = 256 * 1024  # bytes read at once while a file comes in


def open_for_sending(path: str) -> tuple[int, int]:
    """(descriptor, size) of a regular file to send; ChatError saying why not."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ChatError(f"{path} is a folder: /send {path} offers it as one folder")
        if not stat.S_ISREG(info.st_mode):
            raise ChatError(f"{path} is not a regular file (a device, FIFO or socket)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ChatError(f"no such file: {path}") from None
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {describe_os_error(exc)}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped for something else since the stat
        os.close(fd)
        raise ChatError(f"{path} is not a regular file (a device, FIFO or socket)")
    return fd, info.st_size


def lock(fd: int) -> bool:
    """Take `fd`'s file for this process alone while it is open (an advisory lock, which
    another chatclient receiving into the same folder respects); False if another holds it."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks here: files do not work here either
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a disk without locks: nothing to respect
        return True
    return True


def in_use(path: str) -> bool:
    """True while another open file holds `path`'s lock: a chatclient writing into it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return not lock(fd)
    finally:
        os.close(fd)


def file_stamp(fd: int) -> tuple[int, int, int]:
    """What changes whenever a file's content does: size, modification and change times.

    The change time (ctime) is set by every write and cannot be set back by anyone.
    """
    info = os.fstat(fd)
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


def hash_start(fd: int, size: int, shorter: str) -> hashlib._Hash:
    """A SHA-256 fed a file's first `size` bytes; ChatError(`shorter`) if it has fewer."""
    digest, offset = hashlib.sha256(), 0
    while offset < size:
        block = os.pread(fd, min(HASH_BLOCK, size - offset), offset)
        if not block:
            raise ChatError(shorter)
        digest.update(block)
        offset += len(block)
    return digest


FINGERPRINT_SPAN = 1024 * 1024  # the fingerprint reads this much at each end of a file


def file_fingerprint(fd: int, size: int, stamp: tuple[int, int, int]) -> bytes:
    """What identifies a file at offer time, cheaply, so that a resume continues the same
    file: its size, modification time, and first and last MiB. The SHA-256 of the whole
    file, sent with FILEDONE, is what the receiver checks."""
    head = os.pread(fd, min(size, FINGERPRINT_SPAN), 0)
    tail_at = max(size - FINGERPRINT_SPAN, 0)
    tail = os.pread(fd, size - tail_at, tail_at)
    return hashlib.sha256(
        FINGERPRINT_LABEL + struct.pack("!QQ", size, stamp[1]) + head + tail
    ).digest()


@dataclass(frozen=True)
class PreparedFile:
    """A file checked, ready to offer (each transfer reads its own copy of fd)."""

    path: str
    name: str
    fd: int
    size: int
    fingerprint: bytes
    stamp: tuple[int, int, int]  # file_stamp() when it was offered


def free_space(folder: str) -> int:
    """Bytes free for us in `folder`."""
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


def partial_records(folder: str, wanted: PartialInfo) -> Iterator[tuple[str, os.stat_result]]:
    """The partial downloads in `folder` whose record matches `wanted` (size, fingerprint,
    sender and kind; not the name): each NAME.part, and its lstat."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(PART_SUFFIX + META_SUFFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                with open(entry.path, encoding="utf-8") as file:
                    info = PartialInfo.parse(file.read(4096))
                part = entry.path[: -len(META_SUFFIX)]
                if info is None or (info.size, info.fingerprint, info.sender, info.kind) != (
                    wanted.size,
                    wanted.fingerprint,
                    wanted.sender,
                    wanted.kind,
                ):
                    continue
                yield part, os.lstat(part)
            except (OSError, UnicodeDecodeError):
                continue


def find_partial(
    folder: str, size: int, fingerprint: bytes, sender: bytes
) -> tuple[str, int] | None:
    """An earlier partial download of this very file from this sender: (part, its length)."""
    for part, length in partial_records(folder, PartialInfo("", size, fingerprint, sender)):
        if (
            stat.S_ISREG(length.st_mode)
            and length.st_size <= size
            and not in_use(part)  # another chatclient of yours receives it right now
        ):
            return part, length.st_size
    return None


def create_part(folder: str, name: str, record: str) -> tuple[int, str]:
    """A new NAME.part (or NAME (1).part, ...) in `folder` and its NAME.part.meta holding
    `record`, both new, never following a link."""
    flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for number in range(10_000):
        part = os.path.join(folder, numbered(name, number) + PART_SUFFIX)
        try:
            fd = os.open(part, os.O_RDWR | flags, 0o600)  # the person widens it if they want
        except FileExistsError:
            continue
        try:
            meta = os.open(part + META_SUFFIX, os.O_WRONLY | flags, 0o600)
        except FileExistsError:
            os.close(fd)
            os.unlink(part)
            continue
        except OSError:
            os.close(fd)
            os.unlink(part)
            raise
        with os.fdopen(meta, "w", encoding="utf-8") as file:
            file.write(record)
        if not inside(folder, part):
            os.close(fd)
            remove_quietly(part, part + META_SUFFIX)
            break
        return fd, part
    raise ChatError(f"no free name for {name} in {folder}")


def inside(folder: str, path: str) -> bool:
    """True when `path`, links resolved, is directly in `folder`, links resolved."""
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def place_file(part: str, folder: str, name: str) -> str:
    """Move a finished NAME.part to NAME, or NAME (1), ...: never over an existing file."""
    for number in range(10_000):
        final = os.path.join(folder, numbered(name, number))
        try:  # the name is reserved first, so nobody's file is ever replaced
            os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            continue
        if not inside(folder, final):
            os.unlink(final)
            break
        try:
            os.replace(part, final)
        except OSError:
            remove_quietly(final)  # the reservation, empty
            raise
        return final
    raise ChatError(f"no free name for {name} in {folder}")


def remove_quietly(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


class Readable(Protocol):
    """What a FileSource reads: one file, or a folder's stream (bundles.BundleReader)."""

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` (fewer: it got shorter); OSError or ChatError."""

    def changed(self) -> str:
        """ "" while what was read is as it was offered, else what happened to it."""

    def close(self) -> None:
        """Let go of what it holds open."""


class FileReader:
    """One file to send, read at offsets and checked against its stamp at the offer."""

    def __init__(self, fd: int, stamp: tuple[int, int, int]) -> None:
        self._fd, self._stamp = fd, stamp

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def changed(self) -> str:
        return "changed while it was being sent" if file_stamp(self._fd) != self._stamp else ""

    def close(self) -> None:
        os.close(self._fd)


class Writable(Protocol):
    """What a FileSink writes into: one NAME.part, or a folder's (bundles.BundleWriter)."""

    part: str  # the .part (file or folder) a cancel deletes, with its record

    def hash_start(self, offset: int) -> hashlib._Hash:
        """A SHA-256 fed the stream's first `offset` bytes, as kept from before a resume;
        ChatError if fewer are there."""

    def write(self, blocks: list[bytes], position: int) -> None:
        """Write `blocks` at `position` of the stream; OSError or ChatError."""

    def sync(self) -> None:
        """Everything written is on the disk."""

    def close(self) -> None:
        """Let go of open files (the .part stays)."""

    def discard(self) -> None:
        """Delete the .part and its record."""

    def place(self) -> str:
        """Move the finished .part into place, never over anything: where it went."""


class FileWriter:
    """One NAME.part, moved to NAME (or NAME (1), ...) once it verifies."""

    def __init__(self, fd: int, part: str, folder: str, name: str) -> None:
        self._fd, self.part, self._folder, self._name = fd, part, folder, name
        if not lock(fd):
            raise ChatError(f"{part} is being written by another chatclient")

    def hash_start(self, offset: int) -> hashlib._Hash:
        return hash_start(self._fd, offset, f"{self.part} got shorter while it was being resumed")

    def write(self, blocks: list[bytes], position: int) -> None:
        size = sum(map(len, blocks))
        written = os.pwritev(self._fd, blocks, position)
        if written < size:  # rare: write the rest one buffer at a time
            rest = memoryview(b"".join(blocks))[written:]
            while rest:
                more = os.pwrite(self._fd, rest, position + written)
                rest, written = rest[more:], written + more

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

    def discard(self) -> None:
        remove_quietly(self.part, self.part + META_SUFFIX)

    def place(self) -> str:
        final = place_file(self.part, self._folder, self._name)
        remove_quietly(self.part + META_SUFFIX)
        return final


class FileSource:
    """One file being sent, read ahead of the network in a thread of its own.

    It checks the file's stamp as it reads (every few chunks and after the last): a file
    changed since it was hashed ends with a verdict saying so, never with a corrupt copy.
    The stamp costs a stat where hashing again would cost a second pass over the file.
    """

    def __init__(self, reader: Readable, size: int, offset: int, wake: Callable[[], None]) -> None:
        self._reader, self._size, self._offset = reader, size, offset
        self._wake = wake
        self._ready: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = False  # the network found nothing ready: wake it for the next
        self.verdict: str | None = None  # once all is read: "" unchanged, else what happened
        self.digest = b""  # once all is read, unchanged: the SHA-256 of the whole file
        threading.Thread(target=self._run, name="file-source", daemon=True).start()

    def take(self) -> bytes | None:
        """The next chunk, or None (then the network is woken when one is ready)."""
        with self._cond:
            if self._ready:
                self._cond.notify()
                return self._ready.popleft()
            self._waiting = True
            return None

    def ready(self) -> bool:
        """True when a chunk is ready to take."""
        return bool(self._ready)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify()

    def _run(self) -> None:
        try:
            verdict = self._read()
        except ChatError as exc:
            verdict = str(exc)
        except OSError as exc:
            verdict = f"could not be read ({describe_os_error(exc)})"
        finally:
            self._reader.close()
        with self._cond:
            self.verdict = verdict
        self._wake()

    def _read(self) -> str:
        # The SHA-256 is taken of the bytes as they are sent (after those a resume skips),
        # so the file is read once: FILEDONE carries it.
        digest, position = hashlib.sha256(), 0
        while position < self._offset:  # what a resume skips: hashed, not sent
            block = self._reader.read(position, min(HASH_BLOCK, self._offset - position))
            if not block:
                return "got shorter while it was being sent"
            digest.update(block)
            position += len(block)
        while position < self._size:  # a block of chunks per read: fewer calls, fewer handovers
            wanted = min(CHUNK_SIZE * READ_BLOCK, self._size - position)
            block = self._reader.read(position, wanted)
            if len(block) < wanted:
                return "got shorter while it was being sent"
            position += len(block)
            if verdict := self._reader.changed():
                return verdict
            chunks = [block[i : i + CHUNK_SIZE] for i in range(0, len(block), CHUNK_SIZE)]
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._ready) < READ_AHEAD)
                if self._closed:
                    return ""
                self._ready.extend(chunks)
                wake, self._waiting = self._waiting, False
            if wake:
                self._wake()
            digest.update(block)  # after the chunks are out: the network never waits for it
        if verdict := self._reader.changed():
            return verdict
        self.digest = digest.digest()
        return ""


class FileSink:
    """One file (or folder) being received, written to its .part by a thread of its own.

    Each write is granted back as credit; after the sender's DONE the whole file's
    SHA-256 is checked against the one DONE carries, and only a match is moved into place.
    """

    def __init__(
        self, target: Writable, offset: int, report: Callable[[str, int, str], None]
    ) -> None:
        self._target, self._offset, self._digest = target, offset, b""
        self.part = target.part
        self._report = report  # report(kind, bytes, text)
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._finishing = False
        self._stopping = False  # write what came, then stop: the .part stays to resume
        self._closed = False
        self._busy = False  # a write is under way
        self.thread = threading.Thread(target=self._run, name="file-sink", daemon=True)
        self.thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            self._queue.append(data)
            self._cond.notify()

    def finish(self, digest: bytes) -> None:
        """Every byte has been put: check the file against `digest` and place it."""
        with self._cond:
            self._digest, self._finishing = digest, True
            self._cond.notify()

    def close(self, keep: bool) -> None:
        """Stop: keep the .part to resume (every byte that came is written first), or
        delete it with its record (by the writer, which may be in the middle of a write)."""
        with self._cond:
            if keep:
                self._stopping = True
            else:
                self._closed = True
                self._queue.clear()
                self._cond.notify_all()
                # A write under way ends first (a slow disk: the writer deletes it later).
                if self._cond.wait_for(lambda: not self._busy, SINK_CLOSE_SECONDS):
                    self._discard()
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._write()
        except (OSError, ChatError) as exc:
            self._discard()
            failed = f"writing it failed: {describe_os_error(exc)}"
            self._report("failed", 0, str(exc) if isinstance(exc, ChatError) else failed)
        finally:
            self._target.close()
            with self._cond:
                discard = self._closed
            if discard:  # cancelled: nothing of it stays
                self._discard()

    def _discard(self) -> None:
        """Delete the .part and its record."""
        self._target.discard()

    def _write(self) -> None:
        digest = self._target.hash_start(self._offset)  # what an earlier session wrote
        # Hashing runs beside the writing (both let go of the GIL), in a thread of its own
        # at most HASH_LAG blocks behind.
        hashing: queue.Queue[list[bytes] | None] = queue.Queue(HASH_LAG)

        def hash_blocks() -> None:
            while (blocks := hashing.get()) is not None:
                for data in blocks:
                    digest.update(data)

        hasher = threading.Thread(target=hash_blocks, name="file-hash", daemon=True)
        hasher.start()
        try:
            finished = self._write_blocks(self._offset, hashing)
        finally:
            hashing.put(None)
            hasher.join()
        self._target.sync()
        if finished:
            self._check_and_place(digest.digest())

    def _write_blocks(self, position: int, hashing: queue.Queue[list[bytes] | None]) -> bool:
        """Write what comes: True once the sender is done, False if stopped before."""
        unreported = 0
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(
                    lambda: self._queue or self._finishing or self._stopping or self._closed
                )
                if self._closed:
                    return False
                batch = [self._queue.popleft() for _ in range(min(READ_BLOCK, len(self._queue)))]
                idle, self._busy = not self._queue, bool(batch)
            if not batch:
                return not self._stopping
            hashing.put(batch)
            size = sum(map(len, batch))
            self._target.write(batch, position)
            position += size
            unreported += size
            if unreported >= CREDIT_STEP or idle:
                self._report("written", unreported, "")
                unreported = 0

    def _check_and_place(self, digest: bytes) -> None:
        """The whole file's SHA-256 against the sender's; only a match is moved into place."""
        if not hmac.compare_digest(digest, self._digest):
            self._discard()
            self._report("mismatch", 0, "")
            return
        with self._cond:  # a cancel now waits until the file is in place, or stops it
            if self._closed:
                return
            final = self._target.place()
        self._report("saved", 0, final)

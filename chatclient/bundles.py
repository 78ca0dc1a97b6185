"""Folders and several files as one offer: gathering them to send (collect), reading them
as one stream (BundleReader), and writing a received stream into NAME.part/, a folder of
its own, from which the files move into place once the whole stream verifies (BundleWriter).

The stream is the list (manifest.py) then every file's data in the list's order, so a
resume at any byte keeps every file that arrived whole, and the part of the next.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import shutil
import stat
import struct
from dataclasses import dataclass

from .disk import (
    HASH_BLOCK,
    file_stamp,
    in_use,
    lock,
    partial_records,
    place_file,
    remove_quietly,
)
from .errors import ChatError, ProtocolError, describe_os_error
from .filenames import META_SUFFIX, PART_SUFFIX, PartialInfo, numbered
from .handshake import FINGERPRINT_LABEL
from .manifest import (
    LIST_FILE,
    MAX_BUNDLE_FOLDERS,
    MAX_DEPTH,
    MAX_LIST_BYTES,
    MAX_PATH_BYTES,
    Entry,
    decode_list,
    encode_list,
    list_end,
)
from .messages import MAX_BUNDLE_FILES, Bundle
from .text import sanitize

NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
FOLDER_BYTES = 4096  # what a folder takes on most disks, beyond the data of its files


@dataclass(frozen=True)
class Item:
    """One file of an offer being sent."""

    path: str  # on the wire: parts joined by "/"
    source: str  # where it is here
    size: int
    stamp: tuple[int, int, int]  # file_stamp() when it was gathered


@dataclass(frozen=True)
class Collected:
    """A folder, or several files, gathered for one offer."""

    bundle: Bundle
    name: str  # the folder's name, or the first file's
    items: tuple[Item, ...]
    listing: bytes  # the stream's first bytes: the list, with its length
    size: int  # of the whole stream
    fingerprint: bytes
    skipped: tuple[str, ...]  # one line for each thing left out (links, devices, ...)

    @property
    def ends(self) -> list[int]:
        """Where each file ends in the stream."""
        ends, end = [], len(self.listing)
        for item in self.items:
            end += item.size
            ends.append(end)
        return ends


def wire_name(name: str) -> str:
    """A local name as the peer sees it: undecodable bytes become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def collect(paths: list[str]) -> Collected:
    """One folder, or several files, ready to offer; ChatError saying why not."""
    if len(paths) == 1:
        return _collect_folder(paths[0])
    items, names = [], set()
    for path in paths:
        info = _stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ChatError(f"{path} is a folder: send a folder on its own (/send {path})")
        if not stat.S_ISREG(info.st_mode):
            raise ChatError(f"{path} is not a regular file (a device, FIFO or socket)")
        name = wire_name(os.path.basename(os.path.normpath(path)))
        if name in names:
            raise ChatError(f"two of the files are named {name}: send them one at a time")
        names.add(name)
        items.append(Item(name, path, info.st_size, _stamp_of(info)))
    return _gathered(Bundle.FILES, items[0].path, items, [])


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise ChatError(f"no such file: {path}") from None
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {describe_os_error(exc)}") from None


def _stamp_of(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _collect_folder(folder: str) -> Collected:
    top = wire_name(os.path.basename(os.path.normpath(os.path.abspath(folder))))
    items: list[Item] = []
    skipped: list[str] = []
    pending, folders = [(folder, top, 1)], 0
    while pending:
        here, shown, depth = pending.pop()
        try:
            with os.scandir(here) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            skipped.append(f"skipped {shown}/: {describe_os_error(exc)}")
            continue
        inner = []
        for entry in entries:
            path = f"{shown}/{wire_name(entry.name)}"
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as exc:
                skipped.append(f"skipped {path}: {describe_os_error(exc)}")
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(f"skipped {path}: a symbolic link (links are not followed)")
            elif stat.S_ISDIR(info.st_mode):
                if depth + 1 >= MAX_DEPTH:
                    raise ChatError(f"{path} is over {MAX_DEPTH} folders deep")
                folders += 1
                if folders > MAX_BUNDLE_FOLDERS:
                    raise ChatError(
                        f"{top} holds over {MAX_BUNDLE_FOLDERS:,} folders, the most one offer "
                        "carries: send its folders one by one, or an archive of it"
                    )
                inner.append((entry.path, path, depth + 1))
            elif not stat.S_ISREG(info.st_mode):
                skipped.append(f"skipped {path}: not a regular file (a device, FIFO or socket)")
            elif len(path.encode("utf-8")) > MAX_PATH_BYTES:
                raise ChatError(f"the path {path[:60]}... is over {MAX_PATH_BYTES} bytes")
            else:
                items.append(Item(path, entry.path, info.st_size, _stamp_of(info)))
            if len(items) > MAX_BUNDLE_FILES:
                raise ChatError(
                    f"{top} holds over {MAX_BUNDLE_FILES:,} files, the most one offer carries: "
                    "send its folders one by one, or an archive of it"
                )
        pending += reversed(inner)  # depth first, in name order
    if not items:
        raise ChatError(f"{folder} holds no files to send")
    items.sort(key=lambda item: item.path)
    return _gathered(Bundle.FOLDER, top, items, skipped)


def _gathered(bundle: Bundle, name: str, items: list[Item], skipped: list[str]) -> Collected:
    listing = encode_list((item.path, item.size) for item in items)
    if len(listing) - 4 > MAX_LIST_BYTES:
        raise ChatError(
            f"the list of {name}'s {len(items):,} files is over {MAX_LIST_BYTES // 2**20} MiB, "
            "the most one offer carries: send its folders one by one, or an archive of it"
        )
    stamps = b"".join(struct.pack("!QQ", item.size, item.stamp[1]) for item in items)
    fingerprint = hashlib.sha256(FINGERPRINT_LABEL + listing + stamps).digest()
    size = len(listing) + sum(item.size for item in items)
    return Collected(bundle, name, tuple(items), listing, size, fingerprint, tuple(skipped))


class BundleReader:
    """An offer's stream, read at offsets: the list, then each file in turn (opened as it
    is reached, never through a link, and checked against its stamp when gathered)."""

    def __init__(self, collected: Collected) -> None:
        self._listing, self._items = collected.listing, collected.items
        self._starts, start = [], len(collected.listing)
        for item in self._items:
            self._starts.append(start)
            start += item.size
        self._index, self._fd = -1, -1

    def read(self, offset: int, size: int) -> bytes:
        parts = []
        if offset < len(self._listing):
            parts.append(self._listing[offset : offset + size])
            offset, size = offset + len(parts[0]), size - len(parts[0])
        while size > 0:
            index = bisect.bisect_right(self._starts, offset) - 1  # never an empty file
            if index < 0 or offset >= self._starts[index] + self._items[index].size:
                break
            fd = self._open(index)
            start, item = self._starts[index], self._items[index]
            block = os.pread(fd, min(size, start + item.size - offset), offset - start)
            if not block:
                break
            parts.append(block)
            offset, size = offset + len(block), size - len(block)
        return b"".join(parts)

    def _open(self, index: int) -> int:
        if index == self._index:
            return self._fd
        if verdict := self.changed():
            raise ChatError(verdict)
        self.close()
        item = self._items[index]
        try:
            self._fd = os.open(item.source, os.O_RDONLY | os.O_NONBLOCK | NOFOLLOW)
        except OSError as exc:
            raise ChatError(f"{item.path} could not be read ({describe_os_error(exc)})") from None
        self._index = index
        if verdict := self.changed():
            raise ChatError(verdict)
        return self._fd

    def changed(self) -> str:
        if self._fd < 0:
            return ""
        item = self._items[self._index]
        if not stat.S_ISREG(os.fstat(self._fd).st_mode) or file_stamp(self._fd) != item.stamp:
            return f"changed while it was being sent ({sanitize(item.path)})"
        return ""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._index = -1, -1


def create_bundle_part(folder: str, name: str, record: str) -> str:
    """A new NAME.part/ (or NAME (1).part/, ...) folder in `folder`, and its NAME.part.meta
    holding `record`."""
    for number in range(10_000):
        part = os.path.join(folder, numbered(name, number) + PART_SUFFIX)
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            continue
        try:
            meta = os.open(
                part + META_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600
            )
        except OSError:
            os.rmdir(part)
            if number < 9_999:
                continue
            raise
        with os.fdopen(meta, "w", encoding="utf-8") as file:
            file.write(record)
        return part
    raise ChatError(f"no free name for {name} in {folder}")


def find_bundle_part(folder: str, offer: PartialInfo) -> str | None:
    """An earlier partial download of this very offer from this sender: its NAME.part/
    (kept() says how much of the stream it holds)."""
    for part, info in partial_records(folder, offer):
        # (a record another chatclient of yours holds is in use)
        if stat.S_ISDIR(info.st_mode) and not in_use(part + META_SUFFIX):
            return part
    return None


def kept(part: str, bundle: Bundle, count: int, name: str) -> int:
    """How much of the stream NAME.part/ holds: its list, then each file as long as the
    one before it is whole."""
    try:
        with open(os.path.join(part, LIST_FILE), "rb") as file:  # ours: no entry ends .part
            head = file.read(MAX_LIST_BYTES + 4)
    except FileNotFoundError:  # paused before its first byte: start it there
        return 0
    end = list_end(head)
    if end is None or len(head) < end:
        return len(head)
    offset = end
    for entry in decode_list(head[:end], bundle, count, name):
        try:
            have = os.lstat(os.path.join(part, *entry.parts))
        except FileNotFoundError:
            return offset
        if not stat.S_ISREG(have.st_mode) or have.st_size > entry.size:
            raise ChatError(f"{part} holds something other than what was received")
        offset += have.st_size
        if have.st_size < entry.size:
            return offset
    return offset


class BundleWriter:
    """A folder or several files being received into NAME.part/: the list first (checked
    whole before any file is made), then each file's data in turn."""

    def __init__(
        self, part: str, folder: str, size: int, bundle: Bundle, count: int, name: str
    ) -> None:
        self.part, self._folder, self._size = part, folder, size
        self._bundle, self._count, self._name = bundle, count, name
        self._head = bytearray()  # the list, as it comes (at most MAX_LIST_BYTES + 4)
        self._entries: list[Entry] = []
        self._starts: list[int] = []
        self._index, self._fd = -1, -1
        self._list_path = os.path.join(part, LIST_FILE)
        # The record's lock says "being written" to any other chatclient in this folder.
        self._record = os.open(part + META_SUFFIX, os.O_RDONLY | NOFOLLOW)
        if not lock(self._record):
            os.close(self._record)
            raise ChatError(f"{part} is being written by another chatclient")
        # Where each file ends in the stream (once the list is in): how many files are
        # whole at a position, for the progress line (read by the network thread).
        self.ends: list[int] = []

    # The list -------------------------------------------------------------------------

    def _take_list(self, data: memoryview, position: int) -> int:
        """Take what of `data` (at `position`) belongs to the list; how many bytes that is."""
        if position != len(self._head):
            raise ProtocolError("its list came out of order")
        end = list_end(bytes(self._head[:4]))
        taken = data[: (end if end is not None else 4) - position]
        self._head += taken
        fd = os.open(self._list_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | NOFOLLOW, 0o600)
        try:
            os.write(fd, taken)
        finally:
            os.close(fd)
        end = list_end(bytes(self._head[:4]))
        if end is not None and len(self._head) == end:
            self._open_list()
        return len(taken)

    def _open_list(self) -> None:
        """The whole list is here: check it, and make every folder and (empty) file."""
        end = len(self._head)
        entries = decode_list(bytes(self._head), self._bundle, self._count, self._name)
        total = end + sum(entry.size for entry in entries)
        if total != self._size:
            raise ProtocolError(f"its list adds up to {total} bytes, not the {self._size} offered")
        self._check_room(entries)
        self._index_entries(entries)
        for entry in entries:
            self._make(entry)

    def _check_room(self, entries: list[Entry]) -> None:
        """ChatError unless the disk can hold the files and folders the list makes, which
        the offer's size (bytes of data) does not count."""
        folders = {entry.parts[:depth] for entry in entries for depth in range(1, len(entry.parts))}
        info = os.statvfs(self.part)
        made = len(entries) + len(folders)
        if info.f_files and info.f_favail < made:  # some disks do not count inodes
            raise ChatError(
                f"not enough room in {self._folder}: it makes {made:,} files and folders, and "
                f"{info.f_favail:,} more can be made there"
            )
        if info.f_bavail * info.f_frsize < len(folders) * FOLDER_BYTES:
            raise ChatError(f"not enough room in {self._folder} for its {len(folders):,} folders")

    def _index_entries(self, entries: list[Entry]) -> None:
        start = len(self._head)
        for entry in entries:
            self._starts.append(start)
            start += entry.size
            self.ends.append(start)
        self._entries = entries

    def _make(self, entry: Entry) -> None:
        """Create `entry` (empty) and its folders inside NAME.part/, never through a link."""
        fd = os.open(self.part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        try:
            for folder in entry.parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder, 0o700, dir_fd=fd)
                inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = inner
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
            os.close(os.open(entry.parts[-1], flags, 0o600, dir_fd=fd))
        except FileExistsError:
            raise ChatError(
                f"{'/'.join(entry.parts)} is in its list twice (this disk ignores case?)"
            ) from None
        finally:
            os.close(fd)

    def _load_list(self) -> None:
        """On a resume: the list kept in NAME.part/."""
        try:
            with open(self._list_path, "rb") as file:
                self._head = bytearray(file.read(MAX_LIST_BYTES + 4))
        except FileNotFoundError:
            self._head = bytearray()
        end = list_end(bytes(self._head))
        if end is not None and len(self._head) == end:
            entries = decode_list(bytes(self._head), self._bundle, self._count, self._name)
            self._index_entries(entries)

    # Writable ---------------------------------------------------------------------------

    def hash_start(self, offset: int) -> hashlib._Hash:
        digest = hashlib.sha256()
        if not offset:
            return digest
        self._load_list()
        digest.update(self._head[:offset])
        shorter = f"{self.part} got shorter while it was being resumed"
        for entry, start in zip(self._entries, self._starts, strict=True):
            if start >= offset:
                break
            with open(os.path.join(self.part, *entry.parts), "rb") as file:
                left = min(entry.size, offset - start)
                while left:
                    block = file.read(min(HASH_BLOCK, left))
                    if not block:
                        raise ChatError(shorter)
                    digest.update(block)
                    left -= len(block)
        return digest

    def write(self, blocks: list[bytes], position: int) -> None:
        try:
            self._write(blocks, position)
        except ProtocolError as exc:
            raise ChatError(f"{exc}: nothing saved") from None

    def _write(self, blocks: list[bytes], position: int) -> None:
        for block in blocks:
            data = memoryview(block)
            while data:
                if not self._entries:
                    taken = self._take_list(data, position)
                else:
                    taken = self._write_entry(data, position)
                data, position = data[taken:], position + taken

    def _write_entry(self, data: memoryview, position: int) -> int:
        # The last entry starting at or before `position`: an empty one never is (the
        # entry after it starts at the same byte).
        index = bisect.bisect_right(self._starts, position) - 1
        entry, start = self._entries[index], self._starts[index]
        if index != self._index:
            self._close_entry()
            fd = os.open(self.part, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
            try:
                for folder in entry.parts[:-1]:
                    inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = inner
                self._fd = os.open(entry.parts[-1], os.O_WRONLY | NOFOLLOW, dir_fd=fd)
            finally:
                os.close(fd)
            self._index = index
        taken = data[: start + entry.size - position]
        written = 0
        while written < len(taken):
            written += os.pwrite(self._fd, taken[written:], position - start + written)
        if position + len(taken) == start + entry.size:
            self._close_entry()
        return len(taken)

    def _close_entry(self) -> None:
        if self._fd >= 0:
            fd, self._fd, self._index = self._fd, -1, -1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        self._close_entry()
        if self._record >= 0:
            os.close(self._record)
            self._record = -1

    def discard(self) -> None:
        shutil.rmtree(self.part, ignore_errors=True)
        remove_quietly(self.part + META_SUFFIX)

    def place(self) -> str:
        """Move each top-level file or folder into the downloads folder (a name in use
        gets " (1)", ...): where the folder went, or how many files went where."""
        if not self._entries:  # the offer's size ended inside its list
            raise ChatError("its list is cut short: nothing saved")
        tops = list(dict.fromkeys(entry.parts[0] for entry in self._entries))
        placed = []
        for top in tops:
            staged = os.path.join(self.part, top)
            if os.path.isdir(staged) and not os.path.islink(staged):
                placed.append(place_folder(staged, self._folder, top))
            else:
                placed.append(place_file(staged, self._folder, top))
        remove_quietly(os.path.join(self.part, LIST_FILE))
        with contextlib.suppress(OSError):
            os.rmdir(self.part)
        remove_quietly(self.part + META_SUFFIX)
        if self._bundle is Bundle.FOLDER or len(placed) == 1:
            return placed[0]
        return f"{len(placed)} files in {self._folder}"


def place_folder(staged: str, folder: str, name: str) -> str:
    """Move a finished folder to NAME, or NAME (1), ...: never over anything."""
    for number in range(10_000):
        final = os.path.join(folder, numbered(name, number))
        try:  # an empty folder reserves the name; rename() then replaces only it
            os.mkdir(final, 0o700)
        except FileExistsError:
            continue
        try:
            os.rename(staged, final)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(final)
            raise
        return final  # 0700, as its files are 0600: the person widens them if they want
    raise ChatError(f"no free name for {name} in {folder}")

"""The list a folder or multi-file offer starts with: its wire form, and the rules every
path in it must follow before anything is written (pure).

A FOLDER or FILES offer moves as one stream of bytes, the transfer's `size` long:

    u32 L || the list (L bytes) || the data of entry 1 || the data of entry 2 || ...
    the list = count x (u64 size || u32 n || path: n bytes of UTF-8, parts joined by "/")
"""

from __future__ import annotations

import functools
import struct
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ProtocolError
from .filenames import MAX_SAVED_NAME, PART_SUFFIX, safe_file_name, shorten_name
from .messages import Bundle

MAX_LIST_BYTES = 4 * 1024 * 1024  # the list of one offer, in bytes
MAX_PATH_BYTES = 1024  # one path in it
MAX_DEPTH = 32  # folders inside one another, the top one included
MAX_BUNDLE_FOLDERS = 10_000  # folders one offer makes
LIST_HEADER = struct.Struct("!I")
ENTRY_HEADER = struct.Struct("!QI")
LIST_FILE = "list" + PART_SUFFIX  # beside the entries while they arrive (no entry is named so)


@dataclass(frozen=True)
class Entry:
    """One file of the list: where it is saved (safe parts) and its size."""

    parts: tuple[str, ...]
    size: int


def encode_list(entries: Iterable[tuple[str, int]]) -> bytes:
    """The list for (path with "/" between parts, size) pairs, with its length first."""
    body = b"".join(
        ENTRY_HEADER.pack(size, len(raw)) + raw
        for path, size in entries
        for raw in [path.encode("utf-8")]
    )
    return LIST_HEADER.pack(len(body)) + body


def list_end(prefix: bytes) -> int | None:
    """Where the list ends in the stream, once its first 4 bytes are known (else None);
    ProtocolError past MAX_LIST_BYTES."""
    if len(prefix) < LIST_HEADER.size:
        return None
    length: int = LIST_HEADER.unpack_from(prefix)[0]
    if length > MAX_LIST_BYTES:
        raise ProtocolError(f"its list is {length} bytes, over the limit of {MAX_LIST_BYTES}")
    return LIST_HEADER.size + length


def decode_list(data: bytes, bundle: Bundle, count: int, name: str) -> list[Entry]:
    """The entries of a list (`data`: the stream's first list_end() bytes) of an offer of
    `bundle` kind holding `count` files named `name`; ProtocolError saying what is wrong."""
    end = list_end(data)
    if end is None or end != len(data):
        raise ProtocolError("its list is cut short")
    entries, offset = [], LIST_HEADER.size
    for _ in range(count):
        if offset + ENTRY_HEADER.size > end:
            raise ProtocolError(f"its list holds fewer than the {count} files offered")
        size, length = ENTRY_HEADER.unpack_from(data, offset)
        offset += ENTRY_HEADER.size
        if length > MAX_PATH_BYTES or offset + length > end:
            raise ProtocolError("a path in its list is too long or cut short")
        try:
            path = data[offset : offset + length].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("a path in its list is not UTF-8") from None
        offset += length
        entries.append(Entry(safe_parts(path, bundle, name), size))
    if offset != end:
        raise ProtocolError(f"its list holds more than the {count} files offered")
    if bundle is Bundle.FILES and entries and entries[0].parts != (safe_file_name(name),):
        raise ProtocolError(f"its first file is not {name!r}, the name it was offered as")
    check_tree(entries)
    return entries


def safe_parts(path: str, bundle: Bundle, name: str) -> tuple[str, ...]:
    """The parts `path` is saved under; ProtocolError for a path that could land outside
    the offer (empty parts, `.`, `..`, a leading `/`, a backslash, NUL) or that leaves the
    offer's shape (a FOLDER's paths start with its name; FILES have one part each)."""
    parts = path.split("/")
    shown = repr(path[:80])
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        raise ProtocolError(f"the path {shown} in its list could land outside the folder")
    if len(parts) > MAX_DEPTH:
        raise ProtocolError(f"the path {shown} is over {MAX_DEPTH} folders deep")
    if bundle is Bundle.FOLDER and (len(parts) < 2 or parts[0] != name):
        raise ProtocolError(f"the path {shown} is not inside the folder {name!r}")
    if bundle is Bundle.FILES and len(parts) != 1:
        raise ProtocolError(f"the path {shown} is not a plain file name")
    top = _safe_top(parts[0])
    inner = [safe_inner_name(part) for part in parts[1:]]
    if top is None or None in inner:
        raise ProtocolError(f"the path {shown} has a part that leaves nothing safe")
    return (top, *(part for part in inner if part is not None))


@functools.lru_cache(maxsize=4096)  # the folders of a deep tree repeat in every path
def safe_inner_name(part: str) -> str | None:
    """A name inside a received folder: the rules of a file's name (no control, format or
    bidi characters, cut to MAX_SAVED_NAME bytes, never one of our working names), except
    that a leading dot stays (.gitignore inside a folder is no hidden surprise)."""
    kept = "".join(" " if ch.isspace() else ch for ch in part if not _unsafe(ch)).strip()
    if not kept.strip("."):
        return None
    kept = shorten_name(kept, MAX_SAVED_NAME)
    if kept.endswith(PART_SUFFIX) or kept.endswith(PART_SUFFIX + ".meta"):
        kept = kept.replace(PART_SUFFIX, "_part")
    return kept


_safe_top = functools.lru_cache(maxsize=4096)(safe_file_name)


def _unsafe(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def check_tree(entries: list[Entry]) -> None:
    """ProtocolError when two entries are saved under one path, or when a path is a file
    in one entry and a folder in another (compared as saved). A disk that ignores case
    refuses the second of two names that differ only in case when it is created."""
    files: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for entry in entries:
        if entry.parts in files:
            raise ProtocolError(f"the path {'/'.join(entry.parts)!r} is in its list twice")
        files.add(entry.parts)
        folders.update(entry.parts[:depth] for depth in range(1, len(entry.parts)))
    if clash := files & folders:
        shown = "/".join(min(clash))
        raise ProtocolError(f"{shown!r} is both a file and a folder in its list")
    if len(folders) > MAX_BUNDLE_FOLDERS:  # each costs a block of disk the size does not count
        raise ProtocolError(f"its list makes over {MAX_BUNDLE_FOLDERS:,} folders")


def describe(bundle: Bundle, name: str, count: int) -> str:
    """An offer as lines name it: `Holiday/`, `a.jpg and 2 more`, or the file's name."""
    if bundle is Bundle.FOLDER:
        return f"{name}/"
    if bundle is Bundle.FILES and count > 1:
        return f"{name} and {count - 1} more"
    return name

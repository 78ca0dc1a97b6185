"""Received file names made safe, numbered copies, and the .part.meta record (pure)."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass

# --- Files: names, sizes and partial downloads (pure) ---------------------------------

# A saved name is cut to this many bytes, leaving room under the usual 255-byte limit
# for " (99)" and ".part.meta".
MAX_SAVED_NAME = 200
PART_SUFFIX = ".part"  # data in flight: renamed into place once its SHA-256 matches
META_SUFFIX = ".meta"  # beside NAME.part: what it is part of, so the file can resume
META_HEADER = "# chatclient partial download: lets the same file resume from here"


def safe_file_name(offered: str) -> str | None:
    """The name to save an offered file under, or None when nothing safe is left.

    Only the last path part counts (after / or \\), a drive letter goes, control,
    format and bidi characters go, and leading dots go (no dot-file, no ..); the
    rest is cut to MAX_SAVED_NAME bytes, keeping a short extension.
    """
    base = re.split(r"[/\\]", offered)[-1]
    base = re.sub(r"^[A-Za-z]:", "", base)
    base = "".join(" " if ch.isspace() else ch for ch in base if not _unsafe_in_name(ch))
    base = base.strip().lstrip(".").strip()
    if not base:
        return None
    # Never one of our working files: checked on the name as it will be saved, after the
    # cut (which could otherwise bring a .part.meta ending back).
    base = shorten_name(base, MAX_SAVED_NAME)
    for suffix in (PART_SUFFIX + META_SUFFIX, PART_SUFFIX):
        if base.endswith(suffix):
            base = base[: -len(suffix)] + suffix.replace(PART_SUFFIX, "_part", 1)
    return base


def _unsafe_in_name(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def shorten_name(name: str, limit: int) -> str:
    """`name` in at most `limit` UTF-8 bytes, keeping its extension when that is short."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, extension = os.path.splitext(name)
    if len(extension.encode("utf-8")) > 16:
        stem, extension = name, ""
    room = limit - len(extension.encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return stem + extension


def numbered(name: str, number: int) -> str:
    """holiday.jpg, then holiday (1).jpg, holiday (2).jpg, ..."""
    if not number:
        return name
    stem, extension = os.path.splitext(name)
    return f"{stem} ({number}){extension}"


@dataclass(frozen=True)
class PartialInfo:
    """What a NAME.part.meta file records: the offer a partial download belongs to."""

    name: str
    size: int
    fingerprint: bytes  # the offer's: the same file, unchanged (disk.file_fingerprint)
    sender: bytes  # the sender's identity key: only they may resume it
    kind: int = 0  # what was offered: 0 a file (NAME.part), 1 a folder, 2 files (NAME.part/)

    def render(self) -> str:
        return (
            f"{META_HEADER}\nname = {self.name}\nsize = {self.size}\n"
            f"fingerprint = {self.fingerprint.hex()}\nsender = {self.sender.hex()}\n"
            f"kind = {self.kind}\n"
        )

    @classmethod
    def parse(cls, text: str) -> PartialInfo | None:
        """The record, or None for anything else (which is then left alone)."""
        fields = {}
        for line in text.splitlines()[1:]:
            key, equals, value = line.partition(" = ")
            if equals:
                fields[key] = value
        try:
            size, kind = int(fields["size"]), int(fields.get("kind", "0"))
            digest, sender = bytes.fromhex(fields["fingerprint"]), bytes.fromhex(fields["sender"])
        except (KeyError, ValueError):
            return None
        if (
            not text.startswith(META_HEADER)
            or size < 0
            or len(digest) != 32
            or kind not in (0, 1, 2)
        ):
            return None
        return cls(fields.get("name", ""), size, digest, sender, kind)

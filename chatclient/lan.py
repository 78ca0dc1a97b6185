"""Finding each other on a LAN (pure rules): what a listener's DNS-SD announcement says,
how a contact recognises it, and how an invite slot is chosen. discovery.py does the
multicast.

An announcement must not tell a stranger who you are, or let them recognise you
tomorrow: its instance and host names are random for each announcement, and its TXT
record holds only the protocol version, the invite slot while an invite is open, and
a tag that only contacts can recognise. The tag is an HMAC keyed by the listener's
identity public key (which only its contacts hold: it travels encrypted, and only to
someone the listener has let in) over the UTC date, so it changes every day and two
days' tags cannot be linked without the key.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import ProtocolError
from .handshake import VERSION

SERVICE_TYPE = "_chatclient._tcp.local."
TAG_LABEL = b"chatclient/2 lan tag\x00"
TAG_BYTES = 8  # 64 bits: a collision with a stranger's tag is negligible
MAX_SLOT = 99  # an invite code's number is its slot: 1 to 99
# A TXT record of ours is about 40 bytes; anything much larger is not ours.
MAX_TXT_BYTES = 400
MAX_TXT_VALUE = 64
MAX_ADDRESSES = 8


@dataclass(frozen=True)
class Announcement:
    """A listener found on the LAN: where it is, and what its record says."""

    addresses: tuple[str, ...]  # as the record gave them, checked to be IP addresses
    port: int
    version: int
    slot: int | None  # the open invite's number, if any
    tag: bytes | None  # the contact tag of today (see contact_tag)

    @property
    def address(self) -> str:
        """The first address, as HOST:PORT (IPv6 in brackets)."""
        host = self.addresses[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def contact_tag(identity: bytes, day: datetime.date) -> bytes:
    """The tag a listener with this identity public key announces on `day` (UTC)."""
    message = TAG_LABEL + day.isoformat().encode("ascii")
    return hmac.new(identity, message, hashlib.sha256).digest()[:TAG_BYTES]


def days_around(now: datetime.datetime) -> list[datetime.date]:
    """The UTC dates a tag made now may carry: today, and either side of midnight (clocks
    differ by minutes, and an announcement outlives the day it was made on)."""
    today = now.astimezone(datetime.timezone.utc).date()
    return [today, today - datetime.timedelta(days=1), today + datetime.timedelta(days=1)]


def recognise(
    tag: bytes | None, contacts: Iterable[tuple[str, bytes]], now: datetime.datetime
) -> str | None:
    """The name of the contact (name, identity key) whose tag this is, or None."""
    if tag is None:
        return None
    days = days_around(now)
    for name, key in contacts:
        if any(hmac.compare_digest(tag, contact_tag(key, day)) for day in days):
            return name
    return None


def txt_record(slot: int | None, tag: bytes) -> dict[str, str]:
    """The TXT record of an announcement: version, tag, and the slot while an invite is open."""
    record = {"v": str(VERSION), "t": tag.hex()}
    if slot is not None:
        record["s"] = str(slot)
    return record


def parse_announcement(
    properties: Mapping[bytes, bytes | None], port: int, addresses: Sequence[str]
) -> Announcement:
    """An announcement from what the network gave; ProtocolError saying what is wrong.

    Everything here came from anyone on the LAN: sizes are checked before anything is
    decoded, and the only addresses ever used are those of the record itself.
    """
    size = sum(len(key) + len(value or b"") + 2 for key, value in properties.items())
    if size > MAX_TXT_BYTES:
        raise ProtocolError(f"its TXT record is {size} bytes, more than {MAX_TXT_BYTES}")
    fields: dict[str, str] = {}
    for key, value in properties.items():
        if value is None or len(value) > MAX_TXT_VALUE:
            raise ProtocolError("a TXT field is empty or too long")
        try:
            fields[key.decode("ascii")] = value.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("a TXT field is not ASCII") from None
    if not 0 < port < 65536:
        raise ProtocolError(f"port {port} is not a TCP port")
    checked = tuple(check_address(text) for text in addresses[:MAX_ADDRESSES])
    if not checked:
        raise ProtocolError("it gives no address")
    return Announcement(
        checked,
        port,
        parse_version(fields.get("v", "")),
        parse_slot(fields.get("s")),
        parse_tag(fields.get("t")),
    )


def check_address(text: str) -> str:
    """An IP address as text (never a name: an announcement does not make us resolve)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ProtocolError(f"{text[:64]!r} is not an IP address") from None


def parse_version(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 3):
        raise ProtocolError(f"version {text[:8]!r} is not a number")
    return int(text)


def parse_slot(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 2) or not 1 <= int(text) <= MAX_SLOT:
        raise ProtocolError(f"slot {text[:8]!r} is not a number from 1 to {MAX_SLOT}")
    return int(text)


def parse_tag(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        tag = bytes.fromhex(text)
    except ValueError:
        raise ProtocolError("its tag is not hexadecimal") from None
    if len(tag) != TAG_BYTES:
        raise ProtocolError(f"its tag is {len(tag)} bytes, not {TAG_BYTES}")
    return tag


def choose_slot(taken: Iterable[int], random: bytes) -> int:
    """A slot from 1 to MAX_SLOT that no listener seen on the LAN holds, picked with the
    `random` bytes (4 of them); any slot when all are taken."""
    free = [slot for slot in range(1, MAX_SLOT + 1) if slot not in set(taken)]
    choices = free or list(range(1, MAX_SLOT + 1))
    return choices[int.from_bytes(random[:4], "big") % len(choices)]

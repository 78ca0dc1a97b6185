"""Identities (pure rules, small files): identity.key, known_peers, safety numbers
and invite codes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from .errors import ConfigError, describe_os_error
from .text import name_problem, name_skeleton
from .wordlist import EVEN_WORDS, ODD_WORDS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


# An invite code is void after this many wrong tries.
MAX_INVITE_FAILURES = 3


# --- Identities, contacts and invite codes ------------------------------------
#
# identity.key, beside config.ini (mode 600): this user's long-term Ed25519 key.
# known_peers, beside it (mode 600): the identities pinned on first contact, one
# line per peer like SSH's known_hosts: NAME ed25519:KEY FIRST-SEEN TRUST.
# The safety number of two people is computed from their two public keys only,
# so a man in the middle cannot grind it; an invite code is a SPAKE2 password.

IDENTITY_FILE = "identity.key"
KNOWN_PEERS_FILE = "known_peers"
IDENTITY_PREFIX = "ed25519-private:"
PEER_KEY_PREFIX = "ed25519:"
SAFETY_ITERATIONS = 5200  # as Signal's safety numbers: slows down a search for a match
SAFETY_INFO = b"chatclient/2 safety number"
_INVITE_PATTERN = re.compile(r"([1-9][0-9]?)[-\s]+([a-z]+)[-\s]+([a-z]+)")


class Trust(Enum):
    """What known_peers says of an identity offered under a name."""

    NEW = "first contact"
    KNOWN = "known, not verified"
    VERIFIED = "verified"
    CHANGED = "a different identity is pinned under this name"


@dataclass(frozen=True)
class KnownPeer:
    """One line of known_peers."""

    name: str
    key: bytes
    first_seen: str
    verified: bool
    line: int = 0  # its line in the file (0: not written yet)

    def render(self) -> str:
        key = base64.b64encode(self.key).decode("ascii")
        trust = "verified" if self.verified else "unverified"
        return f"{self.name} {PEER_KEY_PREFIX}{key} {self.first_seen} {trust}"


@dataclass(frozen=True)
class Recognition:
    """How an identity offered under a name compares with known_peers."""

    trust: Trust
    pinned: KnownPeer | None  # the entry under this name, if any
    aliases: tuple[str, ...] = ()  # other names this identity is known by


class KnownPeers:
    """The contents of known_peers: pure; read_known_peers and update_known_peers do the I/O."""

    def __init__(self, path: str, peers: Sequence[KnownPeer] = ()) -> None:
        self.path = path
        self.peers = tuple(peers)

    @classmethod
    def parse(cls, path: str, text: str) -> KnownPeers:
        """The file's lines, strictly: ConfigError naming the line and how to mend it."""
        peers: list[KnownPeer] = []
        seen: dict[str, int] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            problem = f"{path} line {number}"
            fields = line.rsplit(None, 3)
            if len(fields) != 4 or not fields[1].startswith(PEER_KEY_PREFIX):
                raise ConfigError(
                    f"{problem} is not of the form NAME {PEER_KEY_PREFIX}KEY DATE "
                    "verified|unverified: mend it or delete the line"
                )
            name, key_text, first_seen, trust = fields
            if (name_issue := name_problem(name)) is not None:
                raise ConfigError(f"{problem}: the name {name_issue}: mend it or delete the line")
            key = decode_base64_key(key_text[len(PEER_KEY_PREFIX) :], base64.b64encode)
            if key is None or trust not in ("verified", "unverified"):
                what = "key" if key is None else "trust (verified or unverified)"
                raise ConfigError(f"{problem}: the {what} is not valid: mend it or delete the line")
            if name in seen:
                raise ConfigError(
                    f"{problem}: {name} is also on line {seen[name]}: keep one of the two"
                )
            seen[name] = number
            peers.append(KnownPeer(name, key, first_seen, trust == "verified", number))
        return cls(path, peers)

    def render(self) -> str:
        """The text of the file."""
        head = (
            "# chatclient known peers: the identity first seen under each name.\n"
            "# NAME ed25519:KEY FIRST-SEEN verified|unverified. To forget a peer,\n"
            "# delete its line or run: chatclient --forget NAME\n"
        )
        return head + "".join(peer.render() + "\n" for peer in self.peers)

    def named(self, name: str) -> KnownPeer | None:
        """The entry under `name`, if any."""
        return next((peer for peer in self.peers if peer.name == name), None)

    def looks_like(self, name: str) -> KnownPeer | None:
        """The entry whose name looks like `name` (one skeleton: Unicode TS #39), if any."""
        skeleton = name_skeleton(name)
        return next((peer for peer in self.peers if name_skeleton(peer.name) == skeleton), None)

    def recognize(self, name: str, key: bytes) -> Recognition:
        """How the identity `key`, offered under `name`, compares with what is pinned. A
        name that looks like a pinned one (alice with a Cyrillic a) is judged as that one."""
        pinned = self.named(name)
        alike = self.looks_like(name) if pinned is None else None
        if alike is not None and not hmac.compare_digest(alike.key, key):
            return Recognition(Trust.CHANGED, alike, ())
        aliases = tuple(p.name for p in self.peers if p.key == key and p.name != name)
        if pinned is None:
            verified = any(p.verified for p in self.peers if p.key == key)
            trust = Trust.NEW if not aliases else Trust.VERIFIED if verified else Trust.KNOWN
        elif not hmac.compare_digest(pinned.key, key):
            trust = Trust.CHANGED
        else:
            trust = Trust.VERIFIED if pinned.verified else Trust.KNOWN
        return Recognition(trust, pinned, aliases)

    def pin(self, name: str, key: bytes, verified: bool, when: str) -> KnownPeers:
        """With `name` pinned to `key` (a verified entry stays verified)."""
        old = self.named(name)
        if old is not None and old.key == key:
            entry = replace(old, verified=old.verified or verified)
        else:
            entry = KnownPeer(name, key, when, verified)
        if old is None:
            return KnownPeers(self.path, [*self.peers, entry])
        return KnownPeers(self.path, [entry if p.name == name else p for p in self.peers])

    def forget(self, name: str) -> KnownPeers:
        """Without `name`; ConfigError if it is not there."""
        if self.named(name) is None:
            known = ", ".join(peer.name for peer in self.peers) or "none yet"
            raise ConfigError(f"{self.path} has no peer named {name!r} (names there: {known})")
        return KnownPeers(self.path, [peer for peer in self.peers if peer.name != name])


def decode_base64_key(text: str, encode: Callable[[bytes], bytes]) -> bytes | None:
    """32 bytes from their canonical base64 (as `encode` writes it), or None."""
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except ValueError:
        return None
    if len(raw) != 32 or encode(raw).decode("ascii") != text:
        return None
    return raw


def fingerprint(public_key: bytes) -> str:
    """An identity as people read it: 8 groups of 4 hex digits."""
    digest = hashlib.sha256(b"chatclient identity" + public_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def safety_number(ours: bytes, theirs: bytes) -> str:
    """60 digits in 12 groups of 5 from two identity keys, the same on both screens."""
    digits = "".join(_safety_half(key) for key in sorted((ours, theirs)))
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def _safety_half(public_key: bytes) -> str:
    digest = hashlib.sha512(SAFETY_INFO + public_key).digest()
    for _ in range(SAFETY_ITERATIONS):
        digest = hashlib.sha512(digest + public_key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def new_invite_code(slot: int | None = None) -> str:
    """A one-time code: a number and two words, e.g. 7-gazelle-microwave. The number is
    the slot the listener announces on the LAN, when it announces (else random)."""
    number = slot if slot is not None else 1 + int.from_bytes(os.urandom(4), "big") % 99
    first, second = os.urandom(2)
    return f"{number}-{EVEN_WORDS[first]}-{ODD_WORDS[second]}"


def parse_invite_code(text: str) -> str:
    """The code in canonical form, or ConfigError saying what is wrong with it."""
    match = _INVITE_PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ConfigError(
            f"{text.strip()!r} is not an invite code: it looks like 7-gazelle-microwave "
            "(a number and two words)"
        )
    number, first, second = match.groups()
    if first in ODD_WORDS and second in EVEN_WORDS:
        raise ConfigError(
            f"the words of {text.strip()!r} are swapped: try {number}-{second}-{first}"
        )
    for place, word, words, other in (
        ("first", first, EVEN_WORDS, ODD_WORDS),
        ("second", second, ODD_WORDS, EVEN_WORDS),
    ):
        if word in other:
            raise ConfigError(
                f"{word!r} cannot be the {place} word of an invite code: check the code with "
                "the person who gave it"
            )
        if word not in words:
            raise ConfigError(
                f"{word!r} is not a word invite codes use: check the code with the person "
                "who gave it"
            )
    return f"{number}-{first}-{second}"


class Invite:
    """The listener's one-time invite: single use, void after MAX_INVITE_FAILURES.

    A try counts when its confirmation is checked (the only answer a guesser gets);
    a connection that goes away before that learned nothing and costs nothing.
    """

    def __init__(self, code: str) -> None:
        self.code = code
        self.failures = 0
        self.used = False

    @property
    def void(self) -> bool:
        """True once the code was guessed wrong MAX_INVITE_FAILURES times."""
        return self.failures >= MAX_INVITE_FAILURES

    @property
    def open(self) -> bool:
        """True while the code can still be tried."""
        return not self.used and not self.void

    def tried(self, worked: bool) -> None:
        """A checked try: the code matched (the invite is used up) or did not."""
        if worked:
            self.used = True
        else:
            self.failures += 1


def beside(config_path: str, name: str) -> str:
    """A file kept in config.ini's folder."""
    return os.path.join(os.path.dirname(config_path), name)


def write_private_file(path: str, text: str, *, new: bool = False) -> None:
    """Write `path` whole or not at all, readable by its owner only before anything goes in.

    With `new`, FileExistsError if another process created it first (it wins).
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        if new:
            os.link(temporary, path)  # never replaces: two first runs keep one identity
        else:
            os.replace(temporary, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {describe_os_error(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def load_identity(path: str) -> tuple[Ed25519PrivateKey, bool]:
    """This user's identity key, created if the file is missing; True when created.

    A file that exists but cannot be read or parsed is an error, never replaced:
    a new identity is something the person decides on.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(4096)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        encoded = base64.urlsafe_b64encode(key.private_bytes_raw()).decode("ascii")
        public = fingerprint(key.public_key().public_bytes_raw())
        try:
            write_private_file(
                path,
                "# chatclient identity: your private key. Never share or copy this file;\n"
                f"# your contacts know you by its public half: {public}\n"
                f"{IDENTITY_PREFIX}{encoded}\n",
                new=True,
            )
        except FileExistsError:
            return load_identity(path)  # made meanwhile by another run beside this one
        return key, True
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read your identity: {describe_os_error(exc)}") from exc
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    seed = None
    if len(lines) == 1 and lines[0].startswith(IDENTITY_PREFIX):
        seed = decode_base64_key(lines[0][len(IDENTITY_PREFIX) :], base64.urlsafe_b64encode)
    if seed is None:
        raise ConfigError(
            f"{path} is damaged (it must hold one line {IDENTITY_PREFIX}KEY): restore it "
            "from a backup, or move it away to start a new identity (your contacts will "
            "then be warned that it changed)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed), False


def read_known_peers(path: str) -> KnownPeers:
    """known_peers (empty when there is none yet); ConfigError if it cannot be used."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(4 * 1024 * 1024)
    except FileNotFoundError:
        return KnownPeers(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {describe_os_error(exc)}") from exc
    return KnownPeers.parse(path, text)


def update_known_peers(path: str, change: Callable[[KnownPeers], KnownPeers]) -> KnownPeers:
    """Read known_peers afresh, apply `change`, write it back; the new contents."""
    peers = change(read_known_peers(path))
    write_private_file(path, peers.render())
    return peers


PAST_ROOMS_FILE = "past_rooms"
MAX_PAST_ROOMS = 4096  # lines kept; the oldest go first


@dataclass(frozen=True)
class PastRooms:
    """What a member remembers of rooms, so a host cannot bring them back: the rooms whose
    host ended them (host identity, room id), and the joins that ended (join nonces)."""

    rooms: frozenset[tuple[bytes, bytes]] = frozenset()
    joins: frozenset[bytes] = frozenset()


def read_past_rooms(path: str) -> PastRooms:
    """past_rooms (empty when there is none, or it cannot be read: it only ever adds
    refusals). Lines it does not understand are skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read(1024 * 1024).splitlines()
    except (OSError, UnicodeDecodeError):
        return PastRooms()
    rooms, joins = set(), set()
    for line in lines:
        fields = line.split()
        try:
            if len(fields) == 3 and fields[0] == "room":
                rooms.add((bytes.fromhex(fields[1]), bytes.fromhex(fields[2])))
            elif len(fields) == 2 and fields[0] == "join":
                joins.add(bytes.fromhex(fields[1]))
        except ValueError:
            continue
    return PastRooms(frozenset(rooms), frozenset(joins))


def remember_past(
    path: str, rooms: Sequence[tuple[bytes, bytes]] = (), joins: Sequence[bytes] = ()
) -> None:
    """Add ended rooms and joins to past_rooms, keeping the newest MAX_PAST_ROOMS lines
    (ConfigError if it cannot be written)."""
    try:
        with open(path, encoding="utf-8") as file:
            kept = [line for line in file.read(1024 * 1024).splitlines() if line[:1] != "#"]
    except FileNotFoundError:
        kept = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {describe_os_error(exc)}") from exc
    kept += [f"room {host.hex()} {room.hex()}" for host, room in rooms]
    kept += [f"join {nonce.hex()}" for nonce in joins]
    header = (
        "# chatclient: rooms whose host ended them, and members' joins that ended. A host\n"
        "# that brings one back could replay what was said there, so it is refused.\n"
    )
    write_private_file(path, header + "".join(f"{line}\n" for line in kept[-MAX_PAST_ROOMS:]))


def utc_now() -> str:
    """The time, as known_peers records first contact."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

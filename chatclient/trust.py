"""What this side makes of the identities and rooms it meets, from its local state
(known_peers, past_rooms): the judge of each WELCOME, a connector's check of the host's
room, and the warning for a changed identity.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from .config import config_flag
from .handshake import Mode, Role
from .identity import (
    KNOWN_PEERS_FILE,
    PAST_ROOMS_FILE,
    KnownPeer,
    Trust,
    beside,
    fingerprint,
    read_known_peers,
    read_past_rooms,
)
from .messages import Refuse
from .peer import IdentityRefused, Judge
from .text import sanitize


def identity_judge(config_path: str, role: Role, program: str) -> Judge:
    """The judge of this side's connections: known_peers, read afresh each time."""
    known_path = beside(config_path, KNOWN_PEERS_FILE)

    def judge(name: str, identity: bytes, mode: Mode) -> None:
        seen = read_known_peers(known_path).recognize(name, identity)
        if seen.trust is Trust.CHANGED:  # an invite code vouches for nobody's old name
            assert seen.pinned is not None
            warning = changed_identity(config_path, seen.pinned, identity, program)
            # A stranger (no key, no code) learns nothing from us: not even that the name
            # it tried is a contact's. This screen still shows the warning.
            stranger = mode is Mode.CONTACT and role is Role.LISTENER
            told = Refuse.NOT_A_CONTACT if stranger else None
            raise IdentityRefused(Refuse.IDENTITY_CHANGED, warning, name, told=told)
        if mode is Mode.CONTACT and seen.trust is Trust.NEW:
            shown = sanitize(name)
            if role is Role.LISTENER:
                raise IdentityRefused(
                    Refuse.NOT_A_CONTACT,
                    f"{shown} is not one of your contacts (no key, no invite code, and an "
                    f"identity not in {known_path}): told to ask for an invite code",
                )
            raise IdentityRefused(
                Refuse.UNKNOWN_LISTENER,
                f"{shown} at that address is not one of your contacts (its identity "
                f"{fingerprint(identity)} is not in {known_path}): ask for an invite code "
                "and connect with --code CODE",
            )

    return judge


def ended_room_check(config_path: str) -> Callable[[bytes, bytes], str]:
    """A connector's check of the host's room: one whose host ended it before (past_rooms)
    is not joined, since the host could replay what was said there."""
    path = beside(config_path, PAST_ROOMS_FILE)

    def check(host: bytes, room: bytes) -> str:
        if (host, room) not in read_past_rooms(path).rooms:
            return ""
        return (
            f"the host offers a room you saw it end (its id is in {path}): a host starts a "
            "new room each time it is started, and one that brings an old room back could "
            "replay what was said there. Not joining"
        )

    return check


def changed_identity(config_path: str, pinned: KnownPeer, offered: bytes, program: str) -> str:
    """The warning for a known name with a new identity, in the spirit of SSH's."""
    name = sanitize(pinned.name)
    banner = "@" * 62
    return "\n".join(
        [
            f"{name}'s identity has changed: connection refused",
            banner,
            f"@  WARNING: THE IDENTITY OF {name.upper()} HAS CHANGED!",
            banner,
            f"Someone may be pretending to be {name} (a man in the middle), or {name} made a "
            "new identity.",
            f"Pinned:  {fingerprint(pinned.key)} (first seen {pinned.first_seen}, "
            f"line {pinned.line} of {beside(config_path, KNOWN_PEERS_FILE)})",
            f"Offered: {fingerprint(offered)}",
            "Nothing it sent is shown. If you are sure it is a new identity, delete line "
            f"{pinned.line} of that file, or run: {program}{config_flag(config_path, program)} "
            f"--forget {shlex.quote(pinned.name)}",
        ]
    )

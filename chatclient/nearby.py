"""Who is around on the LAN, as the person sees it: --list, finding a listener by invite
code or by a contact's name, the listeners shown at the `Enter peer IP: ` prompt, and
the listener's own announcement while it listens (its Presence)."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

from .discovery import Announcer, browse, lan_addresses
from .errors import NetworkError
from .identity import KnownPeer, KnownPeers
from .lan import Announcement, choose_slot, contact_tag, recognise
from .terminal import Terminal
from .text import sanitize

LIST_SECONDS = 2.0  # --list looks this long
FIND_SECONDS = 5.0  # a code or a name not found by then is not on this network
PROMPT_SECONDS = 1.5  # looked for before `Enter peer IP: `
SLOTS_SECONDS = 1.0  # a listener learns the slots others hold before it picks one


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def contacts_of(known: KnownPeers) -> list[tuple[str, bytes]]:
    return [(peer.name, peer.key) for peer in known.peers]


def describe(found: Announcement, known: KnownPeers) -> str:
    """One line for a listener: a contact by name (verified or not), an open invite slot,
    or someone who is not a contact; with its address."""
    name = recognise(found.tag, contacts_of(known), now())
    if name is not None:
        entry = known.named(name)
        trust = "verified" if entry is not None and entry.verified else "not verified"
        who = f"{sanitize(name)} (your contact, {trust})"
    else:
        who = "someone who is not your contact"
    if found.slot is not None:
        who += f", with invite slot {found.slot} open"
    return f"  {who} at {found.address}"


def not_found(what: str, program: str, code: str = "") -> NetworkError:
    connect = f"{program} --connect HOST:PORT" + (f" --code {code}" if code else "")
    return NetworkError(
        f"{what} was not found on this network within {FIND_SECONDS:g} s: multicast may be "
        f"blocked (guest Wi-Fi or a VPN, for example); ask for the address and run `{connect}`"
    )


def list_listeners(term: Terminal, known: KnownPeers) -> int:
    """--list: one line per listener found in LIST_SECONDS."""
    problems: list[str] = []
    found = browse(LIST_SECONDS, problems=problems)
    for line in problems:
        term.error(line)
    if not found:
        term.show(
            f"No chatclient listeners found on this network in {LIST_SECONDS:g} s (multicast "
            "may be blocked, for example on guest Wi-Fi or a VPN)."
        )
        return 0
    term.show(f"Listening on this network ({len(found)}):")
    for listener in found:
        term.show(describe(listener, known))
    return 0


def find_by_code(code: str, term: Terminal, program: str) -> tuple[str, int]:
    """The address of the listener announcing this invite code's slot."""
    slot = int(code.split("-", 1)[0])
    term.show(f"Looking for invite slot {slot} on this network...")
    found = browse(FIND_SECONDS, lambda seen: any(a.slot == slot for a in seen))
    for listener in found:
        if listener.slot == slot:
            return listener.addresses[0], listener.port
    raise not_found(f"invite slot {slot}", program, code)


def find_contact(entry: KnownPeer, term: Terminal, program: str) -> tuple[str, int]:
    """The address of the listener whose tag is this contact's (the handshake then proves
    who it is: the announcement only says where to go)."""
    term.show(f"Looking for {sanitize(entry.name)} on this network...")
    contacts = [(entry.name, entry.key)]

    def seen(found: list[Announcement]) -> bool:
        return any(recognise(a.tag, contacts, now()) for a in found)

    for listener in browse(FIND_SECONDS, seen):
        if recognise(listener.tag, contacts, now()):
            return listener.addresses[0], listener.port
    raise not_found(sanitize(entry.name), program)


def show_nearby(term: Terminal, known: KnownPeers) -> dict[str, tuple[str, int]]:
    """Before `Enter peer IP: `: the listeners found in PROMPT_SECONDS, shown; the contacts
    among them by name, so a name may be typed in place of an address."""
    try:
        found = browse(PROMPT_SECONDS)
    except NetworkError:
        return {}
    by_name: dict[str, tuple[str, int]] = {}
    if found:
        term.show("Listening on this network (type a contact's name, or an address):")
    for listener in found:
        term.show(describe(listener, known))
        if name := recognise(listener.tag, contacts_of(known), now()):
            by_name[name] = (listener.addresses[0], listener.port)
    return by_name


class Presence:
    """The listener's announcement: made when it starts listening (if it may), updated as
    invites open and close, withdrawn when it stops. Failures only cost a warning."""

    def __init__(self, announcer: Announcer | None, warn: Callable[[str], None]) -> None:
        self._announcer, self._warn = announcer, warn
        self._learnt = False  # whether the slots of others have had time to arrive

    @classmethod
    def start(
        cls, listen_ip: str, port: int, identity: bytes, warn: Callable[[str], None]
    ) -> Presence:
        """Announce a listener on listen_ip:port (nothing for loopback)."""
        addresses = lan_addresses(listen_ip)
        if not addresses:
            return cls(None, warn)
        try:
            announcer = Announcer(addresses, port, contact_tag(identity, now().date()))
        except NetworkError as exc:
            warn(f"warning: {exc}: peers need the address form")
            return cls(None, warn)
        return cls(announcer, warn)

    @property
    def active(self) -> bool:
        return self._announcer is not None

    def free_slot(self) -> int | None:
        """A slot no other listener here announces (None when not announcing)."""
        if self._announcer is None:
            return None
        taken = self._announcer.taken(0.0 if self._learnt else SLOTS_SECONDS)
        self._learnt = True
        return choose_slot(taken, os.urandom(4))

    def announce(self, slot: int | None) -> None:
        """Announce with this invite slot open, or none."""
        if self._announcer is None:
            return
        try:
            self._announcer.announce(slot)
        except NetworkError as exc:
            self._warn(f"warning: {exc}: peers need the address form")

    def close(self) -> None:
        if self._announcer is not None:
            self._announcer.close()
            self._announcer = None

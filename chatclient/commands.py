"""The slash commands (/help, /who, /verify, /msg, /send and the other file commands,
/invite, /quit): what each does, its line of help, and the table the input loop looks
them up in. Conversation (chat.py) builds on Commands and holds the state they use."""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

from .bundles import collect
from .config import Config
from .disk import (
    FILES_WORK_HERE,
    NO_FILES_HERE,
    PreparedFile,
    file_fingerprint,
    file_stamp,
    open_for_sending,
)
from .errors import ChatError, ConfigError, describe_os_error
from .firstrun import show_invite
from .identity import (
    Invite,
    KnownPeers,
    Trust,
    fingerprint,
    new_invite_code,
    read_known_peers,
    safety_number,
    update_known_peers,
    utc_now,
)
from .messages import NO_NONCE, Action, Chat
from .nearby import Presence
from .network import Network
from .room import RoomLog
from .sockets import Link
from .terminal import Terminal, terminal_width
from .text import sanitize
from .transfers import FileDesk


@dataclass(frozen=True)
class PeerInfo:
    """Someone we are chatting with, as /who shows them."""

    name: str
    address: str  # host:port
    identity: bytes
    since: float  # when they came, on this side's monotonic clock
    host: bool = False
    nonce: bytes = NO_NONCE  # their join's: what their words are signed over


class Commands:
    """The commands, run on the main thread; Conversation provides what they use."""

    term: Terminal
    config: Config
    program: str
    identity: bytes  # our identity key, for safety numbers
    known_path: str
    presence: Presence | None
    people: dict[str, PeerInfo]
    names: dict[Link, str]
    net: Network | None
    hosting: bool
    invite_code: str | None
    log: RoomLog | None

    def _send(self, message: Chat | Action, to: str = "") -> None:
        raise NotImplementedError  # Conversation sends

    def show_help(self, argument: str) -> bool:
        """/help: the commands, from the table."""
        interactive = self.term.interactive
        self.term.show(help_text(terminal_width(self.term.stdout) if interactive else 0))
        return False

    def show_peer(self, argument: str) -> bool:
        """/who: who is in the chat, from where, for how long, and whether verified."""
        if not self.people:
            self.term.error("Nobody is connected yet.")
            return False
        now, verified = time.monotonic(), self._verified()
        if len(self.people) == 1:  # the two-person line
            [peer] = self.people.values()
            minutes, seconds = divmod(int(now - peer.since), 60)
            self.term.show(
                f"Talking to {sanitize(peer.name)} at {peer.address}, connected "
                f"{minutes} min {seconds} s, {verified(peer)}. "
                f"Identity: {fingerprint(peer.identity)} (/verify compares it)"
            )
            return False
        rows = [f"In the chat ({len(self.people) + 1} people):"]
        if self.names or not any(p.host for p in self.people.values()):
            rows.append(f"  {sanitize(self.config.username)} (you, host)")
        for peer in self.people.values():
            minutes, seconds = divmod(int(now - peer.since), 60)
            rows.append(
                f"  {sanitize(peer.name)}{' (host)' if peer.host else ''} at {peer.address}, "
                f"{minutes} min {seconds} s, {verified(peer)}"
            )
        if not self.names:
            rows.append(f"  {sanitize(self.config.username)} (you)")
        self.term.show("\n".join(rows))
        return False

    def _verified(self) -> Callable[[PeerInfo], str]:
        """The one rule for "verified", wherever it is shown: known_peers, read now (once
        for all the people shown), pins this identity under this name as verified (by
        /verify ok, or by an invite code). Says "verified" or "not verified"."""
        try:
            known = read_known_peers(self.known_path)
        except ConfigError:
            known = KnownPeers(self.known_path)

        def word(peer: PeerInfo) -> str:
            trust = known.recognize(peer.name, peer.identity).trust
            return "verified" if trust is Trust.VERIFIED else "not verified"

        return word

    def _is_verified(self, peer: PeerInfo) -> bool:
        return self._verified()(peer) == "verified"

    def completions(self, line: str) -> list[str]:
        """What Tab offers for `line`: command names, then after /msg or /verify a name."""
        command, space, rest = line.partition(" ")
        if not space:
            hidden = set() if self.hosting else {"invite"}  # the host's alone
            words = [f"/{word}" for word in COMMAND_INDEX if word not in hidden]
            return sorted(f"{word} " for word in words if word.startswith(line.lower()))
        if command.lower() in ("/msg", "/verify", "/send"):
            return [f"{command} {name} " for name in self.people if name.startswith(rest)]
        return []

    def named(self, argument: str) -> tuple[PeerInfo | None, str]:
        """The person whose name starts `argument` (names may hold spaces), and the rest."""
        for name in sorted(self.people, key=len, reverse=True):
            if argument == name or argument.startswith(name + " "):
                return self.people[name], argument[len(name) :].strip()
        return None, argument

    def verify(self, argument: str) -> bool:
        """/verify [NAME] [ok]: the safety number; with ok, record the person as verified.
        /verify room: the room's code, to compare with another member."""
        if argument.strip().lower() == "room" and "room" not in self.people:
            self._verify_room()
            return False
        peer, rest = self.named(argument)
        if peer is None and len(self.people) == 1 and rest.lower() in ("", "ok"):
            peer = next(iter(self.people.values()))
        if not self.people:
            self.term.error("Nobody is connected yet.")
        elif peer is None or rest.lower() not in ("", "ok"):
            names = ", ".join(sanitize(name) for name in self.people)
            self.term.error(f"try again: /verify NAME, or /verify NAME ok (in the chat: {names})")
        elif rest and self._is_verified(peer):
            self.term.show(f"{sanitize(peer.name)} is already verified in {self.known_path}.")
        elif rest:
            name, identity = peer.name, peer.identity
            try:
                update_known_peers(
                    self.known_path, lambda p: p.pin(name, identity, True, utc_now())
                )
            except ConfigError as exc:
                self.term.error(f"error: {exc}")
            else:
                self.term.show(
                    f"{sanitize(name)} is now verified in {self.known_path}: later chats say so."
                )
        else:
            shown = sanitize(peer.name)
            after = (
                f"{shown} is already verified (in {self.known_path}): nothing more to do."
                if self._is_verified(peer)
                else f"If they match, type /verify {shown} ok to remember them as verified."
            )
            self.term.show(
                f"Safety number with {shown}:\n"
                f"    {safety_number(self.identity, peer.identity)}\n"
                "Compare all 60 digits with theirs, by voice or side by side.\n"
                "The same 60 digits mean nobody is in the middle; a few matching prove nothing.\n"
                + after
            )
        return False

    def _verify_room(self) -> None:
        log = self.net.log if self.hosting and self.net is not None else self.log
        if log is None or not self.people:
            self.term.error("Nobody is connected yet.")
            return
        code, count = log.code()
        lines = "line" if count == 1 else "lines"
        self.term.show(
            f"Room code: {code} ({count} public {lines} so far).\n"
            "Compare it with another member, by voice or side by side, when nobody is typing:\n"
            "the same count and the same code mean you both saw the same public lines, in the "
            "same order, since the later of you joined. The same count with another code means "
            "the host showed you different things."
        )

    def invite(self, argument: str) -> bool:
        """/invite: a new one-time code for one more person (the host only)."""
        if not self.hosting or self.net is None:
            self.term.error(
                "only the host (the one who listens) can make invite codes: ask them to type "
                "/invite"
            )
            return False
        self._open_invite(self.net)
        return False

    def _open_invite(self, net: Network) -> None:
        slot = self.presence.free_slot() if self.presence is not None else None
        invite = Invite(new_invite_code(slot))
        net.offer(invite)
        self.invite_code = invite.code
        announced = self.presence is not None and self.presence.active
        if self.presence is not None:
            self.presence.announce(slot)
        show_invite(invite, self.config, self.term, self.program, announced)

    def _invite_closed(self) -> None:
        """The invite was used or is void: its slot leaves the announcement."""
        self.invite_code = None
        if self.presence is not None:
            self.presence.announce(None)

    def whisper(self, argument: str) -> bool:
        """/msg NAME text: words for one person only (through the host)."""
        peer, text = self.named(argument)
        if not argument:
            self.term.error("try again: /msg NAME text (/who lists the names)")
        elif peer is None:
            self.term.error(
                f"error: nobody named {sanitize(argument.split(' ')[0])} is in the chat "
                "(/who lists who is)"
            )
        elif not text:
            self.term.error(f"try again: /msg {sanitize(peer.name)} needs text")
        else:
            self._send(Chat(text), to=peer.name)
        return False

    def send_file(self, argument: str) -> bool:
        """/send [NAME] PATH: offer a file to everyone, or to one person."""
        if not FILES_WORK_HERE:
            self.term.error(f"error: {NO_FILES_HERE}")
            return False
        if self.net is None or not self.people:
            self.term.error("Nobody is connected yet.")
            return False
        if not argument:
            self.term.error("try again: /send PATH, or /send NAME PATH for one person")
            return False
        everyone = [(name, peer.host) for name, peer in self.people.items()]
        targets, paths = everyone, file_arguments(argument)
        peer, rest = self.named(argument)
        if peer is not None and rest and not all(map(os.path.lexists, paths)):
            targets, paths = [(peer.name, peer.host)], file_arguments(rest)
        if len(paths) > 1 or os.path.isdir(paths[0]):
            return self._send_bundle(paths, targets)
        path = paths[0]
        try:
            fd, size = open_for_sending(path)
        except ChatError as exc:
            self.term.error(f"error: {exc}: nothing offered")
            return False
        # The name as the peer will see it: undecodable bytes of a file name become U+FFFD.
        name = os.fsencode(os.path.basename(path)).decode("utf-8", "replace")
        try:  # the SHA-256 is taken as the file is sent: the offer leaves now
            stamp = file_stamp(fd)
            print_of = file_fingerprint(fd, size, stamp)
        except OSError as exc:
            os.close(fd)
            why = describe_os_error(exc)
            self.term.error(f"error: cannot read {sanitize(path)}: {why}: nothing offered")
            return False
        prepared = PreparedFile(path, name, fd, size, print_of, stamp)
        net = self.net
        net.post(lambda now: net.files.offer(prepared, targets, now))
        return False

    def _send_bundle(self, paths: list[str], targets: list[tuple[str, bool]]) -> bool:
        """/send DIR, or several files: one offer."""
        try:
            collected = collect(paths)
        except ChatError as exc:
            self.term.error(f"error: {exc}: nothing offered")
            return False
        skipped = [sanitize(line) for line in collected.skipped]
        if len(skipped) > 10:
            skipped[10:] = [f"... and {len(skipped) - 10:,} more skipped"]
        if skipped:
            self.term.show("\n".join(skipped))
        assert self.net is not None
        net = self.net
        net.post(lambda now: net.files.offer(collected, targets, now))
        return False

    def _to_desk(
        self,
        argument: str,
        command: str,
        run: Callable[[FileDesk, int | None, float], None],
        optional: bool = True,
    ) -> bool:
        """Hand the transfer number typed after a command (optional: the oldest offer) to
        the file desk."""
        if self.net is None:
            self.term.error("Nobody is connected yet.")
            return False
        number = None
        if argument or not optional:
            if not (argument.isascii() and argument.isdigit()):
                self.term.error(f"try again: {command} N (/files lists the numbers)")
                return False
            number = int(argument)
        files = self.net.files
        self.net.post(lambda now: run(files, number, now))
        return False

    def accept_file(self, argument: str) -> bool:
        """/accept [N]: take an offered file (the oldest waiting one without N)."""
        return self._to_desk(argument, "/accept", FileDesk.accept)

    def reject_file(self, argument: str) -> bool:
        """/reject [N]: decline an offered file."""
        return self._to_desk(argument, "/reject", FileDesk.reject)

    def cancel_file(self, argument: str) -> bool:
        """/cancel N: stop a transfer, either way; the other side is told."""
        return self._to_desk(argument, "/cancel", FileDesk.cancel, optional=False)

    def pause_file(self, argument: str) -> bool:
        """/pause N: stop a transfer, either way, keeping what arrived to resume later."""
        return self._to_desk(argument, "/pause", FileDesk.pause, optional=False)

    def list_files(self, argument: str) -> bool:
        """/files: the offers and transfers of this chat, with their state."""
        if self.net is None:
            self.term.error("Nobody is connected yet.")
        else:
            files = self.net.files
            self.net.post(lambda now: files.listing())
        return False

    def act(self, argument: str) -> bool:
        """/me: an action, shown to the peer as `* name text`."""
        if argument:
            self._send(Action(argument))
        else:
            self.term.error("try again: /me needs text, e.g. /me waves")
        return False

    def quit(self, argument: str) -> bool:
        """/quit and /exit: leave (any argument is ignored)."""
        return True


# --- Commands ----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A slash command: its name, aliases, one line of help, and what it does."""

    name: str
    aliases: tuple[str, ...]
    summary: str
    run: Callable[[Commands, str], bool]  # True: leave the chat


COMMANDS = (
    Command("help", ("?",), "this help", Commands.show_help),
    Command("who", (), "who you are talking to, from where, for how long", Commands.show_peer),
    Command(
        "verify",
        (),
        "the safety number to compare with your peer; /verify ok once it matches; "
        "/verify room: the room's code, to compare with another member",
        Commands.verify,
    ),
    Command("me", (), "an action: /me waves shows * yourname waves", Commands.act),
    Command(
        "msg",
        (),
        "words for one person only: /msg NAME text (NAME: the longest name in the chat that "
        "the line starts with)",
        Commands.whisper,
    ),
    Command(
        "send",
        (),
        "offer a file, a folder or several files to everyone (/send PATH ...) or to one "
        "person (/send NAME PATH ...)",
        Commands.send_file,
    ),
    Command("accept", (), "take an offered file: /accept N (or the oldest)", Commands.accept_file),
    Command("reject", (), "decline an offered file: /reject N", Commands.reject_file),
    Command(
        "pause",
        (),
        "stop a transfer, either way, keeping what arrived: offered again, it resumes there",
        Commands.pause_file,
    ),
    Command(
        "cancel",
        (),
        "stop a transfer, either way, and discard what arrived: /cancel N",
        Commands.cancel_file,
    ),
    Command("files", (), "the offers and transfers, with their numbers", Commands.list_files),
    Command("invite", (), "(host) a new one-time invite code for one more person", Commands.invite),
    Command("quit", ("exit",), "leave the chat (asks for optional goodbye text)", Commands.quit),
)
# Commands are case-insensitive: /QUIT and /Quit are /quit.
COMMAND_INDEX = {word: command for command in COMMANDS for word in (command.name, *command.aliases)}


def file_arguments(text: str) -> list[str]:
    """The paths /send means: one path as typed (spaces and all) when it exists, else
    each word (quoted as a shell would), a word with * ? or [ standing for what it matches."""
    whole = file_argument(text)
    if os.path.lexists(whole):
        return [whole]
    try:
        words = shlex.split(text)
    except ValueError:
        return [whole]
    paths: list[str] = []
    for word in map(os.path.expanduser, words):
        matches = sorted(glob.glob(word)) if any(ch in word for ch in "*?[") else []
        paths += matches or [word]
    return paths or [whole]


def file_argument(text: str) -> str:
    """A path as typed or dropped on the terminal: quoted, or with escaped spaces."""
    text = text.strip()
    if not os.path.lexists(os.path.expanduser(text)) and (
        "'" in text or '"' in text or "\\" in text
    ):
        with contextlib.suppress(ValueError):
            words = shlex.split(text)
            if len(words) == 1:
                text = words[0]
    return os.path.expanduser(text)


def help_text(width: int = 0) -> str:
    """/help, generated from the command table; with a `width`, each description wraps
    under itself (not under the commands)."""
    rows = [
        (" or ".join(f"/{word}" for word in (command.name, *command.aliases)), command.summary)
        for command in COMMANDS
    ]
    rows.append(("exit", "leave the chat, as /quit does"))
    rows.append(("//text", "send a line that starts with '/'"))
    column = max(len(usage) for usage, _ in rows) + 2
    room = width - column - 2
    lines = ["Type a line and press Enter to send it. Commands:"]
    for usage, summary in rows:
        parts = textwrap.wrap(summary, room) if room >= 24 else [summary]
        lines.append(f"  {usage:<{column}}{parts[0]}")
        lines += [" " * (column + 2) + part for part in parts[1:]]
    return "\n".join([*lines, "Ctrl-D or Ctrl-C also leave the chat."])

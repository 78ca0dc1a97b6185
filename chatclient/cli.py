"""The command line and main(): load config, choose listen or connect, handshake,
start the network thread, run the input loop, report how it ended.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .config import (
    DEAD_AFTER_INTERVALS,
    KEEPALIVE_SECONDS,
    KEY_FROM_INPUT,
    NO_KEY_GIVEN,
    Options,
    check_username,
    decode_key,
    dependency_error,
    generate_key,
    missing_dependencies,
    parse_port,
    program_name,
    shown_path,
)
from .errors import ChatError, ConfigError, NetworkError
from .firstrun import (
    ask_code,
    ask_mode,
    ask_target,
    contacts_line,
    downloads_folder,
    forget_peer,
    init_config,
    obtain_config,
    open_identity,
    show_invite,
    shown_address,
)
from .handshake import ROOM_ID_SIZE, VERSION, Role, derive_psk, key_id
from .identity import (
    KNOWN_PEERS_FILE,
    Invite,
    KnownPeers,
    beside,
    new_invite_code,
    parse_invite_code,
    read_known_peers,
)
from .sockets import connect_socket, format_host, listen_socket
from .terminal import Terminal, ensure_std_streams, write
from .text import sanitize

if TYPE_CHECKING:
    from .nearby import Presence


def parse_proxy(text: str) -> tuple[str, int]:
    """--proxy socks5://HOST:PORT (socks5h:// too: the proxy always resolves names)."""
    import argparse

    scheme, separator, rest = text.strip().partition("://")
    if not separator or scheme.lower() not in ("socks5", "socks5h"):
        raise argparse.ArgumentTypeError(
            f"use socks5://HOST:PORT (e.g. socks5://127.0.0.1:9050), not {text!r}"
        )
    host, port = parse_target(rest.rstrip("/"))
    if port is None:
        raise argparse.ArgumentTypeError(f"the proxy needs a port, e.g. socks5://{host}:1080")
    return host, port


# --- main ----------------------------------------------------------------------


# The -h examples: what each does, then the command (its arguments after the program).
EXAMPLES = (
    ("ask whether to listen or connect", ""),
    ("wait for your peer", "--listen"),
    ("wait for someone you share no key with", "--invite"),
    (
        "join with the invite code your peer read out",
        "--connect 192.168.1.112:50233 --code 7-gazelle-microwave",
    ),
    ("join a contact, or with a shared key", "--connect 192.168.1.112:50233"),
    ("IPv6 addresses go in brackets", "--connect [::1]:50233"),
    ("through Tor or ssh -D", "--connect peer.example:50233 --proxy socks5://127.0.0.1:9050"),
    ("write the config without questions", "--init --username laptop --port 50233"),
    ("save your peer's key (it asks for it)", "--init --key - --username laptop"),
    ("print a new key", "--genkey"),
    ("after laptop really made a new identity", "--forget laptop"),
)


def shell_lines(command: str, width: int) -> list[str]:
    """`command` as shell lines of at most `width` columns where its words allow, each but
    the last ending in a backslash, so the whole still pastes as one command."""
    lines: list[str] = []
    line = "  "
    for word in command.split(" "):
        if line.strip() and len(line) + 1 + len(word) + 2 > width:
            lines.append(line + " \\")
            line = "      "
        line += word if not line.strip() else " " + word
    return [*lines, line]


def examples(program: str) -> str:
    """The -h epilog, naming the command as it was run, within 80 columns."""
    lines = ["examples:"]
    for what, arguments in EXAMPLES:
        lines.append(f"  # {what}")
        lines += shell_lines(f"{program} {arguments}".rstrip(), 80)
    return "\n".join(lines)


# argparse would indent its own usage past 80 columns after a long program name.
USAGE = "%(prog)s\n         [--listen | --invite | --connect HOST:PORT [--code CODE]] [OPTIONS]"
DESCRIPTION = """\
Peer-to-peer, end-to-end encrypted chat for the terminal. One person listens,
the other connects: with a one-time invite code the first time, as contacts
(known by their identity keys) after that, or with a fernet_key both share."""


def parse_target(text: str) -> tuple[str, int | None]:
    """HOST:PORT, [IPv6]:PORT or a bare HOST (the port then comes from config.ini)."""
    import argparse

    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"write IPv6 as [::1]:50233, not {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise argparse.ArgumentTypeError(f"write IPv6 addresses in brackets, like [{text}]:50233")
    else:
        host, colon, port_text_part = text.partition(":")
        port_text = port_text_part if colon else None
    if not host:
        raise argparse.ArgumentTypeError(f"no host in {text!r}: use HOST:PORT")
    if port_text is None:
        return host, None
    try:
        return host, parse_port(port_text, "the port")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def flag_type(check: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a checker: its ConfigError becomes the flag's error (exit 2)."""

    def convert(text: str) -> object:
        import argparse

        try:
            return check(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def keepalive_argument(text: str) -> float:
    """--keepalive: seconds above 0, at most an hour."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # also refuses nan and inf
        raise ConfigError(f"must be a number of seconds above 0 and at most 3600, not {text!r}")
    return seconds


def reconnect_argument(text: str) -> float:
    """--reconnect-for: a duration (90, 90s, 10m, 1h); 0 turns resuming off."""
    from .text import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def max_members_argument(text: str) -> int:
    """--max-members: 1 to 255 people besides the host."""
    if not (text.strip().isascii() and text.strip().isdigit()) or not 1 <= int(text) <= 255:
        raise ConfigError(f"must be a number from 1 to 255, not {text!r}")
    return int(text)


def key_argument(text: str, program: str) -> str:
    """--key: '-' (read it from input) or a valid key."""
    if not text.strip():
        raise ConfigError(NO_KEY_GIVEN)
    if text.strip() != KEY_FROM_INPUT:
        decode_key(text, "the key given", program=program)
    return text.strip()


def parse_args(argv: list[str] | None, program: str) -> Options:
    """The command line; with no flags the prompts ask what flags would answer.

    `program` is the command as it was run, for the usage and every later hint.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return Options(program)
    import argparse  # here, not at the top: a run with no flags never needs it

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"error: {message}{self.suggestion(message)} (see {program} -h)\n")

        def suggestion(self, message: str) -> str:
            """`; did you mean --connect?` for a mistyped option, or nothing."""
            prefix = "unrecognized arguments: "
            if not message.startswith(prefix):
                return ""
            import difflib

            known = [o for action in self._actions for o in action.option_strings]
            for word in message[len(prefix) :].split():
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and (close := difflib.get_close_matches(flag, known, 1)):
                    return f"; did you mean {close[0]}?"
            return ""

    parser = Parser(
        prog=program,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=examples(program),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--config",
        metavar="PATH",
        help="settings file (default: ./config.ini, else the per-user one)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--listen", action="store_true", help="wait for a peer (skips the question)")
    mode.add_argument(
        "--invite",
        action="store_true",
        help="listen with a one-time invite code for someone you have no key with",
    )
    mode.add_argument(
        "--connect",
        type=parse_target,
        metavar="HOST:PORT",
        help="connect to a listening peer, e.g. 192.168.1.112:50233 or [::1]:50233, or to a "
        "contact on the LAN by name (--connect desktop)",
    )
    mode.add_argument(
        "--list",
        action="store_true",
        dest="list_listeners",
        help="list the listeners on the LAN (about 2 s) and exit",
    )
    add(
        "--code",
        type=flag_type(parse_invite_code),
        metavar="CODE",
        help="the invite code the listener showed you, e.g. 7-gazelle-microwave: alone, it "
        "finds the listener on the LAN; with --connect HOST:PORT, it goes there",
    )
    add(
        "--no-announce",
        action="store_true",
        help="no LAN discovery: a listener is not announced, and the address prompt shows "
        "nobody found (config.ini: announce = no)",
    )
    add(
        "--max-members",
        type=flag_type(max_members_argument),
        metavar="N",
        help="when listening: how many people may join the chat, not counting you (default 20)",
    )
    add(
        "--downloads",
        metavar="DIR",
        help="save received files here (config.ini: downloads; default: your download "
        "folder, else chatclient/downloads in your data folder)",
    )
    add(
        "--forget",
        metavar="NAME",
        help="remove NAME's pinned identity from known_peers (after it really changed)",
    )
    add(
        "--proxy",
        type=parse_proxy,
        metavar="socks5://HOST:PORT",
        help="with --connect: go through a SOCKS5 proxy (ssh -D, Tor), which resolves the name",
    )
    add(
        "--username",
        type=flag_type(check_username),
        metavar="NAME",
        help="name your peer sees (overrides config.ini)",
    )
    add(
        "--port",
        type=flag_type(parse_port),  # argparse names the flag, so the message does not
        metavar="N",
        help="port to listen on (overrides config.ini)",
    )
    add("--init", action="store_true", help="create config.ini with a new key, asking nothing")
    add(
        "--key",
        type=flag_type(partial(key_argument, program=program)),
        metavar="-",
        help="with --init: save the key your peer gave you instead of a new one; "
        "'-' reads it from standard input (hidden on a terminal), so it never shows in "
        "your shell history or in `ps`",
    )
    add("--genkey", action="store_true", help="print a new key and exit")
    add(
        "--keepalive",
        type=flag_type(keepalive_argument),
        metavar="SECONDS",
        help=f"idle seconds between keepalives; a peer silent {DEAD_AFTER_INTERVALS:g}x this long "
        f"is reported lost (default {KEEPALIVE_SECONDS:g})",
    )
    add(
        "--reconnect-for",
        type=flag_type(reconnect_argument),
        metavar="DURATION",
        help="after a lost connection, how long the connector tries to resume the same chat "
        "and the host keeps the place (90, 90s, 10m; 0: never; default 10m)",
    )
    add(
        "--timestamps",
        action=argparse.BooleanOptionalAction,
        help="show [14:03] before incoming lines (config.ini: timestamps = yes)",
    )
    add(
        "--bell",
        action=argparse.BooleanOptionalAction,
        help="ring the terminal bell for each incoming message (config.ini: bell = yes)",
    )
    add(
        "-V",
        "--version",
        action="version",
        version=f"chatclient {__version__} (protocol {VERSION})",
    )
    args = parser.parse_args(argv, namespace=Options(program))
    if args.key is not None and not args.init:
        parser.error("--key only goes with --init")
    if args.proxy is not None and args.connect is None:
        parser.error("--proxy only goes with --connect")
    if args.code is not None and (args.listen or args.invite or args.list_listeners):
        parser.error("--code is for the one who connects: leave out --listen and --invite")
    chatting = args.listen or args.connect or args.invite or args.code or args.list_listeners
    if args.init and (chatting or args.genkey):
        parser.error("--init only writes the config: run again without it to chat")
    if args.genkey and chatting:
        parser.error("--genkey only prints a key: run again without it to chat")
    if args.forget is not None and (chatting or args.init or args.genkey):
        parser.error("--forget only edits known_peers: run again without it to chat")
    if args.forget is not None and not args.forget.strip():
        parser.error("--forget needs the name of a peer in known_peers")
    return args


def find_target(
    args: Options, known: KnownPeers, term: Terminal, on_lan: bool
) -> tuple[str, int | None]:
    """Where to connect: --connect HOST:PORT, a contact found on the LAN by name, the
    listener announcing --code's slot, or what is typed at the seed's prompts."""
    # The LAN (nearby, discovery, lan) loads only when it is used: start-up does not pay.
    from .nearby import find_by_code, find_contact, show_nearby

    if args.connect is not None:
        host, port = args.connect
        if port is None and (entry := known.named(host)) is not None:
            return find_contact(entry, term, args.program)
        if port is None and "." not in host and host != "localhost":
            raise NetworkError(
                f"{sanitize(host)} is not one of your contacts: for someone new, run "
                f"`{args.program} --code CODE` with the invite code they show you, or "
                f"`{args.program} --connect HOST:PORT`"
            )
        return args.connect
    if args.code is not None:
        return find_by_code(args.code, term, args.program)
    return ask_target(term, show_nearby(term, known) if on_lan else None)


def main(argv: list[str] | None = None) -> int:
    """Load config, listen or connect, handshake, chat, report how it ended."""
    ensure_std_streams()
    program = program_name(sys.argv[0], sys.executable, os.getcwd(), os.environ.get("PATH", ""))
    args = parse_args(argv, program)  # -h and -V work even without the dependencies
    if missing := missing_dependencies():
        script = shown_path(sys.argv[0], os.getcwd())
        if os.path.basename(script) == "__main__.py":  # python -m chatclient
            script = "-m chatclient"
        write(sys.stderr, dependency_error(missing, sys.executable, script) + "\n")
        return 1
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    term = Terminal(sys.stdin, sys.stdout, sys.stderr)
    presence: Presence | None = None  # a listener's announcement on the LAN
    try:
        if args.genkey:
            term.show(generate_key())
            return 0
        if args.init:
            init_config(args, term)
            return 0
        if args.forget is not None:
            forget_peer(args, term)
            return 0
        config, just_created = obtain_config(args, term)
        identity = open_identity(config, term)
        known = read_known_peers(beside(config.path, KNOWN_PEERS_FILE))  # damaged: stop here
        if args.list_listeners:
            from .nearby import list_listeners

            return list_listeners(term, known)
        psk = derive_psk(config.key) if config.key is not None else None
        if args.connect is None and args.code is None:  # a connector listens nowhere
            term.show(f"Your IP and port are: {shown_address(config)}")
        if psk is not None:
            term.show(
                f"Key ID: {key_id(psk)} (your peer must see the same ID, or your keys differ)"
            )
        listening = (
            args.listen
            or args.invite
            or (not args.connect and not args.code and (just_created or ask_mode(term) == "listen"))
        )
        on_lan = config.announce and not args.no_announce
        target = None if listening else find_target(args, known, term, on_lan)
        # An invite opens when asked, or when nobody could get in without one. Its number
        # is the slot announced on the LAN: one no other listener there holds.
        if listening and on_lan:
            from .nearby import Presence

            identity_key = identity.public_key().public_bytes_raw()
            presence = Presence.start(config.ip, config.port, identity_key, term.error)
        wanted = args.invite or (psk is None and not known.peers)
        slot = presence.free_slot() if presence is not None else None
        invite = Invite(new_invite_code(slot)) if listening and wanted else None
        code = None if listening else args.code or ask_code(term, psk, known)
        # The chat itself (the network thread, files, the room) loads only now: start-up
        # to the first prompt does not pay for it.
        from .chat import Conversation, PeerEnded
        from .disk import FINISH_WRITING_SECONDS
        from .network import Network
        from .trust import ended_room_check, identity_judge

        room = os.urandom(ROOM_ID_SIZE)
        downloads = downloads_folder(config, args.downloads)
        destination = None
        dial_to = (target[0], target[1] or config.port) if target is not None else ("", 0)
        if target is not None:
            destination = f"{format_host(target[0])}:{target[1] or config.port}"
            if args.proxy is not None:
                destination += f" through the proxy at {format_host(args.proxy[0])}:{args.proxy[1]}"
        conversation = Conversation(
            term,
            config,
            identity,
            room,
            program=program,
            destination=destination,
            presence=presence,
        )
        network = Network(
            psk,
            config.username,
            conversation,
            identity=identity,
            judge=identity_judge(
                config.path, Role.LISTENER if listening else Role.CONNECTOR, program
            ),
            code=code,
            invite=invite,
            room=room,
            room_check=ended_room_check(config.path),
            capacity=args.max_members,
            keepalive=args.keepalive,
            reconnect_for=config.reconnect_for
            if args.reconnect_for is None
            else args.reconnect_for,
            dial=None if target is None else partial(connect_socket, *dial_to, proxy=args.proxy),
            files_user=conversation,
            downloads=downloads,
            plain_progress=not term.draws_status,
        )
        if target is None:
            source = "--port" if args.port is not None else config.path
            network.listen(listen_socket(config.ip, config.port, source, config.path))
            if presence is not None:
                presence.announce(slot if invite else None)
            if invite is not None:
                show_invite(invite, config, term, program, presence is not None and presence.active)
            elif psk is None:
                term.show(contacts_line(known.peers))
            term.show(
                f"Listening on {format_host(config.ip)}:{config.port}; "
                "waiting for your peer (Ctrl-C to stop)."
            )
        else:
            host, port = target[0], target[1] or config.port
            network.connect(connect_socket(host, port, proxy=args.proxy))
        network.start()
        try:
            conversation.wait_until_started(listening, network)
            return conversation.run(network)
        except PeerEnded:  # the network's interrupt landed as run() returned
            return conversation.status()
        finally:
            network.stop()
            network.files.finish_writing(FINISH_WRITING_SECONDS)
            term.flush()  # lines the network thread queued last
    except ChatError as exc:
        term.error(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        term.newline()
        return 130
    except EOFError:
        term.newline()
        return 1
    except UnicodeDecodeError:
        term.error("error: what was typed is not valid UTF-8 text: check the terminal's encoding")
        return 1
    finally:
        if presence is not None:  # the announcement goes when the listener does
            presence.close()

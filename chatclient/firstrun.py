"""The first-run questions that fill in a Config, --init, --forget, and the other
questions asked before a chat starts (listen or connect, the peer, the invite code).
"""

from __future__ import annotations

import base64
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from .config import (
    KEY_FROM_INPUT,
    NO_KEY_GIVEN,
    Config,
    Options,
    check_username,
    choose_config_path,
    complete,
    decode_key,
    default_downloads,
    field_line,
    generate_key,
    is_console_script,
    login_name,
    parse_port,
    permission_warning,
    read_config,
    read_secret,
    write_config,
)
from .errors import ChatError, ConfigError, ConfigMissing, NetworkError, describe_os_error
from .handshake import derive_psk, key_id
from .identity import (
    IDENTITY_FILE,
    KNOWN_PEERS_FILE,
    MAX_INVITE_FAILURES,
    Invite,
    KnownPeer,
    KnownPeers,
    beside,
    fingerprint,
    load_identity,
    parse_invite_code,
    read_known_peers,
    update_known_peers,
)
from .sockets import format_host, is_wildcard, lan_address, listen_socket
from .terminal import Terminal, Whole
from .text import sanitize

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


# --- First run: questions that fill in a Config ------------------------------------


def ask_until_valid(
    term: Terminal, prompt: str, default: str, check: Callable[[str], object]
) -> str:
    """Ask with a default until `check` accepts the answer."""
    while True:
        answer = term.ask(f"{prompt} [{default}]: ").strip() or default
        try:
            check(answer)
        except ChatError as exc:
            term.error(f"try again: {exc}")
            continue
        return answer


def first_run(config: Config, args: Options, term: Terminal) -> Config:
    """The questions a first run asks on a terminal; every answer has a default.

    With --connect only the name is asked: where to listen is for a later --listen,
    and the defaults stay in config.ini to change.
    """
    username = args.username or config.username or login_name()
    if not args.username:
        username = ask_until_valid(
            term, "Your username", username, lambda v: check_username(v, "username")
        )
    port, ip = config.port, config.ip
    while not args.connect:
        if not args.port:
            port = int(
                ask_until_valid(
                    term, "Port to listen on", str(port), lambda v: parse_port(v, "port")
                )
            )
        ip = ask_until_valid(
            term, "Address to listen on (0.0.0.0 = all interfaces)", ip, lambda v: v
        )
        if (problem := listen_problem(ip, port)) is None:
            break
        if args.port:
            raise NetworkError(problem)
        term.error(f"try again: {problem}")
        port = free_port_near(ip, port)  # offered as the next default, not the busy one
    return replace(config, username=check_username(username, "username"), port=port, ip=ip)


def listen_problem(ip: str, port: int) -> str | None:
    """Why listening on ip:port would fail now, or None if it would work."""
    try:
        listen_socket(ip, port, source="").close()
    except NetworkError as exc:
        return str(exc)
    return None


def free_port_near(ip: str, port: int) -> int:
    """The first port after `port` that can be listened on (or `port` if none of 20)."""
    for candidate in range(port + 1, min(port + 21, 65536)):
        if listen_problem(ip, candidate) is None:
            return candidate
    return port


def key_from_input(term: Terminal, program: str) -> bytes:
    """`--key -`: the key from a hidden prompt, or one line of standard input."""
    try:
        pasted = read_secret(
            "Paste the key your peer gave you (it is not shown): ", term.stdin, term.interactive
        )
    except EOFError:
        raise ConfigError(
            "--key -: no key on standard input: pipe it in "
            f"(e.g. `pass show chat-key | {program} --init --key -`), "
            "or run this on a terminal and paste it when asked"
        ) from None
    if not pasted.strip():
        raise ConfigError(f"--key -: {NO_KEY_GIVEN}")
    return decode_key(pasted, "--key -", program=program)


def save_new_config(config: Config, term: Terminal, make_key: bool, program: str) -> Config:
    """Write the config (with a new key if asked); say where, and what to hand over."""
    generated = make_key and config.key is None
    if generated:
        config = replace(config, key=base64.urlsafe_b64decode(generate_key()))
    write_config(config)
    term.show(f"Saved {config.path} (readable only by you).")
    if generated:
        term.show(
            "Your new key is below. Give it to your peer privately (in person, or through a\n"
            "password manager), never by plain e-mail or in a chat: anyone who has it can\n"
            f"join and read your chats.\n    {config.fernet_key}\nYour peer saves it with:\n"
            f"    {program} --init --key - --username THEIR_NAME\n"
            "(it asks for the key, which stays off the screen and out of the shell history)\n"
            "and connects with:\n"
            f"    {program} --connect {shown_address(config)}"
        )
    return config


def obtain_config(args: Options, term: Terminal) -> tuple[Config, bool]:
    """The config for this chat: read, flags laid over it, or on a terminal created."""
    path = choose_config_path(args.config, is_console_script(args.program))
    try:
        config = read_config(path, args.program)
    except ConfigMissing:
        if not term.interactive:
            raise
        here = "here " if not os.path.dirname(path) else ""
        term.show(f"No {path} {here}yet: let's create one (Ctrl-C to cancel).")
        config, fresh = Config(path=path), True
    else:
        fresh = not config.username
        if fresh and term.interactive:
            term.show(f"{path} is not filled in yet: let's do it (Ctrl-C to cancel).")
        elif config.key is not None and (warning := permission_warning(path)) is not None:
            term.error(warning)
    config = apply_flags(config, args)
    if fresh and term.interactive:
        config = first_run(config, args, term)
        return save_new_config(config, term, make_key=False, program=args.program), True
    return complete(config), False


def apply_flags(config: Config, args: Options) -> Config:
    """The flags laid over the file's values (they were checked when parsed)."""
    changes: dict[str, object] = {}
    if args.username is not None:
        changes["username"] = args.username
    if args.port is not None:
        changes["port"] = args.port
    if args.timestamps is not None:
        changes["timestamps"] = args.timestamps
    if args.bell is not None:
        changes["bell"] = args.bell
    if args.downloads is not None:
        changes["downloads"] = args.downloads
    return replace(config, **changes)  # type: ignore[arg-type]


def init_config(args: Options, term: Terminal) -> None:
    """--init: create the config without questions, never overwriting a key."""
    path = choose_config_path(args.config, is_console_script(args.program))
    config = Config(path=path)
    if os.path.exists(path):
        config = read_config(path, args.program)
        if config.key is not None:
            where = f" (line {line})" if (line := field_line(path, "fernet_key")) else ""
            raise ConfigError(
                f"{path} already has a fernet_key{where}: to replace it, delete that line "
                "(or the whole file) first, or choose another file with --config"
            )
    config = apply_flags(config, args)
    if args.key == KEY_FROM_INPUT:
        config = replace(config, key=key_from_input(term, args.program))
    elif args.key is not None:
        config = replace(config, key=decode_key(args.key, "--key", program=args.program))
    config = replace(config, username=config.username or login_name())
    config = save_new_config(config, term, make_key=True, program=args.program)
    assert config.key is not None
    term.show(
        f"Key ID: {key_id(derive_psk(config.key))} (your peer must see the same ID, "
        "or your keys differ)"
    )
    open_identity(config, term)


def downloads_folder(config: Config, flag: str | None) -> str:
    """Where received files go: --downloads, config.ini's downloads, else the desktop's
    download folder, else chatclient's own (see default_downloads).

    Checked at start: a folder that is missing or not writable is an error now,
    not when the first file arrives.
    """
    where = "--downloads" if flag is not None else f"{config.path}: downloads"
    if config.downloads:
        folder = os.path.abspath(os.path.expanduser(config.downloads))
    else:
        folder, ours = default_downloads()
        if ours:
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create {folder} for received files: {describe_os_error(exc)} "
                    "(choose a folder with --downloads DIR)"
                ) from exc
        where = "the downloads folder"
    if not os.path.isdir(folder):
        raise ConfigError(
            f"{where}: {folder} is not a folder: create it (mkdir -p {shlex.quote(folder)}) or "
            "choose another"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {folder} is not writable by you: choose another folder")
    return folder


def open_identity(config: Config, term: Terminal) -> Ed25519PrivateKey:
    """This user's identity, beside config.ini (made on first use); shown by fingerprint."""
    path = beside(config.path, IDENTITY_FILE)
    identity, created = load_identity(path)
    if created:
        term.show(f"Created your identity in {path} (readable only by you; never share it).")
    elif (warning := permission_warning(path, "your private identity")) is not None:
        term.error(warning)  # as ssh does for a private key: said, then used
    term.show(f"Your identity: {fingerprint(identity.public_key().public_bytes_raw())}")
    return identity


def forget_peer(args: Options, term: Terminal) -> None:
    """--forget NAME: drop a peer's pinned identity from known_peers."""
    assert args.forget is not None
    name = args.forget.strip()
    path = beside(
        choose_config_path(args.config, is_console_script(args.program)), KNOWN_PEERS_FILE
    )
    entry = read_known_peers(path).named(name)
    update_known_peers(path, lambda peers: peers.forget(name))
    assert entry is not None  # forget() found it
    term.show(
        f"Forgot {sanitize(name)} (identity {fingerprint(entry.key)}): removed from {path}. "
        "A connection under that name is a first contact again."
    )


def ask_code(term: Terminal, psk: bytes | None, known: KnownPeers) -> str | None:
    """The invite code to connect with: asked only with no key and no contacts yet.

    An empty answer connects as a contact, which a listener that does not know
    this identity refuses with a line saying to ask for a code.
    """
    if psk is not None or known.peers:
        return None
    while True:
        try:
            answer = term.ask("Enter invite code: ")
        except EOFError:
            raise ConfigError(
                "no invite code (end of input): add --code CODE, the code your peer's "
                "chatclient shows"
            ) from None
        if not answer.strip():
            return None
        try:
            return parse_invite_code(answer)
        except ConfigError as exc:
            if not term.interactive:
                raise
            term.error(f"try again: {exc}")


def show_invite(
    invite: Invite, config: Config, term: Terminal, program: str, announced: bool = False
) -> None:
    """The invite code, and the command the peer runs with it: on a LAN where this listener
    is announced, the code alone; the address form always, for networks without multicast."""
    term.show(f"Invite code: {invite.code}")
    by_address = f"{program} --connect {shown_address(config)} --code {invite.code}"
    tell = (
        f"Tell it to your peer (it works once, and is void after {MAX_INVITE_FAILURES} wrong "
        "tries), who runs:"
    )
    if announced:
        term.show(tell)
        term.show(Whole(f"    {program} --code {invite.code}"))
        term.show("or, where the network blocks multicast (guest Wi-Fi, a VPN):")
        term.show(Whole(f"    {by_address}"))
        return
    term.show(tell)
    term.show(Whole(f"    {by_address}"))


def ask_mode(term: Terminal) -> str:
    """Ask listen or connect until the answer is one of them."""
    while True:
        answer = term.ask("Do you want to listen or connect? (listen/connect): ").strip().lower()
        if answer in ("listen", "l"):
            return "listen"
        if answer in ("connect", "c"):
            return "connect"
        term.error(
            "try again: type listen (or l) to wait for a peer, or connect (or c) to reach one"
        )


def ask_target(term: Terminal, nearby: dict[str, tuple[str, int]] | None = None) -> tuple[str, int]:
    """Ask the peer's address and port; the name of a contact found on the LAN (`nearby`)
    may be typed in place of the address."""
    while not (host := term.ask("Enter peer IP: ").strip().strip("[]")):
        term.error("try again: type the IP address (or host name) of your peer")
    if nearby and host in nearby:
        return nearby[host]
    while True:
        try:
            return host, parse_port(term.ask("Enter peer port: "), "peer port")
        except ConfigError as exc:
            term.error(f"try again: {exc}")


def contacts_line(peers: Sequence[KnownPeer]) -> str:
    """What a listener with contacts and no invite says: who can come, and how someone new
    can."""
    names = ", ".join(sanitize(peer.name) for peer in peers[:3])
    if len(peers) > 3:
        names += f" and {len(peers) - 3} more"
    return (
        f"Your contacts ({names}) can connect now. For someone new, type /invite for a "
        "one-time code (or start with --invite)."
    )


def shown_address(config: Config) -> str:
    """ip:port as a peer should type it (a LAN address instead of a wildcard)."""
    host = lan_address() if is_wildcard(config.ip) else config.ip
    return f"{format_host(host)}:{config.port}"

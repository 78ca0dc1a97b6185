#!/usr/bin/env python3
"""chatclient: a peer-to-peer, end-to-end encrypted chat for the terminal.

One person listens, the other connects. A short handshake (X25519 + HKDF, keyed
by a shared Fernet key, by a one-time invite code through SPAKE2, or by nothing
between contacts) gives every session fresh keys per direction, and each side
signs the transcript with its long-term Ed25519 identity, pinned on first
contact. Every message is a Fernet token that carries a sequence number. See
README.md for the protocol.

The file reads top to bottom in the order data flows: configuration, keys and
handshake, frames and messages, one connection's state machine (all pure: no
sockets, no threads, no clock of their own), the listener's admission rules,
then the one network thread, the terminal, the commands and main().
"""

from __future__ import annotations

import argparse
import base64
import configparser
import contextlib
import ctypes
import getpass
import hashlib
import hmac
import importlib
import importlib.util
import os
import queue
import re
import select
import selectors
import shlex
import signal
import socket
import stat
import struct
import sys
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, IntEnum
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, ClassVar, NamedTuple, NoReturn, Protocol, TextIO

# cryptography's Fernet and X25519 are imported where first used: each costs 5 to
# 7 ms of start-up (measured), and nothing before the first prompt needs them.
# readline is imported only on a terminal, where alone its escape sequences belong.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

__version__ = "2.1.0"

DEFAULT_PORT = 50233
HANDSHAKE_SECONDS = 10.0
MAX_PENDING_HANDSHAKES = 16
MAX_HANDSHAKES_PER_ADDRESS = 2
LISTEN_BACKLOG = 128
KEEPALIVE_SECONDS = 10.0
# A peer is declared lost after this many keepalive intervals of silence.
DEAD_AFTER_INTERVALS = 2.5
GOODBYE_DRAIN_SECONDS = 2.0
REFUSAL_SUMMARY_SECONDS = 10.0
# What may wait unsent for one peer; a peer that lets more pile up is not reading.
MAX_OUTGOING = 4 * 1024 * 1024
# Above this much unsent, the network thread takes no more messages from this side
# until the peer has read some, and a sender waits once this many are queued.
HIGH_WATER = 1024 * 1024
MAX_QUEUED_COMMANDS = 4096
SETTLE_ROUNDS = 4  # rounds of writing per pass while links queue for one another
# Lines waiting for a screen that does not take them; more are counted, not kept.
MAX_WAITING_LINES = 100_000
# Queued like a line, to ring the terminal bell after the lines before it.
BELL = "\a"


class StatusText(str):
    """Queued like a line: the new text of the status row above the prompt ('' clears it)."""


# An invite code is void after this many wrong tries.
MAX_INVITE_FAILURES = 3


# --- Errors ----------------------------------------------------------------


class ChatError(Exception):
    """Something went wrong that a person can act on; the message says how."""


class ConfigError(ChatError):
    """config.ini is missing, unreadable or holds a bad value."""


class ConfigMissing(ConfigError):
    """There is no config file yet (a first run on a terminal creates one)."""


class NetworkError(ChatError):
    """Listening or connecting failed before any chat began."""


class HandshakeError(ChatError):
    """The secure handshake with a peer failed."""


class KeyMismatch(HandshakeError):
    """The peer's fernet_key differs from ours (or someone tampered)."""


class ProtocolError(ChatError):
    """The peer sent bytes that break the protocol; the session must end."""


class ConnectionLost(ChatError):
    """An established chat ended without a goodbye."""


class MessageTooLong(ChatError):
    """A message typed here is larger than the protocol allows."""


# --- Configuration -------------------------------------------------------------
#
# One Config value: read from the file, flags laid over it (dataclasses.replace),
# the file rendered from it. The first-run questions, further down, only fill
# one in.

CONFIG_SECTION = "parameters"
REQUIRED_FIELDS = ("ip", "port", "fernet_key", "username")
MAX_NAME_BYTES = 64
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}=")
# Keys printed in the original example config and in earlier READMEs: public, so refused.
PUBLIC_KEYS = frozenset({"DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0="})
# What `--key -` means: read the key from standard input, never from the command line.
KEY_FROM_INPUT = "-"
# Every package the program needs beyond the standard library, with the oldest
# version that has what it uses (X25519 public_bytes_raw), checked before anything.
DEPENDENCIES = {"cryptography": (41,), "spake2": (0, 9)}
# Importing spake2 loads its group arithmetic (22 ms of start-up, measured): only its
# presence is checked; pip installs a new enough one from pyproject.toml.
PRESENCE_ONLY = frozenset({"spake2"})
# The command as the person ran it, for every hint the program prints; main() sets it.
PROGRAM = "python chatclient.py"


@dataclass(frozen=True)
class Config:
    """config.ini as one value: its file, its fields (validated), and the optional ones."""

    path: str
    ip: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    key: bytes | None = None  # the 32 raw bytes of fernet_key; None until one is made
    username: str = ""
    timestamps: bool = False
    bell: bool = False
    downloads: str = ""  # where received files go; "" means the default (downloads_folder)

    @property
    def fernet_key(self) -> str:
        """The key as config.ini holds it (empty when there is none yet)."""
        return base64.urlsafe_b64encode(self.key).decode("ascii") if self.key else ""


def missing_dependencies() -> list[str]:
    """What this Python lacks of DEPENDENCIES: 'name>=version', with what it has if older."""
    missing = []
    for name, oldest in DEPENDENCIES.items():
        wanted = f"{name}>={'.'.join(map(str, oldest))}"
        if importlib.util.find_spec(name) is None:
            missing.append(wanted)
            continue
        if name in PRESENCE_ONLY:
            continue
        version = str(getattr(importlib.import_module(name), "__version__", "0"))
        if version_numbers(version) < oldest:
            missing.append(f"{wanted} (it has {version})")
    return missing


def version_numbers(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: '41.0.1rc1' -> (41, 0, 1)."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits[0]))
    return tuple(numbers)


def dependency_error(missing: list[str], executable: str, script: str) -> str:
    """One line: what is missing, and the commands that fix it."""
    needs = ", ".join(missing)
    specs = " ".join(f"'{item.split(' ')[0]}'" for item in missing)
    return (
        f"error: chatclient needs {needs}; this Python ({executable}) does not have it: "
        f"install it with `{executable} -m pip install {specs}`, or (where the system "
        "refuses that) in a virtual environment, as README does: "
        f"`python3 -m venv .venv && .venv/bin/pip install {specs}`, "
        f"then run `.venv/bin/python {script}`"
    )


def program_name(argv0: str, executable: str, cwd: str, search_path: str) -> str:
    """The command the person ran, as a hint should repeat it.

    `python chatclient.py` names its Python (by path if it lives below the
    current folder, as .venv/bin/python does); the `chatclient` console script
    is its bare name when PATH finds it, else its path.
    """
    if os.path.basename(argv0).endswith(".py"):
        return f"{command_path(executable, cwd, search_path)} {shown_path(argv0, cwd)}"
    return command_path(argv0, cwd, search_path)


def command_path(path: str, cwd: str, search_path: str) -> str:
    """A program as it can be typed: its bare name if PATH finds that very file, else a path."""
    name = os.path.basename(path)
    for folder in search_path.split(os.pathsep):
        with contextlib.suppress(OSError):
            if folder and os.path.samefile(os.path.join(folder, name), path):
                return name
    return shown_path(path, cwd)


def shown_path(path: str, cwd: str) -> str:
    """A path relative to the current folder when it lies below it, else as given."""
    absolute = os.path.abspath(path)
    if absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, cwd)
    return os.path.normpath(path)


def user_config_path() -> str:
    """The per-user config.ini: XDG on Linux, Application Support on macOS, APPDATA on Windows."""
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".config")
    return os.path.join(base, "chatclient", "config.ini")


def choose_config_path(explicit: str | None, console_script: bool) -> str:
    """Which config.ini to use: --config, then ./config.ini, then the per-user one.

    With none of them there yet, a first run creates ./config.ini (the original
    script's place), except that the console script run outside a checkout
    creates the per-user one, so every folder shares one key.
    """
    if explicit is not None:
        return explicit
    user = user_config_path()
    if os.path.exists("config.ini"):
        return "config.ini"
    if os.path.exists(user):
        return user
    if console_script and not os.path.exists("chatclient.py"):
        return user
    return "config.ini"


def config_flag(path: str) -> str:
    """` --config PATH` when the path is not the one found without it, else ''."""
    found = choose_config_path(None, not PROGRAM.endswith(".py"))
    return "" if os.path.abspath(path) == os.path.abspath(found) else f" --config {path}"


def generate_key() -> str:
    """A fresh random key in the urlsafe base64 form config.ini holds."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def decode_key(text: str, where: str = "config.ini") -> bytes:
    """Decode fernet_key strictly: canonical urlsafe base64 of exactly 32 secret bytes."""
    text = text.strip()
    if not text:
        raise ConfigError(
            f"{where}: fernet_key is empty: create one with "
            f"`{PROGRAM} --init{config_flag(where)}` (or paste the key your peer gave you)"
        )
    if not _KEY_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{where}: fernet_key is not a valid key (it must be 44 characters of "
            f"urlsafe base64 ending in '='): make one with `{PROGRAM} --genkey`"
        )
    raw = base64.urlsafe_b64decode(text)
    if base64.urlsafe_b64encode(raw).decode("ascii") != text:
        raise ConfigError(
            f"{where}: fernet_key is not canonical base64 (its last character before "
            "'=' is off): copy the key exactly as it was generated"
        )
    if text in PUBLIC_KEYS:
        raise ConfigError(
            f"{where}: fernet_key is a published example key that anyone can read: "
            f"make your own with `{PROGRAM} --genkey`"
        )
    if raw == raw[:1] * len(raw):
        raise ConfigError(
            f"{where}: fernet_key is 32 identical bytes, which anyone could guess: "
            f"make a random one with `{PROGRAM} --genkey`"
        )
    return raw


def read_secret(prompt: str, stdin: TextIO, interactive: bool) -> str:
    """One line holding a secret: a hidden prompt on a terminal, else a line of stdin."""
    if interactive:
        return getpass.getpass(prompt)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.strip()


def parse_port(text: str, what: str = "") -> int:
    """A TCP port from 1 to 65535, or a ConfigError naming `what` (if given)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        prefix = f"{what} " if what else ""
        raise ConfigError(f"{prefix}must be a number from 1 to 65535, not {text!r}")
    return int(text)


def check_username(name: str, where: str = "") -> str:
    """A username that fits the protocol and prints safely; `where` prefixes errors."""
    name = name.strip()
    if (problem := name_problem(name)) is not None:
        prefix = f"{where}: " if where else ""
        hint = ": set a name your peer will see" if not name else ""
        raise ConfigError(f"{prefix}username {problem}{hint}")
    return name


def name_problem(name: str) -> str | None:
    """What makes `name` unfit for a username, or None: the rule for our own name, a
    peer's, and each name in known_peers (a '#' would read as a comment there)."""
    if not name:
        return "is empty"
    if name != name.strip():
        return "must not start or end with a space"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if sanitize(name) != name:
        return "must not contain control characters"
    if name.startswith("#"):
        return "must not start with '#'"
    return None


_SWITCHES = {"yes": True, "on": True, "true": True, "1": True}
_SWITCHES.update({"no": False, "off": False, "false": False, "0": False, "": False})


def parse_switch(text: str, where: str) -> bool:
    """An optional yes/no field."""
    value = _SWITCHES.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"{where} must be yes or no, not {text.strip()!r}")
    return value


def read_config(path: str) -> Config:
    """config.ini as a Config; an empty key or username is left for the caller to fill."""
    fields = read_fields(path)
    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise ConfigError(
                f"{path}: missing field '{name}' in [{CONFIG_SECTION}]: "
                "see the example config.ini in README.md"
            )
    ip = fields["ip"].strip().strip("[]")
    if not ip:
        raise ConfigError(f"{path}: ip is empty: use 0.0.0.0 to listen on all interfaces")
    key_text = fields["fernet_key"].strip()
    return Config(
        path=path,
        ip=ip,
        port=parse_port(fields["port"], f"{path}: port"),
        key=decode_key(key_text, path) if key_text else None,
        username=check_username(fields["username"], path) if fields["username"].strip() else "",
        timestamps=parse_switch(fields.get("timestamps", ""), f"{path}: timestamps"),
        bell=parse_switch(fields.get("bell", ""), f"{path}: bell"),
        downloads=fields.get("downloads", "").strip(),
    )


def read_fields(path: str) -> dict[str, str]:
    """The raw [parameters] fields of an INI file (strings, possibly empty)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except FileNotFoundError:
        raise ConfigMissing(
            f"{path} not found: create it with `{PROGRAM} --init{config_flag(path)}` "
            "(or copy the example config.ini and set fernet_key)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {describe_os_error(exc)}") from exc
    except configparser.Error as exc:
        raise ConfigError(describe_ini_error(path, exc)) from exc
    if not parser.has_section(CONFIG_SECTION):
        raise ConfigError(
            f"{path}: missing the [{CONFIG_SECTION}] section: "
            "see the example config.ini in README.md"
        )
    return dict(parser.items(CONFIG_SECTION))


def describe_ini_error(path: str, exc: configparser.Error) -> str:
    """configparser's complaint in one line, naming the line it concerns."""
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{path} line {exc.lineno}: {exc.option} appears twice: keep one"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{path} line {exc.lineno}: [{exc.section}] appears twice: keep one"
    invalid = f"{path} is not a valid INI file"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{invalid}: line {exc.lineno}: text before the [{CONFIG_SECTION}] header"
    errors = getattr(exc, "errors", None)
    if errors:
        lineno, line = errors[0]
        return f"{invalid}: line {lineno}: {line} is not of the form name = value"
    return f"{invalid}: {str(exc).splitlines()[0]}"


def field_line(path: str, name: str) -> int | None:
    """The line number of `name = ...` in an INI file, for messages that point at it."""
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.split("=", 1)[0].strip().lower() == name:
                return number
    return None


def complete(config: Config) -> Config:
    """The config, once it has what a chat needs: a username (a key is optional)."""
    check_username(config.username, config.path)
    return config


def permission_warning(path: str) -> str | None:
    """A warning when a config file holding a key is readable by others."""
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"warning: {path} holds your secret key and is readable by other users: "
            f"run `chmod 600 {path}`"
        )
    return None


def render_config(config: Config) -> str:
    """The text of a config.ini file."""
    return (
        "# chatclient configuration. Keep this file secret: fernet_key lets anyone\n"
        "# who has it read and join your chats.\n"
        f"[{CONFIG_SECTION}]\n"
        "# Address to listen on; 0.0.0.0 (or ::) means all interfaces.\n"
        f"ip = {config.ip}\n"
        f"port = {config.port}\n"
        "# Optional: a key both people share (chatclient.py --genkey makes one).\n"
        "# Left empty, you chat by invite codes and, after that, as contacts.\n"
        f"fernet_key = {config.fernet_key}\n"
        f"username = {config.username}\n"
        "# Optional: [14:03] before incoming lines, and the terminal bell for each.\n"
        f"timestamps = {'yes' if config.timestamps else 'no'}\n"
        f"bell = {'yes' if config.bell else 'no'}\n"
        "# Optional: where received files are saved (empty: ~/Downloads if it exists,\n"
        "# else the folder you start the chat in).\n"
        f"downloads = {config.downloads}\n"
    )


def write_config(config: Config) -> None:
    """Write config.ini readable and writable by its owner only (its folder too, if new)."""
    path = config.path
    try:
        if folder := os.path.dirname(path):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # an existing file loses its wider mode before the key lands
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(render_config(config))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {describe_os_error(exc)}") from exc


def login_name() -> str:
    """The user's login name as a safe default username."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = ""
    name = "".join(ch for ch in name if ch.isprintable() and not ch.isspace())
    return name[:32] or "me"


# --- Keys and handshake (pure) ---------------------------------------------
#
# M1  connector -> listener : MAGIC, VERSION, MODE, SHA-256(connector public key) [, SPAKE2 A]
# M2  listener -> connector : MAGIC, VERSION, listener public key [, SPAKE2 B]
# M3  connector -> listener : connector public key, HMAC(confirm, "connector" || th)
# th  = SHA-256(M1 || M2 || connector public key)
# okm = HKDF(X25519 secret, salt=PSK, info="chatclient/2 keys" || th)
# PSK, by MODE: 1 HKDF(fernet_key); 2 HKDF(SPAKE2 key from the invite code, A and B
# present only then); 3 a public constant: between contacts, the identities that
# sign the WELCOMEs are what authenticates.

MAGIC = b"CCHT"
VERSION = 2
HELLO_SIZE = len(MAGIC) + 1 + 32  # M2 without SPAKE2's message
SPAKE_SIZE = 33
CONFIRM_SIZE = 32 + 32
REJECT_SIZE = len(MAGIC) + 2
# Hello frames of other versions may differ in size; none may exceed this.
MAX_HELLO_SIZE = 256
PSK_INFO = b"chatclient/2 psk"
INVITE_INFO = b"chatclient/2 invite"
CONTACT_INFO = b"chatclient/2 contacts"
KEYS_INFO = b"chatclient/2 keys"
FILES_INFO = b"chatclient/2 files"
CONFIRM_LABEL = b"connector"
WELCOME_LABEL = b"chatclient/2 welcome from the "
SPAKE_IDS = {"idA": b"chatclient connector", "idB": b"chatclient listener"}
WORDS_LABEL = b"chatclient/2 words\0"
ROOM_ID_SIZE = 16
OKM_SIZE = 32 + 32 + 32


class Mode(IntEnum):
    """How a connector proves it may join: M1's MODE byte."""

    SHARED_KEY = 1
    INVITE = 2
    CONTACT = 3


class Reject(IntEnum):
    """Why a listener refuses a connection, sent as a small plaintext frame."""

    KEY_MISMATCH = 1
    BAD_VERSION = 2
    BUSY = 3
    NO_SHARED_KEY = 4  # a fernet_key tried on a listener that has none
    NO_INVITE = 5  # an invite code tried where none is open (none made, used or void)


class Rejected(HandshakeError):
    """A handshake error the listener tells the connector about, with its reason."""

    def __init__(self, reason: Reject, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def derive_psk(key: bytes) -> bytes:
    """The pre-shared key: the config key is never used raw."""
    return hkdf_sha256(key, None, PSK_INFO, 32)


def contact_psk() -> bytes:
    """Mode 3's PSK: public, so only the signed identities authenticate."""
    return hkdf_sha256(b"", None, CONTACT_INFO, 32)


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand.

    Written with hmac rather than taken from cryptography: importing that
    package's KDF costs about 5 ms of start-up, for a few lines of code that
    the known-answer test checks against the RFC and against cryptography.
    """
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def key_id(psk: bytes) -> str:
    """A short fingerprint of the PSK so two people can compare configs."""
    digest = hashlib.sha256(psk).hexdigest()
    return f"{digest[:4]}-{digest[4:8]}"


def generate_private_key() -> X25519PrivateKey:
    """A fresh ephemeral X25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate()


def public_bytes(private_key: X25519PrivateKey) -> bytes:
    """The raw 32-byte X25519 public key."""
    return private_key.public_key().public_bytes_raw()


def reject_frame(reason: Reject) -> bytes:
    """The plaintext body telling a connector why it was refused."""
    return MAGIC + bytes([VERSION, reason])


def parse_reject(body: bytes) -> HandshakeError | None:
    """The error a rejection frame stands for, or None if it is not one."""
    if len(body) != REJECT_SIZE or not body.startswith(MAGIC):
        return None
    version, reason = body[len(MAGIC)], body[len(MAGIC) + 1]
    if version != VERSION:
        return HandshakeError(version_mismatch(version))
    if reason == Reject.BAD_VERSION:
        return HandshakeError(f"the peer does not support protocol version {VERSION}")
    if reason == Reject.KEY_MISMATCH:
        return KeyMismatch(UNAUTHENTICATED_TEXT)
    if reason == Reject.BUSY:
        return HandshakeError(
            "the peer is already chatting with someone (two people per chat for now)"
        )
    if reason == Reject.NO_SHARED_KEY:
        return HandshakeError(
            "the peer has no fernet_key (it uses invite codes): ask it for one and add "
            "--code CODE, or empty fernet_key in your config.ini if you are its contact"
        )
    if reason == Reject.NO_INVITE:
        return HandshakeError(
            "the peer has no open invite (it was used, or void after "
            f"{MAX_INVITE_FAILURES} wrong tries): ask for a new code"
        )
    return HandshakeError(f"the peer refused the connection (reason {reason})")


KEY_MISMATCH_TEXT = (
    "the peer's fernet_key differs from yours (or the connection was tampered "
    "with): compare the Key IDs both of you see at start-up"
)
# A rejection is plaintext that anyone on the path can forge, and a WELCOME that
# does not decrypt may be tampering too: the connector cannot tell which.
UNAUTHENTICATED_TEXT = (
    "could not authenticate the peer: your fernet_keys differ, "
    "or someone tampered with the connection"
)
WRONG_CODE_TEXT = (
    "the invite code is wrong (or someone tampered with the connection): check it "
    f"with the person who gave it; a code allows {MAX_INVITE_FAILURES} tries"
)


def version_mismatch(version: int) -> str:
    """The message for a peer speaking another protocol version."""
    return (
        f"the peer speaks chatclient protocol version {version}, this program speaks "
        f"version {VERSION}: both people need the same chatclient.py"
    )


def parse_hello(body: bytes) -> bytes:
    """What follows magic and version in a hello (M1 or M2), after checking both."""
    if not body.startswith(MAGIC) or len(body) <= len(MAGIC):
        raise ProtocolError("the peer is not speaking the chatclient protocol")
    version = body[len(MAGIC)]
    if version != VERSION:
        raise Rejected(Reject.BAD_VERSION, version_mismatch(version))
    return body[len(MAGIC) + 1 :]


def check_size(what: str, data: bytes, size: int) -> bytes:
    """`data` if it is exactly `size` bytes, else ProtocolError."""
    if len(data) != size:
        raise ProtocolError(f"{what} of {len(data)} bytes, expected {size}")
    return data


def check_peer_key(raw: bytes) -> X25519PublicKey:
    """The peer's X25519 key; all-zero keys are refused."""
    if raw == bytes(32):
        raise HandshakeError("the peer sent an all-zero key: refusing it")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)


def shared_secret(private_key: X25519PrivateKey, peer: X25519PublicKey) -> bytes:
    """X25519 shared secret; low-order peer keys (all-zero result) are refused."""
    try:
        secret = private_key.exchange(peer)
    except ValueError as exc:
        raise HandshakeError("the peer sent a low-order key: refusing it") from exc
    if secret == bytes(32):
        raise HandshakeError("the peer sent a low-order key: refusing it")
    return secret


def start_spake(code: str, side: Role) -> tuple[object, bytes]:
    """SPAKE2 for an invite code: this side's state and its message."""
    from spake2 import SPAKE2_A, SPAKE2_B  # type: ignore[import-untyped]

    spake = (SPAKE2_A if side is Role.CONNECTOR else SPAKE2_B)(code.encode(), **SPAKE_IDS)
    return spake, spake.start()


def finish_spake(spake: object, message: bytes) -> bytes:
    """The session's PSK from the peer's SPAKE2 message (the same on both sides only
    when both typed the same code)."""
    try:
        key = spake.finish(check_size("SPAKE2 message", message, SPAKE_SIZE))  # type: ignore[attr-defined]
    except ProtocolError:
        raise
    except Exception as exc:  # spake2 raises its own errors and ValueError for bad points
        raise HandshakeError(f"the peer's SPAKE2 message is invalid ({exc})") from exc
    return hkdf_sha256(key, None, INVITE_INFO, 32)


@dataclass(frozen=True)
class SessionKeys:
    """What a successful handshake yields, from the view of one side."""

    send_key: bytes
    recv_key: bytes
    transcript: bytes = field(repr=False)  # th: what each WELCOME signature covers
    file_send_key: bytes = field(repr=False)  # AES-256-GCM for file chunks we send
    file_recv_key: bytes = field(repr=False)
    direction: int = 0  # of what we send: 0 connector->listener, 1 listener->connector


def derive_keys(secret: bytes, psk: bytes, th: bytes) -> tuple[bytes, bytes, bytes]:
    """okm split into: connector->listener, listener->connector, confirm."""
    okm = hkdf_sha256(secret, psk, KEYS_INFO + th, OKM_SIZE)
    return okm[0:32], okm[32:64], okm[64:96]


def derive_file_keys(secret: bytes, psk: bytes, th: bytes) -> tuple[bytes, bytes]:
    """The AES-256-GCM keys of file chunks: connector->listener, listener->connector.

    A label of their own, so no key ever serves both Fernet and AES-GCM.
    """
    okm = hkdf_sha256(secret, psk, FILES_INFO + th, 64)
    return okm[0:32], okm[32:64]


def confirm_tag(confirm_key: bytes, th: bytes) -> bytes:
    """The connector's proof that it holds the PSK and saw this transcript."""
    return hmac.new(confirm_key, CONFIRM_LABEL + th, hashlib.sha256).digest()


def welcome_signed_data(sender: Role, th: bytes, name: str, room: bytes) -> bytes:
    """What a WELCOME's signature covers: the sender's role, the transcript, room, name.

    The role stops a signature being reflected to its sender, the transcript
    stops it being replayed into another session.
    """
    role = sender.value.encode("ascii")
    return WELCOME_LABEL + role + b"\0" + th + room + name.encode("utf-8")


def verify_signature(identity: bytes, signature: bytes, data: bytes) -> None:
    """HandshakeError unless `signature` is `identity`'s Ed25519 signature of `data`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(signature, data)
    except (InvalidSignature, ValueError) as exc:
        raise HandshakeError(
            "the peer's WELCOME is not signed by the identity it announces (tampering, "
            "or a message replayed from another session): connection refused"
        ) from exc


class ConnectorHandshake:
    """The connector's side of the handshake: commit, then reveal and confirm.

    With an invite `code` it runs SPAKE2 in M1 and M2; with neither code nor
    PSK it connects as a contact.
    """

    def __init__(
        self,
        psk: bytes | None,
        private_key: X25519PrivateKey | None = None,
        *,
        code: str | None = None,
    ) -> None:
        self.mode = Mode.INVITE if code else Mode.SHARED_KEY if psk else Mode.CONTACT
        self._psk = psk or contact_psk()
        self._private = private_key or generate_private_key()
        self._public = public_bytes(self._private)
        self._spake: object | None = None
        spake_message = b""
        if code:
            self._spake, spake_message = start_spake(code, Role.CONNECTOR)
        commitment = hashlib.sha256(self._public).digest()
        self.m1 = MAGIC + bytes([VERSION, self.mode]) + commitment + spake_message

    def respond(self, m2: bytes) -> tuple[bytes, SessionKeys]:
        """Take the listener's hello; return M3 and this side's session keys."""
        size = 32 + (SPAKE_SIZE if self._spake is not None else 0)
        body = check_size("hello", parse_hello(m2), size)
        psk = self._psk if self._spake is None else finish_spake(self._spake, body[32:])
        secret = shared_secret(self._private, check_peer_key(body[:32]))
        th = hashlib.sha256(self.m1 + m2 + self._public).digest()
        c2l, l2c, confirm = derive_keys(secret, psk, th)
        file_c2l, file_l2c = derive_file_keys(secret, psk, th)
        m3 = self._public + confirm_tag(confirm, th)
        return m3, SessionKeys(c2l, l2c, th, file_c2l, file_l2c, direction=0)


class ListenerHandshake:
    """The listener's side: take the commitment, answer, then verify the reveal."""

    def __init__(
        self,
        psk: bytes | None,
        private_key: X25519PrivateKey | None = None,
        *,
        invite: Invite | None = None,
    ) -> None:
        self._shared_psk = psk
        self._psk = b""
        self._invite = invite
        self._private = private_key or generate_private_key()
        self._m1 = b""
        self.mode = Mode.SHARED_KEY
        self.m2 = MAGIC + bytes([VERSION]) + public_bytes(self._private)

    def receive_commit(self, m1: bytes) -> bytes:
        """Take M1 (the connector's commitment); return M2."""
        body = parse_hello(m1)
        if not body or body[0] not in {mode.value for mode in Mode}:
            raise ProtocolError("the peer's hello names no known way to connect")
        self.mode = Mode(body[0])
        size = 1 + 32 + (SPAKE_SIZE if self.mode is Mode.INVITE else 0)
        check_size("hello", body, size)
        if self.mode is Mode.SHARED_KEY:
            if self._shared_psk is None:
                raise Rejected(
                    Reject.NO_SHARED_KEY,
                    "it tried a fernet_key, and this side has none (it uses invite codes)",
                )
            self._psk = self._shared_psk
        elif self.mode is Mode.CONTACT:
            self._psk = contact_psk()
        else:
            self._psk = self._take_invite(body[33:])
        self._m1 = m1
        return self.m2

    def _take_invite(self, spake_message: bytes) -> bytes:
        if self._invite is None or not self._invite.open:
            raise Rejected(Reject.NO_INVITE, "it tried an invite code, and none is open")
        spake, answer = start_spake(self._invite.code, Role.LISTENER)
        psk = finish_spake(spake, spake_message)
        self.m2 += answer
        return psk

    def receive_confirm(self, m3: bytes) -> SessionKeys:
        """Check M3 against the commitment and the PSK; return session keys."""
        connector_public, tag = check_size("confirmation", m3, CONFIRM_SIZE)[:32], m3[32:]
        commitment = self._m1[len(MAGIC) + 2 : len(MAGIC) + 34]
        if not hmac.compare_digest(hashlib.sha256(connector_public).digest(), commitment):
            raise HandshakeError("the peer's key does not match its commitment (tampering)")
        secret = shared_secret(self._private, check_peer_key(connector_public))
        th = hashlib.sha256(self._m1 + self.m2 + connector_public).digest()
        c2l, l2c, confirm = derive_keys(secret, self._psk, th)
        matched = hmac.compare_digest(confirm_tag(confirm, th), tag)
        if self.mode is Mode.INVITE:
            self._check_invite(matched)
        if not matched:
            raise KeyMismatch(KEY_MISMATCH_TEXT)
        file_c2l, file_l2c = derive_file_keys(secret, self._psk, th)
        return SessionKeys(l2c, c2l, th, file_l2c, file_c2l, direction=1)

    def _check_invite(self, matched: bool) -> None:
        """Spend one guess on the invite. Only here does a guesser learn anything, and
        the one network thread takes M3s one at a time, so no more than
        MAX_INVITE_FAILURES are ever answered, however many run at once."""
        invite = self._invite
        assert invite is not None
        if not invite.open:  # used or void while this handshake ran: no answer
            raise Rejected(Reject.NO_INVITE, "it tried an invite code, and none is open now")
        invite.tried(matched)
        if not matched:
            left = MAX_INVITE_FAILURES - invite.failures
            raise KeyMismatch(
                f"it gave a wrong invite code ({left} of {MAX_INVITE_FAILURES} tries left)"
            )


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
# The PGP word list (public domain): even words for the first word, odd for the
# second, so a swapped or dropped word is noticed before it costs a try.
EVEN_WORDS = tuple(
    (
        "aardvark absurd accrue acme adrift adult afflict ahead aimless algol allow alone ammo "
        "ancient apple artist assume athens atlas aztec baboon backfield backward banjo beaming "
        "bedlamp beehive beeswax befriend belfast berserk billiard bison blackjack blockade "
        "blowtorch bluebird bombast bookshelf brackish breadline breakup brickyard briefcase "
        "burbank button buzzard cement chairlift chatter checkup chisel choking chopper "
        "christmas clamshell classic classroom cleanup clockwork cobra commence concert cowbell "
        "crackdown cranky crowfoot crucial crumpled crusade cubic dashboard deadbolt deckhand "
        "dogsled dragnet drainage dreadful drifter dropper drumbeat drunken dupont dwelling "
        "eating edict egghead eightball endorse endow enlist erase escape exceed eyeglass "
        "eyetooth facial fallout flagpole flatfoot flytrap fracture framework freedom frighten "
        "gazelle geiger glitter glucose goggles goldfish gremlin guidance hamlet highchair "
        "hockey indoors indulge inverse involve island jawbone keyboard kickoff kiwi klaxon "
        "locale lockup merit minnow miser mohawk mural music necklace neptune newborn nightbird "
        "oakland obtuse offload optic orca payday peachy pheasant physique playhouse pluto "
        "preclude prefer preshrunk printer prowler pupil puppy python quadrant quiver quota "
        "ragtime ratchet rebirth reform regain reindeer rematch repay retouch revenge reward "
        "rhythm ribcage ringbolt robust rocker ruffled sailboat sawdust scallion scenic "
        "scorecard scotland seabird select sentence shadow shamrock showgirl skullcap skydive "
        "slingshot slowdown snapline snapshot snowcap snowslide solo southward soybean spaniel "
        "spearhead spellbind spheroid spigot spindle spyglass stagehand stagnate stairway "
        "standard stapler steamship sterling stockman stopwatch stormy sugar surmount suspense "
        "sweatband swelter tactics talon tapeworm tempest tiger tissue tonic topmost tracker "
        "transit trauma treadmill trojan trouble tumor tunnel tycoon uncut unearth unwind "
        "uproot upset upshot vapor village virus vulcan waffle wallet watchword wayside willow "
        "woodlark zulu "
    ).split()
)
ODD_WORDS = tuple(
    (
        "adroitness adviser aftermath aggregate alkali almighty amulet amusement antenna "
        "applicant apollo armistice article asteroid atlantic atmosphere autopsy babylon "
        "backwater barbecue belowground bifocals bodyguard bookseller borderline bottomless "
        "bradbury bravado brazilian breakaway burlington businessman butterfat camelot "
        "candidate cannonball capricorn caravan caretaker celebrate cellulose certify "
        "chambermaid cherokee chicago clergyman coherence combustion commando company component "
        "concurrent confidence conformist congregate consensus consulting corporate corrosion "
        "councilman crossover crucifix cumbersome customer dakota decadence december decimal "
        "designing detector detergent determine dictator dinosaur direction disable disbelief "
        "disruptive distortion document embezzle enchanting enrollment enterprise equation "
        "equipment escapade eskimo everyday examine existence exodus fascinate filament finicky "
        "forever fortitude frequency gadgetry galveston getaway glossary gossamer graduate "
        "gravity guitarist hamburger hamilton handiwork hazardous headwaters hemisphere "
        "hesitate hideaway holiness hurricane hydraulic impartial impetus inception indigo "
        "inertia infancy inferno informant insincere insurgent integrate intention inventive "
        "istanbul jamaica jupiter leprosy letterhead liberty maritime matchmaker maverick "
        "medusa megaton microscope microwave midsummer millionaire miracle misnomer molasses "
        "molecule montana monument mosquito narrative nebula newsletter norwegian october ohio "
        "onlooker opulent orlando outfielder pacific pandemic pandora paperweight paragon "
        "paragraph paramount passenger pedigree pegasus penetrate perceptive performance "
        "pharmacy phonetic photograph pioneer pocketful politeness positive potato processor "
        "provincial proximate puberty publisher pyramid quantity racketeer rebellion recipe "
        "recover repellent replica reproduce resistor responsive retraction retrieval "
        "retrospect revenue revival revolver sandalwood sardonic saturday savagery scavenger "
        "sensation sociable souvenir specialist speculate stethoscope stupendous supportive "
        "surrender suspicious sympathy tambourine telephone therapist tobacco tolerance "
        "tomorrow torpedo tradition travesty trombonist truncated typewriter ultimate undaunted "
        "underfoot unicorn unify universe unravel upcoming vacancy vagabond vertigo virginia "
        "visitor vocalist voyager warranty waterloo whimsical wichita wilmington wyoming "
        "yesteryear yucatan "
    ).split()
)
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
            "# delete its line or run: chatclient.py --forget NAME\n"
        )
        return head + "".join(peer.render() + "\n" for peer in self.peers)

    def named(self, name: str) -> KnownPeer | None:
        """The entry under `name`, if any."""
        return next((peer for peer in self.peers if peer.name == name), None)

    def recognize(self, name: str, key: bytes) -> Recognition:
        """How the identity `key`, offered under `name`, compares with what is pinned."""
        pinned = self.named(name)
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


def new_invite_code() -> str:
    """A one-time code: a number and two words, e.g. 7-gazelle-microwave."""
    number = 1 + int.from_bytes(os.urandom(4), "big") % 99
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


def utc_now() -> str:
    """The time, as known_peers records first contact."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- Frames, fields and messages (pure) --------------------------------------

FRAME_HEADER = struct.Struct("!I")
MAX_FRAME = 128 * 1024
MAX_TEXT = 64 * 1024
PAYLOAD_HEADER = struct.Struct("!QB")


def encode_frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian length, then the body."""
    return FRAME_HEADER.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies, refusing oversized frames early.

    Frames are taken from a read offset, and the buffer is compacted only when
    the stream is fed: a 64 KiB read holding hundreds of frames costs no
    memmove per frame.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self, limit: int = MAX_FRAME) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive.

        A length above `limit` raises ProtocolError before the body is read.
        """
        start = self._start
        if len(self._buffer) - start < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buffer, start)
        if length > limit:
            raise ProtocolError(f"the peer announced a {length}-byte frame; the limit is {limit}")
        end = start + FRAME_HEADER.size + length
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:  # one copy, where slicing makes two
            body = bytes(view[start + FRAME_HEADER.size : end])
        self._start = end
        return body

    def frames(self, limit: int = MAX_FRAME) -> Iterator[bytes]:
        """Every complete frame buffered so far."""
        while (body := self.next_frame(limit)) is not None:
            yield body

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer) - self._start


# The field codec: messages with several fields write each as a fixed-width
# integer or a length-prefixed byte string; a single text field, or the last
# one, may take the rest of the body. Reading is strict: every length is
# checked against its limit before the bytes are taken, and nothing may be
# left over.
FIELD_LENGTH = struct.Struct("!I")


def int_field(value: int, size: int) -> bytes:
    """A fixed-width big-endian unsigned integer."""
    return value.to_bytes(size, "big")


def bytes_field(data: bytes) -> bytes:
    """A length-prefixed byte string (4-byte big-endian length)."""
    return FIELD_LENGTH.pack(len(data)) + data


def encode_text(text: str, limit: int, what: str) -> bytes:
    """UTF-8 bytes of text, or MessageTooLong/ChatError naming what is wrong."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatError(f"the {what} is not valid text (undecodable input): not sent") from exc
    if len(data) > limit:
        raise MessageTooLong(
            f"the {what} is {len(data)} bytes; the limit is {limit} bytes "
            f"({limit // 1024} KiB): split it and send it in parts"
        )
    return data


def decode_text(data: bytes, limit: int, what: str) -> str:
    """Strict UTF-8 decoding of a peer's text."""
    if len(data) > limit:
        raise ProtocolError(f"the peer's {what} is {len(data)} bytes, over the {limit} limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the peer's {what} is not valid UTF-8") from exc


class FieldReader:
    """Reads a message body field by field; any violation is a ProtocolError."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what.upper()  # the message's name, as errors show it

    def integer(self, size: int, name: str) -> int:
        """A fixed-width big-endian unsigned integer."""
        return int.from_bytes(self._take(size, name), "big")

    def blob(self, limit: int, name: str) -> bytes:
        """A length-prefixed byte string of at most `limit` bytes."""
        length = FIELD_LENGTH.unpack(self._take(FIELD_LENGTH.size, name))[0]
        if length > limit:
            raise ProtocolError(
                f"the peer's {self._what} has a {length}-byte {name}, over the {limit} limit"
            )
        return self._take(length, name)

    def fixed(self, size: int, name: str) -> bytes:
        """Exactly `size` bytes."""
        return self._take(size, name)

    def text(self, limit: int, name: str) -> str:
        """A length-prefixed UTF-8 string of at most `limit` bytes."""
        return decode_text(self.blob(limit, name), limit, name)

    def rest_text(self, limit: int, name: str) -> str:
        """The rest of the body as UTF-8 text."""
        data = self._data[self._offset :]
        self._offset = len(self._data)
        return decode_text(data, limit, name)

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self._offset

    def end(self) -> None:
        """Nothing may follow the last field."""
        if self._offset != len(self._data):
            extra = len(self._data) - self._offset
            raise ProtocolError(f"the peer's {self._what} has {extra} unexpected bytes at its end")

    def _take(self, size: int, name: str) -> bytes:
        if len(self._data) - self._offset < size:
            raise ProtocolError(f"the peer's {self._what} is cut short in its {name}")
        data = self._data[self._offset : self._offset + size]
        self._offset += size
        return data


class Phase(Enum):
    """Where one direction of a session stands."""

    AWAIT_WELCOME = "before its welcome"
    OPEN = "during the chat"
    CLOSED = "after its goodbye"


# Every message class registers itself here under its wire tag.
MESSAGES: dict[int, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    """Base of everything that travels inside an encrypted frame.

    A subclass names its wire TAG, the phase it may be sent in (AFTER) and the
    phase it leads to (LEADS_TO), and encodes and decodes its own body; defining
    it is all it takes to add a message type.
    """

    TAG: ClassVar[int] = 0
    AFTER: ClassVar[Phase] = Phase.OPEN
    ALSO_AFTER: ClassVar[tuple[Phase, ...]] = ()  # further phases it may be sent in
    LEADS_TO: ClassVar[Phase] = Phase.OPEN

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TAG == 0 and "TAG" in cls.__dict__:
            return  # a base for messages that share a body, not one itself
        if cls.TAG in MESSAGES or not 0 < cls.TAG < 256:
            raise TypeError(f"{cls.__name__}: wire tag {cls.TAG} is taken or out of range")
        MESSAGES[cls.TAG] = cls

    @classmethod
    def kind(cls) -> str:
        """The message's name as errors show it, e.g. CHAT."""
        return cls.__name__.upper()

    def encode_body(self) -> bytes:
        """The message's bytes after the payload header."""
        return b""

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        """The message from its body; ProtocolError if the body is not exactly right."""
        body.end()
        return cls()


@dataclass(frozen=True)
class Welcome(Message):
    """The first message each side sends: who it is, signed by its identity key."""

    TAG: ClassVar[int] = 1
    AFTER: ClassVar[Phase] = Phase.AWAIT_WELCOME
    name: str
    identity: bytes = bytes(32)  # Ed25519 public key
    signature: bytes = bytes(64)  # over welcome_signed_data(sender's role, th, room, name)
    room: bytes = bytes(ROOM_ID_SIZE)  # the host's room, which members' words are signed for

    def encode_body(self) -> bytes:
        check_size("identity key", self.identity, 32)
        check_size("signature", self.signature, 64)
        check_size("room", self.room, ROOM_ID_SIZE)
        name = encode_text(self.name, MAX_NAME_BYTES, "username")
        return self.identity + self.signature + self.room + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        identity = body.fixed(32, "identity key")
        signature = body.fixed(64, "signature")
        room = body.fixed(ROOM_ID_SIZE, "room")
        return cls(peer_name(body), identity, signature, room)


@dataclass(frozen=True)
class Chat(Message):
    """A line of text typed by a person."""

    TAG: ClassVar[int] = 2
    text: str

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "message")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "message"))


@dataclass(frozen=True)
class Terminate(Message):
    """The last message of a side that leaves, with optional goodbye text."""

    TAG: ClassVar[int] = 3
    LEADS_TO: ClassVar[Phase] = Phase.CLOSED
    text: str = ""

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "goodbye text")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "goodbye text"))


@dataclass(frozen=True)
class Keepalive(Message):
    """Sent on an idle link so a vanished peer is noticed."""

    TAG: ClassVar[int] = 4

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        if body.remaining:
            raise ProtocolError("the peer sent a keepalive with a body")
        return cls()


@dataclass(frozen=True)
class Action(Message):
    """An action in the third person (`/me waves`), shown as `* laptop waves`."""

    TAG: ClassVar[int] = 5
    text: str

    def encode_body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "action")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(body.rest_text(MAX_TEXT, "action"))


@dataclass(frozen=True)
class Ready(Message):
    """The connector accepts the listener's identity: the chat starts on both sides."""

    TAG: ClassVar[int] = 6


class Refuse(IntEnum):
    """Why a side refuses the other's identity (a REFUSAL's reason)."""

    IDENTITY_CHANGED = 1  # a different identity is pinned under the sender's name
    NOT_A_CONTACT = 2  # no key, no code, and an identity the listener does not know
    UNKNOWN_LISTENER = 3  # a connector expected a contact and met a stranger
    NAME_TAKEN = 4  # someone in the room already has that name
    ROOM_FULL = 5  # the room has its most members (the number says how many)


@dataclass(frozen=True)
class Refusal(Message):
    """A side refuses the other's identity, in place of its WELCOME or READY."""

    TAG: ClassVar[int] = 7
    AFTER: ClassVar[Phase] = Phase.AWAIT_WELCOME
    ALSO_AFTER: ClassVar[tuple[Phase, ...]] = (Phase.OPEN,)
    LEADS_TO: ClassVar[Phase] = Phase.CLOSED
    reason: int
    name: str  # who refuses: the connector has not seen the listener's WELCOME
    number: int = 0  # ROOM_FULL: the room's size

    def encode_body(self) -> bytes:
        name = encode_text(self.name, MAX_NAME_BYTES, "username")
        return int_field(self.reason, 1) + int_field(self.number, 2) + name

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        reason = body.integer(1, "reason")
        number = body.integer(2, "number")
        return cls(reason, peer_name(body), number)


class Form(IntEnum):
    """What a member's words are: said, or an action (/me)."""

    CHAT = 1
    ACTION = 2


@dataclass(frozen=True)
class Say(Message):
    """A member's own words, for the room or (with `to`) one person, signed by the member.

    Only members send it; the host relays it as SAID, and every receiver checks the
    signature against the author's identity, so the host cannot put words in anyone's
    mouth. `seq` counts the author's words to each audience (the room, or one person).
    """

    TAG: ClassVar[int] = 8
    form: int
    seq: int
    signature: bytes  # over words_signed_data(host identity, room, author, this)
    to: str  # "" for the whole room
    text: str

    def encode_body(self) -> bytes:
        to = bytes_field(encode_text(self.to, MAX_NAME_BYTES, "name"))
        head = int_field(self.form, 1) + int_field(self.seq, 8) + self.signature + to
        return head + encode_text(self.text, MAX_TEXT, "message")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        return cls(*read_words(body))


@dataclass(frozen=True)
class Said(Message):
    """Words the host relays: the author's SAY, unchanged, with the author's name."""

    TAG: ClassVar[int] = 9
    author: str
    words: Say

    def encode_body(self) -> bytes:
        author = bytes_field(encode_text(self.author, MAX_NAME_BYTES, "name"))
        return author + self.words.encode_body()

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        author = checked_name(body.text(MAX_NAME_BYTES, "author"))
        return cls(author, Say(*read_words(body)))


def read_words(body: FieldReader) -> tuple[int, int, bytes, str, str]:
    """The fields of a SAY, strictly."""
    form = body.integer(1, "form")
    if form not in {f.value for f in Form}:
        raise ProtocolError(f"the peer sent words of an unknown form {form}")
    seq = body.integer(8, "sequence")
    signature = body.fixed(64, "signature")
    to = body.text(MAX_NAME_BYTES, "recipient")
    if to:
        checked_name(to)
    return form, seq, signature, to, body.rest_text(MAX_TEXT, "message")


class Person(NamedTuple):
    """Someone in a room, as the host announces them."""

    name: str
    identity: bytes
    address: str  # as the host sees it
    seconds: int = 0  # in the room so far


@dataclass(frozen=True)
class Members(Message):
    """Who else is in the room: the host's first message to a member after READY."""

    TAG: ClassVar[int] = 10
    people: tuple[Person, ...] = ()

    def encode_body(self) -> bytes:
        return int_field(len(self.people), 1) + b"".join(map(encode_person, self.people))

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        people = tuple(decode_person(body) for _ in range(body.integer(1, "count")))
        body.end()
        return cls(people)


@dataclass(frozen=True)
class Joined(Message):
    """Someone joined the room (host -> members)."""

    TAG: ClassVar[int] = 11
    person: Person

    def encode_body(self) -> bytes:
        return encode_person(self.person)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        person = decode_person(body)
        body.end()
        return cls(person)


def encode_person(person: Person) -> bytes:
    """identity, seconds, address, name: the fields of one person."""
    address = bytes_field(encode_text(person.address, MAX_NAME_BYTES, "address"))
    name = bytes_field(encode_text(person.name, MAX_NAME_BYTES, "name"))
    return (
        check_size("identity key", person.identity, 32)
        + int_field(person.seconds, 4)
        + (address + name)
    )


def decode_person(body: FieldReader) -> Person:
    """One person, strictly (the name held to the rules of a username)."""
    identity = body.fixed(32, "identity key")
    seconds = body.integer(4, "seconds")
    address = sanitize(body.text(MAX_NAME_BYTES, "address"))
    return Person(checked_name(body.text(MAX_NAME_BYTES, "name")), identity, address, seconds)


@dataclass(frozen=True)
class Left(Message):
    """Someone left the room (host -> members): with a goodbye, or lost."""

    TAG: ClassVar[int] = 12
    name: str
    lost: bool = False
    text: str = ""  # the goodbye

    def encode_body(self) -> bytes:
        name = bytes_field(encode_text(self.name, MAX_NAME_BYTES, "name"))
        return int_field(int(self.lost), 1) + name + encode_text(self.text, MAX_TEXT, "goodbye")

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        lost = body.integer(1, "how") == 1
        name = checked_name(body.text(MAX_NAME_BYTES, "name"))
        return cls(name, lost, body.rest_text(MAX_TEXT, "goodbye text"))


# Files. A sender numbers its offers on each connection (ID); the receiver's ACCEPT,
# REJECT, CREDIT and RECEIVED name that number, and a CANCEL says whose it is.
# Through a host, each leg has its own numbers, and WHO names the far end: on the
# way to the host the one a file is for, on the way from it the one who offers it
# ("" is the host itself).
MAX_OFFERED_NAME = 1024  # bytes of a file name on the wire (a safe one is made of it)
MAX_REASON = 256


@dataclass(frozen=True)
class FileOffer(Message):
    """A file offered: its name, size and SHA-256 (checked when it has all arrived)."""

    TAG: ClassVar[int] = 13
    id: int
    size: int
    digest: bytes
    name: str
    who: str = ""

    def encode_body(self) -> bytes:
        return (
            int_field(self.id, 4)
            + int_field(self.size, 8)
            + check_size("SHA-256", self.digest, 32)
            + bytes_field(encode_text(self.who, MAX_NAME_BYTES, "a name"))
            + encode_text(self.name, MAX_OFFERED_NAME, "a file name")
        )

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, size = body.integer(4, "id"), body.integer(8, "size")
        digest = body.fixed(32, "SHA-256")
        who = body.text(MAX_NAME_BYTES, "who")
        if who:
            checked_name(who)
        return cls(number, size, digest, body.rest_text(MAX_OFFERED_NAME, "name"), who)


@dataclass(frozen=True)
class FileAccept(Message):
    """The receiver takes an offer from OFFSET on (past it, a resume) and grants CREDIT
    bytes: the sender sends no more than it was granted."""

    TAG: ClassVar[int] = 14
    id: int
    offset: int
    credit: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4) + int_field(self.offset, 8) + int_field(self.credit, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, offset = body.integer(4, "id"), body.integer(8, "offset")
        credit = body.integer(8, "credit")
        body.end()
        return cls(number, offset, credit)


@dataclass(frozen=True)
class FileAbout(Message):
    """A base: a file message whose body is the transfer's id alone."""

    TAG: ClassVar[int] = 0
    id: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number = body.integer(4, "id")
        body.end()
        return cls(number)


@dataclass(frozen=True)
class FileReject(FileAbout):
    """The receiver declines an offer."""

    TAG: ClassVar[int] = 15


@dataclass(frozen=True)
class FileCredit(Message):
    """The receiver has written AMOUNT more bytes to disk: the sender may send them."""

    TAG: ClassVar[int] = 16
    id: int
    amount: int

    def encode_body(self) -> bytes:
        return int_field(self.id, 4) + int_field(self.amount, 8)

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, amount = body.integer(4, "id"), body.integer(8, "amount")
        body.end()
        return cls(number, amount)


@dataclass(frozen=True)
class FileDone(FileAbout):
    """The sender has sent every byte and found the file unchanged."""

    TAG: ClassVar[int] = 17


@dataclass(frozen=True)
class FileReceived(FileAbout):
    """The receiver has every byte, the SHA-256 matched, and the file is saved."""

    TAG: ClassVar[int] = 18


@dataclass(frozen=True)
class FileCancel(Message):
    """A transfer stops. MINE: the one cancelling sends it (else it receives it)."""

    TAG: ClassVar[int] = 19
    id: int
    mine: bool
    reason: str = ""

    def encode_body(self) -> bytes:
        reason = encode_text(self.reason, MAX_REASON, "a reason")
        return int_field(self.id, 4) + int_field(int(self.mine), 1) + reason

    @classmethod
    def decode_body(cls, body: FieldReader) -> Message:
        number, mine = body.integer(4, "id"), body.integer(1, "mine")
        if mine > 1:
            raise ProtocolError(f"a CANCEL's sender flag is {mine}, not 0 or 1")
        return cls(number, bool(mine), body.rest_text(MAX_REASON, "reason"))


FILE_MESSAGES = (FileOffer, FileAccept, FileReject, FileCredit, FileDone, FileReceived, FileCancel)

# A chunk of file data travels as a frame of its own, not a Fernet token: MARK, the
# transfer's id (4), the offset (8), then the data sealed with AES-256-GCM under the
# direction's file key. The nonce is the direction (4) and the number of chunks sent
# before on this connection in that direction (8), so it never repeats under a key;
# the associated data binds the label, the id and the offset. A Fernet token starts
# with "g", so MARK (0) never begins one.
CHUNK_MARK = 0
CHUNK_HEADER = struct.Struct("!BIQ")
CHUNK_LABEL = b"chatclient/2 chunk\0"
CHUNK_SIZE = 64 * 1024
CHUNK_TAG_SIZE = 16


def chunk_nonce(direction: int, counter: int) -> bytes:
    """A chunk's AES-GCM nonce: the direction, then the counter."""
    return struct.pack("!IQ", direction, counter)


def chunk_associated_data(transfer: int, offset: int) -> bytes:
    """What a chunk's tag covers besides its data."""
    return CHUNK_LABEL + struct.pack("!IQ", transfer, offset)


def checked_name(name: str) -> str:
    """`name` if it follows the rules of a username, else ProtocolError."""
    if (problem := name_problem(name)) is not None:
        raise ProtocolError(f"the peer's name {problem}")
    return name


def peer_name(body: FieldReader) -> str:
    """The rest of the body as a name, held to the rules of our own usernames."""
    return checked_name(body.rest_text(MAX_NAME_BYTES, "username"))


def encode_payload(seq: int, message: Message) -> bytes:
    """The plaintext inside a Fernet token: sequence, type, body."""
    return PAYLOAD_HEADER.pack(seq, message.TAG) + message.encode_body()


def decode_payload(data: bytes) -> tuple[int, Message]:
    """Parse a decrypted payload into its sequence number and message."""
    if len(data) < PAYLOAD_HEADER.size:
        raise ProtocolError("the peer sent a truncated message")
    seq, tag = PAYLOAD_HEADER.unpack_from(data)
    kind = MESSAGES.get(tag)
    if kind is None:
        raise ProtocolError(f"the peer sent an unknown message type {tag}")
    body = FieldReader(data[PAYLOAD_HEADER.size :], kind.__name__)
    return seq, kind.decode_body(body)


# --- Session rules (pure) ----------------------------------------------------


def transitions() -> dict[Phase, dict[type[Message], Phase]]:
    """Which message may follow in each phase, and the phase it leads to."""
    table: dict[Phase, dict[type[Message], Phase]] = {phase: {} for phase in Phase}
    for kind in MESSAGES.values():
        for phase in (kind.AFTER, *kind.ALSO_AFTER):
            table[phase][kind] = kind.LEADS_TO
    return table


def advance(phase: Phase, message: Message, who: str) -> Phase:
    """The next phase, or ProtocolError naming the message and the phase."""
    kind = type(message)
    if phase is not kind.AFTER and phase not in kind.ALSO_AFTER:
        raise ProtocolError(f"{who} sent {message.kind()} {phase.value}")
    return kind.LEADS_TO


# Canonical urlsafe base64: the alphabet, then at most two '=' of padding, and the
# bits the padding leaves unused all zero (so the last character before one '='
# is a multiple of 4 in the alphabet, before two '=' a multiple of 16). The
# length must also be a multiple of 4. As strict as decoding and re-encoding,
# at a third of the cost.
_CANONICAL_BASE64 = re.compile(rb"[A-Za-z0-9_-]*(?:[AEIMQUYcgkosw048]=|[AQgw]==)?")


class Session:
    """One encrypted session: directional Fernet keys and sequence numbers."""

    def __init__(self, keys: SessionKeys) -> None:
        self.keys = keys
        from cryptography.fernet import Fernet, InvalidToken

        self._sender = Fernet(base64.urlsafe_b64encode(keys.send_key))
        self._receiver = Fernet(base64.urlsafe_b64encode(keys.recv_key))
        self._invalid_token: type[Exception] = InvalidToken
        self._send_seq = 0
        self._recv_seq = 0
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._invalid_tag: type[Exception] = InvalidTag
        self._chunk_sealer = AESGCM(keys.file_send_key)
        self._chunk_opener = AESGCM(keys.file_recv_key)
        self._chunks_sent = 0
        self._chunks_received = 0
        self._send_phase = Phase.AWAIT_WELCOME
        self._recv_phase = Phase.AWAIT_WELCOME

    @property
    def we_left(self) -> bool:
        """True once this side has sent its TERMINATE."""
        return self._send_phase is Phase.CLOSED

    @property
    def peer_left(self) -> bool:
        """True once the peer's TERMINATE has arrived."""
        return self._recv_phase is Phase.CLOSED

    def encode(self, message: Message) -> bytes:
        """The complete frame carrying `message`; each call uses the next sequence."""
        payload = encode_payload(self._send_seq, message)
        self._send_phase = advance(self._send_phase, message, "this side")
        self._send_seq += 1
        return encode_frame(self._sender.encrypt(payload))

    def seal_chunk(self, transfer: int, offset: int, data: bytes) -> bytes:
        """The complete frame carrying one chunk of file data; each uses the next nonce."""
        if self._send_phase is not Phase.OPEN:
            raise ProtocolError(f"cannot send file data {self._send_phase.value}")
        nonce = chunk_nonce(self.keys.direction, self._chunks_sent)
        self._chunks_sent += 1
        sealed = self._chunk_sealer.encrypt(nonce, data, chunk_associated_data(transfer, offset))
        header = CHUNK_HEADER.pack(CHUNK_MARK, transfer, offset)
        return FRAME_HEADER.pack(len(header) + len(sealed)) + header + sealed

    def open_chunk(self, body: bytes) -> tuple[int, int, bytes]:
        """A chunk frame's (id, offset, data); ProtocolError if it is not exactly the next
        chunk sealed by the peer (tampered with, replayed, reordered or misplaced)."""
        if self._recv_phase is not Phase.OPEN:
            raise ProtocolError(f"the peer sent file data {self._recv_phase.value}")
        if len(body) < CHUNK_HEADER.size + CHUNK_TAG_SIZE:
            raise ProtocolError("the peer sent a truncated file chunk")
        if len(body) > CHUNK_HEADER.size + CHUNK_SIZE + CHUNK_TAG_SIZE:
            raise ProtocolError(f"the peer sent a file chunk over {CHUNK_SIZE} bytes")
        _, transfer, offset = CHUNK_HEADER.unpack_from(body)
        nonce = chunk_nonce(1 - self.keys.direction, self._chunks_received)
        try:
            data = self._chunk_opener.decrypt(
                nonce,
                memoryview(body)[CHUNK_HEADER.size :],
                chunk_associated_data(transfer, offset),
            )
        except self._invalid_tag:
            raise ProtocolError(
                "a file chunk failed its integrity check (tampered with, replayed, "
                "reordered or not from your peer)"
            ) from None
        self._chunks_received += 1
        return transfer, offset, data

    def decode(self, body: bytes) -> Message:
        """The message inside one frame body from the peer.

        Raises ProtocolError for anything forged, replayed, reordered, dropped,
        reflected or out of place; the session must end then.
        """
        try:
            # Fernet's base64 decoding is lenient (it skips stray bytes and unused
            # bits); only the canonical encoding of a token is accepted here.
            if len(body) % 4 or _CANONICAL_BASE64.fullmatch(body) is None:
                raise ValueError("not canonical base64")
            payload = self._receiver.decrypt(body)
        except (self._invalid_token, ValueError):
            raise ProtocolError(
                "a message failed its integrity check (tampered with, replayed or "
                "not from your peer)"
            ) from None
        seq, message = decode_payload(payload)
        # The sequence number must be exactly the next one: anything else is
        # replay, duplication, reordering or loss.
        if seq != self._recv_seq:
            raise ProtocolError(
                f"message number {seq} arrived where {self._recv_seq} was due "
                "(replayed, reordered or lost)"
            )
        self._recv_phase = advance(self._recv_phase, message, "the peer")
        self._recv_seq += 1
        return message


def peer_text(text: str) -> str:
    """A message's text as shown: tabs as spaces, each further line indented, made safe.

    A message may hold several lines (a paste); each line after the first is
    indented like a wrapped row, so it can never pass for a line of its own.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    return f"\n{CONTINUATION}".join(sanitize(line.expandtabs(4)) for line in lines)


def sanitize(text: str) -> str:
    """Peer text made safe to print: control and format characters escaped."""
    if text.isprintable():
        return text
    return "".join(_safe_char(ch) for ch in text)


_JOINERS = frozenset("\u200c\u200d")  # needed by emoji and some scripts
# Rows after the first of a wrapped line, and the further lines of a message,
# start with this, so no row of a peer's text can pass for a line of its own
# (say, "Connection closed by peer.").
CONTINUATION = "  "


def _safe_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if (category[0] == "C" and ch not in _JOINERS) or category in ("Zl", "Zp"):
        return ch.encode("unicode_escape").decode("ascii")
    return ch


# --- Peer protocol: one connection's state machine (pure) ---------------------
#
# Shaped like h11's Connection: bytes in with receive_data(), events out with
# next_event(), bytes out with send() and data_to_send(), and the clock passed
# in, so the handshake order, its deadline and the keepalive and silence rules
# all live here and are tested without sockets.


class Role(Enum):
    """Which end of the connection this side is."""

    CONNECTOR = "connector"
    LISTENER = "listener"


class Stage(Enum):
    """Where a connection stands, in the order the handshake goes through."""

    HELLO = "before the hello"  # listener: waits for M1; connector: waits for M2
    CONFIRM = "before the confirmation"  # listener: waits for M3
    PROVEN = "waiting to be admitted"  # listener: key proven; admit() or refuse()
    WELCOME = "before the welcome"  # both: wait for the peer's WELCOME
    READY = "before the peer is ready"  # listener: waits for the connector's READY
    OPEN = "chatting"
    CLOSED = "closed"


HANDSHAKE_STAGES = frozenset({Stage.HELLO, Stage.CONFIRM, Stage.PROVEN, Stage.WELCOME, Stage.READY})


class IdentityRefused(HandshakeError):
    """This side refuses the identity the peer offered under `name`; the peer is told why."""

    def __init__(self, reason: Refuse, text: str, name: str = "", number: int = 0) -> None:
        super().__init__(text)
        self.reason = reason
        self.name = name
        self.number = number


# Decides whether the identity a peer offers under a name may in (for this mode):
# returns, or raises IdentityRefused.
Judge = Callable[[str, bytes, Mode], None]


def accept_anyone(name: str, identity: bytes, mode: Mode) -> None:
    """A judge that lets every identity in (tests, benchmarks)."""


def refusal_error(refusal: Refusal, our_name: str) -> HandshakeError:
    """What a peer's REFUSAL means, told from this side."""
    them, us = sanitize(refusal.name), sanitize(our_name)
    if refusal.reason == Refuse.NOT_A_CONTACT:
        return HandshakeError(f"you are not one of {them}'s contacts: ask for an invite code")
    if refusal.reason == Refuse.IDENTITY_CHANGED:
        return HandshakeError(
            f"{them} refused the connection: it knows a different identity under your name "
            f"{us}. If you made a new identity, {them} can run --forget {us}; if not, "
            "someone else may be using your name"
        )
    if refusal.reason == Refuse.NAME_TAKEN:
        return HandshakeError(
            f"the name {us} is already taken in this chat: choose another with --username"
        )
    if refusal.reason == Refuse.ROOM_FULL:
        people = "person" if refusal.number == 1 else "people"
        return HandshakeError(f"the chat is full ({refusal.number} {people})")
    if refusal.reason == Refuse.UNKNOWN_LISTENER:
        return HandshakeError(
            f"{them} refused the connection: it connected to reach one of its contacts, "
            "and your identity is not one of them"
        )
    return HandshakeError(f"{them} refused the connection (reason {refusal.reason})")


@dataclass(frozen=True)
class Event:
    """Something that happened on a connection."""


@dataclass(frozen=True)
class KeyProven(Event):
    """The connector proved it holds the key (listener only): admit() or refuse() it."""


@dataclass(frozen=True)
class Established(Event):
    """Both WELCOMEs went through: the peer's name and verified identity key."""

    name: str
    identity: bytes
    mode: Mode
    room: bytes = bytes(ROOM_ID_SIZE)  # the host's room id


@dataclass(frozen=True)
class MessageReceived(Event):
    """A verified message from the peer (keepalives are not reported)."""

    message: Message


@dataclass(frozen=True)
class ChunkReceived(Event):
    """A chunk of file data, opened: its transfer's id on this connection, offset, bytes."""

    transfer: int
    offset: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Closed(Event):
    """The connection ended cleanly: end of stream after a goodbye."""


@dataclass(frozen=True)
class Failed(Event):
    """The connection failed; nothing more comes from it."""

    error: ChatError


class PeerProtocol:
    """One connection: handshake, frame decoder, session and timers, with no I/O.

    The order, once the keys are agreed: the connector sends M3 and its signed
    WELCOME; the listener checks it and answers with its own WELCOME (or a
    REFUSAL); the connector checks that and answers READY (or a REFUSAL). Each
    side reports Established only when the other has accepted it.
    """

    def __init__(
        self,
        role: Role,
        psk: bytes | None,
        name: str,
        now: float,
        *,
        identity: Ed25519PrivateKey | None = None,
        judge: Judge = accept_anyone,
        code: str | None = None,
        invite: Invite | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
        handshake_seconds: float = HANDSHAKE_SECONDS,
        keepalive: float = KEEPALIVE_SECONDS,
        private_key: X25519PrivateKey | None = None,
    ) -> None:
        self.role = role
        self.name = name
        self.room = room  # the listener's own; the connector learns the host's
        self.stage = Stage.HELLO
        self.peer_name = ""
        self.peer_identity = b""
        self.greeted = False  # a valid M1 arrived (listener): evicted after silent ones
        self.abandoned = False  # the connector went away between M2 and M3 (listener)
        self.keepalive = keepalive
        self.silence_limit = keepalive * DEAD_AFTER_INTERVALS
        if identity is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity = Ed25519PrivateKey.generate()
        self._identity = identity
        self.identity = identity.public_key().public_bytes_raw()
        self._judge = judge
        self._handshake_seconds = handshake_seconds
        self._deadline = now + handshake_seconds
        self._last_received = now
        self._last_sent = now
        self._decoder = FrameDecoder()
        self._events: deque[Event] = deque()
        self._outgoing = bytearray()
        self._session: Session | None = None
        self._keys: SessionKeys | None = None
        self._connector: ConnectorHandshake | None = None
        self._listener: ListenerHandshake | None = None
        if role is Role.CONNECTOR:
            self._connector = ConnectorHandshake(psk, private_key, code=code)
            self.mode = self._connector.mode
            self._outgoing += encode_frame(self._connector.m1)
        else:
            self._listener = ListenerHandshake(psk, private_key, invite=invite)
            self.mode = Mode.SHARED_KEY  # until M1 says

    # Bytes and events -------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer; b"" means the peer closed its end."""
        if self.stage is Stage.CLOSED:
            return
        if not data:
            self._end_of_stream()
            return
        self._last_received = now
        self._decoder.feed(data)
        self._process()

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def events(self) -> Iterator[Event]:
        """Every event not yet taken, oldest first."""
        while (event := self.next_event()) is not None:
            yield event

    def data_to_send(self) -> bytes:
        """Bytes this side owes the peer (hellos, WELCOME, rejections, keepalives)."""
        if not self._outgoing:
            return b""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def pending(self) -> bool:
        """True when events or bytes are waiting to be taken."""
        return bool(self._events or self._outgoing)

    def send(self, message: Message, now: float) -> bytes:
        """The frame carrying `message`, for the transport to write after data_to_send()."""
        if self.stage is not Stage.OPEN or self._session is None:
            raise ProtocolError(f"cannot send {message.kind()} {self.stage.value}")
        frame = self._session.encode(message)
        self._last_sent = now
        return frame

    def send_chunk(self, transfer: int, offset: int, data: bytes, now: float) -> bytes:
        """The frame carrying a chunk of file data, sealed with the next nonce."""
        if self.stage is not Stage.OPEN or self._session is None:
            raise ProtocolError(f"cannot send file data {self.stage.value}")
        frame = self._session.seal_chunk(transfer, offset, data)
        self._last_sent = now
        return frame

    # The listener's decision once the key is proven -------------------------

    def admit(self) -> None:
        """Let a proven connector on to its WELCOME (which may already be here)."""
        if self.stage is not Stage.PROVEN or self._keys is None:
            raise ProtocolError(f"cannot admit a connection {self.stage.value}")
        self._session = Session(self._keys)
        self.stage = Stage.WELCOME
        self._process()

    def refuse(self, reason: Reject) -> None:
        """Tell the connector why it is refused; the connection is over."""
        self._outgoing += encode_frame(reject_frame(reason))
        self.stage = Stage.CLOSED

    # Time ---------------------------------------------------------------------

    def timers(self, now: float) -> float | None:
        """Apply the deadlines due by `now`; the time of the next one, or None.

        The handshake has one deadline from the start, so a peer trickling bytes
        cannot stretch it. An open chat sends a keepalive after `keepalive` idle
        seconds and gives up on a peer silent for `silence_limit`.
        """
        if self.stage in HANDSHAKE_STAGES:
            if now >= self._deadline:
                self.abandoned = self.stage is Stage.CONFIRM
                self._fail(
                    HandshakeError(
                        f"the handshake did not finish within {self._handshake_seconds:g} s"
                    )
                )
                return None
            return self._deadline
        if self.stage is not Stage.OPEN or self._session is None:
            return None
        if now - self._last_received >= self.silence_limit:
            self._fail(
                ConnectionLost(
                    f"nothing heard from the peer for {self.silence_limit:g} s "
                    "(it may be offline or the network is down)"
                )
            )
            return None
        silence_due = self._last_received + self.silence_limit
        if self._session.we_left:
            return silence_due
        if now - self._last_sent >= self.keepalive:
            self._outgoing += self._session.encode(Keepalive())
            self._last_sent = now
        return min(silence_due, self._last_sent + self.keepalive)

    def connection_failed(self, reason: str) -> None:
        """The transport broke (reset, unreachable): report it as this stage's failure."""
        if self.stage in HANDSHAKE_STAGES:
            self.abandoned = self.stage is Stage.CONFIRM
            self._fail(HandshakeError(f"the connection failed during the handshake: {reason}"))
        elif self.stage is Stage.OPEN:
            self._fail(ConnectionLost(reason))

    @property
    def peer_left(self) -> bool:
        """True once the peer's goodbye (TERMINATE) has arrived."""
        return self._session is not None and self._session.peer_left

    # The handshake order ------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete frame, in the order the stages allow."""
        try:
            while self.stage not in (Stage.PROVEN, Stage.CLOSED):
                body = self._next_frame()
                if body is None:
                    return
                self._handle(body)
        except ChatError as exc:
            self._fail(exc)

    def _next_frame(self) -> bytes | None:
        if self.stage is Stage.OPEN:
            return self._decoder.next_frame(MAX_FRAME)
        limit = MAX_FRAME if self.stage in (Stage.WELCOME, Stage.READY) else MAX_HELLO_SIZE
        try:
            return self._decoder.next_frame(limit)
        except ProtocolError as exc:
            raise HandshakeError(
                f"the other side is not speaking the chatclient protocol ({exc})"
            ) from exc

    def _handle(self, body: bytes) -> None:
        if self.stage is Stage.OPEN:
            self._on_message(body)
        elif self.stage is Stage.HELLO and self._listener is not None:
            self._on_commit(self._listener, body)
        elif self.stage is Stage.HELLO and self._connector is not None:
            self._on_listener_hello(self._connector, body)
        elif self.stage is Stage.CONFIRM and self._listener is not None:
            self._on_confirm(self._listener, body)
        elif self.stage is Stage.WELCOME:
            self._on_welcome(body)
        elif self.stage is Stage.READY:
            self._on_ready(body)

    def _on_commit(self, handshake: ListenerHandshake, m1: bytes) -> None:
        try:
            m2 = handshake.receive_commit(m1)
        except Rejected as exc:
            self._outgoing += encode_frame(reject_frame(exc.reason))
            raise
        self.mode = handshake.mode
        self.greeted = True
        self._outgoing += encode_frame(m2)
        self.stage = Stage.CONFIRM

    def _on_listener_hello(self, handshake: ConnectorHandshake, m2: bytes) -> None:
        if (refusal := parse_reject(m2)) is not None:
            raise refusal
        m3, self._keys = handshake.respond(m2)
        self._session = Session(self._keys)
        self._outgoing += encode_frame(m3) + self._session.encode(self._welcome())
        self.stage = Stage.WELCOME

    def _on_confirm(self, handshake: ListenerHandshake, m3: bytes) -> None:
        try:
            self._keys = handshake.receive_confirm(m3)
        except KeyMismatch:
            self._outgoing += encode_frame(reject_frame(Reject.KEY_MISMATCH))
            raise
        except Rejected as exc:
            self._outgoing += encode_frame(reject_frame(exc.reason))
            raise
        self.stage = Stage.PROVEN
        self._events.append(KeyProven())

    def _on_welcome(self, body: bytes) -> None:
        assert self._session is not None
        if self.role is Role.LISTENER:
            message = self._session.decode(body)
        else:
            # The listener counts as proven when its WELCOME decrypts.
            if (refusal := parse_reject(body)) is not None:
                raise self._unauthenticated() if isinstance(refusal, KeyMismatch) else refusal
            try:
                message = self._session.decode(body)
            except ProtocolError as exc:
                raise self._unauthenticated() from exc
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        assert isinstance(message, Welcome)  # the session's phase table guarantees it
        self._check_identity(message)
        if self.role is Role.LISTENER:
            self._outgoing += self._session.encode(self._welcome())
            self.stage = Stage.READY
        else:
            self._outgoing += self._session.encode(Ready())
            self._establish()

    def _on_ready(self, body: bytes) -> None:
        assert self._session is not None
        message = self._session.decode(body)
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        if not isinstance(message, Ready):
            raise ProtocolError(f"the peer sent {message.kind()} before READY")
        self._establish()

    def _welcome(self) -> Welcome:
        assert self._keys is not None
        data = welcome_signed_data(self.role, self._keys.transcript, self.name, self.room)
        return Welcome(self.name, self.identity, self._identity.sign(data), self.room)

    def _check_identity(self, welcome: Welcome) -> None:
        """Verify the peer's signature, then let the judge decide; refuse it if told to."""
        assert self._keys is not None and self._session is not None
        sender = Role.LISTENER if self.role is Role.CONNECTOR else Role.CONNECTOR
        data = welcome_signed_data(sender, self._keys.transcript, welcome.name, welcome.room)
        verify_signature(welcome.identity, welcome.signature, data)
        try:
            self._judge(welcome.name, welcome.identity, self.mode)
        except IdentityRefused as exc:
            refusal = Refusal(exc.reason, self.name, exc.number)
            self._outgoing += self._session.encode(refusal)
            raise
        self.peer_name, self.peer_identity = welcome.name, welcome.identity
        if self.role is Role.CONNECTOR:
            self.room = welcome.room  # the host's room: what our words are signed for

    def _establish(self) -> None:
        self.stage = Stage.OPEN
        event = Established(self.peer_name, self.peer_identity, self.mode, self.room)
        self._events.append(event)

    def _unauthenticated(self) -> HandshakeError:
        if self.mode is Mode.INVITE:
            return HandshakeError(WRONG_CODE_TEXT)
        return KeyMismatch(UNAUTHENTICATED_TEXT)

    def _on_message(self, body: bytes) -> None:
        assert self._session is not None
        if body[:1] == bytes([CHUNK_MARK]):
            self._events.append(ChunkReceived(*self._session.open_chunk(body)))
            return
        message = self._session.decode(body)
        if isinstance(message, Refusal):
            raise refusal_error(message, self.name)
        if isinstance(message, Ready):
            raise ProtocolError("the peer sent READY twice")
        if not isinstance(message, Keepalive):
            self._events.append(MessageReceived(message))

    def _end_of_stream(self) -> None:
        if self.stage in HANDSHAKE_STAGES:
            self.abandoned = self.stage is Stage.CONFIRM
            self._fail(HandshakeError("the peer closed the connection during the handshake"))
        elif self._session is not None and (self._session.peer_left or self._session.we_left):
            self.stage = Stage.CLOSED
            self._events.append(Closed())
        else:
            self._fail(ConnectionLost("the peer closed the connection without saying goodbye"))

    def _fail(self, error: ChatError) -> None:
        if self.stage is Stage.OPEN and not isinstance(error, ConnectionLost):
            error = ConnectionLost(str(error))
        self.stage = Stage.CLOSED
        self._events.append(Failed(error))


# --- Listener: admission rules (pure) -----------------------------------------


class Pending(NamedTuple):
    """An unfinished handshake as the admission rules see it."""

    host: str
    since: float
    greeted: bool  # it sent a valid M1, as a real connector does at once
    key: int  # which connection (the transport's own handle)


def handshake_to_evict(pending: Sequence[Pending], host: str) -> tuple[Pending, str] | None:
    """Which unfinished handshake makes room for a new connection from `host`, and why.

    At most MAX_HANDSHAKES_PER_ADDRESS per source address, so one host's flood
    only ever competes with itself; at most MAX_PENDING_HANDSHAKES in all, where
    a connection that never sent a valid hello goes before one that did.
    """
    same = [p for p in pending if p.host == host]
    if len(same) >= MAX_HANDSHAKES_PER_ADDRESS:
        victim = min(same, key=lambda p: (p.greeted, p.since))
        reason = f"{MAX_HANDSHAKES_PER_ADDRESS} unfinished handshakes from {host}"
    elif len(pending) >= MAX_PENDING_HANDSHAKES:
        victim = min(pending, key=lambda p: (p.greeted, p.since))
        reason = f"{MAX_PENDING_HANDSHAKES} unfinished handshakes"
    else:
        return None
    kind = "the oldest" if victim.greeted else "the oldest silent one"
    return victim, f"it was {kind} of {reason}"


class Room:
    """The chat's places: the listener hands each proven connector one while it has room.

    A place is claimed before our WELCOME goes out, taken by a person once they
    are in (READY), and freed when that connection ends. Who hears what follows
    from it: pure, so the relay rules are tested without sockets.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seats: dict[object, tuple[Person, float] | None] = {}  # joined: (who, since)
        self._coming: dict[object, str] = {}  # names held for those on their way in
        self._next: dict[tuple[object, str], int] = {}  # each member's next SAY number

    def claim(self, member: object) -> bool:
        """A place for `member`, or False when the room is full."""
        if self.full:
            return False
        self._seats[member] = None
        return True

    def hold(self, member: object, name: str) -> None:
        """Keep `name` for `member` until it is in (or gone): nobody else may take it."""
        self._coming[member] = name

    def seat(self, member: object, person: Person, now: float) -> None:
        """`member` is in the room as `person`."""
        self._coming.pop(member, None)
        self._seats[member] = (person, now)

    def release(self, member: object) -> Person | None:
        """Free `member`'s place; who it was, if they had got in."""
        self._coming.pop(member, None)
        for key in [key for key in self._next if key[0] is member]:
            del self._next[key]
        seat = self._seats.pop(member, None)
        return seat[0] if seat else None

    def in_sequence(self, member: object, words: Say) -> bool:
        """True when `words` carries the member's next number for its audience."""
        due = self._next.get((member, words.to), 0)
        self._next[(member, words.to)] = due + 1
        return words.seq == due

    def person(self, member: object) -> Person | None:
        """Who `member` is, once in."""
        seat = self._seats.get(member)
        return seat[0] if seat else None

    def named(self, name: str) -> object | None:
        """The member in the room under `name`."""
        return next((m for m, seat in self._seats.items() if seat and seat[0].name == name), None)

    def taken(self, name: str) -> bool:
        """True when someone in the room, or on the way in, has `name`."""
        return self.named(name) is not None or name in self._coming.values()

    def people(self, now: float, but: object = None) -> tuple[Person, ...]:
        """Everyone in, in the order they came, with their seconds in the room."""
        return tuple(
            seat[0]._replace(seconds=int(now - seat[1]))
            for member, seat in self._seats.items()
            if seat and member is not but
        )

    def others(self, but: object = None) -> list[object]:
        """Everyone in the room but `but`."""
        return [m for m, seat in self._seats.items() if seat and m is not but]

    def audience(self, author: object, words: Say) -> list[object]:
        """Who hears `author`'s words: the one they are for, or everyone else in."""
        if words.to:
            return [m] if (m := self.named(words.to)) is not None and m is not author else []
        return self.others(author)

    def __contains__(self, member: object) -> bool:
        return member in self._seats

    def __len__(self) -> int:
        return len(self._seats)

    @property
    def full(self) -> bool:
        """True when every place is taken."""
        return len(self._seats) >= self.capacity


# What a member may send the host once in the room; SAID, MEMBERS, JOINED and LEFT are
# the host's alone.
MEMBER_SENDS = (Say, Chat, Action, Terminate, Keepalive)


def words_signed_data(host: bytes, room: bytes, author: str, words: Say) -> bytes:
    """What a member signs: the room (host identity and room id), the author, the
    audience, the form, the author's sequence number for that audience, the text."""
    return b"".join(
        [
            WORDS_LABEL + host + room + int_field(words.form, 1) + int_field(words.seq, 8),
            bytes_field(author.encode("utf-8")),
            bytes_field(words.to.encode("utf-8")),
            words.text.encode("utf-8"),
        ]
    )


def signed_by(identity: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `identity`'s Ed25519 signature of `data`."""
    try:
        verify_signature(identity, signature, data)
    except HandshakeError:
        return False
    return True


class Voice:
    """One person's words in a room: numbered per audience and signed."""

    def __init__(self, identity: Ed25519PrivateKey, name: str, host: bytes, room: bytes) -> None:
        self._identity, self.name, self.host, self.room = identity, name, host, room
        self._next: dict[str, int] = {}

    def say(self, text: str, form: Form = Form.CHAT, to: str = "") -> Say:
        """`text` as a signed SAY (ChatError if it is too long to send)."""
        seq = self._next.get(to, 0)
        unsigned = Say(form, seq, bytes(64), to, text)
        unsigned.encode_body()  # too long: refused here, before it is counted
        data = words_signed_data(self.host, self.room, self.name, unsigned)
        self._next[to] = seq + 1
        return replace(unsigned, signature=self._identity.sign(data))


class Hearing:
    """What one person makes of the words the host relays: checked, in order, or not shown."""

    def __init__(self, me: str, host: bytes, room: bytes) -> None:
        self.me, self.host, self.room = me, host, room
        self._next: dict[tuple[str, str], int] = {}

    def arrived(self, name: str) -> None:
        """`name` joined while we were here: their words must start at number 0."""
        self.left(name)
        self._next[(name, "")] = self._next[(name, self.me)] = 0

    def left(self, name: str) -> None:
        """`name` left: their numbering ends (a new session starts again)."""
        for key in [key for key in self._next if key[0] == name]:
            del self._next[key]

    def check(self, said: Said, identity: bytes | None) -> tuple[bool, str | None]:
        """Whether to show `said` (`identity` is its author's, if known), and a note."""
        author, words = sanitize(said.author), said.words
        data = words_signed_data(self.host, self.room, said.author, words)
        if identity is None or not signed_by(identity, words.signature, data):
            return False, (
                f"a message claiming to be from {author} failed its signature check: not shown"
            )
        if words.to and words.to != self.me:
            return False, f"a message from {author} for someone else reached you: not shown"
        key = (said.author, words.to)
        due = self._next.get(key, words.seq)
        self._next[key] = max(due, words.seq + 1)
        if words.seq < due:
            return False, f"a message from {author} came again (replayed by the host?): not shown"
        if words.seq > due:
            missing = words.seq - due
            return (
                True,
                f"{missing} message(s) from {author} never arrived (held back by the host?)",
            )
        return True, None


class RefusalLog:
    """Refusal lines that stay readable in a flood.

    The first refusal from an address is shown in full; after that, at most one
    summary line per address every REFUSAL_SUMMARY_SECONDS.
    """

    def __init__(self, window: float = REFUSAL_SUMMARY_SECONDS) -> None:
        self._window = window
        self._hosts: dict[str, tuple[float, int]] = {}  # window start, refusals held back

    def refused(self, host: str, line: str, now: float) -> str | None:
        """The line to show for this refusal now, or None when it is counted instead."""
        if host not in self._hosts:
            self._hosts[host] = (now, 0)
            return line
        since, count = self._hosts[host]
        self._hosts[host] = (since, count + 1)
        return None

    def summaries(self, now: float) -> list[str]:
        """Summary lines of the windows that have ended by `now`."""
        lines = []
        for host, (since, count) in list(self._hosts.items()):
            if now - since < self._window:
                continue
            if count:
                lines.append(
                    f"Refused {count} more connection{'s' if count != 1 else ''} from {host} "
                    f"in the last {self._window:g} s"
                )
                self._hosts[host] = (now, 0)
            else:
                del self._hosts[host]  # quiet for a whole window: the next one is shown
        return lines

    def next_deadline(self) -> float | None:
        """When the next window ends, or None when nothing is held."""
        return min((since + self._window for since, _ in self._hosts.values()), default=None)


class AbandonLog:
    """Handshakes abandoned between M2 and M3, counted per address.

    That is where a man in the middle searching for a lucky handshake gives up,
    so the count is worth showing: at once for an address, then at most once a
    window while it grows.
    """

    def __init__(self, window: float = REFUSAL_SUMMARY_SECONDS) -> None:
        self._window = window
        self._counts: dict[str, int] = {}
        self._shown: dict[str, tuple[float, int]] = {}  # when last shown, the count shown

    def abandoned(self, host: str, now: float) -> str | None:
        """The line to show for one more abandoned handshake, or None until the window ends."""
        count = self._counts[host] = self._counts.get(host, 0) + 1
        if host in self._shown and now - self._shown[host][0] < self._window:
            return None
        self._shown[host] = (now, count)
        return self._line(host, count)

    def summaries(self, now: float) -> list[str]:
        """Lines for the counts that grew in windows ended by `now`."""
        lines = []
        for host, (since, shown) in list(self._shown.items()):
            if now - since < self._window:
                continue
            if self._counts[host] > shown:
                lines.append(self._line(host, self._counts[host]))
                self._shown[host] = (now, self._counts[host])
            else:  # a quiet window: forget the address
                del self._shown[host], self._counts[host]
        return lines

    def next_deadline(self) -> float | None:
        """When the next window with something to say ends."""
        return min((since + self._window for since, _ in self._shown.values()), default=None)

    @staticmethod
    def _line(host: str, count: int) -> str:
        noun, verb = ("handshake", "was") if count == 1 else ("handshakes", "were")
        return f"{count} {noun} from {host} {verb} abandoned halfway"


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
    for suffix in (PART_SUFFIX + META_SUFFIX, PART_SUFFIX):  # never one of our working files
        if base.endswith(suffix):
            base = base[: -len(suffix)] + suffix.replace(PART_SUFFIX, "_part", 1)
    return shorten_name(base, MAX_SAVED_NAME) if base else None


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


def format_size(size: int) -> str:
    """A size as people say it: 512 bytes, 12.3 kB, 2.4 MB, 1.1 GB."""
    if size < 1000:
        return "1 byte" if size == 1 else f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """0.3 s, 42 s, 3:05 (minutes and seconds)."""
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}:{rest:02d}"


def progress_text(name: str, done: int, size: int, seconds: float, moved: int) -> str:
    """One transfer's progress: name, percent, bytes, rate (of the `moved` bytes that came in
    `seconds`: a resume's kept bytes do not count) and time left."""
    percent = done * 100 // size if size else 100
    rate = moved / seconds if seconds > 0 else 0.0
    left = f", {format_duration((size - done) / rate)} left" if rate > 0 and done < size else ""
    return (
        f"{name} {percent}% ({format_size(done)} of {format_size(size)}, "
        f"{rate / 1e6:.1f} MB/s{left})"
    )


@dataclass(frozen=True)
class PartialInfo:
    """What a NAME.part.meta file records: the offer a partial download belongs to."""

    name: str
    size: int
    digest: bytes
    sender: bytes  # the sender's identity key: only they may resume it

    def render(self) -> str:
        return (
            f"{META_HEADER}\nname = {self.name}\nsize = {self.size}\n"
            f"sha256 = {self.digest.hex()}\nsender = {self.sender.hex()}\n"
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
            size = int(fields["size"])
            digest, sender = bytes.fromhex(fields["sha256"]), bytes.fromhex(fields["sender"])
        except (KeyError, ValueError):
            return None
        if not text.startswith(META_HEADER) or size < 0 or len(digest) != 32:
            return None
        return cls(fields.get("name", ""), size, digest, sender)


# --- Network: sockets, selectors, timers --------------------------------------


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for an OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def format_address(address: tuple[str, int]) -> str:
    """host:port as people type it ([::1]:50233 for IPv6)."""
    return f"{format_host(address[0])}:{address[1]}"


def format_host(host: str) -> str:
    """Host as typed before ':port' (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def unmap(host: str) -> str:
    """An IPv4-mapped IPv6 address (as getpeername gives it) shown as plain IPv4."""
    prefix = "::ffff:"
    if host.lower().startswith(prefix) and host.count(".") == 3:
        return host[len(prefix) :]
    return host


def is_wildcard(host: str) -> bool:
    """True for 0.0.0.0 and ::, which mean every interface."""
    return host in ("0.0.0.0", "::", "*")


def lan_address() -> str:
    """The address a peer on the LAN should type to reach this machine.

    A UDP socket's connect only picks a route; no packet is sent.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address: str = probe.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        probe.close()
    if not address.startswith("127."):
        return address
    # No route to that probe (a LAN without a gateway): ask the host name.
    with contextlib.suppress(OSError, UnicodeError):
        for candidate in socket.gethostbyname_ex(socket.gethostname())[2]:
            if not candidate.startswith("127."):
                return candidate
    return address


def resolve(
    host: str, port: int, passive: bool, what: str = "host"
) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The first socket address for host:port, or NetworkError naming `what` it is."""
    flags = socket.AI_PASSIVE if passive else 0
    lookup = None if passive and host == "*" else host
    try:
        infos = socket.getaddrinfo(lookup, port, 0, socket.SOCK_STREAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkError(
            f"cannot resolve {what} {host!r}: check the spelling, or use an IP address"
        ) from exc
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


def listen_socket(host: str, port: int, source: str = "config.ini") -> socket.socket:
    """A listening TCP socket on host:port (:: also accepts IPv4).

    `source` says where the port came from (a config file, or --port), for the advice.
    """
    family, address = resolve(host, port, passive=True)
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(address)
        server.listen(LISTEN_BACKLOG)
    except OSError as exc:
        server.close()
        where = f"{format_host(host)}:{port}"
        if getattr(exc, "errno", None) in (98, 48, 10048):  # EADDRINUSE
            advice = f"choose another port in {source}" if source else "choose another port"
            if source == "--port":
                advice = "choose another --port"
            raise NetworkError(
                f"port {port} is already in use on {where}: stop the other program or {advice}"
            ) from exc
        if getattr(exc, "errno", None) in (99, 49, 10049):  # EADDRNOTAVAIL
            raise NetworkError(
                f"cannot listen on {where}: that address is not on this machine; "
                f"set ip = 0.0.0.0 in {source or 'the config'} to listen on all interfaces"
            ) from exc
        raise NetworkError(f"cannot listen on {where}: {describe_os_error(exc)}") from exc
    return server


def connect_socket(
    host: str,
    port: int,
    timeout: float = HANDSHAKE_SECONDS,
    proxy: tuple[str, int] | None = None,
) -> socket.socket:
    """A TCP connection to host:port (through a SOCKS5 proxy if given), or NetworkError."""
    if proxy is None:
        return open_connection(host, port, timeout, proxied=False)
    sock = open_connection(proxy[0], proxy[1], timeout, proxied=True)
    try:
        socks5_connect(sock, host, port)
    except BaseException:
        sock.close()
        raise
    return sock


def open_connection(host: str, port: int, timeout: float, proxied: bool) -> socket.socket:
    """A plain TCP connection to a peer (or to a proxy); errors say what to check."""
    where = f"{'the proxy at ' if proxied else ''}{format_host(host)}:{port}"
    family, address = resolve(host, port, False, "the proxy's host" if proxied else "host")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except TimeoutError as exc:
        sock.close()
        raise NetworkError(
            f"connecting to {where} timed out after {timeout:g} s: check the address "
            "and that no firewall blocks the port"
        ) from exc
    except ConnectionRefusedError as exc:
        sock.close()
        check = (
            "is the proxy running? (check --proxy)"
            if proxied
            else "is the peer listening on that port? (they must start first and choose listen)"
        )
        raise NetworkError(f"connection to {where} refused: {check}") from exc
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot connect to {where}: {describe_os_error(exc)}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# SOCKS5 (RFC 1928), no authentication, CONNECT only. A host name is passed to the
# proxy as a name, so the proxy resolves it (what Tor and `ssh -D` expect).
SOCKS_REPLIES = {
    1: "the proxy failed",
    2: "the proxy's rules do not allow it",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused: is the peer listening on that port?",
    6: "it timed out",
    7: "the proxy does not support CONNECT",
    8: "the proxy does not support that address type",
}


def socks5_request(host: str, port: int) -> bytes:
    """The CONNECT request for host:port: an address as an address, a name as a name."""
    for family, kind in ((socket.AF_INET, 1), (socket.AF_INET6, 4)):
        with contextlib.suppress(OSError):
            address = socket.inet_pton(family, host)
            return bytes([5, 1, 0, kind]) + address + port.to_bytes(2, "big")
    try:
        name = host.encode("idna")
    except UnicodeError:
        raise NetworkError(f"{host!r} is not a host name a SOCKS5 proxy can look up") from None
    if not 0 < len(name) < 256:
        raise NetworkError(f"the host name {host!r} is too long for a SOCKS5 proxy")
    return bytes([5, 1, 0, 3, len(name)]) + name + port.to_bytes(2, "big")


def socks5_connect(sock: socket.socket, host: str, port: int) -> None:
    """Ask the proxy on `sock` to connect to host:port; NetworkError says why it did not."""
    where = f"{format_host(host)}:{port}"
    try:
        sock.sendall(b"\x05\x01\x00")  # version 5, one method: no authentication
        version, method = receive_exactly(sock, 2)
        if version != 5:
            raise NetworkError("that is not a SOCKS5 proxy (check --proxy)")
        if method != 0:
            raise NetworkError("the proxy wants a login, which chatclient does not support")
        sock.sendall(socks5_request(host, port))
        version, reply, _, kind = receive_exactly(sock, 4)
        if version != 5:
            raise NetworkError("that is not a SOCKS5 proxy (check --proxy)")
        if reply != 0:
            reason = SOCKS_REPLIES.get(reply, f"reply {reply}")
            raise NetworkError(f"the proxy could not connect to {where}: {reason}")
        length = {1: 4, 4: 16}.get(kind) or receive_exactly(sock, 1)[0]
        receive_exactly(sock, length + 2)  # the address the proxy bound: not needed
    except TimeoutError as exc:
        raise NetworkError("the proxy did not answer in time (check --proxy)") from exc
    except OSError as exc:
        raise NetworkError(f"the proxy failed: {describe_os_error(exc)}") from exc


def receive_exactly(sock: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes (the socket's timeout bounds each read), or NetworkError."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise NetworkError("the proxy closed the connection (check --proxy)")
        data += chunk
    return data


def parse_proxy(text: str) -> tuple[str, int]:
    """--proxy socks5://HOST:PORT (socks5h:// too: the proxy always resolves names)."""
    scheme, separator, rest = text.strip().partition("://")
    if not separator or scheme.lower() not in ("socks5", "socks5h"):
        raise argparse.ArgumentTypeError(
            f"use socks5://HOST:PORT (e.g. socks5://127.0.0.1:9050), not {text!r}"
        )
    host, port = parse_target(rest.rstrip("/"))
    if port is None:
        raise argparse.ArgumentTypeError(f"the proxy needs a port, e.g. socks5://{host}:1080")
    return host, port


@dataclass(eq=False)
class Link:
    """One TCP connection and its protocol object; only the network thread touches it."""

    sock: socket.socket
    address: tuple[str, int]
    peer: PeerProtocol
    since: float
    fd: int = -1
    outgoing: bytearray = field(default_factory=bytearray)
    last_write: float = 0.0
    established: bool = False  # both WELCOMEs went through: its events go to the user
    leaving: bool = False  # we said goodbye: half-close once it is written
    leave_by: float | None = None  # half-closed: close when the peer has, or by then
    mask: int = selectors.EVENT_READ  # what the selector watches for
    no_room: bool = False  # proven while the room was full: refused once it says who it is
    said_goodbye: bool = False  # its TERMINATE came: the room was told

    @property
    def host(self) -> str:
        """The peer's address without the port."""
        return self.address[0]


class NetworkUser(Protocol):
    """What the network thread reports to (the conversation, or a benchmark)."""

    def connection_events(self, link: Link, events: list[Event]) -> None:
        """Events of a connection in the chat: Established, MessageReceived, Closed, Failed."""

    def refused(self, line: str) -> None:
        """A line about a connection that was refused or dropped."""

    def network_failed(self, error: ChatError) -> None:
        """The network thread itself failed (a bug): nothing more will be reported."""

    def invite_void(self, line: str) -> None:
        """The invite was guessed wrong too often: the listener stops."""


class Network:
    """The one thread that owns every socket, around one `selectors` loop.

    It accepts, runs every handshake, reads into each PeerProtocol, writes each
    peer's bounded outgoing buffer and runs the timers. Other threads never
    touch a socket: they post() commands, which a wake-up socket delivers.
    """

    def __init__(
        self,
        psk: bytes | None,
        username: str,
        user: NetworkUser,
        *,
        identity: Ed25519PrivateKey | None = None,
        judge: Judge = accept_anyone,
        code: str | None = None,
        invite: Invite | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
        keepalive: float = KEEPALIVE_SECONDS,
        handshake_seconds: float = HANDSHAKE_SECONDS,
        capacity: int = 1,
        clock: Callable[[], float] = time.monotonic,
        files_user: FileUser | None = None,
        downloads: str = ".",
        plain_progress: bool = True,
    ) -> None:
        self._psk, self._username, self._user = psk, username, user
        self._identity, self._judge = identity, judge
        self._code, self._invite, self._room_id = code, invite, room
        self._keepalive, self._handshake_seconds = keepalive, handshake_seconds
        self._room, self._clock = Room(capacity), clock
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._commands: deque[Callable[[float], None]] = deque()
        self._urgent: deque[Callable[[float], None]] = deque()  # run first, never held back
        self._wake_pending = False
        self._dirty: dict[int, Link] = {}  # links written to by this pass's commands
        self._senders = threading.Condition()  # senders wait here while the queue is long
        self._senders_waiting = 0
        self._links: dict[int, Link] = {}
        self._server: socket.socket | None = None
        self._accept_paused_until: float | None = None
        self._refusals = RefusalLog()
        self._impostors = RefusalLog()
        self._abandoned = AbandonLog()
        self._leaving = False
        self._invite_reported = False
        self._running = True
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="network", daemon=True)
        self.files = FileDesk(self, files_user, downloads, plain_progress)

    @property
    def username(self) -> str:
        return self._username

    # Called by other threads ------------------------------------------------

    def listen(self, server: socket.socket) -> None:
        """Accept connections on `server` (call before start())."""
        server.setblocking(False)
        self._server = server
        self._selector.register(server, selectors.EVENT_READ, server)

    def connect(self, sock: socket.socket) -> None:
        """Run the connector's side on a connected socket (call before start())."""
        now = self._clock()
        link = self._add(sock, peer_address(sock), Role.CONNECTOR, now)
        self._room.claim(link)  # our own connection: the chat's one place

    def start(self) -> None:
        """Start the network thread."""
        self._thread.start()

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        """Run `command(now)` on the network thread, in order; `urgent` ones first.

        Urgent commands are not held back while a slow peer sets the pace, and
        always send a wake-up, so one can never wait behind a stale flag.
        """
        (self._urgent if urgent else self._commands).append(command)
        if threading.get_ident() == self._thread.ident:
            return  # the loop runs it in this pass
        if self._wake_pending and not urgent:
            return  # a wake-up is already on its way
        self._wake_pending = True
        with contextlib.suppress(OSError):  # a full wake-up buffer already means "wake up"
            self._wake_writer.send(b"\0")

    def send(self, message: Message) -> None:
        """Send a message to everyone in the chat; waits while many are still queued.

        The wait is how a peer that reads slowly slows this side down instead of
        letting unsent messages pile up without bound.
        """
        self.post(lambda now: self._broadcast(message, now))
        if len(self._commands) <= MAX_QUEUED_COMMANDS:
            return
        if threading.get_ident() == self._thread.ident:
            return
        with self._senders:
            self._senders_waiting += 1
            try:
                self._senders.wait_for(
                    lambda: (
                        len(self._commands) <= MAX_QUEUED_COMMANDS // 2 or self.finished.is_set()
                    )
                )
            finally:
                self._senders_waiting -= 1

    def leave(self, goodbye: str) -> None:
        """After what is queued, say goodbye, stop accepting, and finish once all have closed."""
        self.post(lambda now: self._leave(goodbye, now))
        # Always a wake-up of its own: Ctrl-C (the usual way to leave) may have
        # stopped an earlier post() between setting the flag and waking the loop.
        self.post(lambda now: None, urgent=True)

    def stop(self, timeout: float = GOODBYE_DRAIN_SECONDS) -> None:
        """Close every socket and end the thread, whatever is still queued."""
        self.post(self._stop, urgent=True)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # The loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._running:
                timeout = self._run_timers(self._clock())
                ready = self._selector.select(0 if self._dirty else timeout)
                now = self._clock()
                for key, mask in ready:
                    self._dispatch(key.data, mask, now)
                self._run_commands(now)
        except Exception as exc:  # a bug: end the chat (or the wait for one), never hang
            self._user.network_failed(
                ConnectionLost(f"internal error in the network thread: {exc!r} (please report it)")
            )
            raise
        finally:
            self._close_everything()
            self.finished.set()
            with self._senders:
                self._senders.notify_all()

    def _run_commands(self, now: float) -> None:
        # Cleared first: a command posted from now on sends a wake-up of its own.
        self._wake_pending = False
        while self._urgent:
            self._urgent.popleft()(now)
        while self._commands and self._running and not self._backlogged():
            self._commands.popleft()(now)
        # Written once per pass, however many messages the commands queued. Writing one
        # link may queue for another (a relayed file's credit): a few rounds, and what is
        # left makes the next select return at once.
        for _ in range(SETTLE_ROUNDS):
            dirty, self._dirty = self._dirty, {}
            for link in dirty.values():
                if self._is_open(link):
                    self._settle(link, now)
            if not self._dirty:
                break
        if self._senders_waiting and len(self._commands) <= MAX_QUEUED_COMMANDS // 2:
            with self._senders:
                self._senders.notify_all()

    def _backlogged(self) -> bool:
        """True while every peer written to has over HIGH_WATER unsent: they set the pace.

        The rest of the commands wait in the queue; a writable socket wakes the
        loop again, so they run as soon as a peer has read some. One slow peer
        among faster ones holds nobody back: its buffer grows to MAX_OUTGOING
        and it is dropped as not reading.
        """
        if not self._dirty:
            return False
        for link in list(self._dirty.values()):
            if len(link.outgoing) > HIGH_WATER and self._is_open(link):
                self._settle(link, self._clock())  # write what the socket takes now
            if len(link.outgoing) <= HIGH_WATER or not self._is_open(link):
                return False
        return True

    def _dispatch(self, data: object, mask: int, now: float) -> None:
        if data is None:
            with contextlib.suppress(OSError):
                self._wake_reader.recv(4096)  # one byte per wake-up: one read empties it
        elif data is self._server:
            self._accept(now)
        elif isinstance(data, Link) and self._is_open(data):
            if mask & selectors.EVENT_READ:
                self._read(data, now)
            if mask & selectors.EVENT_WRITE and self._is_open(data):
                self._settle(data, now)

    def _is_open(self, link: Link) -> bool:
        # By identity: a closed link's descriptor number may already be a new link's.
        return self._links.get(link.fd) is link

    def _run_timers(self, now: float) -> float | None:
        """Apply every deadline due now; seconds until the next one (None: no deadline)."""
        deadlines: list[float] = []
        for link in list(self._links.values()):
            if not self._is_open(link):
                continue  # closed by an earlier link's turn in this loop
            if (due := link.peer.timers(now)) is not None:
                deadlines.append(due)
            if link.outgoing:
                stalled = link.last_write + link.peer.silence_limit
                if now >= stalled:
                    link.outgoing.clear()
                    link.peer.connection_failed(
                        f"the peer has not read anything for {link.peer.silence_limit:g} s"
                    )
                deadlines.append(stalled)
            if link.leave_by is not None:
                if now >= link.leave_by:
                    self._close(link)
                    continue
                deadlines.append(link.leave_by)
            if link.peer.pending() or link.peer.stage is Stage.CLOSED:
                self._settle(link, now)
        for log in (self._refusals, self._impostors, self._abandoned):
            for line in log.summaries(now):
                self._user.refused(line)
            if (due := log.next_deadline()) is not None:
                deadlines.append(due)
        if self._accept_paused_until is not None:
            if now >= self._accept_paused_until:
                self._resume_accepting()
            else:
                deadlines.append(self._accept_paused_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    # Connections ----------------------------------------------------------------

    def _accept(self, now: float) -> None:
        assert self._server is not None
        for _ in range(LISTEN_BACKLOG):  # a batch, then the other sockets get a turn
            try:
                sock, address = self._server.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of file descriptors: pause rather than spin
                self._user.refused(f"Not accepting connections for 1 s: {describe_os_error(exc)}")
                self._selector.unregister(self._server)
                self._accept_paused_until = now + 1.0
                return
            host, port = unmap(str(address[0])), int(address[1])
            pending = [
                Pending(link.host, link.since, link.peer.greeted, link.fd)
                for link in self._links.values()
                if link not in self._room and link.peer.stage in HANDSHAKE_STAGES
            ]
            if (eviction := handshake_to_evict(pending, host)) is not None:
                victim, reason = eviction
                self._report(self._links[victim.key], "Dropped a connection from", reason, now)
                self._close(self._links[victim.key])
            self._add(sock, (host, port), Role.LISTENER, now)

    def _resume_accepting(self) -> None:
        self._accept_paused_until = None
        if self._server is not None and not self._leaving:
            self._selector.register(self._server, selectors.EVENT_READ, self._server)

    def _add(self, sock: socket.socket, address: tuple[str, int], role: Role, now: float) -> Link:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        links: list[Link] = []  # the judge needs the link this PeerProtocol is made for
        peer = PeerProtocol(
            role,
            self._psk,
            self._username,
            now,
            identity=self._identity,
            judge=self._judge if role is Role.CONNECTOR else partial(self._judge_joiner, links),
            code=self._code if role is Role.CONNECTOR else None,
            invite=self._invite if role is Role.LISTENER else None,
            room=self._room_id,
            handshake_seconds=self._handshake_seconds,
            keepalive=self._keepalive,
        )
        link = Link(sock, address, peer, since=now, fd=sock.fileno(), last_write=now)
        links.append(link)
        self._links[link.fd] = link
        self._selector.register(sock, selectors.EVENT_READ, link)
        self._settle(link, now)
        return link

    def _read(self, link: Link, now: float) -> None:
        try:
            data = link.sock.recv(FILE_READ_SIZE if self.files.busy(link) else 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            link.peer.connection_failed(describe_os_error(exc))
        else:
            link.peer.receive_data(data, now)
        self._settle(link, now)

    def _settle(self, link: Link, now: float) -> None:
        """Pass the link's events on, write what it owes, close it once it is over."""
        while True:
            self._hand_over_events(link, now)
            if self._write(link, now):
                break
        if link.peer.stage is Stage.CLOSED:
            self._close(link)
        elif self._is_open(link):
            writing = link.outgoing or self.files.has_data(link)
            wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            if link.mask != wanted:
                link.mask = wanted
                self._selector.modify(link.sock, wanted, link)

    def _hand_over_events(self, link: Link, now: float) -> None:
        shown: list[Event] = []
        while (event := link.peer.next_event()) is not None:
            if isinstance(event, ChunkReceived):
                self.files.chunk(link, event, now)
            elif isinstance(event, MessageReceived) and isinstance(event.message, FILE_MESSAGES):
                self.files.message(link, event.message, now)
            elif isinstance(event, KeyProven):
                self._admit_or_refuse(link)
            elif link.peer.role is Role.LISTENER and (
                isinstance(event, Established) or link.established
            ):
                link.established = True
                shown += self._host(link, event, now)
            elif isinstance(event, Established) or link.established:
                link.established = True
                shown.append(event)
            elif link.peer.role is Role.CONNECTOR:
                shown.append(event)  # our own connection failed: the user says why
            elif isinstance(event, Failed):
                self._room.release(link)  # an admitted connector that vanished frees its place
                self._refused(link, event.error, now)
        link.outgoing += link.peer.data_to_send()
        if shown:
            self._user.connection_events(link, shown)

    def _admit_or_refuse(self, link: Link) -> None:
        # The place is claimed before our WELCOME goes out, so when two proven
        # connectors race for the last place, the second is told the room is full.
        if self._leaving:
            link.peer.refuse(Reject.BUSY)
            return
        link.no_room = not self._room.claim(link)
        link.peer.admit()

    def _judge_joiner(self, links: list[Link], name: str, identity: bytes, mode: Mode) -> None:
        """The host's judge: a place and a free name, then known_peers."""
        if links[0].no_room:
            raise IdentityRefused(
                Refuse.ROOM_FULL, "the chat is full", name, number=self._room.capacity
            )
        if name == self._username or self._room.taken(name):
            raise IdentityRefused(Refuse.NAME_TAKEN, f"the name {name} is taken here", name)
        self._judge(name, identity, mode)
        self._room.hold(links[0], name)

    # The room (this side hosts it) -------------------------------------------------

    def _host(self, link: Link, event: Event, now: float) -> list[Event]:
        """Relay what a member's connection brings; the events this side's user sees."""
        if isinstance(event, Established):
            person = Person(event.name, event.identity, format_address(link.address))
            self._to(link, Members(self._room.people(now)), now)
            for member in self._room.others(link):
                self._to(member, Joined(person), now)
            self._room.seat(link, person, now)
            return [event]
        author = self._room.person(link)
        if isinstance(event, MessageReceived) and author is not None:
            return self._relay(link, author, event.message, now)
        if isinstance(event, (Closed, Failed)):
            gone = self._room.release(link)
            if gone is not None and not link.said_goodbye:
                self._tell_room(Left(gone.name, lost=True), now)
        return [event]

    def _relay(self, link: Link, author: Person, message: Message, now: float) -> list[Event]:
        if not isinstance(message, MEMBER_SENDS):
            link.peer.connection_failed(f"it sent {message.kind()}, which only a host sends")
            return []
        if isinstance(message, Say):
            # The signature is not checked here: this connection already proves who sent
            # it, and the others check it (110 us an Ed25519 check, measured: the host would
            # pay it for every message of the room). The numbering costs nothing to check.
            if not self._room.in_sequence(link, message):
                link.peer.connection_failed("it sent a message out of sequence")
                return []
            said = Said(author.name, message)
            for member in self._room.audience(link, message):
                self._to(member, said, now)
            if message.to and message.to != self._username:
                return []  # a private message between two others: relayed, not shown
            return [MessageReceived(said)]
        if isinstance(message, Terminate):
            link.said_goodbye = True
            self._tell_room(Left(author.name, text=message.text), now, but=link)
        # Unsigned words (CHAT, ACTION) are from a member who knew of nobody but the host:
        # shown here, relayed to no one, since nobody else could check who said them.
        return [MessageReceived(message)]

    def _tell_room(self, message: Message, now: float, but: object = None) -> None:
        for member in self._room.others(but):
            self._to(member, message, now)

    def _to(self, member: object, message: Message, now: float) -> None:
        """Queue `message` for one member (written at the end of this pass)."""
        assert isinstance(member, Link)
        if self._is_open(member) and member.peer.stage is Stage.OPEN and not member.leaving:
            member.outgoing += member.peer.data_to_send()
            member.outgoing += member.peer.send(message, now)
            self._dirty[member.fd] = member

    def _write(self, link: Link, now: float) -> bool:
        """Write what the socket takes now; False when writing failed (events to pass on)."""
        if len(link.outgoing) > MAX_OUTGOING:
            link.outgoing.clear()
            link.peer.connection_failed(
                f"the peer is not reading: over {MAX_OUTGOING // 2**20} MiB waiting for it"
            )
            return False
        # File chunks are queued only once everything else is written, so a line typed
        # during a transfer waits behind one chunk at most; a bounded batch per turn.
        for _ in range(FILE_CHUNKS_PER_TURN):
            if link.outgoing:
                try:
                    sent = link.sock.send(link.outgoing)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    link.outgoing.clear()
                    link.peer.connection_failed(describe_os_error(exc))
                    return False
                if sent:
                    del link.outgoing[:sent]
                    link.last_write = now
            if link.outgoing or link.leaving or link.peer.stage is not Stage.OPEN:
                break
            if not self.files.pump(link, now):
                break
        if not link.outgoing:
            link.last_write = now
            if link.leaving and link.leave_by is None:
                # Everything up to our goodbye is written: the peer reads it, then end
                # of stream; it has GOODBYE_DRAIN_SECONDS to close its end too.
                link.leave_by = now + GOODBYE_DRAIN_SECONDS
                with contextlib.suppress(OSError):
                    link.sock.shutdown(socket.SHUT_WR)
        return True

    def _close(self, link: Link) -> None:
        if not self._is_open(link):
            return
        del self._links[link.fd]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(link.sock)
        if link.outgoing and link.peer.stage is Stage.CLOSED:  # a refusal not written yet
            with contextlib.suppress(OSError):
                link.sock.send(link.outgoing)
        link.sock.close()
        self._room.release(link)
        self.files.link_closed(link, self._clock())
        if self._leaving and not self._room:
            self._running = False

    def _refused(self, link: Link, error: ChatError, now: float) -> None:
        """A connector that did not get in: said once, counted if it gave up halfway."""
        if link.peer.abandoned:
            if (line := self._abandoned.abandoned(link.host, now)) is not None:
                self._user.refused(line)
        elif link.peer.mode is Mode.INVITE and isinstance(error, KeyMismatch):
            # Each wrong code is shown: there are only MAX_INVITE_FAILURES of them.
            self._user.refused(f"Refused a connection from {link.address!r}: {error}")
        elif isinstance(error, IdentityRefused) and error.reason is Refuse.IDENTITY_CHANGED:
            # Loud whatever else that address did, and even during a chat; one warning
            # per claimed name every REFUSAL_SUMMARY_SECONDS, the rest counted.
            line = f"Refused a connection from {link.address!r}: {error}"
            claimed = f"someone claiming to be {sanitize(error.name)}"
            if (shown := self._impostors.refused(claimed, line, now)) is not None:
                self._user.refused(shown)
        else:
            self._report(link, "Refused a connection from", str(error), now)
        invite = self._invite
        if invite is not None and invite.void and not self._invite_reported:
            self._invite_reported = True
            self._user.invite_void(
                f"the invite code {invite.code} is void: it was tried {MAX_INVITE_FAILURES} "
                f"times with a wrong code, and nobody got in. Run {PROGRAM} --invite for a "
                "new code"
            )

    def _report(self, link: Link, what: str, reason: str, now: float) -> None:
        """A refusal line, unless the chat is full (then it is on screen: stay quiet)."""
        if self._room.full:
            return
        line = f"{what} {link.address!r}: {reason}"
        if (shown := self._refusals.refused(link.host, line, now)) is not None:
            self._user.refused(shown)

    # Commands (run on the network thread) ------------------------------------------

    def _broadcast(self, message: Message, now: float) -> None:
        for link in list(self._links.values()):  # only queued here: nothing closes meanwhile
            if link in self._room and link.established:
                self._to(link, message, now)

    def offer(self, invite: Invite) -> None:
        """From now on, connections may join with `invite` (the one before is void)."""

        def replace_invite(now: float) -> None:
            self._invite, self._invite_reported = invite, False

        self.post(replace_invite)

    def deliver(self, link: Link, message: Message, now: float) -> None:
        """On the network thread: queue `message` for one connection in the chat (one that
        cannot be encoded is a bug here, reported; it never ends the network thread)."""
        try:
            self._to(link, message, now)
        except ChatError as exc:
            self._user.refused(f"error: could not send {message.kind()}: {exc} (please report it)")

    def nudge(self, link: Link) -> None:
        """From any thread: let `link` write again (a file chunk became ready)."""

        def mark(now: float) -> None:
            if self._is_open(link):
                self._dirty[link.fd] = link

        self.post(mark, urgent=True)

    def low_water(self, link: Link) -> None:
        """Keep little of a file unsent in the kernel, so chat never waits behind much."""
        option = getattr(socket, "TCP_NOTSENT_LOWAT", 25 if sys.platform == "linux" else None)
        if option is not None:
            with contextlib.suppress(OSError):
                link.sock.setsockopt(socket.IPPROTO_TCP, option, NOT_SENT_LOW_WATER)

    def route_to(self, name: str, is_host: bool) -> tuple[Link, str] | None:
        """On the network thread: the connection to reach `name` by, and the WHO to write."""
        if self._server is not None or any(
            link.peer.role is Role.LISTENER for link in self._links.values()
        ):
            member = self._room.named(name)
            return (member, "") if isinstance(member, Link) and member.established else None
        for link in self._links.values():
            if link.peer.role is Role.CONNECTOR and link.established:
                return link, "" if is_host else name
        return None

    def send_to(self, name: str, message: Message) -> None:
        """Send a message to the one member called `name` (the host's private words)."""

        def deliver(now: float) -> None:
            if (member := self._room.named(name)) is not None:
                self._to(member, message, now)

        self.post(deliver)

    def _leave(self, goodbye: str, now: float) -> None:
        self._leaving = True
        if self._server is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._server)
            self._server.close()
            self._server = None
        for link in list(self._links.values()):
            if link in self._room and link.peer.stage is Stage.OPEN:
                link.leaving = True
                link.outgoing += link.peer.data_to_send()
                link.outgoing += link.peer.send(Terminate(goodbye), now)
                self._settle(link, now)
            else:
                self._close(link)
        if not self._room:
            self._running = False

    def _stop(self, now: float) -> None:
        self._running = False

    def _close_everything(self) -> None:
        for link in list(self._links.values()):
            self._close(link)
        if self._server is not None:
            self._server.close()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()


def peer_address(sock: socket.socket) -> tuple[str, int]:
    """The peer's (host, port), or HandshakeError if it already vanished."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError as exc:
        raise HandshakeError("the peer vanished right after the handshake") from exc
    return unmap(host), port


# --- Files: disk workers and the transfer desk ------------------------------------
#
# The network thread keeps every transfer's state (the FileDesk) and never waits for a
# disk: a FileSource thread reads each file being sent ahead of the network, a FileSink
# thread writes each file being received, and both report back through post(). The
# receiver grants credit as it writes, so a slow disk slows its own transfer only.

FILE_WINDOW = 4 * 1024 * 1024  # what a receiver grants before it has written anything
CREDIT_STEP = 512 * 1024  # written bytes are granted back in steps of at least this
READ_AHEAD = 32  # chunks a FileSource holds ready (it reads READ_BLOCK more at a time)
READ_BLOCK = 16  # chunks read (and written) with one system call
HASH_LAG = 16  # blocks a FileSink's hashing may be behind its writing
SINK_CLOSE_SECONDS = 0.5  # a cancel waits this long for a write under way to end
HASH_BLOCK = 1024 * 1024
PROGRESS_SECONDS = 0.25  # the status line is redrawn at most this often
# While a file moves on a connection, the kernel holds at most this much of it unsent,
# so a line typed meanwhile waits behind no more than this.
NOT_SENT_LOW_WATER = 128 * 1024
MAX_OPEN_OFFERS = 64  # offers waiting for an answer, per connection
MAX_KEPT_TRANSFERS = 1000  # ended transfers beyond this are forgotten, oldest first
# Files are read and written at offsets, never following links: POSIX calls (Linux, macOS).
FILES_WORK_HERE = all(hasattr(os, name) for name in ("pread", "pwritev", "O_NOFOLLOW", "statvfs"))
NO_FILES_HERE = "sending and receiving files needs Linux, macOS or another POSIX system"
FINISH_WRITING_SECONDS = 30.0  # at exit, received data still queued is written first
FILE_CHUNKS_PER_TURN = 32  # chunks written to one connection before the others get a turn
FILE_READ_SIZE = 256 * 1024  # bytes read at once while a file comes in


def open_for_sending(path: str) -> tuple[int, int]:
    """(descriptor, size) of a regular file to send; ChatError saying why not."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ChatError(f"{path} is a folder: send one file (zip the folder first)")
        if not stat.S_ISREG(info.st_mode):
            raise ChatError(f"{path} is not a regular file (a device, FIFO or socket)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ChatError(f"no such file: {path}") from None
    except OSError as exc:
        raise ChatError(f"cannot read {path}: {describe_os_error(exc)}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped for something else since the stat
        os.close(fd)
        raise ChatError(f"{path} is not a regular file (a device, FIFO or socket)")
    return fd, info.st_size


def file_stamp(fd: int) -> tuple[int, int, int]:
    """What changes whenever a file's content does: size, modification and change times.

    The change time (ctime) is set by every write and cannot be set back by anyone.
    """
    info = os.fstat(fd)
    return info.st_size, info.st_mtime_ns, info.st_ctime_ns


def hash_start(fd: int, size: int, shorter: str) -> hashlib._Hash:
    """A SHA-256 fed a file's first `size` bytes; ChatError(`shorter`) if it has fewer."""
    digest, offset = hashlib.sha256(), 0
    while offset < size:
        block = os.pread(fd, min(HASH_BLOCK, size - offset), offset)
        if not block:
            raise ChatError(shorter)
        digest.update(block)
        offset += len(block)
    return digest


def hash_file(fd: int, size: int) -> tuple[bytes, tuple[int, int, int]]:
    """The SHA-256 of a file of `size` bytes, and its stamp; ChatError if it changed
    while it was being read."""
    stamp = file_stamp(fd)
    digest = hash_start(fd, size, "it got shorter while it was being read")
    if file_stamp(fd) != stamp or stamp[0] != size:
        raise ChatError("it changed while it was being read: send it once it is final")
    return digest.digest(), stamp


@dataclass(frozen=True)
class PreparedFile:
    """A file checked and hashed, ready to offer (each transfer reads its own copy of fd)."""

    path: str
    name: str
    fd: int
    size: int
    digest: bytes
    stamp: tuple[int, int, int]  # file_stamp() when it was hashed


def free_space(folder: str) -> int:
    """Bytes free for us in `folder`."""
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


def find_partial(folder: str, size: int, digest: bytes, sender: bytes) -> tuple[str, int] | None:
    """An earlier partial download of this very file from this sender: (part, its length)."""
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(PART_SUFFIX + META_SUFFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                with open(entry.path, encoding="utf-8") as file:
                    info = PartialInfo.parse(file.read(4096))
                part = entry.path[: -len(META_SUFFIX)]
                length = os.lstat(part)
            except (OSError, UnicodeDecodeError):
                continue
            if (
                info is not None
                and (info.size, info.digest, info.sender) == (size, digest, sender)
                and stat.S_ISREG(length.st_mode)
                and length.st_size <= size
            ):
                return part, length.st_size
    return None


def create_part(folder: str, name: str, record: str) -> tuple[int, str]:
    """A new NAME.part (or NAME (1).part, ...) in `folder` and its NAME.part.meta holding
    `record`, both new, never following a link."""
    flags = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for number in range(10_000):
        part = os.path.join(folder, numbered(name, number) + PART_SUFFIX)
        try:
            fd = os.open(part, os.O_RDWR | flags, 0o666)
        except FileExistsError:
            continue
        try:
            meta = os.open(part + META_SUFFIX, os.O_WRONLY | flags, 0o666)
        except FileExistsError:
            os.close(fd)
            os.unlink(part)
            continue
        except OSError:
            os.close(fd)
            os.unlink(part)
            raise
        with os.fdopen(meta, "w", encoding="utf-8") as file:
            file.write(record)
        if not inside(folder, part):
            os.close(fd)
            remove_quietly(part, part + META_SUFFIX)
            break
        return fd, part
    raise ChatError(f"no free name for {name} in {folder}")


def inside(folder: str, path: str) -> bool:
    """True when `path`, links resolved, is directly in `folder`, links resolved."""
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def place_file(part: str, folder: str, name: str) -> str:
    """Move a finished NAME.part to NAME, or NAME (1), ...: never over an existing file."""
    for number in range(10_000):
        final = os.path.join(folder, numbered(name, number))
        try:  # the name is reserved first, so nobody's file is ever replaced
            os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            continue
        if not inside(folder, final):
            os.unlink(final)
            break
        try:
            os.replace(part, final)
        except OSError:
            remove_quietly(final)  # the reservation, empty
            raise
        return final
    raise ChatError(f"no free name for {name} in {folder}")


def remove_quietly(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


class FileSource:
    """One file being sent, read ahead of the network in a thread of its own.

    It checks the file's stamp as it reads (every few chunks and after the last): a file
    changed since it was hashed ends with a verdict saying so, never with a corrupt copy.
    The stamp costs a stat where hashing again would cost a second pass over the file.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        stamp: tuple[int, int, int],
        offset: int,
        wake: Callable[[], None],
    ) -> None:
        self._fd, self._size, self._stamp, self._offset = fd, size, stamp, offset
        self._wake = wake
        self._ready: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._waiting = False  # the network found nothing ready: wake it for the next
        self.verdict: str | None = None  # once all is read: "" unchanged, else what happened
        threading.Thread(target=self._run, name="file-source", daemon=True).start()

    def take(self) -> bytes | None:
        """The next chunk, or None (then the network is woken when one is ready)."""
        with self._cond:
            if self._ready:
                self._cond.notify()
                return self._ready.popleft()
            self._waiting = True
            return None

    def ready(self) -> bool:
        """True when a chunk is ready to take."""
        return bool(self._ready)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify()

    def _run(self) -> None:
        try:
            verdict = self._read()
        except OSError as exc:
            verdict = f"could not be read ({describe_os_error(exc)})"
        finally:
            os.close(self._fd)
        with self._cond:
            self.verdict = verdict
        self._wake()

    def _read(self) -> str:
        position = self._offset
        while position < self._size:  # a block of chunks per read: fewer calls, fewer handovers
            wanted = min(CHUNK_SIZE * READ_BLOCK, self._size - position)
            block = os.pread(self._fd, wanted, position)
            if len(block) < wanted:
                return "got shorter while it was being sent"
            position += len(block)
            if file_stamp(self._fd) != self._stamp:
                return "changed while it was being sent"
            chunks = [block[i : i + CHUNK_SIZE] for i in range(0, len(block), CHUNK_SIZE)]
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self._ready) < READ_AHEAD)
                if self._closed:
                    return ""
                self._ready.extend(chunks)
                wake, self._waiting = self._waiting, False
            if wake:
                self._wake()
        if file_stamp(self._fd) != self._stamp:
            return "changed while it was being sent"
        return ""


class FileSink:
    """One file being received, written to NAME.part by a thread of its own.

    Each write is granted back as credit; after the sender's DONE the whole file's
    SHA-256 is checked, and only a match is moved into place.
    """

    def __init__(
        self,
        fd: int,
        part: str,
        offset: int,
        digest: bytes,
        place: Callable[[str], str],
        report: Callable[[str, int, str], None],
    ) -> None:
        self.part, self._fd, self._offset, self._digest = part, fd, offset, digest
        self._place, self._report = place, report  # report(kind, bytes, text)
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._finishing = False
        self._stopping = False  # write what came, then stop: the .part stays to resume
        self._closed = False
        self._busy = False  # a write is under way
        self.thread = threading.Thread(target=self._run, name="file-sink", daemon=True)
        self.thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            self._queue.append(data)
            self._cond.notify()

    def finish(self) -> None:
        """Every byte has been put: check and place the file."""
        with self._cond:
            self._finishing = True
            self._cond.notify()

    def close(self, keep: bool) -> None:
        """Stop: keep the .part to resume (every byte that came is written first), or
        delete it with its record (by the writer, which may be in the middle of a write)."""
        with self._cond:
            if keep:
                self._stopping = True
            else:
                self._closed = True
                self._queue.clear()
                self._cond.notify_all()
                # A write under way ends first (a slow disk: the writer deletes it later).
                if self._cond.wait_for(lambda: not self._busy, SINK_CLOSE_SECONDS):
                    self._discard()
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._write()
        except (OSError, ChatError) as exc:
            self._discard()
            failed = f"writing it failed: {describe_os_error(exc)}"
            self._report("failed", 0, str(exc) if isinstance(exc, ChatError) else failed)
        finally:
            os.close(self._fd)
            with self._cond:
                discard = self._closed
            if discard:  # cancelled: nothing of it stays
                self._discard()

    def _discard(self) -> None:
        """Delete the .part and its record."""
        remove_quietly(self.part, self.part + META_SUFFIX)

    def _write(self) -> None:
        shorter = f"{self.part} got shorter while it was being resumed"
        digest = hash_start(self._fd, self._offset, shorter)  # what an earlier session wrote
        # Hashing runs beside the writing (both let go of the GIL), in a thread of its own
        # at most HASH_LAG blocks behind.
        hashing: queue.Queue[list[bytes] | None] = queue.Queue(HASH_LAG)

        def hash_blocks() -> None:
            while (blocks := hashing.get()) is not None:
                for data in blocks:
                    digest.update(data)

        hasher = threading.Thread(target=hash_blocks, name="file-hash", daemon=True)
        hasher.start()
        try:
            finished = self._write_blocks(self._offset, hashing)
        finally:
            hashing.put(None)
            hasher.join()
        os.fsync(self._fd)
        if finished:
            self._check_and_place(digest.digest())

    def _write_blocks(self, position: int, hashing: queue.Queue[list[bytes] | None]) -> bool:
        """Write what comes: True once the sender is done, False if stopped before."""
        unreported = 0
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(
                    lambda: self._queue or self._finishing or self._stopping or self._closed
                )
                if self._closed:
                    return False
                batch = [self._queue.popleft() for _ in range(min(READ_BLOCK, len(self._queue)))]
                idle, self._busy = not self._queue, bool(batch)
            if not batch:
                return not self._stopping
            hashing.put(batch)
            size = sum(map(len, batch))
            written = os.pwritev(self._fd, batch, position)
            if written < size:  # rare: write the rest one buffer at a time
                rest = memoryview(b"".join(batch))[written:]
                while rest:
                    more = os.pwrite(self._fd, rest, position + written)
                    rest, written = rest[more:], written + more
            position += size
            unreported += size
            if unreported >= CREDIT_STEP or idle:
                self._report("written", unreported, "")
                unreported = 0

    def _check_and_place(self, digest: bytes) -> None:
        """The whole file's SHA-256 against the offer's; only a match is moved into place."""
        if not hmac.compare_digest(digest, self._digest):
            self._discard()
            self._report("mismatch", 0, "")
            return
        with self._cond:  # a cancel now waits until the file is in place, or stops it
            if self._closed:
                return
            final = self._place(self.part)
        remove_quietly(self.part + META_SUFFIX)
        self._report("saved", 0, final)


class Moving(Enum):
    """Where a transfer stands."""

    OFFERED = "offered"
    MOVING = "moving"
    CHECKING = "checking its SHA-256"
    DONE = "done"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    FAILED = "failed"


ENDED = frozenset({Moving.DONE, Moving.DECLINED, Moving.CANCELLED, Moving.FAILED})


@dataclass(eq=False)
class Transfer:
    """One file moving over one connection, seen from this side."""

    number: int  # what the person types (0: a leg the host relays, not shown)
    link: Link
    id: int  # on this connection's wire: ours when sending, the peer's when receiving
    sending: bool
    name: str  # as offered when sending; the safe name it is saved as when receiving
    size: int
    digest: bytes
    person: str  # the far end: who it is for, or who offers it
    state: Moving = Moving.OFFERED
    offset: int = 0  # where the data starts (past 0: a resume)
    position: int = 0  # the next byte on the wire
    credit: int = 0  # bytes the sender may still send
    started: float = 0.0
    fd: int = -1  # sending: the file, until a FileSource takes it
    stamp: tuple[int, int, int] = (0, 0, 0)  # sending: file_stamp() when it was hashed
    source: FileSource | None = None
    sink: FileSink | None = None
    partner: Transfer | None = None  # relayed by the host: the other leg
    relayed: deque[bytes] = field(default_factory=deque)  # host: data for the other leg
    done: bool = False  # sender: FILEDONE came (relay) or was sent
    cancelled_here: bool = False  # we stopped it: its data still in flight is dropped
    complained: bool = False  # data after its end was reported once
    quarter: int = 0  # plain progress lines shown (at 25, 50, 75%)
    ungranted: int = 0  # host: bytes of this leg passed on, not yet granted back

    @property
    def ours(self) -> bool:
        return self.number > 0

    @property
    def percent(self) -> int:
        return self.position * 100 // self.size if self.size else 100


class FileUser(Protocol):
    """What the desk reports to (the conversation)."""

    def file_lines(self, lines: list[str], error: bool = False) -> None:
        """Lines about transfers."""

    def file_status(self, text: str) -> None:
        """The progress of the transfers moving now ('' when none is)."""

    def identity_of(self, name: str) -> bytes | None:
        """The identity key of someone in the chat."""


class FileDesk:
    """Every transfer of this side, on the network thread: offers, credit, chunks.

    It is told what arrives (message(), chunk()), asked for the next chunk when a
    connection has nothing else to write (pump()), and runs the person's commands.
    """

    def __init__(
        self,
        net: Network,
        user: FileUser | None,
        downloads: str,
        plain_progress: bool,
    ) -> None:
        self._net, self._user, self.downloads = net, user, downloads
        self._plain = plain_progress
        self._transfers: list[Transfer] = []
        self._sending: dict[tuple[Link, int], Transfer] = {}
        self._receiving: dict[tuple[Link, int], Transfer] = {}
        self._next_id: dict[Link, int] = {}
        self._numbers = 0
        self._status = ""
        self._status_at = 0.0
        self._sinks: list[FileSink] = []  # every writer still running (or just finished)
        self._complained: set[tuple[Link, int]] = set()

    # Reports -------------------------------------------------------------------------

    def _say(self, *lines: str) -> None:
        if self._user is not None:
            self._user.file_lines(list(lines))

    def _error(self, *lines: str) -> None:
        if self._user is not None:
            self._user.file_lines(list(lines), error=True)

    def _progress(self, now: float, force: bool = False) -> None:
        if self._user is None:
            return
        moving = [t for t in self._transfers if t.ours and t.state is Moving.MOVING]
        if self._plain:  # a file in one chunk has no quarters to report
            for t in (t for t in moving if t.size > CHUNK_SIZE):
                while t.quarter < min(3, t.percent // 25):
                    t.quarter += 1
                    way = f"sent to {sanitize(t.person)}" if t.sending else "received"
                    self._say(
                        f"{sanitize(t.name)}: {25 * t.quarter}% of {format_size(t.size)} {way}"
                    )
            return
        if not force and now - self._status_at < PROGRESS_SECONDS:
            return
        self._status_at = now
        text = " | ".join(
            progress_text(
                sanitize(t.name), t.position, t.size, now - t.started, t.position - t.offset
            )
            for t in moving
        )
        if text != self._status:
            self._status = text
            self._user.file_status(text)

    # Offers, answers, cancels: the person's commands -------------------------------------

    def offer(self, prepared: PreparedFile, targets: list[tuple[str, bool]], now: float) -> None:
        """Offer a hashed file to each (name, is_the_host) of `targets`."""
        offered = []
        try:
            for name, is_host in targets:
                route = self._net.route_to(name, is_host)
                if route is None:
                    self._error(f"error: {sanitize(name)} is no longer in the chat: not offered")
                    continue
                link, who = route
                try:
                    fd = os.dup(prepared.fd)
                except OSError as exc:
                    self._error(f"error: cannot offer it to {sanitize(name)}: {exc.strerror}")
                    continue
                number = self._next_id.get(link, 0) + 1
                self._next_id[link] = number
                transfer = self._add(
                    link, number, True, prepared.name, prepared.size, prepared.digest, name
                )
                transfer.fd, transfer.stamp = fd, prepared.stamp
                self._net.deliver(
                    link, FileOffer(number, prepared.size, prepared.digest, prepared.name, who), now
                )
                offered.append(sanitize(name))
        finally:
            os.close(prepared.fd)
        if offered:
            self._say(
                f"Offered {sanitize(prepared.name)} ({format_size(prepared.size)}) to "
                f"{', '.join(offered)}."
            )

    def _add(
        self,
        link: Link,
        number: int,
        sending: bool,
        name: str,
        size: int,
        digest: bytes,
        person: str,
        shown: bool = True,
    ) -> Transfer:
        if shown:
            self._numbers += 1
        transfer = Transfer(
            self._numbers if shown else 0, link, number, sending, name, size, digest, person
        )
        (self._sending if sending else self._receiving)[(link, number)] = transfer
        self._transfers.append(transfer)
        if len(self._transfers) > MAX_KEPT_TRANSFERS:
            self._forget_ended()
        return transfer

    def _forget_ended(self) -> None:
        """Drop ended transfers (relayed ones first, then the oldest), so that a peer
        offering and cancelling forever costs bounded memory; /files shows the rest."""
        ended = [t for t in self._transfers if t.state in ENDED]
        ended.sort(key=lambda t: t.ours)  # stable: relayed legs first, then oldest first
        gone = {id(t) for t in ended[: len(self._transfers) - MAX_KEPT_TRANSFERS // 2]}
        self._transfers = [t for t in self._transfers if id(t) not in gone]
        for table in (self._sending, self._receiving):
            for key in [key for key, t in table.items() if id(t) in gone]:
                del table[key]

    def _find(self, number: int | None, want: str) -> Transfer | None:
        """The transfer /accept, /reject or /cancel means; None after saying why not."""
        if number is None:
            for transfer in self._transfers:
                if transfer.ours and not transfer.sending and transfer.state is Moving.OFFERED:
                    return transfer
            self._error(f"try again: no offer is waiting for an answer ({want})")
            return None
        for transfer in self._transfers:
            if transfer.number == number:
                return transfer
        self._error(f"try again: there is no transfer {number} (/files lists them)")
        return None

    def _waiting_offer(self, number: int | None, hint: str = "") -> Transfer | None:
        """The offer /accept or /reject means, if it still waits for an answer."""
        transfer = self._find(number, "/files lists them")
        if transfer is not None and (transfer.sending or transfer.state is not Moving.OFFERED):
            self._error(
                f"try again: {transfer.number} is not an offer waiting for an answer "
                f"({transfer.state.value}){hint}"
            )
            return None
        return transfer

    def accept(self, number: int | None, now: float) -> None:
        transfer = self._waiting_offer(number)
        if transfer is None:
            return
        if not FILES_WORK_HERE:
            self._error(f"error: {NO_FILES_HERE}: /reject {transfer.number} it")
            return
        try:
            self._start_receiving(transfer, now)
        except ChatError as exc:
            self._error(f"error: {exc}")
        except (OSError, RuntimeError) as exc:  # RuntimeError: no thread could be started
            self._error(f"error: cannot save into {self.downloads}: {describe_os_error(exc)}")

    def _start_receiving(self, t: Transfer, now: float) -> None:
        folder, name = self.downloads, sanitize(t.name)
        sender = self._sender_identity(t)
        found = find_partial(folder, t.size, t.digest, sender)
        if found is not None and any(
            sink.part == found[0] and sink.thread.is_alive() for sink in self._sinks
        ):
            found = None  # the same file, still being written by another transfer
        offset = found[1] if found is not None else 0
        free = free_space(folder)
        if free < t.size - offset:
            raise ChatError(
                f"not enough space in {folder} for {name}: it needs "
                f"{format_size(t.size - offset)}, {format_size(free)} is free (make room "
                f"and /accept {t.number} again, or /reject {t.number})"
            )
        if found is not None:
            part = found[0]
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW)
        else:
            record = PartialInfo(t.name, t.size, t.digest, sender).render()
            fd, part = create_part(folder, t.name, record)

        def report(kind: str, amount: int, text: str) -> None:
            self._net.post(lambda now: self._sink_report(t, kind, amount, text, now))

        try:
            sink = FileSink(
                fd, part, offset, t.digest, partial(place_file, folder=folder, name=t.name), report
            )
        except RuntimeError:  # no thread could be started
            os.close(fd)
            if found is None:
                remove_quietly(part, part + META_SUFFIX)
            raise
        t.sink = sink
        self._sinks = [other for other in self._sinks if other.thread.is_alive()] + [sink]
        t.state, t.offset, t.position, t.started = Moving.MOVING, offset, offset, now
        t.credit = FILE_WINDOW
        self._net.deliver(t.link, FileAccept(t.id, offset, FILE_WINDOW), now)
        if offset:
            self._say(f"resuming {name} at {t.percent}%")
        else:
            self._say(f"Receiving {name} from {sanitize(t.person)} into {folder}.")

    def _sender_identity(self, t: Transfer) -> bytes:
        if t.link.peer.role is Role.LISTENER or not t.person or self._user is None:
            return t.link.peer.peer_identity
        return self._user.identity_of(t.person) or t.link.peer.peer_identity

    def reject(self, number: int | None, now: float) -> None:
        transfer = self._waiting_offer(number, "; /cancel stops a transfer")
        if transfer is None:
            return
        transfer.state = Moving.DECLINED
        self._net.deliver(transfer.link, FileReject(transfer.id), now)
        self._say(f"Declined {sanitize(transfer.name)} from {sanitize(transfer.person)}.")

    def cancel(self, number: int | None, now: float) -> None:
        transfer = self._find(number, "/cancel N")
        if transfer is None:
            return
        if transfer.state in ENDED:
            self._error(f"try again: {transfer.number} is already {transfer.state.value}")
            return
        self._end(transfer, Moving.CANCELLED, now, tell="")
        self._say(f"Cancelled {sanitize(transfer.name)}.")

    def listing(self) -> None:
        shown = [t for t in self._transfers if t.ours]
        if not shown:
            self._say("No files offered or received yet: /send PATH offers one.")
            return
        rows = ["Files:"]
        for t in shown:
            way = f"to {sanitize(t.person)}" if t.sending else f"from {sanitize(t.person)}"
            state = t.state.value
            if t.state is Moving.MOVING:
                state = f"{'sending' if t.sending else 'receiving'}, {t.percent}%"
            elif t.state is Moving.OFFERED and not t.sending:
                state = f"offered: /accept {t.number} or /reject {t.number}"
            elif t.state is Moving.OFFERED:
                state = "offered, waiting for an answer"
            rows.append(f"  {t.number}. {sanitize(t.name)} ({format_size(t.size)}) {way}: {state}")
        self._say("\n".join(rows))

    # What arrives ------------------------------------------------------------------------

    def message(self, link: Link, message: Message, now: float) -> None:
        """A file message from `link`."""
        if isinstance(message, FileOffer):
            self._on_offer(link, message, now)
            return
        assert isinstance(message, (FileAccept, FileAbout, FileCredit, FileCancel))
        if (isinstance(message, FileCancel) and message.mine) or isinstance(message, FileDone):
            transfer = self._receiving.get((link, message.id))  # about what they send us
        else:
            transfer = self._sending.get((link, message.id))  # about what we send them
        if transfer is None or (transfer.state in ENDED and not isinstance(message, FileCancel)):
            return  # an answer crossing our cancel, or about nothing: nothing to do
        if isinstance(message, FileAccept) and (
            transfer.state is not Moving.OFFERED or message.offset > transfer.size
        ):
            link.peer.connection_failed(f"it accepted file {message.id} twice or past its end")
            return
        if transfer.partner is not None:
            self._relay(transfer, message, now)
        elif isinstance(message, FileAccept):
            self._on_accept(transfer, message, now)
        elif isinstance(message, FileCredit):
            transfer.credit = min(transfer.credit + message.amount, 2**62)
        elif isinstance(message, FileReject):
            transfer.state = Moving.DECLINED
            self._close_file(transfer)
            self._say(f"{sanitize(transfer.person)} declined {sanitize(transfer.name)}.")
        elif isinstance(message, FileReceived):
            self._end(transfer, Moving.DONE, now)
            took = format_duration(now - transfer.started)
            resumed = f", resumed at {transfer.offset * 100 // transfer.size}%"
            self._say(
                f"{sanitize(transfer.person)} received {sanitize(transfer.name)} "
                f"({format_size(transfer.size)} in {took}{resumed if transfer.offset else ''})."
            )
        elif isinstance(message, FileDone):
            self._on_done(transfer, now)
        elif isinstance(message, FileCancel) and transfer.state not in ENDED:
            self._end(transfer, Moving.CANCELLED, now)
            why = f": {sanitize(message.reason)}" if message.reason else ""
            self._say(f"{sanitize(transfer.person)} cancelled {sanitize(transfer.name)}{why}.")

    def _on_offer(self, link: Link, offer: FileOffer, now: float) -> None:
        person = offer.who or link.peer.peer_name
        key = (link, offer.id)
        if key in self._receiving:
            link.peer.connection_failed(f"it offered two files as number {offer.id}")
            return
        waiting = sum(
            1 for t in self._receiving.values() if t.link is link and t.state is Moving.OFFERED
        )
        name = safe_file_name(offer.name)
        hosting = link.peer.role is Role.LISTENER
        if hosting and offer.who:  # a member's file for another member: relayed
            self._relay_offer(link, offer, now)
            return
        if self._user is None or waiting >= MAX_OPEN_OFFERS or name is None:
            self._net.deliver(link, FileReject(offer.id), now)  # not kept: memory stays bounded
            if name is None:
                self._error(
                    f"{sanitize(person)} offered a file named {sanitize(offer.name)!r}, which "
                    "cannot be saved under a safe name: declined"
                )
            elif self._user is not None and self._complain(link, -1):
                self._error(
                    f"{sanitize(person)} offered over {MAX_OPEN_OFFERS} files at once: the "
                    "rest are declined until you answer some"
                )
            return
        t = self._add(link, offer.id, False, name, offer.size, offer.digest, person)
        self._say(
            f"{sanitize(person)} offers {sanitize(name)} ({format_size(offer.size)}): "
            f"/accept {t.number} or /reject {t.number}"
        )

    def _complain(self, link: Link, about: int) -> bool:
        """True the first time something of `link` is worth a line (a peer repeating a
        mistake gets one line, not a flood)."""
        if (link, about) in self._complained:
            return False
        if len(self._complained) >= MAX_OPEN_OFFERS:
            self._complained.clear()
        self._complained.add((link, about))
        return True

    def _on_accept(self, t: Transfer, accept: FileAccept, now: float) -> None:
        t.state, t.offset, t.position, t.credit = (
            Moving.MOVING,
            accept.offset,
            accept.offset,
            accept.credit,
        )
        t.started = now
        try:
            t.source = FileSource(
                t.fd, t.size, t.stamp, accept.offset, partial(self._net.nudge, t.link)
            )
        except RuntimeError as exc:  # no thread could be started
            self._end(t, Moving.FAILED, now, tell="it could not be read")
            self._error(f"error: cannot send {sanitize(t.name)}: {exc}")
            return
        t.fd = -1  # the source's now
        self._net.low_water(t.link)
        resumed = f" (resuming at {t.percent}%)" if accept.offset else ""
        self._say(f"{sanitize(t.person)} accepted {sanitize(t.name)}{resumed}.")
        self._net.nudge(t.link)

    def chunk(self, link: Link, event: ChunkReceived, now: float) -> None:
        """File data from `link`, opened: checked against the transfer's state and credit."""
        t = self._receiving.get((link, event.transfer))
        data, who = event.data, sanitize(link.peer.peer_name)
        if t is None:
            if self._complain(link, event.transfer):
                self._net.deliver(link, FileCancel(event.transfer, False, "no such file"), now)
                self._error(f"{who} sent data for a file it never offered: ignored")
            return
        name = sanitize(t.name)
        if t.state in ENDED:
            if not t.cancelled_here and not t.complained:  # else in flight as we cancelled
                t.complained = True
                self._error(f"{who} sent data for {name} after it ended: ignored")
            return
        problem = None
        if t.state is not Moving.MOVING:
            problem = f"{who} sent data for {name} before it was accepted"
        elif event.offset != t.position:
            problem = (
                f"{who} sent data for {name} out of place (at {event.offset}, not {t.position})"
            )
        elif len(data) > t.credit:
            problem = f"{who} sent more of {name} than it was allowed (flow control)"
        elif t.position + len(data) > t.size:
            problem = f"{who} sent more of {name} than the {t.size} bytes it announced"
        if problem is not None:
            self._end(t, Moving.FAILED, now, tell=problem)
            self._error(f"error: {problem}: transfer ended, nothing saved")
            return
        t.position += len(data)
        t.credit -= len(data)
        if t.partner is not None:
            t.partner.relayed.append(data)
            self._net.nudge(t.partner.link)
        elif t.sink is not None:
            t.sink.put(data)
            self._progress(now)

    def _on_done(self, t: Transfer, now: float) -> None:
        if t.state is not Moving.MOVING or t.position != t.size:
            problem = (
                f"{sanitize(t.link.peer.peer_name)} sent less of {sanitize(t.name)} than "
                f"announced ({t.position} of {t.size} bytes)"
            )
            self._end(t, Moving.FAILED, now, tell=problem)
            self._error(f"error: {problem}: transfer ended, nothing saved")
            return
        t.state = Moving.CHECKING
        assert t.sink is not None
        t.sink.finish()
        self._progress(now, force=True)

    def _sink_report(self, t: Transfer, kind: str, amount: int, text: str, now: float) -> None:
        if kind == "saved" and t.state in ENDED:  # a cancel that came as it was put in place
            self._say(f"{sanitize(t.name)} was already saved as {sanitize(text)}.")
            return
        if t.state in ENDED:
            return
        if kind == "written":
            if t.state is Moving.MOVING:
                t.credit += amount
                self._net.deliver(t.link, FileCredit(t.id, amount), now)
            return
        name, who = sanitize(t.name), sanitize(t.person)
        if kind == "saved":
            t.state, t.sink = Moving.DONE, None
            self._net.deliver(t.link, FileReceived(t.id), now)
            self._say(
                f"Received {name} from {who} ({format_size(t.size)}, SHA-256 verified): "
                f"saved as {sanitize(text)}"
            )
        elif kind == "mismatch":
            self._end(t, Moving.FAILED, now, tell="its SHA-256 did not match: deleted")
            self._error(
                f"error: {name} from {who} does not match the SHA-256 it was offered with: "
                "the partial file was deleted"
            )
        else:
            self._end(t, Moving.FAILED, now, tell=f"{self._net.username} could not save it")
            self._error(f"error: {name} from {who}: {text}")
        self._progress(now, force=True)

    def _end(self, t: Transfer, state: Moving, now: float, tell: str | None = None) -> None:
        """Stop a transfer here; `tell`: also tell the other side, with that reason."""
        t.state = state
        t.cancelled_here = tell is not None
        self._close_file(t, keep=False)
        if tell is not None:
            reason = tell.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore")
            self._net.deliver(t.link, FileCancel(t.id, t.sending, reason), now)
        partner, t.partner = t.partner, None
        if partner is not None and partner.state not in ENDED:
            self._end(partner, state, now, tell=tell or "")
        self._progress(now, force=True)

    def _close_file(self, t: Transfer, keep: bool = False) -> None:
        if t.source is not None:
            t.source.close()
            t.source = None
        if t.fd >= 0:
            os.close(t.fd)
            t.fd = -1
        if t.sink is not None:
            t.sink.close(keep)
            t.sink = None
        t.relayed.clear()

    def finish_writing(self, timeout: float) -> None:
        """Wait (up to `timeout`) until every byte received is on disk."""
        deadline = time.monotonic() + timeout
        for sink in self._sinks:
            sink.thread.join(max(0.0, deadline - time.monotonic()))

    def link_closed(self, link: Link, now: float) -> None:
        """The connection is gone: its transfers stop; a partial download stays to resume."""
        for t in self._transfers:
            if t.link is not link or t.state in ENDED or t.state is Moving.CHECKING:
                continue  # a file being checked has all its bytes: it is saved all the same
            t.state = Moving.FAILED
            kept = t.sink is not None
            self._close_file(t, keep=True)
            if t.partner is not None:
                partner, t.partner = t.partner, None
                self._end(
                    partner,
                    Moving.FAILED,
                    now,
                    tell=f"{sanitize(link.peer.peer_name)} lost the connection",
                )
            if t.ours:
                more = f" ({t.percent}% kept: offered again, it resumes there)" if kept else ""
                self._say(f"{sanitize(t.name)} stopped: the connection ended{more}.")
        self._sending = {k: v for k, v in self._sending.items() if k[0] is not link}
        self._receiving = {k: v for k, v in self._receiving.items() if k[0] is not link}
        self._next_id.pop(link, None)
        self._complained = {key for key in self._complained if key[0] is not link}
        self._progress(now, force=True)

    # Sending -------------------------------------------------------------------------------

    def pump(self, link: Link, now: float) -> bool:
        """Queue the next chunk (or DONE) for `link`, when one is due; True if it did."""
        for t in self._sending.values():
            if t.link is not link or t.state is not Moving.MOVING:
                continue
            data = self._next_chunk(t) if t.position < t.size else None
            if data is not None:
                link.outgoing += link.peer.send_chunk(t.id, t.position, data, now)
                t.position += len(data)
                t.credit -= len(data)
                if t.ours:
                    self._progress(now)
                else:
                    self._relayed(t, len(data), now)
                return True
            if t.partner is not None:
                if t.position == t.size and t.partner.done and not t.done:
                    t.done = True
                    link.outgoing += link.peer.send(FileDone(t.id), now)
                    return True
                continue
            # The source has read all it will: the file ended as hashed, or it did not.
            verdict = t.source.verdict if t.source is not None else None
            if verdict:
                self._end(t, Moving.FAILED, now, tell=f"it {verdict}")
                self._error(
                    f"error: {sanitize(t.name)} {verdict}: cancelled; send it again once it "
                    "is final"
                )
                return True
            if verdict is None or t.position < t.size or t.done:
                continue
            t.done = True
            link.outgoing += link.peer.send(FileDone(t.id), now)
            self._progress(now, force=True)
            return True
        return False

    def _next_chunk(self, t: Transfer) -> bytes | None:
        """The next chunk of `t` when one is ready and the credit allows it."""
        if t.partner is not None:
            if t.relayed and len(t.relayed[0]) <= t.credit:
                return t.relayed.popleft()
            return None
        if t.source is None or t.credit < min(CHUNK_SIZE, t.size - t.position):
            return None
        return t.source.take()

    def has_data(self, link: Link) -> bool:
        """True when a chunk for `link` could go now (the loop then waits to write)."""
        for t in self._sending.values():
            if t.link is link and t.state is Moving.MOVING and t.position < t.size:
                if t.partner is not None:
                    if t.relayed and len(t.relayed[0]) <= t.credit:
                        return True
                elif t.source is not None and t.credit >= min(CHUNK_SIZE, t.size - t.position):
                    return t.source.ready()
        return False

    def busy(self, link: Link) -> bool:
        """True while a file comes in over `link` (reads are then larger)."""
        return any(t.link is link and t.state is Moving.MOVING for t in self._receiving.values())

    # The host relays members' files -----------------------------------------------------

    def _relay_offer(self, link: Link, offer: FileOffer, now: float) -> None:
        author = link.peer.peer_name
        route = self._net.route_to(offer.who, False)
        if route is None or route[0] is link:
            self._net.deliver(
                link, FileCancel(offer.id, False, f"nobody named {offer.who} is in the chat"), now
            )
            return
        target = route[0]
        leg_in = self._add(
            link, offer.id, False, offer.name, offer.size, offer.digest, offer.who, False
        )
        number = self._next_id.get(target, 0) + 1
        self._next_id[target] = number
        leg_out = self._add(
            target, number, True, offer.name, offer.size, offer.digest, author, False
        )
        leg_in.partner, leg_out.partner = leg_out, leg_in
        self._net.deliver(
            target, FileOffer(number, offer.size, offer.digest, offer.name, author), now
        )

    def _relay(self, t: Transfer, message: Message, now: float) -> None:
        """A message about a leg the host relays, passed on to the other leg. Each leg has
        its own credit: the sender is granted what the host has passed on, so the host never
        holds more than FILE_WINDOW of it, whatever the receiver grants."""
        other = t.partner
        assert other is not None
        if isinstance(message, FileAccept):
            for leg in (t, other):
                leg.state, leg.offset, leg.position = Moving.MOVING, message.offset, message.offset
                leg.started = now
            t.credit, other.credit = message.credit, min(message.credit, FILE_WINDOW)
            self._net.deliver(other.link, FileAccept(other.id, message.offset, other.credit), now)
            self._net.low_water(t.link)
        elif isinstance(message, FileCredit):
            t.credit = min(t.credit + message.amount, 2**62)
            self._net.nudge(t.link)
        elif isinstance(message, FileDone):
            if t.position != t.size:
                problem = f"{sanitize(t.link.peer.peer_name)} sent less than announced"
                self._end(t, Moving.FAILED, now, tell=problem)
                return
            t.done = True
            self._net.nudge(other.link)
        elif isinstance(message, FileCancel):
            t.state, t.partner, other.partner = Moving.CANCELLED, None, None
            self._close_file(t)
            self._end(other, Moving.CANCELLED, now, tell=message.reason)
        else:  # REJECT or RECEIVED: the far end's answer, passed back
            state = Moving.DECLINED if isinstance(message, FileReject) else Moving.DONE
            t.state = other.state = state
            t.partner = other.partner = None
            self._close_file(t)
            self._close_file(other)
            answer = FileReceived if isinstance(message, FileReceived) else FileReject
            self._net.deliver(other.link, answer(other.id), now)

    def _relayed(self, t: Transfer, size: int, now: float) -> None:
        """`size` bytes of a relayed file went on: the sender may send as much more."""
        sender = t.partner
        if sender is None:
            return
        sender.ungranted += size
        if sender.ungranted >= CREDIT_STEP or not t.relayed:
            sender.credit += sender.ungranted
            self._net.deliver(sender.link, FileCredit(sender.id, sender.ungranted), now)
            sender.ungranted = 0


# --- Terminal ----------------------------------------------------------------


class Terminal:
    """All reading and printing; keeps the half-typed line intact on a terminal.

    When stdin or stdout is not a terminal, output stays plain lines.
    """

    def __init__(self, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.interactive = stdin.isatty() and stdout.isatty()
        self._lock = threading.RLock()
        self._prompt: str | None = None
        self._line_buffer: Callable[[], str] = str
        self._redraw: Callable[[], None] | None = None
        self._clear_line: Callable[[], None] | None = None
        self._main = threading.get_ident()
        self._relay = False  # lines from other threads are printed by the main thread
        self._posted: list[tuple[str, TextIO, threading.Event]] = []
        self._posted_lock = threading.RLock()  # RLock: a signal handler may nest
        self._printing_posted = False
        # Lines from other threads wait here for the printer thread, so the network
        # thread never waits for a screen (paused with Ctrl-S, or a pipe nobody reads).
        self._waiting: deque[tuple[str, TextIO]] = deque()
        self._waiting_cond = threading.Condition()
        self._unshown = 0  # lines dropped while MAX_WAITING_LINES waited
        self._printing = False  # the printer thread has lines in hand
        self._printer: threading.Thread | None = None
        self._status = ""  # the status row (file progress), drawn above the prompt
        self._status_shown = False
        if self.interactive:
            self._load_readline()

    def _load_readline(self) -> None:
        # Imported only on terminals: importing readline may emit escape sequences.
        try:
            import readline
        except ImportError:
            return
        self._line_buffer = readline.get_line_buffer
        self._readline = readline
        # CPython turns bracketed paste off; on, the terminal marks a paste, and
        # readline takes it as one line with its newlines: one message.
        with contextlib.suppress(Exception):
            readline.parse_and_bind("set enable-bracketed-paste on")
        # readline is not thread-safe and Python runs it without the GIL, so
        # another thread must never redraw: lines from other threads are handed
        # to the main thread, whose signal handler runs between keypresses.
        if main_thread_can_be_signalled():
            signal.signal(signal.SIGUSR2, self._print_posted)
            self._relay = True
        try:  # readline's own full redraw keeps the cursor where the user left it
            library = ctypes.CDLL(readline.__file__)
            new_line, forced = library.rl_on_new_line, library.rl_forced_update_display
        except (ImportError, OSError, AttributeError):
            return

        def redraw() -> None:
            new_line()
            forced()

        self._redraw = redraw
        with contextlib.suppress(AttributeError):  # readline 7 and later
            self._clear_line = library.rl_clear_visible_line

    def complete_with(self, candidates: Callable[[str], list[str]]) -> None:
        """Tab completes the whole line so far with `candidates(line)` (names may hold
        spaces, so readline's word breaks are turned off)."""
        readline = getattr(self, "_readline", None)
        if readline is None:
            return
        found: list[str] = []

        def complete(text: str, state: int) -> str | None:
            if state == 0:
                found[:] = candidates(readline.get_line_buffer())
            return found[state] if state < len(found) else None

        readline.set_completer_delims("")
        readline.set_completer(complete)
        readline.parse_and_bind("tab: complete")

    def show(self, line: str, stream: TextIO | None = None) -> None:
        """Print a line; on a terminal, redraw the prompt and typed text below it.

        From another thread the line is only queued: the printer thread prints it
        (through the main thread on a terminal), in order, however slow the screen.
        """
        out = stream or self.stdout
        if threading.get_ident() == self._main:
            self.flush()  # what other threads queued comes first
            self._print(line, out)
            return
        with self._waiting_cond:
            if len(self._waiting) >= MAX_WAITING_LINES:
                self._unshown += 1
                return
            self._waiting.append((line, out))
            self._waiting_cond.notify()
            if self._printer is None:
                self._printer = threading.Thread(target=self._print_waiting, daemon=True)
                self._printer.start()

    def flush(self) -> None:
        """On the main thread: print every line other threads have queued, in order.

        The printer thread moves lines only under _posted_lock, held here throughout, so
        none can slip from one queue to the other behind this loop's back.
        """
        with self._lock, self._posted_lock:
            while True:
                if self._posted:  # the printer thread's line in flight goes first
                    line, out, printed = self._posted.pop(0)
                    try:
                        self._print(line, out)
                    finally:
                        printed.set()
                elif (item := self._next_waiting()) is not None:
                    self._print(*item)
                else:
                    return

    def _next_waiting(self) -> tuple[str, TextIO] | None:
        with self._waiting_cond:
            if self._unshown:
                count, self._unshown = self._unshown, 0
                return f"({count} lines were not shown: the screen was not taking them)", (
                    self.stderr
                )
            return self._waiting.popleft() if self._waiting else None

    def _print_waiting(self) -> None:
        while True:
            with self._waiting_cond:
                self._waiting_cond.wait_for(lambda: bool(self._waiting or self._unshown))
                self._printing = True
            if self._relay:
                self._post_waiting()
            else:
                with self._lock:  # taken and printed as one step: flush() keeps the order
                    while (item := self._next_waiting()) is not None:
                        self._print(*item)
            with self._waiting_cond:
                self._printing = bool(self._waiting or self._unshown)
                self._waiting_cond.notify_all()

    def wait_shown(self, timeout: float) -> None:
        """Off the main thread: wait until the lines queued so far are out (or `timeout`)."""
        with self._waiting_cond:
            self._waiting_cond.wait_for(
                lambda: not (self._waiting or self._unshown or self._printing), timeout
            )

    def _post_waiting(self) -> None:
        """Hand the waiting lines to the main thread one by one, each once it is printed."""
        while True:
            printed = threading.Event()
            with self._posted_lock:  # taken and posted as one step: flush() keeps the order
                if (item := self._next_waiting()) is None:
                    return
                self._posted.append((*item, printed))
            signal_until(self._main, signal.SIGUSR2, printed)

    def _print_posted(self, signum: int, frame: FrameType | None) -> None:
        if self._printing_posted:  # a nested signal: the outer call prints in order
            return
        # The poster waits for each line's `printed`: Ctrl-C must not land between
        # taking a line and setting it, so SIGINT waits until these lines are out.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        self._printing_posted = True
        try:
            while True:
                with self._posted_lock:
                    if not self._posted:
                        return
                    line, out, printed = self._posted.pop(0)
                try:
                    self._print(line, out)
                finally:
                    printed.set()
        finally:
            self._printing_posted = False
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    @property
    def draws_status(self) -> bool:
        """True when a status row can be kept above the prompt (GNU readline's redraw)."""
        return self.interactive and self._redraw is not None and self._clear_line is not None

    def status(self, text: str) -> None:
        """Show `text` in a row of its own above the prompt, redrawn in place ('' removes
        the row); only where draws_status."""
        if self.draws_status:
            self.show(StatusText(text))

    def _print(self, line: str, out: TextIO) -> None:
        if line is BELL:
            with self._lock:
                write(self.stdout, "\a")
            return
        with self._lock:
            if isinstance(line, StatusText):
                self._status = str(line)
                if self._prompt is not None:
                    self._clear_prompt_rows()
                    self._redraw_prompt()
                return
            if self.interactive:
                line = wrap_for_terminal(line, terminal_width(self.stdout))
            if self._prompt is None or not self.interactive:
                write(out, line + "\n")
                return
            self._clear_prompt_rows()
            write(out, line + "\n")
            self._redraw_prompt()

    def _clear_prompt_rows(self) -> None:
        """Wipe the prompt (every row of a long input line) and the status row above it."""
        if self._clear_line is not None:
            self._clear_line()
        else:
            write(self.stdout, "\r\x1b[2K")
        if self._status_shown:
            write(self.stdout, "\x1b[1A\r\x1b[2K")
            self._status_shown = False

    def _redraw_prompt(self) -> None:
        """The status row, if any, then the prompt and what was typed, as they were."""
        assert self._prompt is not None
        if self._status:
            width = terminal_width(self.stdout)
            write(self.stdout, fit_row(self._status, width) + "\n")
            self._status_shown = True
        if self._redraw is not None:
            self._redraw()
        else:
            write(self.stdout, self._prompt + self._line_buffer())

    def _drop_status_row(self, prompt: str, line: str) -> None:
        """After Enter: delete the status row above the line just typed (it is redrawn
        above the next prompt), so no stale progress stays in the scrollback."""
        if not self._status_shown:
            return
        self._status_shown = False
        width = terminal_width(self.stdout)
        rows = sum(screen_rows(part, width) for part in (prompt + line).split("\n"))
        write(self.stdout, f"\x1b[{rows + 1}A\x1b[M\x1b[{rows}B\r")

    def error(self, line: str) -> None:
        """Print a line on stderr."""
        self.show(line, self.stderr)

    def ask(self, prompt: str) -> str:
        """Read one line; EOFError and KeyboardInterrupt pass through.

        Off a terminal the prompt is written as a line of its own before
        reading, so output stays plain lines that scripts can match.
        """
        with self._lock:
            self._prompt = prompt
            if prompt and not self.interactive:
                write(self.stdout, prompt + "\n")
        line: str | None = None
        try:
            line = input(prompt if self.interactive else "")
            return line
        finally:
            with self._lock:
                self._prompt = None
                if self.interactive and line is not None:  # Enter: the rows moved up one
                    self._drop_status_row(prompt, line)
                elif self.interactive and self._status_shown:  # left at the prompt
                    self._clear_prompt_rows()

    def watch_input(self, done: threading.Event) -> None:
        """Wait a moment for `done` while nobody is connected yet.

        End of input raises EOFError (the program ends quietly); a line typed
        now has nobody to go to, so it is refused rather than sent later.
        """
        try:
            fd = self.stdin.fileno()
            readable, _, _ = select.select([fd], [], [], 0.1)
        except (OSError, ValueError):  # no pollable stdin (closed, or Windows)
            done.wait(0.5)
            return
        if not readable or done.is_set():  # once connected, input() reads it
            return
        if not os.read(fd, 4096):
            raise EOFError
        self.error("Nobody is connected yet: that line was not sent.")

    def clear_prompt(self) -> None:
        """Wipe an abandoned prompt line, every row of it (the chat ended while typing)."""
        if self.interactive:
            with self._lock:
                self._clear_prompt_rows()

    def typed_text(self) -> str:
        """What is typed at the prompt but not yet sent ('' off a terminal)."""
        return self._line_buffer() if self.interactive else ""

    def bell(self) -> None:
        """Ring the terminal bell (only on a terminal: piped output stays plain), after
        the lines queued before it."""
        if self.interactive:
            self.show(BELL)

    def newline(self) -> None:
        """End a line left open by Ctrl-C or Ctrl-D at a terminal prompt."""
        if self.interactive:
            with self._lock:
                write(self.stdout, "\n")


EMOJI_PRESENTATION = "\ufe0f"  # variation selector 16: the character before it drawn wide


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal: 0 for combining marks, 2 for wide ones.

    Variation selector 16 counts 1, for the column it adds to the character
    before it (❤️ is drawn 2 wide); where a terminal draws narrower than
    counted, a row only wraps early, never past the edge.
    """
    if ch == EMOJI_PRESENTATION:
        return 1
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def wrap_rows(line: str, width: int) -> list[str]:
    """One line cut into rows of at most `width` columns, continuation rows indented.

    A row ends after its last space when it has one (words stay whole), else
    wherever the width runs out.
    """
    width = max(width, len(CONTINUATION) + 8)
    indent = len(CONTINUATION)
    rows: list[str] = []
    row: list[str] = []
    used = 0
    for ch in line:
        columns = char_width(ch)
        if used + columns > width and used > indent:
            start = indent if rows else 0
            cut = max((i + 1 for i in range(start, len(row)) if row[i] == " "), default=len(row))
            carried = row[cut:]
            if indent + sum(map(char_width, carried)) + columns > width:
                cut, carried = len(row), []  # no room to carry the word: cut it here
            rows.append("".join(row[:cut]))
            row = [CONTINUATION, *carried]
            used = indent + sum(map(char_width, carried))
        row.append(ch)
        used += columns
    rows.append("".join(row))
    return rows


def fit_row(text: str, width: int) -> str:
    """`text` cut to fit one row (short of the last column, which would wrap)."""
    used, kept = 0, []
    for ch in text:
        used += char_width(ch)
        if used >= width:
            break
        kept.append(ch)
    return "".join(kept)


def screen_rows(text: str, width: int) -> int:
    """How many rows the terminal wraps `text` into."""
    return max(1, -(-sum(map(char_width, text)) // max(width, 1)))


def wrap_for_terminal(text: str, width: int) -> str:
    """Every line of `text` wrapped by wrap_rows (the terminal never wraps it itself)."""
    return "\n".join(row for line in text.split("\n") for row in wrap_rows(line, width))


def terminal_width(stream: TextIO) -> int:
    """Usable columns: one less than the terminal's, so no row ends at the last column."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 80
    return max(columns - 1, 1)


def main_thread_can_be_signalled() -> bool:
    """True in the main thread where other threads can signal it (POSIX)."""
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill")


def signal_until(thread: int, signum: signal.Signals, done: threading.Event) -> None:
    """Signal a thread until `done` is set.

    A signal landing just before a blocking read starts (input(), or
    readline's wait for a key) is only handled when the read ends, so it is
    repeated until the handler has run.
    """
    while True:
        try:
            signal.pthread_kill(thread, signum)
        except OSError:  # the thread is gone: the program is ending
            return
        if done.wait(0.01):
            return


def write(stream: TextIO, text: str) -> None:
    """Write and flush; a reader that went away (closed pipe) silences the stream."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def ensure_std_streams() -> None:
    """Stand /dev/null in for a closed stdin, stdout or stderr (e.g. `>&-`)."""
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


# --- Chat: what the person at this terminal sees and types ----------------------


def identity_judge(config_path: str, role: Role) -> Judge:
    """The judge of this side's connections: known_peers, read afresh each time."""
    known_path = beside(config_path, KNOWN_PEERS_FILE)

    def judge(name: str, identity: bytes, mode: Mode) -> None:
        seen = read_known_peers(known_path).recognize(name, identity)
        if seen.trust is Trust.CHANGED:  # an invite code vouches for nobody's old name
            assert seen.pinned is not None
            warning = changed_identity(config_path, seen.pinned, identity)
            raise IdentityRefused(Refuse.IDENTITY_CHANGED, warning, name)
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


def changed_identity(config_path: str, pinned: KnownPeer, offered: bytes) -> str:
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
            f"{pinned.line} of that file, or run: {PROGRAM}{config_flag(config_path)} "
            f"--forget {shlex.quote(pinned.name)}",
        ]
    )


def left_line(name: str, goodbye: str) -> str:
    """`name left the chat: goodbye`, or `name left the chat.` without one."""
    text = peer_text(goodbye)
    return f"{name} left the chat: {text}" if text else f"{name} left the chat."


class PeerEnded(BaseException):
    """Raised in the main thread when the network has ended the chat."""


@dataclass(frozen=True)
class PeerInfo:
    """Someone we are chatting with, as /who shows them."""

    name: str
    address: str  # host:port
    identity: bytes
    since: float  # when they came, on this side's monotonic clock
    host: bool = False


class Conversation:
    """One chat: the network thread reports what arrives; the main thread sends.

    Exactly one side decides how the chat ended (`outcome`): the network thread
    (goodbye or loss from the peer) or the input loop (we left).
    """

    def __init__(
        self,
        term: Terminal,
        config: Config,
        identity: Ed25519PrivateKey | None = None,
        room: bytes = bytes(ROOM_ID_SIZE),
    ) -> None:
        self.term = term
        self.config = config
        if identity is None:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            identity = Ed25519PrivateKey.generate()
        self._identity_key = identity
        self.identity = identity.public_key().public_bytes_raw()  # for safety numbers
        self.room = room  # when hosting: ours; as a member: learnt from the host
        self.known_path = beside(config.path, KNOWN_PEERS_FILE)
        self.prompt = f"{config.username}> " if term.interactive else ""
        self.net: Network | None = None
        self.people: dict[str, PeerInfo] = {}  # everyone else in the chat, the host first
        self.names: dict[Link, str] = {}  # hosting: who is on each connection
        self.voice: Voice | None = None  # our words in the room, numbered and signed
        self.hearing: Hearing | None = None  # the check of the words the host relays
        self.distrusted: set[str] = set()  # members whose pinned identity changed
        self.joined = False  # someone came: from now on, a failure is a lost chat
        self.hosting = False  # we listened: the room is ours
        self.failure: ChatError | None = None  # our connection never got into the chat
        self.outcome: int | None = None
        self.started = threading.Event()  # in the chat, or failed to get there
        self.ended = threading.Event()  # the peer's side of the chat is over
        self._lock = threading.Lock()
        self._main = threading.get_ident()
        self._can_interrupt = False
        self._interrupted = threading.Event()
        self._collected = ""  # lines of a message still being typed (a trailing backslash)

    # Reported by the network thread ---------------------------------------------

    def connection_events(self, link: Link, events: list[Event]) -> None:
        """Show what happened on the chat's connection; end the chat when it is over."""
        lines: list[str] = []
        ending: tuple[int, str] | None = None
        hosting = link.peer.role is Role.LISTENER
        for event in events:
            if isinstance(event, Established):
                lines += self._arrival_lines(link, event)
            elif isinstance(event, MessageReceived):
                lines += self._message_lines(link, event.message)
                if isinstance(event.message, Terminate):
                    self._depart(link)
                    if not self.people:  # the last one (or the host) left: the chat is over
                        ending = (0, "Connection closed by peer.")
            elif isinstance(event, Failed) and not self.joined:
                self.failure = event.error
            elif isinstance(event, Failed) and (gone := self._depart(link)) is not None:
                if self.people:
                    lines.append(f"{sanitize(gone)} lost the connection.")
                else:
                    ending = (1, f"Connection lost: {event.error}")
        # Set before anything is shown: a line typed in answer to what is shown
        # is then never taken for one typed while nobody was connected.
        self.started.set()
        if lines:  # shown together: a burst of messages is one redraw
            self.term.show("\n".join(lines))
            if self.config.bell and any(isinstance(e, MessageReceived) for e in events):
                self.term.bell()
        if ending is not None:
            self._end_from_network(*ending)
        if ending is not None or (
            not hosting and any(isinstance(e, (Closed, Failed)) for e in events)
        ):
            self.ended.set()

    def _depart(self, link: Link) -> str | None:
        """Forget whoever was on `link`; their name, if they were still here."""
        if link.peer.role is Role.CONNECTOR:  # the host's connection: the chat ends with it
            name = next(iter(self.people), None)
            self.people.clear()
            return name
        name = self.names.pop(link, None)
        if name is None or self.people.pop(name, None) is None:
            return None
        return name

    def refused(self, line: str) -> None:
        """A refused or dropped connection, on stderr."""
        self.term.error(line)

    def invite_void(self, line: str) -> None:
        """The invite is void: stop waiting (a chat in progress goes on)."""
        if not self.joined:
            self.failure = ChatError(line)
            self.started.set()
            self.ended.set()
        else:
            self.term.error(line)

    def network_failed(self, error: ChatError) -> None:
        """The network thread failed: end the chat, or the wait for it, with the reason."""
        if not self.joined:
            self.failure = error
            self.started.set()
        else:
            self._end_from_network(1, f"Connection lost: {error}")
        self.ended.set()

    # Reported by the file desk (on the network thread) ------------------------------------

    def file_lines(self, lines: list[str], error: bool = False) -> None:
        """Lines about file transfers."""
        (self.term.error if error else self.term.show)("\n".join(lines))

    def file_status(self, text: str) -> None:
        """The progress of the transfers moving now, in the status row."""
        self.term.status(text)

    def identity_of(self, name: str) -> bytes | None:
        """Someone's identity key (a relayed offer resumes only from the same person)."""
        person = self.people.get(name)
        return person.identity if person is not None else None

    def _arrival_lines(self, link: Link, event: Established) -> list[str]:
        """Who arrived, and what known_peers says of them (pinned here on first contact)."""
        name, shown = event.name, sanitize(event.name)
        self.joined = True
        hosting = link.peer.role is Role.LISTENER
        now = time.monotonic()
        self.people[name] = PeerInfo(
            name, format_address(link.address), event.identity, now, host=not hosting
        )
        if hosting:
            self.names[link] = name
        else:
            self.room = event.room
        if self.voice is None:  # one numbering of our words for the whole chat
            host = self.identity if hosting else event.identity
            self.voice = Voice(self._identity_key, self.config.username, host, self.room)
            self.hearing = Hearing(self.config.username, host, self.room)
            self.hosting = hosting
        verified, trust = self._trust(name, event.identity, event.mode is Mode.INVITE)
        if hosting:
            joined = " (verified)." if verified else "."
            arrival = [f"Connected by {link.address!r}", f"{shown} joined the chat{joined}"]
        else:
            arrival = [f"WELCOME Welcome to the chat! I am {shown}"]
        return arrival + trust

    def _trust(self, name: str, key: bytes, by_invite: bool = False) -> tuple[bool, list[str]]:
        """What known_peers says of `name` with `key` (pinned on first contact): whether
        verified, and the lines that say so. A changed identity in a room is a warning,
        and that person's words are not shown."""
        shown = sanitize(name)
        if key == self.identity:  # two chats beside one config: nothing to pin
            return False, [
                f"{shown} has your own identity ({IDENTITY_FILE} is shared): fine for a "
                "test; two people need one each."
            ]
        try:
            seen = read_known_peers(self.known_path).recognize(name, key)
            if seen.trust is Trust.CHANGED:
                assert seen.pinned is not None
                self.distrusted.add(name)
                warning = changed_identity(self.config.path, seen.pinned, key)
                return False, [f"warning: {warning}", f"Nothing {shown} says will be shown."]
            lines = self._pin(name, key, seen, by_invite)
        except ConfigError as exc:
            return False, [f"error: {exc}"]
        return by_invite or seen.trust is Trust.VERIFIED, lines

    def _pin(self, name: str, key: bytes, seen: Recognition, by_invite: bool) -> list[str]:
        """Record someone in known_peers as needed; the lines that say what happened."""
        shown, identity = sanitize(name), fingerprint(key)
        lines = []
        if seen.aliases:
            lines.append(
                f"{shown} has the identity you know as {sanitize(', '.join(seen.aliases))}: "
                "the same person under a new name."
            )
        if seen.pinned is None or by_invite:
            # A new name for a known identity keeps that identity's trust.
            verified = by_invite or seen.trust is Trust.VERIFIED
            update_known_peers(self.known_path, lambda p: p.pin(name, key, verified, utc_now()))
        if by_invite:
            lines.append(
                f"{shown} is now a verified contact (the invite code proved it): identity "
                f"{identity}."
            )
        elif seen.trust is Trust.VERIFIED:
            lines.append(f"{shown} is a verified contact (/verify shows your safety number).")
        elif seen.trust is Trust.NEW:
            lines.append(
                f"First contact with {shown}: identity {identity} saved (compare safety "
                "numbers with /verify)."
            )
        elif seen.trust is Trust.KNOWN:
            lines.append(f"{shown} is not verified yet: compare safety numbers with /verify.")
        return lines

    def _message_lines(self, link: Link, message: Message) -> list[str]:
        if link.peer.role is Role.LISTENER:
            speaker = self.names.get(link, "someone")
        else:
            speaker = next(iter(self.people), "the peer")
        name = sanitize(speaker)
        stamp = time.strftime("[%H:%M] ") if self.config.timestamps else ""
        if isinstance(message, Chat):
            return [f"{stamp}{name} says: {peer_text(message.text)}"]
        if isinstance(message, Action):
            return [f"{stamp}* {name} {peer_text(message.text)}"]
        if isinstance(message, Terminate):
            return [stamp + left_line(name, message.text)]
        if isinstance(message, Said):
            return self._words_lines(link, message, stamp)
        if isinstance(message, Members):
            return self._members_lines(message)
        if isinstance(message, Joined):
            person = message.person
            self._meet(person)
            if self.hearing is not None:
                self.hearing.arrived(person.name)
            verified, trust = self._trust(person.name, person.identity)
            joined = " (verified)." if verified else "."
            return [f"{sanitize(person.name)} joined the chat{joined}", *trust]
        if isinstance(message, Left):
            self.people.pop(message.name, None)
            self.distrusted.discard(message.name)
            if self.hearing is not None:
                self.hearing.left(message.name)
            if message.lost:
                return [f"{stamp}{sanitize(message.name)} lost the connection."]
            return [stamp + left_line(sanitize(message.name), message.text)]
        return []

    def _words_lines(self, link: Link, said: Said, stamp: str) -> list[str]:
        """A member's words, once the signature and the numbering are checked."""
        words, author = said.words, sanitize(said.author)
        note = None
        if link.peer.role is Role.CONNECTOR:  # the host checked its own copy already
            assert self.hearing is not None
            person = self.people.get(said.author)
            show, note = self.hearing.check(said, person.identity if person else None)
            if said.author in self.distrusted:
                show, note = False, f"a message from {author} was not shown: its identity changed"
            if not show:
                return [f"warning: {note}"]
        if words.form == Form.ACTION:
            line = f"{stamp}* {author} {peer_text(words.text)}"
        elif words.to:
            line = f"{stamp}{author} says privately: {peer_text(words.text)}"
        else:
            line = f"{stamp}{author} says: {peer_text(words.text)}"
        return [line] if note is None else [f"warning: {note}", line]

    def _members_lines(self, members: Members) -> list[str]:
        """The room as a member finds it on arrival."""
        lines = []
        for person in members.people:
            self._meet(person)
            lines += self._trust(person.name, person.identity)[1]
        if members.people:
            names = ", ".join(sanitize(person.name) for person in members.people)
            lines.insert(0, f"Also in the chat: {names}")
        return lines

    def _meet(self, person: Person) -> None:
        since = time.monotonic() - person.seconds
        self.people[person.name] = PeerInfo(person.name, person.address, person.identity, since)

    # The main thread ------------------------------------------------------------------

    def wait_until_started(self, listening: bool) -> None:
        """Block until the chat starts; while listening, refuse lines typed meanwhile."""
        while not self.started.is_set():
            if listening:
                self.term.watch_input(self.started)
            else:
                self.started.wait(0.1)  # short waits keep Ctrl-C responsive
        if self.failure is not None:
            raise self.failure

    def run(self, net: Network) -> int:
        """Chat until someone leaves; return the exit status.

        When the network ends the chat it interrupts the main thread (SIGUSR1
        raising PeerEnded), so a pending input() never waits for a keypress.
        """
        self.net = net
        self.term.complete_with(self.completions)
        with self._lock:
            if self.outcome is not None:  # the chat ended before we got here
                return self.status()
            if main_thread_can_be_signalled():
                signal.signal(signal.SIGUSR1, self._on_interrupt)
                self._can_interrupt = True
        try:
            try:
                goodbye = self._read_until_exit()
            except KeyboardInterrupt:  # Ctrl-C while sending or printing
                self.term.newline()
                goodbye = ""
            self._leave(goodbye)
        except PeerEnded:
            typed = "\n".join(part for part in (self._collected, self.term.typed_text()) if part)
            self.term.clear_prompt()
            if typed.strip():  # a half-typed line is never thrown away silently
                self.term.show(f"Not sent (the chat had ended): {peer_text(typed)}")
            self.ended.wait(GOODBYE_DRAIN_SECONDS)
        finally:
            self._interrupted.set()
        return self.status()

    def status(self) -> int:
        """The exit status: 0 after a goodbye from either side, 1 otherwise."""
        return 1 if self.outcome is None else self.outcome

    def _read_until_exit(self) -> str:
        """Send typed lines until the user leaves; return the goodbye text."""
        while True:
            try:
                line = self.term.ask(self.prompt)
            except (EOFError, KeyboardInterrupt):
                self.term.newline()
                return ""
            except UnicodeDecodeError:
                self.term.error("error: that line is not valid UTF-8 text: not sent")
                continue
            if self.outcome is not None:  # ended while input() waited (no signals here)
                self._collected = line
                raise PeerEnded
            line = self._continued(line)
            stripped = line.strip()
            if stripped == "exit":
                return self._ask_goodbye()
            if stripped.startswith("/") and not stripped.startswith("//") and "\n" not in line:
                if self._run_command(stripped):
                    return self._ask_goodbye()
            elif stripped:  # a line of only whitespace is not sent
                self._send(Chat(line[1:] if line.startswith("//") else line))

    def _continued(self, line: str) -> str:
        """On a terminal, a line ending in a backslash goes on in the next one.

        A bracketed paste arrives as one line holding its newlines already; a
        line ending in two backslashes sends one. Lines taken so far are kept in
        `self._collected`, so a chat that ends meanwhile can say they were not sent.
        """
        line = line.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
        while self.term.interactive and line.endswith("\\"):
            if line.endswith("\\\\"):
                return line[:-1]
            self._collected = line[:-1]
            try:
                more = self.term.ask("... ")
            except EOFError:
                break
            line = f"{line[:-1]}\n{more}".rstrip("\n")
        self._collected = ""
        return line

    def _run_command(self, line: str) -> bool:
        """Run a slash command; True when it means leaving the chat."""
        word, _, argument = line[1:].partition(" ")
        command = COMMAND_INDEX.get(word.lower())
        if command is None:
            self.term.error(
                f"unknown command {sanitize(line.split()[0])}: type /help for the "
                "commands, or start with // to send a line beginning with /"
            )
            return False
        return command.run(self, argument.strip())

    def _ask_goodbye(self) -> str:
        """The goodbye text, asked again until it can be sent."""
        while True:
            try:
                text = self.term.ask("Enter goodbye text (optional): ")
                Terminate(text).encode_body()
            except (EOFError, KeyboardInterrupt):
                self.term.newline()
                return ""
            except UnicodeDecodeError:
                self.term.error("error: that line is not valid UTF-8 text: type it again")
            except ChatError as exc:
                self.term.error(f"error: {exc}")
            else:
                return text

    def _send(self, message: Chat | Action, to: str = "") -> None:
        """Send our words: as they are when hosting or alone with the host (the connection
        itself proves who said them); signed (SAY) when the host relays them to others."""
        assert self.net is not None and self.voice is not None
        form = Form.ACTION if isinstance(message, Action) else Form.CHAT
        relayed = not self.hosting and len(self.people) > 1
        try:
            message.encode_body()  # a line too long is refused here, before it is queued
            words = self.voice.say(message.text, form, to) if to or relayed else None
        except ChatError as exc:
            self.term.error(f"error: {exc}")
            return
        if words is None:
            self.net.send(message)
        elif self.hosting:  # the host's private words go as the host's own SAID
            self.net.send_to(to, Said(self.config.username, words))
        else:
            self.net.send(words)
        self.term.show(
            "Sent CHAT message." if isinstance(message, Chat) else "Sent ACTION message."
        )

    def _leave(self, goodbye: str) -> None:
        if not self._decide(0, None):
            self.ended.wait(GOODBYE_DRAIN_SECONDS)  # the peer ended it first
            return
        assert self.net is not None
        self.net.leave(goodbye)
        self.term.show("Sent TERMINATE message.")
        self.term.show("Connection closed by you.")
        # The network half-closes after the goodbye and waits for the peer to
        # close too, so nothing in flight is cut off.
        self.net.finished.wait()  # bounded by the network: a stalled write or the drain limit

    def _decide(self, status: int, line: str | None) -> bool:
        """Record how the chat ended and print its line, unless already decided."""
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = status
            if line is not None:
                self.term.show(line)
            return True

    def _end_from_network(self, status: int, line: str) -> None:
        if not self._decide(status, line):
            return
        # Everything this side was shown comes before the prompt is taken away.
        self.term.wait_shown(GOODBYE_DRAIN_SECONDS)
        with self._lock:
            can_interrupt = self._can_interrupt
        if can_interrupt:
            signal_until(self._main, signal.SIGUSR1, self._interrupted)
        elif self.net is not None:  # input() cannot be interrupted here (no signals)
            self.term.show("Press Enter to exit.")

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if not self._interrupted.is_set():
            self._interrupted.set()
            raise PeerEnded

    # Commands -----------------------------------------------------------------------

    def show_help(self, argument: str) -> bool:
        """/help: the commands, from the table."""
        self.term.show(help_text())
        return False

    def show_peer(self, argument: str) -> bool:
        """/who: who is in the chat, from where, for how long, and whether verified."""
        if not self.people:
            self.term.error("Nobody is connected yet.")
            return False
        now = time.monotonic()
        if len(self.people) == 1:  # the two-person line
            [peer] = self.people.values()
            minutes, seconds = divmod(int(now - peer.since), 60)
            self.term.show(
                f"Talking to {sanitize(peer.name)} at {peer.address}, connected "
                f"{minutes} min {seconds} s. Identity: {fingerprint(peer.identity)} "
                "(/verify compares it)"
            )
            return False
        try:
            known = read_known_peers(self.known_path)
        except ConfigError:
            known = KnownPeers(self.known_path)
        rows = [f"In the chat ({len(self.people) + 1} people):"]
        if self.names or not any(p.host for p in self.people.values()):
            rows.append(f"  {sanitize(self.config.username)} (you, host)")
        for peer in self.people.values():
            minutes, seconds = divmod(int(now - peer.since), 60)
            trust = known.recognize(peer.name, peer.identity).trust
            rows.append(
                f"  {sanitize(peer.name)}{' (host)' if peer.host else ''} at {peer.address}, "
                f"{minutes} min {seconds} s, "
                f"{'verified' if trust is Trust.VERIFIED else 'not verified'}"
            )
        if not self.names:
            rows.append(f"  {sanitize(self.config.username)} (you)")
        self.term.show("\n".join(rows))
        return False

    def completions(self, line: str) -> list[str]:
        """What Tab offers for `line`: command names, then after /msg or /verify a name."""
        command, space, rest = line.partition(" ")
        if not space:
            words = [f"/{word}" for word in COMMAND_INDEX]
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
        """/verify [NAME] [ok]: the safety number; with ok, record the person as verified."""
        peer, rest = self.named(argument)
        if peer is None and len(self.people) == 1 and rest.lower() in ("", "ok"):
            peer = next(iter(self.people.values()))
        if not self.people:
            self.term.error("Nobody is connected yet.")
        elif peer is None or rest.lower() not in ("", "ok"):
            names = ", ".join(sanitize(name) for name in self.people)
            self.term.error(f"try again: /verify NAME, or /verify NAME ok (in the chat: {names})")
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
            self.term.show(
                f"Safety number with {sanitize(peer.name)}:\n"
                f"    {safety_number(self.identity, peer.identity)}\n"
                "Compare all 60 digits with theirs, by voice or side by side.\n"
                "The same 60 digits mean nobody is in the middle; a few matching prove nothing.\n"
                f"If they match, type /verify {sanitize(peer.name)} ok to remember them as "
                "verified."
            )
        return False

    def invite(self, argument: str) -> bool:
        """/invite: a new one-time code for one more person (the host only)."""
        if not self.hosting or self.net is None:
            self.term.error("try again: only the one who listens (the host) can invite")
            return False
        invite = Invite(new_invite_code())
        self.net.offer(invite)
        show_invite(invite, self.config, self.term)
        return False

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
        targets, path = everyone, file_argument(argument)
        peer, rest = self.named(argument)
        if peer is not None and rest and not os.path.lexists(path):
            targets, path = [(peer.name, peer.host)], file_argument(rest)
        try:
            fd, size = open_for_sending(path)
        except ChatError as exc:
            self.term.error(f"error: {exc}: nothing offered")
            return False
        # The name as the peer will see it: undecodable bytes of a file name become U+FFFD.
        name = os.fsencode(os.path.basename(path)).decode("utf-8", "replace")
        if size >= 100_000_000:
            self.term.show(f"Checking {sanitize(name)} ({format_size(size)}) before offering it...")
        net = self.net
        threading.Thread(
            target=self._hash_and_offer, args=(net, path, name, fd, size, targets), daemon=True
        ).start()
        return False

    def _hash_and_offer(
        self,
        net: Network,
        path: str,
        name: str,
        fd: int,
        size: int,
        targets: list[tuple[str, bool]],
    ) -> None:
        """In a thread of its own: the file's SHA-256, then the offer."""
        try:
            digest, stamp = hash_file(fd, size)
        except (ChatError, OSError) as exc:
            os.close(fd)
            why = exc if isinstance(exc, ChatError) else describe_os_error(exc)
            self.term.error(f"error: cannot read {sanitize(path)}: {why}: nothing offered")
            return
        prepared = PreparedFile(path, name, fd, size, digest, stamp)
        net.post(lambda now: net.files.offer(prepared, targets, now))

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
    run: Callable[[Conversation, str], bool]  # True: leave the chat


COMMANDS = (
    Command("help", ("?",), "this help", Conversation.show_help),
    Command("who", (), "who you are talking to, from where, for how long", Conversation.show_peer),
    Command(
        "verify",
        (),
        "the safety number to compare with your peer; /verify ok once it matches",
        Conversation.verify,
    ),
    Command("me", (), "an action: /me waves shows * yourname waves", Conversation.act),
    Command("msg", (), "words for one person only: /msg NAME text", Conversation.whisper),
    Command(
        "send",
        (),
        "offer a file to everyone (/send PATH) or to one person (/send NAME PATH)",
        Conversation.send_file,
    ),
    Command(
        "accept", (), "take an offered file: /accept N (or the oldest)", Conversation.accept_file
    ),
    Command("reject", (), "decline an offered file: /reject N", Conversation.reject_file),
    Command("cancel", (), "stop a transfer, either way: /cancel N", Conversation.cancel_file),
    Command("files", (), "the offers and transfers, with their numbers", Conversation.list_files),
    Command(
        "invite", (), "(host) a new one-time invite code for one more person", Conversation.invite
    ),
    Command(
        "quit", ("exit",), "leave the chat (asks for optional goodbye text)", Conversation.quit
    ),
)
# Commands are case-insensitive: /QUIT and /Quit are /quit.
COMMAND_INDEX = {word: command for command in COMMANDS for word in (command.name, *command.aliases)}


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


def help_text() -> str:
    """/help, generated from the command table."""
    rows = [
        (" or ".join(f"/{word}" for word in (command.name, *command.aliases)), command.summary)
        for command in COMMANDS
    ]
    rows.append(("exit", "leave the chat, as /quit does"))
    rows.append(("//text", "send a line that starts with '/'"))
    width = max(len(usage) for usage, _ in rows) + 2
    return "\n".join(
        [
            "Type a line and press Enter to send it. Commands:",
            *(f"  {usage:<{width}}{summary}" for usage, summary in rows),
            "Ctrl-D or Ctrl-C also leave the chat.",
        ]
    )


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


def key_from_input(term: Terminal) -> bytes:
    """`--key -`: the key from a hidden prompt, or one line of standard input."""
    try:
        pasted = read_secret(
            "Paste the key your peer gave you (it is not shown): ", term.stdin, term.interactive
        )
    except EOFError:
        raise ConfigError(
            "--key -: no key on standard input: pipe it in "
            f"(e.g. `pass show chat-key | {PROGRAM} --init --key -`), "
            "or run this on a terminal and paste it when asked"
        ) from None
    if not pasted.strip():
        raise ConfigError(f"--key -: {NO_KEY_GIVEN}")
    return decode_key(pasted, "--key -")


def save_new_config(config: Config, term: Terminal, make_key: bool) -> Config:
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
            f"    {PROGRAM} --init --key - --username THEIR_NAME\n"
            "(it asks for the key, which stays off the screen and out of the shell history)\n"
            "and connects with:\n"
            f"    {PROGRAM} --connect {shown_address(config)}"
        )
    return config


def obtain_config(args: Options, term: Terminal) -> tuple[Config, bool]:
    """The config for this chat: read, flags laid over it, or on a terminal created."""
    path = choose_config_path(args.config, not PROGRAM.endswith(".py"))
    try:
        config = read_config(path)
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
        return save_new_config(first_run(config, args, term), term, make_key=False), True
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
    path = choose_config_path(args.config, not PROGRAM.endswith(".py"))
    config = Config(path=path)
    if os.path.exists(path):
        config = read_config(path)
        if config.key is not None:
            where = f" (line {line})" if (line := field_line(path, "fernet_key")) else ""
            raise ConfigError(
                f"{path} already has a fernet_key{where}: to replace it, delete that line "
                "(or the whole file) first, or choose another file with --config"
            )
    config = apply_flags(config, args)
    if args.key == KEY_FROM_INPUT:
        config = replace(config, key=key_from_input(term))
    elif args.key is not None:
        config = replace(config, key=decode_key(args.key, "--key"))
    config = replace(config, username=config.username or login_name())
    config = save_new_config(config, term, make_key=True)
    assert config.key is not None
    term.show(
        f"Key ID: {key_id(derive_psk(config.key))} (your peer must see the same ID, "
        "or your keys differ)"
    )
    open_identity(config, term)


def downloads_folder(config: Config, flag: str | None) -> str:
    """Where received files go: --downloads, config.ini's downloads, ~/Downloads, or here.

    Checked at start: a folder that is missing or not writable is an error now,
    not when the first file arrives.
    """
    where = "--downloads" if flag is not None else f"{config.path}: downloads"
    if config.downloads:
        folder = os.path.abspath(os.path.expanduser(config.downloads))
    else:
        home = os.path.expanduser("~/Downloads")
        return home if os.path.isdir(home) else os.getcwd()
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
    term.show(f"Your identity: {fingerprint(identity.public_key().public_bytes_raw())}")
    return identity


def forget_peer(args: Options, term: Terminal) -> None:
    """--forget NAME: drop a peer's pinned identity from known_peers."""
    assert args.forget is not None
    name = args.forget.strip()
    path = beside(choose_config_path(args.config, not PROGRAM.endswith(".py")), KNOWN_PEERS_FILE)
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


def show_invite(invite: Invite, config: Config, term: Terminal) -> None:
    """The invite code, and the command the peer runs with it."""
    term.show(f"Invite code: {invite.code}")
    term.show(
        f"Tell it to your peer (it works once, and is void after {MAX_INVITE_FAILURES} wrong "
        f"tries), who runs:\n    {PROGRAM} --connect {shown_address(config)} --code {invite.code}"
    )


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


def ask_target(term: Terminal) -> tuple[str, int]:
    """Ask the peer's address and port."""
    while not (host := term.ask("Enter peer IP: ").strip().strip("[]")):
        term.error("try again: type the IP address (or host name) of your peer")
    while True:
        try:
            return host, parse_port(term.ask("Enter peer port: "), "peer port")
        except ConfigError as exc:
            term.error(f"try again: {exc}")


def shown_address(config: Config) -> str:
    """ip:port as a peer should type it (a LAN address instead of a wildcard)."""
    host = lan_address() if is_wildcard(config.ip) else config.ip
    return f"{format_host(host)}:{config.port}"


# --- main ----------------------------------------------------------------------


def examples() -> str:
    """The -h epilog, naming the command as it was run."""
    return "\n".join(
        [
            "examples:",
            f"  {PROGRAM}                     ask whether to listen or connect",
            f"  {PROGRAM} --listen            wait for your peer",
            f"  {PROGRAM} --invite            wait for someone you share no key with",
            f"  {PROGRAM} --connect 192.168.1.112:50233 --code 7-gazelle-microwave",
            f"  {PROGRAM} --connect 192.168.1.112:50233",
            f"  {PROGRAM} --connect [::1]:50233            IPv6 in brackets",
            f"  {PROGRAM} --connect peer.example:50233 --proxy socks5://127.0.0.1:9050",
            f"  {PROGRAM} --init --username laptop --port 50233",
            f"  {PROGRAM} --init --key - --username laptop  (paste your peer's key when asked)",
            f"  {PROGRAM} --genkey            print a new key",
            f"  {PROGRAM} --forget laptop     after laptop really made a new identity",
        ]
    )


DESCRIPTION = """\
Peer-to-peer, end-to-end encrypted chat for the terminal. One person listens,
the other connects: with a one-time invite code the first time, as contacts
(known by their identity keys) after that, or with a fernet_key both share."""


def parse_target(text: str) -> tuple[str, int | None]:
    """HOST:PORT, [IPv6]:PORT or a bare HOST (the port then comes from config.ini)."""
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


def max_members_argument(text: str) -> int:
    """--max-members: 1 to 255 people besides the host."""
    if not (text.strip().isascii() and text.strip().isdigit()) or not 1 <= int(text) <= 255:
        raise ConfigError(f"must be a number from 1 to 255, not {text!r}")
    return int(text)


def key_argument(text: str) -> str:
    """--key: '-' (read it from input) or a valid key."""
    if not text.strip():
        raise ConfigError(NO_KEY_GIVEN)
    if text.strip() != KEY_FROM_INPUT:
        decode_key(text, "the key given")
    return text.strip()


NO_KEY_GIVEN = (
    "no key given: use --key - and paste the key your peer gave you, "
    "or leave --key out to make a new one"
)


@dataclass
class Options:
    """The command line; these defaults are what no flags mean."""

    config: str | None = None  # None: ./config.ini, else the per-user one
    listen: bool = False
    connect: tuple[str, int | None] | None = None
    proxy: tuple[str, int] | None = None
    username: str | None = None
    port: int | None = None
    init: bool = False
    key: str | None = None
    genkey: bool = False
    keepalive: float = KEEPALIVE_SECONDS
    timestamps: bool | None = None
    bell: bool | None = None
    invite: bool = False
    code: str | None = None
    forget: str | None = None
    max_members: int = 20
    downloads: str | None = None


def parse_args(argv: list[str] | None) -> Options:
    """The command line; with no flags the prompts ask what flags would answer."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return Options()

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"error: {message} (see {PROGRAM} -h)\n")

    parser = Parser(
        prog=PROGRAM,
        description=DESCRIPTION,
        epilog=examples(),
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
        help="connect to a listening peer, e.g. 192.168.1.112:50233 or [::1]:50233",
    )
    add(
        "--code",
        type=flag_type(parse_invite_code),
        metavar="CODE",
        help="with --connect: the invite code the listener showed you, e.g. 7-gazelle-microwave",
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
        help="save received files here (config.ini: downloads; default ~/Downloads if it "
        "exists, else the current folder)",
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
        type=flag_type(key_argument),
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
    args = parser.parse_args(argv, namespace=Options())
    if args.key is not None and not args.init:
        parser.error("--key only goes with --init")
    if args.proxy is not None and args.connect is None:
        parser.error("--proxy only goes with --connect")
    if args.code is not None and args.connect is None:
        parser.error("--code only goes with --connect HOST:PORT")
    chatting = args.listen or args.connect or args.invite
    if args.init and (chatting or args.genkey):
        parser.error("--init only writes the config: run again without it to chat")
    if args.genkey and chatting:
        parser.error("--genkey only prints a key: run again without it to chat")
    if args.forget is not None and (chatting or args.init or args.genkey):
        parser.error("--forget only edits known_peers: run again without it to chat")
    if args.forget is not None and not args.forget.strip():
        parser.error("--forget needs the name of a peer in known_peers")
    return args


def main(argv: list[str] | None = None) -> int:
    """Load config, listen or connect, handshake, chat, report how it ended."""
    ensure_std_streams()
    global PROGRAM
    PROGRAM = program_name(sys.argv[0], sys.executable, os.getcwd(), os.environ.get("PATH", ""))
    args = parse_args(argv)  # -h and -V work even without the dependencies
    if missing := missing_dependencies():
        script = shown_path(sys.argv[0], os.getcwd())
        write(sys.stderr, dependency_error(missing, sys.executable, script) + "\n")
        return 1
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    term = Terminal(sys.stdin, sys.stdout, sys.stderr)
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
        psk = derive_psk(config.key) if config.key is not None else None
        term.show(f"Your IP and port are: {shown_address(config)}")
        if psk is not None:
            term.show(
                f"Key ID: {key_id(psk)} (your peer must see the same ID, or your keys differ)"
            )
        listening = (
            args.listen
            or args.invite
            or (not args.connect and (just_created or ask_mode(term) == "listen"))
        )
        target = None if listening else (args.connect or ask_target(term))
        invite = Invite(new_invite_code()) if listening and (args.invite or not psk) else None
        code = None if listening else args.code or ask_code(term, psk, known)
        room = os.urandom(ROOM_ID_SIZE)
        downloads = downloads_folder(config, args.downloads)
        conversation = Conversation(term, config, identity, room)
        network = Network(
            psk,
            config.username,
            conversation,
            identity=identity,
            judge=identity_judge(config.path, Role.LISTENER if listening else Role.CONNECTOR),
            code=code,
            invite=invite,
            room=room,
            capacity=args.max_members,
            keepalive=args.keepalive,
            files_user=conversation,
            downloads=downloads,
            plain_progress=not term.draws_status,
        )
        if target is None:
            source = "--port" if args.port is not None else config.path
            network.listen(listen_socket(config.ip, config.port, source))
            if invite is not None:
                show_invite(invite, config, term)
            term.show(
                f"Listening on {format_host(config.ip)}:{config.port}; "
                "waiting for your peer (Ctrl-C to stop)."
            )
        else:
            host, port = target[0], target[1] or config.port
            network.connect(connect_socket(host, port, proxy=args.proxy))
        network.start()
        try:
            conversation.wait_until_started(listening)
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


if __name__ == "__main__":
    sys.exit(main())

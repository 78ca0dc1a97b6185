#!/usr/bin/env python3
"""chatclient: a peer-to-peer, end-to-end encrypted chat for the terminal.

One person listens, the other connects; both share one Fernet key in
config.ini.  A short handshake (X25519 + HKDF, keyed by the shared key) gives
every session fresh keys per direction; every message is a Fernet token that
carries a sequence number.  See README.md for the protocol.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import hmac
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from types import FrameType
from typing import TYPE_CHECKING, ClassVar, NoReturn, TextIO

# cryptography's modules are imported where first used, so the start-up only
# loads what the Key ID needs (see README, Performance).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

__version__ = "1.0.0"

DEFAULT_PORT = 50233
HANDSHAKE_SECONDS = 10.0
MAX_PENDING_HANDSHAKES = 16
KEEPALIVE_SECONDS = 10.0
# A peer is declared lost after this many keepalive intervals of silence.
DEAD_AFTER_INTERVALS = 2.5
GOODBYE_DRAIN_SECONDS = 2.0

ReportFn = Callable[[str], None]


# --- Errors ----------------------------------------------------------------


class ChatError(Exception):
    """Something went wrong that a person can act on; the message says how."""


class ConfigError(ChatError):
    """config.ini is missing, unreadable or holds a bad value."""


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


# --- Configuration ---------------------------------------------------------

CONFIG_SECTION = "parameters"
CONFIG_FIELDS = ("ip", "port", "fernet_key", "username")
MAX_NAME_BYTES = 64
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}=")


@dataclass(frozen=True)
class Config:
    """The four settings of config.ini, validated."""

    ip: str
    port: int
    key: bytes  # the 32 raw bytes of fernet_key
    username: str
    path: str


def generate_key() -> str:
    """A fresh random key in the urlsafe base64 form config.ini holds."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def decode_key(text: str, where: str = "config.ini") -> bytes:
    """Decode fernet_key strictly: canonical urlsafe base64 of exactly 32 bytes."""
    text = text.strip()
    if not text:
        raise ConfigError(
            f"{where}: fernet_key is empty: create one with "
            "`python chatclient.py --init` (or paste the key your peer gave you)"
        )
    if not _KEY_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{where}: fernet_key is not a valid key (it must be 44 characters of "
            "urlsafe base64 ending in '='): make one with `python chatclient.py --genkey`"
        )
    raw = base64.urlsafe_b64decode(text)
    if base64.urlsafe_b64encode(raw).decode("ascii") != text:
        raise ConfigError(
            f"{where}: fernet_key is not canonical base64 (its last character before "
            "'=' is off): copy the key exactly as it was generated"
        )
    return raw


def parse_port(text: str, what: str) -> int:
    """A TCP port from 1 to 65535, or a ChatError naming `what`."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{what} must be a number from 1 to 65535, not {text!r}")
    return int(text)


def check_username(name: str, where: str) -> str:
    """A username that fits the protocol and prints safely."""
    name = name.strip()
    if not name:
        raise ConfigError(f"{where}: username is empty: set a name your peer will see")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError(f"{where}: username is longer than {MAX_NAME_BYTES} bytes")
    if sanitize(name) != name:
        raise ConfigError(f"{where}: username must not contain control characters")
    return name


def read_config(path: str) -> dict[str, str]:
    """The raw [parameters] fields of an INI file (strings, possibly empty)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except FileNotFoundError:
        init = "--init" if path == "config.ini" else f"--init --config {path}"
        raise ConfigError(
            f"{path} not found: create it with `python chatclient.py {init}` "
            "(or copy the example config.ini and set fernet_key)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {describe_os_error(exc)}") from exc
    except configparser.Error as exc:
        raise ConfigError(f"{path} is not a valid INI file: {describe_ini_error(exc)}") from exc
    if not parser.has_section(CONFIG_SECTION):
        raise ConfigError(
            f"{path}: missing the [{CONFIG_SECTION}] section: "
            "see the example config.ini in README.md"
        )
    return dict(parser.items(CONFIG_SECTION))


def describe_ini_error(exc: configparser.Error) -> str:
    """configparser's complaint in one line, naming the line it concerns."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: text before the [{CONFIG_SECTION}] header"
    errors = getattr(exc, "errors", None)
    if errors:
        lineno, line = errors[0]
        return f"line {lineno}: {line} is not of the form name = value"
    return str(exc).splitlines()[0]


def load_config(path: str, fields: dict[str, str] | None = None) -> Config:
    """Validate config.ini's fields into a Config, or raise ConfigError."""
    fields = read_config(path) if fields is None else fields
    for name in CONFIG_FIELDS:
        if name not in fields:
            raise ConfigError(
                f"{path}: missing field '{name}' in [{CONFIG_SECTION}]: "
                "see the example config.ini in README.md"
            )
    ip = fields["ip"].strip().strip("[]")
    if not ip:
        raise ConfigError(f"{path}: ip is empty: use 0.0.0.0 to listen on all interfaces")
    return Config(
        ip=ip,
        port=parse_port(fields["port"], f"{path}: port"),
        key=decode_key(fields["fernet_key"], str(path)),
        username=check_username(fields["username"], str(path)),
        path=path,
    )


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


def render_config(ip: str, port: int, key: str, username: str) -> str:
    """The text of a config.ini file."""
    return (
        "# chatclient configuration. Keep this file secret: fernet_key lets anyone\n"
        "# who has it read and join your chats.\n"
        f"[{CONFIG_SECTION}]\n"
        "# Address to listen on; 0.0.0.0 (or ::) means all interfaces.\n"
        f"ip = {ip}\n"
        f"port = {port}\n"
        "# Both people need the same key: python chatclient.py --genkey makes one.\n"
        f"fernet_key = {key}\n"
        f"username = {username}\n"
    )


def write_config(path: str, text: str) -> None:
    """Write config.ini readable and writable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # an existing file loses its wider mode before the key lands
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {describe_os_error(exc)}") from exc


def login_name() -> str:
    """The user's login name as a safe default username."""
    try:
        import getpass

        name = getpass.getuser()
    except (OSError, KeyError):
        name = ""
    name = "".join(ch for ch in name if ch.isprintable() and not ch.isspace())
    return name[:32] or "me"


# --- Keys and handshake (pure) ---------------------------------------------
#
# M1  connector -> listener : MAGIC, VERSION, SHA-256(connector public key)
# M2  listener -> connector : MAGIC, VERSION, listener public key
# M3  connector -> listener : connector public key, HMAC(confirm, "connector" || th)
# th  = SHA-256(M1 || M2 || connector public key)
# okm = HKDF(X25519 secret, salt=PSK, info="chatclient/1 keys" || th)

MAGIC = b"CCHT"
VERSION = 1
HELLO_SIZE = len(MAGIC) + 1 + 32
CONFIRM_SIZE = 32 + 32
REJECT_SIZE = len(MAGIC) + 2
# Hello frames of other versions may differ in size; none may exceed this.
MAX_HELLO_SIZE = 256
PSK_INFO = b"chatclient/1 psk"
KEYS_INFO = b"chatclient/1 keys"
CONFIRM_LABEL = b"connector"
OKM_SIZE = 32 + 32 + 32 + 4


class Reject(IntEnum):
    """Why a listener refuses a connection, sent as a small plaintext frame."""

    KEY_MISMATCH = 1
    BAD_VERSION = 2
    BUSY = 3


def derive_psk(key: bytes) -> bytes:
    """The pre-shared key: the config key is never used raw."""
    return hkdf_sha256(key, None, PSK_INFO, 32)


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869) from the cryptography package."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


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
        return KeyMismatch(KEY_MISMATCH_TEXT)
    if reason == Reject.BUSY:
        return HandshakeError(
            "the peer is already chatting with someone (two people per chat for now)"
        )
    return HandshakeError(f"the peer refused the connection (reason {reason})")


KEY_MISMATCH_TEXT = (
    "the peer's fernet_key differs from yours (or the connection was tampered "
    "with): compare the Key IDs both of you see at start-up"
)


def version_mismatch(version: int) -> str:
    """The message for a peer speaking another protocol version."""
    return (
        f"the peer speaks chatclient protocol version {version}, this program speaks "
        f"version {VERSION}: both people need the same chatclient.py"
    )


def parse_hello(body: bytes) -> bytes:
    """The 32-byte field of a hello (M1 or M2), after checking magic and version."""
    if not body.startswith(MAGIC) or len(body) <= len(MAGIC):
        raise ProtocolError("the peer is not speaking the chatclient protocol")
    version = body[len(MAGIC)]
    if version != VERSION:
        raise HandshakeError(version_mismatch(version))
    if len(body) != HELLO_SIZE:
        raise ProtocolError(f"hello of {len(body)} bytes, expected {HELLO_SIZE}")
    return body[len(MAGIC) + 1 :]


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


@dataclass(frozen=True)
class SessionKeys:
    """What a successful handshake yields, from the view of one side."""

    send_key: bytes
    recv_key: bytes
    code: str  # six digits both sides show identically
    transcript: bytes = field(repr=False)


def derive_keys(secret: bytes, psk: bytes, th: bytes) -> tuple[bytes, bytes, bytes, str]:
    """okm split into: connector->listener, listener->connector, confirm, code."""
    okm = hkdf_sha256(secret, psk, KEYS_INFO + th, OKM_SIZE)
    code = int.from_bytes(okm[96:100], "big") % 1_000_000
    return okm[0:32], okm[32:64], okm[64:96], f"{code:06d}"


def confirm_tag(confirm_key: bytes, th: bytes) -> bytes:
    """The connector's proof that it holds the PSK and saw this transcript."""
    return hmac.new(confirm_key, CONFIRM_LABEL + th, hashlib.sha256).digest()


class ConnectorHandshake:
    """The connector's side of the handshake: commit, then reveal and confirm."""

    def __init__(self, psk: bytes, private_key: X25519PrivateKey | None = None) -> None:
        self._psk = psk
        self._private = private_key or generate_private_key()
        self._public = public_bytes(self._private)
        self.m1 = MAGIC + bytes([VERSION]) + hashlib.sha256(self._public).digest()

    def respond(self, m2: bytes) -> tuple[bytes, SessionKeys]:
        """Take the listener's hello; return M3 and this side's session keys."""
        listener_key = check_peer_key(parse_hello(m2))
        secret = shared_secret(self._private, listener_key)
        th = hashlib.sha256(self.m1 + m2 + self._public).digest()
        c2l, l2c, confirm, code = derive_keys(secret, self._psk, th)
        m3 = self._public + confirm_tag(confirm, th)
        return m3, SessionKeys(send_key=c2l, recv_key=l2c, code=code, transcript=th)


class ListenerHandshake:
    """The listener's side: take the commitment, answer, then verify the reveal."""

    def __init__(self, psk: bytes, private_key: X25519PrivateKey | None = None) -> None:
        self._psk = psk
        self._private = private_key or generate_private_key()
        self._m1 = b""
        self.m2 = MAGIC + bytes([VERSION]) + public_bytes(self._private)

    def receive_commit(self, m1: bytes) -> bytes:
        """Take M1 (the connector's commitment); return M2."""
        parse_hello(m1)
        self._m1 = m1
        return self.m2

    def receive_confirm(self, m3: bytes) -> SessionKeys:
        """Check M3 against the commitment and the PSK; return session keys."""
        if len(m3) != CONFIRM_SIZE:
            raise ProtocolError(f"confirmation of {len(m3)} bytes, expected {CONFIRM_SIZE}")
        connector_public, tag = m3[:32], m3[32:]
        commitment = self._m1[len(MAGIC) + 1 :]
        if not hmac.compare_digest(hashlib.sha256(connector_public).digest(), commitment):
            raise HandshakeError("the peer's key does not match its commitment (tampering)")
        secret = shared_secret(self._private, check_peer_key(connector_public))
        th = hashlib.sha256(self._m1 + self.m2 + connector_public).digest()
        c2l, l2c, confirm, code = derive_keys(secret, self._psk, th)
        if not hmac.compare_digest(confirm_tag(confirm, th), tag):
            raise KeyMismatch(KEY_MISMATCH_TEXT)
        return SessionKeys(send_key=l2c, recv_key=c2l, code=code, transcript=th)


# --- Frames and messages (pure) --------------------------------------------

FRAME_HEADER = struct.Struct("!I")
MAX_FRAME = 128 * 1024
MAX_TEXT = 64 * 1024
PAYLOAD_HEADER = struct.Struct("!QB")


def encode_frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian length, then the body."""
    return FRAME_HEADER.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies, refusing oversized frames early."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        self._buffer += data

    def next_frame(self, limit: int = MAX_FRAME) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive.

        A length above `limit` raises ProtocolError before the body is read.
        """
        if len(self._buffer) < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buffer)
        if length > limit:
            raise ProtocolError(f"the peer announced a {length}-byte frame; the limit is {limit}")
        end = FRAME_HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[FRAME_HEADER.size : end])
        del self._buffer[:end]
        return body

    def frames(self, limit: int = MAX_FRAME) -> Iterator[bytes]:
        """Every complete frame buffered so far."""
        while (body := self.next_frame(limit)) is not None:
            yield body

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def has_frame(self) -> bool:
        """True when a complete frame is buffered, so the next one needs no read."""
        if len(self._buffer) < FRAME_HEADER.size:
            return False
        (length,) = FRAME_HEADER.unpack_from(self._buffer)
        return len(self._buffer) >= FRAME_HEADER.size + int(length)


class MessageType(IntEnum):
    """Wire tags of the message types."""

    WELCOME = 1
    CHAT = 2
    TERMINATE = 3
    KEEPALIVE = 4


@dataclass(frozen=True)
class Message:
    """Base of everything that travels inside an encrypted frame."""

    TYPE: ClassVar[MessageType]

    def body(self) -> bytes:
        """The message's bytes after the payload header."""
        return b""


@dataclass(frozen=True)
class Welcome(Message):
    """The first message each side sends: who it is."""

    TYPE: ClassVar[MessageType] = MessageType.WELCOME
    name: str

    def body(self) -> bytes:
        return encode_text(self.name, MAX_NAME_BYTES, "username")


@dataclass(frozen=True)
class Chat(Message):
    """A line of text typed by a person."""

    TYPE: ClassVar[MessageType] = MessageType.CHAT
    text: str

    def body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "message")


@dataclass(frozen=True)
class Terminate(Message):
    """The last message of a side that leaves, with optional goodbye text."""

    TYPE: ClassVar[MessageType] = MessageType.TERMINATE
    text: str = ""

    def body(self) -> bytes:
        return encode_text(self.text, MAX_TEXT, "goodbye text")


@dataclass(frozen=True)
class Keepalive(Message):
    """Sent on an idle link so a vanished peer is noticed."""

    TYPE: ClassVar[MessageType] = MessageType.KEEPALIVE


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


def encode_payload(seq: int, message: Message) -> bytes:
    """The plaintext inside a Fernet token: sequence, type, body."""
    return PAYLOAD_HEADER.pack(seq, message.TYPE) + message.body()


def decode_payload(data: bytes) -> tuple[int, Message]:
    """Parse a decrypted payload into its sequence number and message."""
    if len(data) < PAYLOAD_HEADER.size:
        raise ProtocolError("the peer sent a truncated message")
    seq, tag = PAYLOAD_HEADER.unpack_from(data)
    body = data[PAYLOAD_HEADER.size :]
    message: Message
    if tag == MessageType.WELCOME:
        name = decode_text(body, MAX_NAME_BYTES, "username")
        if not name:
            raise ProtocolError("the peer sent an empty username")
        message = Welcome(name)
    elif tag == MessageType.CHAT:
        message = Chat(decode_text(body, MAX_TEXT, "message"))
    elif tag == MessageType.TERMINATE:
        message = Terminate(decode_text(body, MAX_TEXT, "goodbye text"))
    elif tag == MessageType.KEEPALIVE:
        if body:
            raise ProtocolError("the peer sent a keepalive with a body")
        message = Keepalive()
    else:
        raise ProtocolError(f"the peer sent an unknown message type {tag}")
    return seq, message


# --- Session rules (pure) --------------------------------------------------


class Phase(Enum):
    """Where one direction of a session stands."""

    AWAIT_WELCOME = "before its welcome"
    OPEN = "during the chat"
    CLOSED = "after its goodbye"


# Which message may follow in each phase, and the phase it leads to.
TRANSITIONS: dict[Phase, dict[type[Message], Phase]] = {
    Phase.AWAIT_WELCOME: {Welcome: Phase.OPEN},
    Phase.OPEN: {Chat: Phase.OPEN, Keepalive: Phase.OPEN, Terminate: Phase.CLOSED},
    Phase.CLOSED: {},
}


def advance(phase: Phase, message: Message, who: str) -> Phase:
    """The next phase, or ProtocolError naming the message and the phase."""
    following = TRANSITIONS[phase].get(type(message))
    if following is None:
        name = type(message).__name__.upper()
        raise ProtocolError(f"{who} sent {name} {phase.value}")
    return following


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
        self._send_phase = Phase.AWAIT_WELCOME
        self._recv_phase = Phase.AWAIT_WELCOME

    def encode(self, message: Message) -> bytes:
        """The complete frame carrying `message`; each call uses the next sequence."""
        payload = encode_payload(self._send_seq, message)
        self._send_phase = advance(self._send_phase, message, "this side")
        self._send_seq += 1
        return encode_frame(self._sender.encrypt(payload))

    def decode(self, body: bytes) -> Message:
        """The message inside one frame body from the peer.

        Raises ProtocolError for anything forged, replayed, reordered, dropped,
        reflected or out of place; the session must end then.
        """
        try:
            # Fernet's base64 decoding is lenient (it skips stray bytes and unused
            # bits); only the canonical encoding of a token is accepted here.
            if base64.urlsafe_b64encode(base64.urlsafe_b64decode(body)) != body:
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


def sanitize(text: str) -> str:
    """Peer text made safe to print: control and format characters escaped."""
    if text.isprintable():
        return text
    return "".join(_safe_char(ch) for ch in text)


_JOINERS = frozenset("\u200c\u200d")  # needed by emoji and some scripts


def _safe_char(ch: str) -> str:
    category = unicodedata.category(ch)
    if (category[0] == "C" and ch not in _JOINERS) or category in ("Zl", "Zp"):
        return ch.encode("unicode_escape").decode("ascii")
    return ch


# --- Transport: sockets and threads ----------------------------------------


def describe_os_error(exc: BaseException) -> str:
    """A short human reason for an OSError."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def format_host(host: str) -> str:
    """Host as typed before ':port' (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def unmap(host: str) -> str:
    """An IPv4-mapped IPv6 address shown as plain IPv4."""
    with contextlib.suppress(ValueError):
        import ipaddress

        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            return str(address.ipv4_mapped)
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


def resolve(host: str, port: int, passive: bool) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The first socket address for host:port, or NetworkError."""
    flags = socket.AI_PASSIVE if passive else 0
    lookup = None if passive and host == "*" else host
    try:
        infos = socket.getaddrinfo(lookup, port, 0, socket.SOCK_STREAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise NetworkError(
            f"cannot resolve host {host!r}: check the spelling, or use an IP address"
        ) from exc
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (:: also accepts IPv4)."""
    family, address = resolve(host, port, passive=True)
    server = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(address)
        server.listen(MAX_PENDING_HANDSHAKES * 2)
    except OSError as exc:
        server.close()
        where = f"{format_host(host)}:{port}"
        if getattr(exc, "errno", None) in (98, 48, 10048):  # EADDRINUSE
            raise NetworkError(
                f"port {port} is already in use on {where}: stop the other program "
                "or choose another port in config.ini"
            ) from exc
        if getattr(exc, "errno", None) in (99, 49, 10049):  # EADDRNOTAVAIL
            raise NetworkError(
                f"cannot listen on {where}: that address is not on this machine; "
                "set ip = 0.0.0.0 in config.ini to listen on all interfaces"
            ) from exc
        raise NetworkError(f"cannot listen on {where}: {describe_os_error(exc)}") from exc
    return server


def connect_socket(host: str, port: int, timeout: float = HANDSHAKE_SECONDS) -> socket.socket:
    """A TCP connection to host:port, or NetworkError saying what to check."""
    where = f"{format_host(host)}:{port}"
    family, address = resolve(host, port, passive=False)
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
        raise NetworkError(
            f"connection to {where} refused: is the peer listening on that port? "
            "(they must start first and choose listen)"
        ) from exc
    except OSError as exc:
        sock.close()
        raise NetworkError(f"cannot connect to {where}: {describe_os_error(exc)}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Deadline:
    """One deadline for a whole exchange, checked before every read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, or HandshakeError when the time is up."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise HandshakeError(f"the handshake did not finish within {self.seconds:g} s")
        return left


def read_frame(sock: socket.socket, decoder: FrameDecoder, deadline: Deadline, limit: int) -> bytes:
    """The next frame during the handshake, within the deadline and size limit."""
    while (body := next_handshake_frame(decoder, limit)) is None:
        sock.settimeout(deadline.remaining())
        try:
            data = sock.recv(4096)
        except TimeoutError:
            deadline.remaining()
            continue
        except OSError as exc:
            raise HandshakeError(
                f"the connection failed during the handshake: {describe_os_error(exc)}"
            ) from exc
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        decoder.feed(data)
    return body


def next_handshake_frame(decoder: FrameDecoder, limit: int) -> bytes | None:
    """decoder.next_frame, with an oversized frame named as a foreign protocol."""
    try:
        return decoder.next_frame(limit)
    except ProtocolError as exc:
        raise HandshakeError(
            f"the other side is not speaking the chatclient protocol ({exc})"
        ) from exc


@dataclass
class Peer:
    """An admitted peer: its socket and the session both sides agreed on."""

    sock: socket.socket
    decoder: FrameDecoder
    session: Session
    address: tuple[str, int]
    name: str
    connected_at: float = field(default_factory=time.monotonic)


def peer_address(sock: socket.socket) -> tuple[str, int]:
    """The peer's (host, port), or HandshakeError if it already vanished."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError as exc:
        raise HandshakeError("the peer vanished right after the handshake") from exc
    return unmap(host), port


def send_reject(sock: socket.socket, reason: Reject) -> None:
    """Send a rejection frame, best effort: the connector may already be gone."""
    with contextlib.suppress(OSError):
        sock.sendall(encode_frame(reject_frame(reason)))


def send_all(sock: socket.socket, data: bytes) -> None:
    """sendall, with the failure named as a handshake error."""
    try:
        sock.sendall(data)
    except OSError as exc:
        raise HandshakeError(
            f"the connection failed during the handshake: {describe_os_error(exc)}"
        ) from exc


def handshake_as_connector(
    sock: socket.socket, psk: bytes, username: str, seconds: float = HANDSHAKE_SECONDS
) -> Peer:
    """Run the connector's side on a connected socket; return the admitted peer."""
    deadline = Deadline(seconds)
    decoder = FrameDecoder()
    handshake = ConnectorHandshake(psk)
    send_all(sock, encode_frame(handshake.m1))
    m2 = read_frame(sock, decoder, deadline, MAX_HELLO_SIZE)
    if (refusal := parse_reject(m2)) is not None:
        raise refusal
    m3, keys = handshake.respond(m2)
    send_all(sock, encode_frame(m3))
    first = read_frame(sock, decoder, deadline, MAX_FRAME)
    if (refusal := parse_reject(first)) is not None:
        raise refusal
    session = Session(keys)
    try:
        welcome = session.decode(first)
    except ProtocolError as exc:
        raise KeyMismatch(KEY_MISMATCH_TEXT) from exc
    assert isinstance(welcome, Welcome)  # the session's phase table guarantees it
    send_all(sock, session.encode(Welcome(username)))
    return Peer(sock, decoder, session, peer_address(sock), welcome.name)


def handshake_as_listener(
    sock: socket.socket,
    psk: bytes,
    username: str,
    seconds: float = HANDSHAKE_SECONDS,
    claim: Callable[[], bool] = lambda: True,
) -> Peer:
    """Run the listener's side on an accepted socket; return the admitted peer.

    `claim` is asked once the connector has proven the key, before WELCOME:
    when it says no (someone else got in first), the connector is told busy.
    """
    deadline = Deadline(seconds)
    decoder = FrameDecoder()
    handshake = ListenerHandshake(psk)
    m1 = read_frame(sock, decoder, deadline, MAX_HELLO_SIZE)
    try:
        m2 = handshake.receive_commit(m1)
    except HandshakeError:
        send_reject(sock, Reject.BAD_VERSION)
        raise
    send_all(sock, encode_frame(m2))
    m3 = read_frame(sock, decoder, deadline, MAX_HELLO_SIZE)
    try:
        keys = handshake.receive_confirm(m3)
    except KeyMismatch:
        send_reject(sock, Reject.KEY_MISMATCH)
        raise
    if not claim():
        send_reject(sock, Reject.BUSY)
        raise HandshakeError("another peer got in first")
    session = Session(keys)
    send_all(sock, session.encode(Welcome(username)))
    welcome = session.decode(read_frame(sock, decoder, deadline, MAX_FRAME))
    assert isinstance(welcome, Welcome)  # the session's phase table guarantees it
    return Peer(sock, decoder, session, peer_address(sock), welcome.name)


class Listener:
    """Accept connections and run their handshakes concurrently.

    At most MAX_PENDING_HANDSHAKES run at once; a new connection beyond that
    evicts the oldest unfinished one, so silent or slow connections never lock
    a real peer out. The first to prove the key claims the chat; later ones
    are told the listener is busy.
    """

    def __init__(
        self,
        server: socket.socket,
        psk: bytes,
        username: str,
        report: ReportFn,
        seconds: float = HANDSHAKE_SECONDS,
    ) -> None:
        self._server = server
        self._psk = psk
        self._username = username
        self._report = report
        self._seconds = seconds
        self._lock = threading.Lock()
        self._pending: dict[socket.socket, float] = {}  # handshakes under way, by start
        self._evicted: set[socket.socket] = set()
        self._taken = False
        self._admitted = threading.Event()
        self._peer: Peer | None = None
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()

    def wait(self, watch: Callable[[threading.Event], None] | None = None) -> Peer:
        """Block until a peer has completed the handshake; `watch` polls meanwhile."""
        while not self._admitted.is_set():
            if watch is None:
                self._admitted.wait(0.5)  # short waits keep Ctrl-C responsive
            else:
                watch(self._admitted)
        assert self._peer is not None
        return self._peer

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, address = self._server.accept()
            except OSError:
                return
            with self._lock:
                busy = self._taken
                if not busy:
                    self._make_room()
                    self._pending[sock] = time.monotonic()
            if busy:
                refuse(sock, Reject.BUSY)
                continue
            threading.Thread(
                target=self._admit, args=(sock, address), name="handshake", daemon=True
            ).start()

    def _make_room(self) -> None:
        """Evict the oldest unfinished handshake when all slots are taken (lock held)."""
        if len(self._pending) < MAX_PENDING_HANDSHAKES:
            return
        oldest = min(self._pending, key=self._pending.__getitem__)
        del self._pending[oldest]
        self._evicted.add(oldest)
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)  # wakes its handshake thread

    def _claim(self) -> bool:
        """Take the one chat slot, or False if another peer has it."""
        with self._lock:
            taken, self._taken = self._taken, True
        return not taken

    def _admit(self, sock: socket.socket, address: tuple[str, int]) -> None:
        claimed = False

        def claim() -> bool:
            nonlocal claimed
            claimed = self._claim()
            return claimed

        try:
            peer = handshake_as_listener(sock, self._psk, self._username, self._seconds, claim)
        except ChatError as exc:
            sock.close()
            with self._lock:
                self._pending.pop(sock, None)
                evicted = sock in self._evicted
                self._evicted.discard(sock)
                if claimed:
                    self._taken = False
                chatting = self._taken  # then stay quiet: the chat is on screen
            if not chatting:
                self._report(self._refusal(address, exc, evicted))
            return
        with self._lock:
            self._pending.pop(sock, None)
        self._peer = peer
        self._admitted.set()

    @staticmethod
    def _refusal(address: tuple[str, int], exc: ChatError, evicted: bool) -> str:
        shown = (unmap(address[0]), address[1])
        if evicted:
            return (
                f"Dropped a connection from {shown!r}: it was the oldest of "
                f"{MAX_PENDING_HANDSHAKES} unfinished handshakes"
            )
        return f"Refused a connection from {shown!r}: {exc}"


def refuse(sock: socket.socket, reason: Reject) -> None:
    """Tell a connection why it is refused, without waiting on it, and close it."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
    send_reject(sock, reason)
    sock.close()


class Connection:
    """An admitted peer's socket carrying the chat, safe to send from two threads."""

    def __init__(self, peer: Peer, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.peer = peer
        self.keepalive = keepalive
        self.silence_limit = keepalive * DEAD_AFTER_INTERVALS
        self._send_lock = threading.Lock()
        self._last_send = time.monotonic()
        peer.sock.settimeout(self.silence_limit)

    def send(self, message: Message) -> None:
        """Encrypt and send one message, or raise ConnectionLost."""
        with self._send_lock:
            frame = self.peer.session.encode(message)
            try:
                self.peer.sock.sendall(frame)
            except TimeoutError as exc:
                raise ConnectionLost(
                    f"the peer has not read anything for {self.silence_limit:g} s"
                ) from exc
            except OSError as exc:
                raise ConnectionLost(describe_os_error(exc)) from exc
            self._last_send = time.monotonic()

    def send_keepalive_if_idle(self) -> None:
        """Send a keepalive when nothing was sent for a keepalive interval."""
        if time.monotonic() - self._last_send >= self.keepalive:
            self.send(Keepalive())

    def messages(self) -> Iterator[Message]:
        """Messages from the peer in order; ends with ConnectionLost or after Terminate."""
        sock, decoder, session = self.peer.sock, self.peer.decoder, self.peer.session
        while True:
            try:
                for body in decoder.frames():
                    message = session.decode(body)
                    yield message
                    if isinstance(message, Terminate):
                        return
            except ProtocolError as exc:
                raise ConnectionLost(str(exc)) from exc
            try:
                data = sock.recv(65536)
            except TimeoutError as exc:
                raise ConnectionLost(
                    f"nothing heard from the peer for {self.silence_limit:g} s "
                    "(it may be offline or the network is down)"
                ) from exc
            except OSError as exc:
                raise ConnectionLost(describe_os_error(exc)) from exc
            if not data:
                raise ConnectionLost("the peer closed the connection without saying goodbye")
            decoder.feed(data)

    def finish_sending(self) -> None:
        """Half-close: the peer gets EOF after everything sent so far."""
        with contextlib.suppress(OSError):
            self.peer.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the socket."""
        self.peer.sock.close()


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
        if self.interactive:
            self._load_readline()

    def _load_readline(self) -> None:
        # Imported only on terminals: importing readline may emit escape sequences.
        try:
            import readline
        except ImportError:
            return
        self._line_buffer = readline.get_line_buffer
        # readline is not thread-safe and Python runs it without the GIL, so
        # another thread must never redraw: lines from other threads are handed
        # to the main thread, whose signal handler runs between keypresses.
        if main_thread_can_be_signalled():
            signal.signal(signal.SIGUSR2, self._print_posted)
            self._relay = True
        try:  # readline's own full redraw keeps the cursor where the user left it
            import ctypes

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

    def show(self, line: str, stream: TextIO | None = None) -> None:
        """Print a line; on a terminal, redraw the prompt and typed text below it."""
        out = stream or self.stdout
        if self._relay and threading.get_ident() != self._main:
            self._post(line, out)
        else:
            self._print(line, out)

    def _post(self, line: str, out: TextIO) -> None:
        """Have the main thread print a line, and wait until it has."""
        printed = threading.Event()
        with self._posted_lock:
            self._posted.append((line, out, printed))
        signal_until(self._main, signal.SIGUSR2, printed)

    def _print_posted(self, signum: int, frame: FrameType | None) -> None:
        if self._printing_posted:  # a nested signal: the outer call prints in order
            return
        self._printing_posted = True
        try:
            while True:
                with self._posted_lock:
                    if not self._posted:
                        return
                    line, out, printed = self._posted.pop(0)
                self._print(line, out)
                printed.set()
        finally:
            self._printing_posted = False

    def _print(self, line: str, out: TextIO) -> None:
        with self._lock:
            if self._prompt is None or not self.interactive:
                write(out, line + "\n")
                return
            if self._clear_line is not None:
                self._clear_line()  # every row of a long, wrapped input line
            else:
                write(self.stdout, "\r\x1b[2K")
            write(out, line + "\n")
            if self._redraw is not None:
                self._redraw()
            else:
                write(self.stdout, self._prompt + self._line_buffer())

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
        try:
            return input(prompt if self.interactive else "")
        finally:
            with self._lock:
                self._prompt = None

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
        if not readable:
            return
        if not os.read(fd, 4096):
            raise EOFError
        self.error("Nobody is connected yet: that line was not sent.")

    def clear_prompt(self) -> None:
        """Wipe an abandoned prompt line (the chat ended while typing)."""
        if self.interactive:
            with self._lock:
                write(self.stdout, "\r\x1b[2K")

    def newline(self) -> None:
        """End a line left open by Ctrl-C or Ctrl-D at a terminal prompt."""
        if self.interactive:
            with self._lock:
                write(self.stdout, "\n")


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


# --- Chat: the receiver thread and the input loop ------------------------------


class PeerEnded(BaseException):
    """Raised in the main thread when the receiver has ended the chat."""


HELP = """\
Type a line and press Enter to send it. Commands:
  /help            this help
  /who             who you are talking to, from where, for how long
  /verify          the session code to compare with your peer
  /quit or exit    leave the chat (asks for optional goodbye text)
  //text           send a line that starts with '/'
Ctrl-D or Ctrl-C also leave the chat."""


class Conversation:
    """One chat: a receiver thread prints what arrives; the main thread sends.

    Exactly one side decides how the chat ended (`outcome`): the receiver
    (goodbye or loss from the peer) or the input loop (we left).
    """

    def __init__(self, conn: Connection, term: Terminal, username: str) -> None:
        self.conn = conn
        self.term = term
        self.prompt = f"{username}> " if term.interactive else ""
        self.outcome: int | None = None
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._main = threading.get_ident()
        self._can_interrupt = False
        self._interrupted = threading.Event()

    def run(self) -> int:
        """Chat until someone leaves; return the exit status.

        When the receiver ends the chat it interrupts the main thread (SIGUSR1
        raising PeerEnded), so a pending input() never waits for a keypress.
        """
        if main_thread_can_be_signalled():
            signal.signal(signal.SIGUSR1, self._on_interrupt)
            self._can_interrupt = True
        try:
            threading.Thread(target=self._receive, name="receiver", daemon=True).start()
            threading.Thread(target=self._keep_alive, name="keepalive", daemon=True).start()
            try:
                goodbye = self._read_until_exit()
            except KeyboardInterrupt:  # Ctrl-C while sending or printing
                self.term.newline()
                goodbye = ""
            except ConnectionLost as exc:
                self.ended.wait(GOODBYE_DRAIN_SECONDS)
                self._decide(1, f"Connection lost: {exc}")
                return self.status()
            self._leave(goodbye)
        except PeerEnded:
            self.term.clear_prompt()
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
            command = line.strip()
            if command in ("exit", "/quit"):
                return self._ask_goodbye()
            if command in ("/help", "/?"):
                self.term.show(HELP)
            elif command in ("/who", "/verify"):
                self.term.show(self._describe_peer())
            elif line.startswith("/") and not line.startswith("//"):
                self.term.error(
                    f"unknown command {sanitize(line.split()[0])}: type /help for the "
                    "commands, or start with // to send a line beginning with /"
                )
            elif line:
                self._send_chat(line[1:] if line.startswith("//") else line)

    def _ask_goodbye(self) -> str:
        """The goodbye text, asked again until it can be sent."""
        while True:
            try:
                text = self.term.ask("Enter goodbye text (optional): ")
                encode_text(text, MAX_TEXT, "goodbye text")
            except (EOFError, KeyboardInterrupt):
                self.term.newline()
                return ""
            except UnicodeDecodeError:
                self.term.error("error: that line is not valid UTF-8 text: type it again")
            except ChatError as exc:
                self.term.error(f"error: {exc}")
            else:
                return text

    def _send_chat(self, text: str) -> None:
        try:
            self.conn.send(Chat(text))
        except ConnectionLost:
            raise
        except ChatError as exc:
            self.term.error(f"error: {exc}")
            return
        self.term.show("Sent CHAT message.")

    def _describe_peer(self) -> str:
        peer = self.conn.peer
        minutes, seconds = divmod(int(time.monotonic() - peer.connected_at), 60)
        host, port = peer.address
        return (
            f"Talking to {sanitize(peer.name)} at {format_host(host)}:{port}, connected "
            f"{minutes} min {seconds} s. Session code: {peer.session.keys.code} "
            "(the same on both screens means nobody is in the middle)"
        )

    def _leave(self, goodbye: str) -> None:
        if not self._decide(0, None):
            self.ended.wait(GOODBYE_DRAIN_SECONDS)  # the peer ended it first
            return
        try:
            self.conn.send(Terminate(goodbye))
        except ChatError as exc:
            self.outcome = 1
            self.term.show(f"Connection lost: {exc}")
            return
        self.term.show("Sent TERMINATE message.")
        self.conn.finish_sending()
        self.term.show("Connection closed by you.")
        # Wait for the peer to close too, so nothing in flight is cut off.
        self.ended.wait(GOODBYE_DRAIN_SECONDS)
        self.conn.close()

    def _decide(self, status: int, line: str | None) -> bool:
        """Record how the chat ended and print its line, unless already decided."""
        with self._lock:
            if self.outcome is not None:
                return False
            self.outcome = status
            if line is not None:
                self.term.show(line)
            return True

    def _receive(self) -> None:
        name = sanitize(self.conn.peer.name)
        lines: list[str] = []  # shown together once no further frame is already here
        try:
            for message in self.conn.messages():
                if isinstance(message, Chat):
                    lines.append(f"{name} says: {sanitize(message.text)}")
                elif isinstance(message, Terminate):
                    text = sanitize(message.text)
                    lines.append(
                        f"{name} left the chat: {text}" if text else f"{name} left the chat."
                    )
                if lines and not self.conn.peer.decoder.has_frame():
                    self.term.show("\n".join(lines))
                    lines = []
                if isinstance(message, Terminate):
                    self._end_from_receiver(0, "Connection closed by peer.")
        except ConnectionLost as exc:
            if lines:  # messages that verified before the frame that broke the session
                self.term.show("\n".join(lines))
            self._end_from_receiver(1, f"Connection lost: {exc}")
        finally:
            self.ended.set()

    def _end_from_receiver(self, status: int, line: str) -> None:
        if not (self._decide(status, line) and self._can_interrupt):
            return
        signal_until(self._main, signal.SIGUSR1, self._interrupted)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if not self._interrupted.is_set():
            self._interrupted.set()
            raise PeerEnded

    def _keep_alive(self) -> None:
        while not self.ended.wait(self.conn.keepalive / 2):
            try:
                self.conn.send_keepalive_if_idle()
            except ChatError:
                return


# --- main ----------------------------------------------------------------------

EXAMPLES = """\
examples:
  python chatclient.py                          ask whether to listen or connect
  python chatclient.py --listen                 wait for your peer
  python chatclient.py --connect 192.168.1.112:50233
  python chatclient.py --connect [::1]:50233    IPv6 in brackets
  python chatclient.py --init --username laptop --port 50233
  python chatclient.py --init --key KEY_FROM_PEER --username laptop
  python chatclient.py --genkey                 print a new key
"""


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


def port_argument(text: str) -> int:
    """argparse type for --port."""
    import argparse

    try:
        return parse_port(text, "--port")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass
class Options:
    """The command line; these defaults are what no flags mean."""

    config: str = "config.ini"  # pathlib is not imported: start-up time
    listen: bool = False
    connect: tuple[str, int | None] | None = None
    username: str | None = None
    port: int | None = None
    init: bool = False
    key: str | None = None
    genkey: bool = False
    keepalive: float = KEEPALIVE_SECONDS


def parse_args(argv: list[str] | None) -> Options:
    """The command line; with no flags the prompts ask what flags would answer."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return Options()  # the usual start skips importing argparse (start-up time)
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"error: {message} (see python chatclient.py -h)\n")

    parser = Parser(
        prog="chatclient",
        description="Peer-to-peer end-to-end encrypted chat for the terminal. "
        "One person listens, the other connects; both need the same fernet_key.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="settings file (default: config.ini in the current directory)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--listen", action="store_true", help="wait for a peer (skips the question)")
    mode.add_argument(
        "--connect",
        type=parse_target,
        metavar="HOST:PORT",
        help="connect to a listening peer, e.g. 192.168.1.112:50233 or [::1]:50233",
    )
    parser.add_argument(
        "--username", metavar="NAME", help="name your peer sees (overrides config.ini)"
    )
    parser.add_argument(
        "--port", type=port_argument, metavar="N", help="port to listen on (overrides config.ini)"
    )
    parser.add_argument(
        "--init", action="store_true", help="create config.ini with a new key, asking nothing"
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="with --init: save this key (from your peer) instead of a new one",
    )
    parser.add_argument("--genkey", action="store_true", help="print a new key and exit")
    parser.add_argument(
        "--keepalive",
        type=float,
        metavar="SECONDS",
        help=f"idle seconds between keepalives; a peer silent {DEAD_AFTER_INTERVALS:g}x this long "
        f"is reported lost (default {KEEPALIVE_SECONDS:g})",
    )
    parser.add_argument(
        "--version", action="version", version=f"chatclient {__version__} (protocol {VERSION})"
    )
    args = parser.parse_args(argv, namespace=Options())
    if args.key is not None and not args.init:
        parser.error("--key only goes with --init")
    if not 0 < args.keepalive <= 3600:  # also refuses nan and inf
        parser.error("--keepalive must be a number of seconds above 0 and at most 3600")
    return args


def ask_until_valid(
    term: Terminal, prompt: str, default: str, check: Callable[[str], object]
) -> str:
    """Ask with a default until `check` accepts the answer."""
    while True:
        answer = term.ask(f"{prompt} [{default}]: ").strip() or default
        try:
            check(answer)
        except ChatError as exc:
            term.error(f"error: {exc}")
            continue
        return answer


def make_config(args: Options, term: Terminal, fields: dict[str, str], ask: bool) -> Config:
    """Create (or complete) config.ini with a key; ask questions when `ask`."""
    path = args.config
    username = args.username or fields.get("username", "").strip() or login_name()
    port = str(args.port or fields.get("port", "").strip() or DEFAULT_PORT)
    ip = fields.get("ip", "").strip() or "0.0.0.0"
    key = args.key.strip() if args.key else ""
    if args.key is not None:
        decode_key(args.key, "--key")
    if args.username is not None:
        check_username(args.username, "--username")
    if ask:
        if not args.username:
            username = ask_until_valid(
                term, "Your username", username, lambda v: check_username(v, "username")
            )
        while True:
            if not args.port:
                port = ask_until_valid(
                    term, "Port to listen on", port, lambda v: parse_port(v, "port")
                )
            ip = ask_until_valid(
                term, "Address to listen on (0.0.0.0 = all interfaces)", ip, lambda v: v
            )
            if args.connect or (problem := listen_problem(ip, int(port))) is None:
                break
            if args.port:
                raise NetworkError(problem)
            term.error(f"error: {problem}")
        if args.connect and not key:
            key = ask_key(term)
    generated = not key
    key = key or generate_key()
    config = load_config(path, dict(zip(CONFIG_FIELDS, (ip, port, key, username), strict=True)))
    write_config(path, render_config(config.ip, config.port, key, config.username))
    term.show(f"Saved {path} (readable only by you).")
    if generated:
        term.show(
            "Your new key is below. Give it to your peer privately (in person, or through a\n"
            "password manager), never by plain e-mail or in a chat: anyone who has it can\n"
            f"join and read your chats.\n    {key}\nYour peer saves it with:\n"
            f"    python chatclient.py --init --key {key} --username THEIR_NAME\n"
            "and connects with:\n"
            f"    python chatclient.py --connect {shown_address(config)}"
        )
    return config


def listen_problem(ip: str, port: int) -> str | None:
    """Why listening on ip:port would fail now, or None if it would work."""
    try:
        listen_socket(ip, port).close()
    except NetworkError as exc:
        return str(exc)
    return None


def ask_key(term: Terminal) -> str:
    """A key pasted by the user, checked; empty means make a new one."""
    while True:
        pasted = term.ask("Paste the key your peer gave you (Enter makes a new one): ").strip()
        try:
            if pasted:
                decode_key(pasted, "that key")
        except ConfigError as exc:
            term.error(f"error: {exc}")
            continue
        return pasted


def obtain_config(args: Options, term: Terminal) -> tuple[Config, bool]:
    """Load config.ini, or on a terminal create it; True when just created."""
    path = args.config
    fields: dict[str, str] = {}
    try:
        fields = read_config(path)
    except ConfigError:
        if os.path.exists(path) or not term.interactive:
            raise
        term.show(f"No {path} here yet: let's create one (Ctrl-C to cancel).")
        return make_config(args, term, fields, ask=True), True
    if not fields.get("fernet_key", "").strip() and term.interactive:
        term.show(f"{path} has no fernet_key yet: let's make one and save it (Ctrl-C to cancel).")
        return make_config(args, term, fields, ask=True), True
    has_key = bool(fields.get("fernet_key", "").strip())
    if has_key and (warning := permission_warning(path)) is not None:
        term.error(warning)
    if args.username is not None:
        fields["username"] = check_username(args.username, "--username")
    if args.port:
        fields["port"] = str(args.port)
    return load_config(path, fields), False


def init_config(args: Options, term: Terminal) -> None:
    """--init: create config.ini without questions, never overwriting a key."""
    path = args.config
    fields: dict[str, str] = {}
    if os.path.exists(path):
        fields = read_config(path)
        if fields.get("fernet_key", "").strip():
            raise ConfigError(
                f"{path} already has a fernet_key: delete it first to replace it, "
                "or choose another file with --config"
            )
    make_config(args, term, fields, ask=False)


def ask_mode(term: Terminal) -> str:
    """Ask listen or connect until the answer is one of them."""
    while True:
        answer = term.ask("Do you want to listen or connect? (listen/connect): ").strip().lower()
        if answer in ("listen", "l"):
            return "listen"
        if answer in ("connect", "c"):
            return "connect"
        term.error("Please type listen (or l) to wait for a peer, or connect (or c) to reach one.")


def ask_target(term: Terminal) -> tuple[str, int]:
    """Ask the peer's address and port."""
    while not (host := term.ask("Enter peer IP: ").strip().strip("[]")):
        term.error("error: type the IP address (or host name) of your peer")
    while True:
        try:
            return host, parse_port(term.ask("Enter peer port: "), "peer port")
        except ConfigError as exc:
            term.error(f"error: {exc}")


def shown_address(config: Config) -> str:
    """ip:port as a peer should type it (a LAN address instead of a wildcard)."""
    host = lan_address() if is_wildcard(config.ip) else config.ip
    return f"{format_host(host)}:{config.port}"


def wait_for_peer(config: Config, term: Terminal, psk: bytes) -> Peer:
    """Listen until a peer completes the handshake."""
    server = listen_socket(config.ip, config.port)
    term.show(
        f"Listening on {format_host(config.ip)}:{config.port}; "
        "waiting for your peer (Ctrl-C to stop)."
    )
    peer = Listener(server, psk, config.username, term.error).wait(term.watch_input)
    term.show(f"Connected by {peer.address!r}")
    term.show(f"{sanitize(peer.name)} joined the chat.")
    return peer


def connect_to_peer(host: str, port: int, config: Config, psk: bytes, term: Terminal) -> Peer:
    """Connect and complete the handshake, or raise a ChatError."""
    sock = connect_socket(host, port)
    try:
        peer = handshake_as_connector(sock, psk, config.username)
    except BaseException:
        sock.close()
        raise
    term.show(f"WELCOME Welcome to the chat! I am {sanitize(peer.name)}")
    return peer


def main(argv: list[str] | None = None) -> int:
    """Load config, listen or connect, handshake, chat, report how it ended."""
    ensure_std_streams()
    args = parse_args(argv)
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
        config, just_created = obtain_config(args, term)
        psk = derive_psk(config.key)
        term.show(f"Your IP and port are: {shown_address(config)}")
        term.show(f"Key ID: {key_id(psk)} (your peer must see the same ID, or your keys differ)")
        listening = args.listen or (
            not args.connect and (just_created or ask_mode(term) == "listen")
        )
        target = None if listening else (args.connect or ask_target(term))
        if target is None:
            peer = wait_for_peer(config, term, psk)
        else:
            peer = connect_to_peer(target[0], target[1] or config.port, config, psk, term)
        term.show(
            f"Session code: {peer.session.keys.code} "
            "(compare with your peer; /verify shows it again)"
        )
        conversation = Conversation(Connection(peer, args.keepalive), term, config.username)
        try:
            return conversation.run()
        except PeerEnded:  # the receiver's interrupt landed as run() returned
            return conversation.status()
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

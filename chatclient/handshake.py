"""The handshake (pure): M1, M2 and M3, the keys they derive, SPAKE2 for invite
codes, and the signatures that bind identities to the transcript.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING

from .errors import HandshakeError, KeyMismatch, ProtocolError
from .identity import MAX_INVITE_FAILURES, Invite

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


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
VERSION = 4
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
WORDS_LABEL = b"chatclient/3 words\0"
OFFER_LABEL = b"chatclient/4 offer\0"
DONE_LABEL = b"chatclient/4 file done\0"
FINGERPRINT_LABEL = b"chatclient/4 fingerprint\0"
ROOM_HEAD_LABEL = b"chatclient/3 room head\0"
ROOM_ID_SIZE = 16
NONCE_SIZE = 16  # a member's join nonce, in its WELCOME's room field
# The two Fernet keys, the confirmation key and the resume secret. HKDF-Expand keeps its
# first bytes whatever the length asked, so the resume secret changed no other key.
OKM_SIZE = 32 + 32 + 32 + 32
RESUME_ID_LABEL = b"chatclient/4 resume id\0"
RESUME_ID_SIZE = 16


class Mode(IntEnum):
    """How a connector proves it may join: M1's MODE byte."""

    SHARED_KEY = 1
    INVITE = 2
    CONTACT = 3
    RESUME = 4  # a session that lost its connection: its resume id, then its secret as PSK


class Reject(IntEnum):
    """Why a listener refuses a connection, sent as a small plaintext frame."""

    KEY_MISMATCH = 1
    BAD_VERSION = 2
    BUSY = 3
    NO_SHARED_KEY = 4  # a fernet_key tried on a listener that has none
    NO_INVITE = 5  # an invite code tried where none is open (none made, used or void)
    NO_SESSION = 6  # a resume of a session this listener does not have (restarted, or too late)


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
            "the peer is not taking connections now (it is closing): try again once it "
            "listens again"
        )
    if reason == Reject.NO_SHARED_KEY:
        return HandshakeError(
            "the peer has no fernet_key (it uses invite codes): ask it for one and add "
            "--code CODE, or empty fernet_key in your config.ini if you are its contact"
        )
    if reason == Reject.NO_INVITE:
        return HandshakeError(
            "the peer has no open invite for you now (it was used, or void after "
            f"{MAX_INVITE_FAILURES} wrong tries, or your address tried wrong codes and must "
            "wait up to a minute): check the code and try again in a minute, else ask for a "
            "new code"
        )
    if reason == Reject.NO_SESSION:
        return NoSession(
            "the peer no longer has this chat (it was restarted, or the time to come back "
            "has passed): start a new one"
        )
    return HandshakeError(f"the peer refused the connection (reason {reason})")


class NoSession(HandshakeError):
    """A resume the listener refused: it does not have the session (any more)."""


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
        f"version {VERSION}: the one with the older chatclient needs to update it"
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
    resume_secret: bytes = field(default=b"", repr=False)  # proves this session in a resume

    @property
    def resume_id(self) -> bytes:
        """What a resume of this session names it by, in the clear."""
        return resume_id(self.resume_secret)


def resume_id(secret: bytes) -> bytes:
    """The public name of a session's resume secret (it tells nothing of the secret)."""
    return hashlib.sha256(RESUME_ID_LABEL + secret).digest()[:RESUME_ID_SIZE]


def derive_keys(secret: bytes, psk: bytes, th: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """okm split into: connector->listener, listener->connector, confirm, resume secret."""
    okm = hkdf_sha256(secret, psk, KEYS_INFO + th, OKM_SIZE)
    return okm[0:32], okm[32:64], okm[64:96], okm[96:128]


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
        resume: bytes | None = None,
    ) -> None:
        self.mode = Mode.INVITE if code else Mode.SHARED_KEY if psk else Mode.CONTACT
        self._psk = psk or contact_psk()
        named = b""
        if resume is not None:  # the secret of the session to resume: its PSK
            self.mode, self._psk, named = Mode.RESUME, resume, resume_id(resume)
        self._private = private_key or generate_private_key()
        self._public = public_bytes(self._private)
        self._spake: object | None = None
        spake_message = b""
        if code and resume is None:  # a resume proves its secret, not the (used) code
            self._spake, spake_message = start_spake(code, Role.CONNECTOR)
        commitment = hashlib.sha256(self._public).digest()
        self.m1 = MAGIC + bytes([VERSION, self.mode]) + commitment + spake_message + named

    def respond(self, m2: bytes) -> tuple[bytes, SessionKeys]:
        """Take the listener's hello; return M3 and this side's session keys."""
        size = 32 + (SPAKE_SIZE if self._spake is not None else 0)
        body = check_size("hello", parse_hello(m2), size)
        psk = self._psk if self._spake is None else finish_spake(self._spake, body[32:])
        secret = shared_secret(self._private, check_peer_key(body[:32]))
        th = hashlib.sha256(self.m1 + m2 + self._public).digest()
        c2l, l2c, confirm, again = derive_keys(secret, psk, th)
        file_c2l, file_l2c = derive_file_keys(secret, psk, th)
        m3 = self._public + confirm_tag(confirm, th)
        return m3, SessionKeys(c2l, l2c, th, file_c2l, file_l2c, 0, again)


class ListenerHandshake:
    """The listener's side: take the commitment, answer, then verify the reveal."""

    def __init__(
        self,
        psk: bytes | None,
        private_key: X25519PrivateKey | None = None,
        *,
        invite: Invite | None = None,
        sessions: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self._sessions = sessions  # a resume id -> that session's resume secret, if kept
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
        extra = {Mode.INVITE: SPAKE_SIZE, Mode.RESUME: RESUME_ID_SIZE}.get(self.mode, 0)
        check_size("hello", body, 1 + 32 + extra)
        if self.mode is Mode.SHARED_KEY:
            if self._shared_psk is None:
                raise Rejected(
                    Reject.NO_SHARED_KEY,
                    "it tried a fernet_key, and this side has none (it uses invite codes)",
                )
            self._psk = self._shared_psk
        elif self.mode is Mode.CONTACT:
            self._psk = contact_psk()
        elif self.mode is Mode.RESUME:
            kept = self._sessions(body[33:]) if self._sessions is not None else None
            if kept is None:
                raise Rejected(
                    Reject.NO_SESSION, "it tried to resume a chat this side does not have"
                )
            self._psk = kept
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
        c2l, l2c, confirm, again = derive_keys(secret, self._psk, th)
        matched = hmac.compare_digest(confirm_tag(confirm, th), tag)
        if self.mode is Mode.INVITE:
            self._check_invite(matched)
        if not matched:
            raise KeyMismatch(KEY_MISMATCH_TEXT)
        file_c2l, file_l2c = derive_file_keys(secret, self._psk, th)
        return SessionKeys(l2c, c2l, th, file_l2c, file_c2l, 1, again)

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


class Role(Enum):
    """Which end of the connection this side is."""

    CONNECTOR = "connector"
    LISTENER = "listener"

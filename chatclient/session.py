"""An established session (pure): the phase rules, the sequence numbers and the
keys that seal and open every message and file chunk.
"""

from __future__ import annotations

import base64
import re

from .errors import NotAuthentic, ProtocolError
from .handshake import SessionKeys
from .messages import (
    CHUNK_HEADER,
    CHUNK_MARK,
    CHUNK_SIZE,
    CHUNK_TAG_SIZE,
    FRAME_HEADER,
    MESSAGES,
    Message,
    Phase,
    chunk_associated_data,
    chunk_nonce,
    decode_payload,
    encode_frame,
    encode_payload,
)

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
        self.peer_ack = 0  # the acknowledgement in the last message decoded
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

    def encode(self, message: Message, ack: int = 0, body: bytes | None = None) -> bytes:
        """The complete frame carrying `message` (`body`: its body, encoded already) and
        this side's acknowledgement `ack`; each call uses the next sequence."""
        payload = encode_payload(self._send_seq, message, ack, body)
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
            raise NotAuthentic(
                "a message failed its integrity check (tampered with, replayed or "
                "not from your peer)"
            ) from None
        seq, self.peer_ack, message = decode_payload(payload)
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

"""handshake.py without a socket: the key ID, the hello messages M1, M2 and M3 and the keys
they agree on, every way a hello is refused (a wrong key, a tampered commitment or
confirmation, low-order points, another version, something that is not chatclient),
and the REJECT frames."""

from __future__ import annotations

import base64
import hashlib
import re
from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pair import KEY, OTHER_PSK, PSK, ConnectionPair, body_of, handshake_keys

from chatclient.config import decode_key
from chatclient.errors import HandshakeError, KeyMismatch, ProtocolError
from chatclient.handshake import (
    HELLO_SIZE,
    MAGIC,
    REJECT_SIZE,
    VERSION,
    ConnectorHandshake,
    ListenerHandshake,
    Mode,
    NoSession,
    Reject,
    Rejected,
    SessionKeys,
    key_id,
    parse_reject,
    reject_frame,
)
from chatclient.messages import Welcome

# --- key ID ----------------------------------------------------------------------


def test_key_id_is_deterministic_and_short() -> None:
    assert key_id(PSK) == key_id(bytes(PSK))
    assert re.fullmatch(r"[0-9a-f]{4}-[0-9a-f]{4}", key_id(PSK))
    assert key_id(PSK) != key_id(OTHER_PSK)
    digest = hashlib.sha256(PSK).hexdigest()
    assert key_id(PSK) == f"{digest[:4]}-{digest[4:8]}"


def test_key_id_does_not_contain_the_key() -> None:
    shown = key_id(PSK).replace("-", "")
    raw = decode_key(KEY, program="chatclient")
    for secret in (KEY, raw.hex(), PSK.hex(), base64.urlsafe_b64encode(PSK).decode("ascii")):
        assert shown not in secret.lower()
    assert shown != hashlib.sha256(raw).hexdigest()[:8]  # not a hash of the raw key either


# --- handshake -------------------------------------------------------------------


def test_handshake_agrees_on_mirrored_keys_and_transcript() -> None:
    connector, listener = handshake_keys()
    assert connector.send_key == listener.recv_key
    assert connector.recv_key == listener.send_key
    assert connector.send_key != connector.recv_key
    assert connector.transcript == listener.transcript


def test_every_handshake_gives_fresh_keys() -> None:
    first, _ = handshake_keys()
    second, _ = handshake_keys()
    assert first.send_key != second.send_key
    assert first.transcript != second.transcript


def test_hello_frames_have_exact_sizes() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    assert len(connector.m1) == len(listener.m2) + 1 == HELLO_SIZE + 1  # M1 names its mode
    assert connector.m1.startswith(MAGIC + bytes([VERSION, Mode.SHARED_KEY]))
    assert listener.m2.startswith(MAGIC + bytes([VERSION]))
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    assert len(m3) == 64


@pytest.mark.parametrize(("connector_psk", "listener_psk"), [(PSK, OTHER_PSK), (OTHER_PSK, PSK)])
def test_wrong_psk_raises_key_mismatch_at_receive_confirm(
    connector_psk: bytes, listener_psk: bytes
) -> None:
    connector = ConnectorHandshake(connector_psk)
    listener = ListenerHandshake(listener_psk)
    m2 = listener.receive_commit(connector.m1)
    m3, _ = connector.respond(m2)  # the connector cannot tell yet
    with pytest.raises(KeyMismatch, match="fernet_key"):
        listener.receive_confirm(m3)


def test_commitment_mismatch_raises_handshake_error() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(HandshakeError, match="commitment") as caught:
        listener.receive_confirm(other + m3[32:])
    assert not isinstance(caught.value, KeyMismatch)


def test_commitment_to_a_different_key_raises_handshake_error() -> None:
    # A man in the middle swaps M3 for one made by a connector it controls.
    honest = ConnectorHandshake(PSK)
    mallory = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m2 = listener.receive_commit(honest.m1)
    m3, _ = mallory.respond(m2)
    with pytest.raises(HandshakeError, match="commitment"):
        listener.receive_confirm(m3)


def test_tampered_confirm_tag_raises_key_mismatch() -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    m3, _ = connector.respond(listener.receive_commit(connector.m1))
    with pytest.raises(KeyMismatch):
        listener.receive_confirm(m3[:-1] + bytes([m3[-1] ^ 1]))


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_confirm_of_wrong_size_raises_protocol_error(size: int) -> None:
    connector = ConnectorHandshake(PSK)
    listener = ListenerHandshake(PSK)
    listener.receive_commit(connector.m1)
    with pytest.raises(ProtocolError):
        listener.receive_confirm(bytes(size))


LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_listener_key_refused(point: str) -> None:
    connector = ConnectorHandshake(PSK)
    with pytest.raises(HandshakeError, match="key"):
        connector.respond(MAGIC + bytes([VERSION]) + bytes.fromhex(point))


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_connector_key_refused(point: str) -> None:
    public = bytes.fromhex(point)
    listener = ListenerHandshake(PSK)
    listener.receive_commit(MAGIC + bytes([VERSION, Mode.SHARED_KEY]) + sha256(public).digest())
    with pytest.raises(HandshakeError, match="key"):
        listener.receive_confirm(public + bytes(32))


def test_all_zero_key_message_says_so() -> None:
    with pytest.raises(HandshakeError, match="all-zero"):
        ConnectorHandshake(PSK).respond(MAGIC + bytes([VERSION]) + bytes(32))


@pytest.mark.parametrize("version", [0, 1, 255])
@pytest.mark.parametrize("extra", [0, 7])
def test_hello_of_another_version_raises_handshake_error(version: int, extra: int) -> None:
    hello = MAGIC + bytes([version]) + bytes(range(1, 33)) + bytes(extra)
    with pytest.raises(HandshakeError, match="version"):
        ListenerHandshake(PSK).receive_commit(hello)
    with pytest.raises(HandshakeError, match="version"):
        ConnectorHandshake(PSK).respond(hello)


@pytest.mark.parametrize(
    "hello",
    [b"", b"CCHT", b"GET / HTTP/1.1\r\n", MAGIC + bytes([VERSION]) + bytes(31), bytes(37)],
)
def test_hello_that_is_not_chatclient_raises_protocol_error(hello: bytes) -> None:
    with pytest.raises(ProtocolError):
        ListenerHandshake(PSK).receive_commit(hello)
    with pytest.raises(ProtocolError):
        ConnectorHandshake(PSK).respond(hello)


# --- rejections ------------------------------------------------------------------


def test_reject_frame_layout() -> None:
    for reason in Reject:
        frame = reject_frame(reason)
        assert frame == MAGIC + bytes([VERSION, reason])
        assert len(frame) == REJECT_SIZE


def test_parse_reject_key_mismatch() -> None:
    error = parse_reject(reject_frame(Reject.KEY_MISMATCH))
    assert isinstance(error, KeyMismatch)
    assert "fernet_key" in str(error)


def test_parse_reject_bad_version() -> None:
    error = parse_reject(reject_frame(Reject.BAD_VERSION))
    assert isinstance(error, HandshakeError)
    assert not isinstance(error, KeyMismatch)
    assert "version" in str(error)


def test_parse_reject_busy() -> None:
    error = parse_reject(reject_frame(Reject.BUSY))
    assert type(error) is HandshakeError
    assert "not taking connections now" in str(error)


def test_parse_reject_from_another_version_names_it() -> None:
    error = parse_reject(MAGIC + bytes([7, Reject.KEY_MISMATCH]))
    assert type(error) is HandshakeError
    assert "version 7" in str(error)


def test_parse_reject_unknown_reason() -> None:
    error = parse_reject(MAGIC + bytes([VERSION, 200]))
    assert type(error) is HandshakeError
    assert "200" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        MAGIC,
        MAGIC + bytes([VERSION]),
        MAGIC + bytes([VERSION, 1, 0]),
        b"XXXX" + bytes([VERSION, 1]),
        "an M2",  # made in the test: a fresh key would give each pytest worker another id
    ],
)
def test_parse_reject_ignores_other_frames(body: bytes | str) -> None:
    if body == "an M2":
        body = ListenerHandshake(PSK).m2
    assert parse_reject(body) is None


def test_first_encrypted_frame_is_never_a_rejection() -> None:
    pair = ConnectionPair(welcome=False)
    assert parse_reject(body_of(pair.listener.session.encode(Welcome("d")))) is None


# --- Resume (issue 18) ---------------------------------------------------------------


def resumed(secret: bytes, kept: dict[bytes, bytes]) -> tuple[SessionKeys, SessionKeys]:
    """A mode-4 handshake naming `secret`'s session, against a listener keeping `kept`."""
    connector = ConnectorHandshake(None, resume=secret)
    listener = ListenerHandshake(PSK, sessions=kept.get)
    m2 = listener.receive_commit(connector.m1)
    m3, connector_keys = connector.respond(m2)
    return connector_keys, listener.receive_confirm(m3)


def test_a_resume_names_the_session_and_proves_its_secret_for_fresh_keys() -> None:
    first, _ = handshake_keys()
    assert len(first.resume_secret) == 32 and len(first.resume_id) == 16
    connector, listener = resumed(first.resume_secret, {first.resume_id: first.resume_secret})
    assert connector.send_key == listener.recv_key and connector.recv_key == listener.send_key
    assert connector.send_key != first.send_key  # a new X25519: fresh keys
    assert connector.resume_secret == listener.resume_secret != first.resume_secret
    hello = ConnectorHandshake(None, resume=first.resume_secret).m1
    assert len(hello) == 4 + 1 + 1 + 32 + 16 and hello[5] == Mode.RESUME
    assert hello.endswith(first.resume_id) and first.resume_secret not in hello


def test_a_chat_begun_with_an_invite_code_resumes_without_it() -> None:
    """Found by a newcomer: the code's SPAKE2 message went into the resume's hello too."""
    first, _ = handshake_keys()
    hello = ConnectorHandshake(None, code="7-gazelle-microwave", resume=first.resume_secret).m1
    assert len(hello) == 54 and hello[5] == Mode.RESUME


def test_a_resume_of_a_session_not_kept_is_refused_with_its_own_reason() -> None:
    with pytest.raises(Rejected) as refused:
        resumed(bytes(32), {})
    assert refused.value.reason is Reject.NO_SESSION
    error = parse_reject(reject_frame(Reject.NO_SESSION))
    assert isinstance(error, NoSession) and "no longer has this chat" in str(error)


def test_a_resume_without_the_secret_fails_at_the_confirmation() -> None:
    """A stranger holding a captured resume id (or a whole captured M1) cannot finish."""
    first, _ = handshake_keys()
    kept = {first.resume_id: first.resume_secret}
    connector = ConnectorHandshake(None, resume=b"x" * 32)
    forged = connector.m1[: -len(first.resume_id)] + first.resume_id  # the real session's id
    connector.m1 = forged
    listener = ListenerHandshake(PSK, sessions=kept.get)
    m3, _ = connector.respond(listener.receive_commit(forged))
    with pytest.raises(KeyMismatch):
        listener.receive_confirm(m3)

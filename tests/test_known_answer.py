"""Known answers: chatclient's handshake and tokens byte for byte against tests/vectors.

handshake.json is written by tests/vectors/make_handshake_vector.py, which
implements the protocol formulas on its own, without chatclient.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from chatclient.errors import ProtocolError
from chatclient.handshake import (
    SPAKE_SIZE,
    ConnectorHandshake,
    ListenerHandshake,
    Role,
    SessionKeys,
    confirm_tag,
    contact_psk,
    derive_keys,
    derive_psk,
    finish_spake,
    key_id,
    public_bytes,
    resume_id,
    shared_secret,
    verify_signature,
    welcome_signed_data,
)
from chatclient.identity import safety_number
from chatclient.messages import (
    FRAME_HEADER,
    NO_NONCE,
    Chat,
    FileDone,
    FileOffer,
    Form,
    Person,
    Phase,
    Resumed,
    Said,
    Say,
    Welcome,
    chunk_associated_data,
    chunk_nonce,
    decode_payload,
)
from chatclient.room import (
    Hearing,
    RoomLog,
    Voice,
    done_forgery,
    done_signed_data,
    offer_forgery,
    offer_signed_data,
    sign_done,
    sign_offer,
    words_signed_data,
)
from chatclient.session import Session

VECTORS = Path(__file__).resolve().parent / "vectors"
V: dict[str, Any] = json.loads((VECTORS / "handshake.json").read_text(encoding="utf-8"))


def h(name: str) -> bytes:
    """A hex field of the vector as bytes."""
    return bytes.fromhex(V[name])


def private(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(h(name))


def run_handshake() -> tuple[bytes, bytes, bytes, SessionKeys, SessionKeys]:
    """M1, M2, M3 and both sides' keys, from chatclient with the vector's private keys."""
    psk = derive_psk(base64.urlsafe_b64decode(V["config_key"]))
    connector = ConnectorHandshake(psk, private("connector_private"))
    listener = ListenerHandshake(psk, private("listener_private"))
    m2 = listener.receive_commit(connector.m1)
    m3, connector_keys = connector.respond(m2)
    listener_keys = listener.receive_confirm(m3)
    return connector.m1, m2, m3, connector_keys, listener_keys


def test_vector_file_is_what_the_generator_makes() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_handshake_vector", VECTORS / "make_handshake_vector.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.compute() == V


def test_psk_and_key_id() -> None:
    psk = derive_psk(base64.urlsafe_b64decode(V["config_key"]))
    assert psk.hex() == V["psk"]
    assert key_id(psk) == V["key_id"]


def test_the_psks_of_contacts_and_of_invites() -> None:
    assert contact_psk().hex() == V["contact_psk"]

    class FixedSpake:
        def finish(self, message: bytes) -> bytes:
            return h("spake2_key")

    assert finish_spake(FixedSpake(), bytes(SPAKE_SIZE)).hex() == V["invite_psk"]


def test_public_keys() -> None:
    assert public_bytes(private("connector_private")).hex() == V["connector_public"]
    assert public_bytes(private("listener_private")).hex() == V["listener_public"]


def test_hello_and_confirm_bytes() -> None:
    m1, m2, m3, _, _ = run_handshake()
    assert m1.hex() == V["m1"]
    assert m2.hex() == V["m2"]
    assert m3.hex() == V["m3"]
    assert m3[32:].hex() == V["confirm_tag"]


def test_transcript_and_keys_on_both_sides() -> None:
    _, _, _, connector, listener = run_handshake()
    for keys in (connector, listener):
        assert keys.transcript.hex() == V["th"]
    assert connector.send_key.hex() == V["key_connector_to_listener"]
    assert connector.recv_key.hex() == V["key_listener_to_connector"]
    assert listener.send_key.hex() == V["key_listener_to_connector"]
    assert listener.recv_key.hex() == V["key_connector_to_listener"]


def test_derivation_functions() -> None:
    secret = shared_secret(private("connector_private"), private("listener_private").public_key())
    assert secret.hex() == V["shared_secret"]
    c2l, l2c, confirm, again = derive_keys(secret, h("psk"), h("th"))
    assert again.hex() == V["resume_secret"]  # issue 18: okm's last 32 bytes
    assert resume_id(again).hex() == V["resume_id"]
    assert (c2l.hex(), l2c.hex(), confirm.hex()) == (
        V["key_connector_to_listener"],
        V["key_listener_to_connector"],
        V["confirm_key"],
    )
    assert confirm_tag(confirm, h("th")).hex() == V["confirm_tag"]


def test_a_resume_of_the_session() -> None:
    """Mode 4 (issue 18): fresh keys, the old session's resume id in M1, its secret as the
    PSK; the new connection has a resume secret of its own for the next time."""
    secret = h("resume_secret")
    connector = ConnectorHandshake(None, private("resume_connector_private"), resume=secret)
    kept = {h("resume_id"): secret}
    listener = ListenerHandshake(None, private("resume_listener_private"), sessions=kept.get)
    assert connector.m1.hex() == V["resume_m1"]
    m2 = listener.receive_commit(connector.m1)
    assert m2.hex() == V["resume_m2"]
    m3, connector_keys = connector.respond(m2)
    assert m3.hex() == V["resume_m3"]
    listener_keys = listener.receive_confirm(m3)
    okm = h("resume_okm")
    for keys in (connector_keys, listener_keys):
        assert keys.transcript.hex() == V["resume_th"]
        assert keys.resume_secret.hex() == V["resume_next_secret"] == okm[96:].hex()
        assert keys.resume_id.hex() == V["resume_next_id"]
    assert connector_keys.send_key == listener_keys.recv_key == okm[:32]
    assert Resumed(5, 3).encode_body() == h("resumed_plaintext")[17:]
    assert h("resumed_plaintext")[16] == Resumed.TAG


def test_session_decrypts_hand_made_tokens() -> None:
    _, _, _, connector_keys, listener_keys = run_handshake()
    listener = Session(listener_keys)
    assert listener.decode(V["connector_to_listener_token"].encode()) == welcome("connector")

    connector = Session(connector_keys)
    # The vector's listener token is number 1; number 0 (a WELCOME) is made here by hand.
    made = Fernet(V["fernet_key_listener_to_connector"]).encrypt(
        (0).to_bytes(8, "big") + bytes(8) + bytes([1]) + h("listener_welcome_body")
    )
    assert connector.decode(made) == welcome("listener")
    expected = Chat("hello laptop \N{WAVING HAND SIGN}")
    assert connector.decode(V["listener_to_connector_token"].encode()) == expected


def test_session_tokens_follow_the_payload_layout() -> None:
    _, _, _, connector_keys, listener_keys = run_handshake()
    sessions = {"connector": Session(connector_keys), "listener": Session(listener_keys)}
    keys = {
        "connector": Fernet(V["fernet_key_connector_to_listener"]),
        "listener": Fernet(V["fernet_key_listener_to_connector"]),
    }
    for side in ("listener", "connector"):
        frames = [sessions[side].encode(welcome(side)), sessions[side].encode(Chat("h\u00e9"))]
        plain = []
        for frame in frames:
            (length,) = FRAME_HEADER.unpack_from(frame)
            assert length == len(frame) - FRAME_HEADER.size
            plain.append(keys[side].decrypt(frame[FRAME_HEADER.size :]))
        assert plain == [
            bytes(16) + b"\x01" + h(f"{side}_welcome_body"),
            (1).to_bytes(8, "big") + bytes(8) + b"\x02" + "h\u00e9".encode(),
        ]


def welcome(role: str) -> Welcome:
    """The vector's WELCOME of `role`, as chatclient signs it with the vector's identity."""
    name = "laptop" if role == "connector" else "desktop"
    identity = Ed25519PrivateKey.from_private_bytes(h(f"{role}_identity_private"))
    room = h("room") if role == "listener" else h("join")
    signed = welcome_signed_data(Role(role), h("th"), name, room)
    public = identity.public_key().public_bytes_raw()
    return Welcome(name, public, identity.sign(signed), room)


def test_welcome_bodies_signatures_and_safety_number() -> None:
    for role in ("connector", "listener"):
        message = welcome(role)
        assert message.identity.hex() == V[f"{role}_identity"]
        assert message.encode_body().hex() == V[f"{role}_welcome_body"]
        data = welcome_signed_data(Role(role), h("th"), message.name, message.room)
        verify_signature(message.identity, message.signature, data)
    for ours, theirs in (("connector", "listener"), ("listener", "connector")):
        number = safety_number(h(f"{ours}_identity"), h(f"{theirs}_identity"))
        assert number == V["safety_number"]


def test_every_bit_flip_of_the_vector_token_is_refused() -> None:
    """Issue 3: flipping any bit of a frame makes the receiver stop with an error."""
    _, _, _, _, listener_keys = run_handshake()
    token = V["connector_to_listener_token"].encode()
    accepted = []
    for index in range(len(token)):
        for bit in range(8):
            altered = bytearray(token)
            altered[index] ^= 1 << bit
            try:
                Session(listener_keys).decode(bytes(altered))
            except ProtocolError:
                continue
            old, new = chr(token[index]), chr(altered[index])
            accepted.append(f"byte {index} bit {bit}: {old!r} -> {new!r}")
    assert accepted == []


def test_fernet_keys_are_urlsafe_base64_of_the_direction_keys() -> None:
    for direction in ("connector_to_listener", "listener_to_connector"):
        raw = h(f"key_{direction}")
        assert base64.urlsafe_b64decode(V[f"fernet_key_{direction}"]) == raw


def test_file_keys_and_a_sealed_chunk() -> None:
    """Issue 11: the AES-GCM file keys, and the listener's third chunk, byte for byte."""
    _, _, _, connector_keys, listener_keys = run_handshake()
    assert connector_keys.file_send_key.hex() == V["file_key_connector_to_listener"]
    assert listener_keys.file_send_key.hex() == V["file_key_listener_to_connector"]
    assert connector_keys.file_recv_key == listener_keys.file_send_key
    listener, connector = Session(listener_keys), Session(connector_keys)
    for session in (listener, connector):
        session._send_phase = session._recv_phase = Phase.OPEN
    data = h("chunk_data")
    frames = [listener.seal_chunk(7, offset, data) for offset in (0, 1, 65536)]
    assert frames[2][FRAME_HEADER.size :].hex() == V["chunk_listener_to_connector_third_body"]
    opened = [connector.open_chunk(frame[FRAME_HEADER.size :]) for frame in frames]
    assert opened[2] == (7, 65536, data)


def test_chunk_nonce_and_associated_data() -> None:
    """The listener's third chunk (number 2) of transfer 7 at offset 65536: both big-endian."""
    assert chunk_nonce(1, 2).hex() == V["chunk_nonce"]
    assert chunk_associated_data(7, 65536).hex() == V["chunk_associated_data"]


def test_signed_words_in_a_room() -> None:
    """A member's SAY to the room and to one person, and the SAID relaying it, byte for byte."""
    laptop = Ed25519PrivateKey.from_private_bytes(h("connector_identity_private"))
    host, room, author = h("listener_identity"), h("room"), V["say_author"]
    voice = Voice(laptop, author, host, room, h("join"))
    voice.say("one")
    voice.say("two")  # the vector's words are laptop's third to the room
    say = voice.say(V["say_text"])
    whisper = voice.say(V["whisper_text"], Form.CHAT, to=V["whisper_to"])
    assert (say.seq, whisper.seq) == (V["say_seq"], 0)  # each audience numbers on its own
    for words, name in ((say, "say"), (whisper, "whisper")):
        signed = words_signed_data(host, room, h("join"), NO_NONCE, author, words)
        assert signed.hex() == V[f"{name}_signed_data"]
        assert words.signature.hex() == V[f"{name}_signature"]
        assert words.encode_body().hex() == V[f"{name}_body"]
    said = Said(author, say)
    assert said.encode_body().hex() == V["said_body"]
    # The vector's bytes decode to the same message, and a member who was in the room
    # before laptop spoke shows them.
    _, _, decoded = decode_payload((9).to_bytes(16, "big") + bytes([Said.TAG]) + h("said_body"))
    assert decoded == said
    assert isinstance(decoded, Said) and isinstance(decoded.words, Say)
    hearing = Hearing("bob", host, room, bytes([1]) * 16, "desktop")
    laptop_in = Person(author, h("connector_identity"), "", nonce=h("join"), next=V["say_seq"])
    assert hearing.present(laptop_in, joining=False) is None
    assert hearing.check(decoded, h("connector_identity")) == (True, None)


def test_a_signed_offer_and_the_room_code() -> None:
    """Issue 21: a member's signed offer through the host, and the room code's first fold."""
    laptop = Ed25519PrivateKey.from_private_bytes(h("connector_identity_private"))
    host, room = h("listener_identity"), h("room")
    voice = Voice(laptop, V["say_author"], host, room, h("join"))
    offer = FileOffer(1, 12345, h("offer_fingerprint"), "holiday.jpg", "bob")
    signed = sign_offer(voice, offer, "bob", h("offer_to_join"))
    assert signed.origin == 1 and signed.signature.hex() == V["offer_signature"]
    data = offer_signed_data(host, room, h("join"), h("offer_to_join"), "laptop", "bob", signed)
    assert data.hex() == V["offer_signed_data"]
    relayed = FileOffer(
        7, 12345, h("offer_fingerprint"), "holiday.jpg", "laptop", 1, signed.signature
    )
    me = "bob"
    assert (
        offer_forgery(
            host, room, relayed, me, h("offer_to_join"), h("connector_identity"), h("join")
        )
        is None
    )
    done_signature = sign_done(voice, 1, h("done_digest"), h("offer_to_join"))
    assert done_signature.hex() == V["done_signature"]
    data = done_signed_data(host, room, h("join"), h("offer_to_join"), 1, h("done_digest"))
    assert data.hex() == V["done_signed_data"]
    done = FileDone(7, h("done_digest"), done_signature)
    author = h("connector_identity")
    assert not done_forgery(host, room, done, 1, h("offer_to_join"), author, h("join"))
    assert done_forgery(host, room, done, 2, h("offer_to_join"), author, h("join"))  # not offer 2
    log = RoomLog(host, room)
    assert log.state == (h("room_head_0"), 0)
    _, _, said = decode_payload((9).to_bytes(16, "big") + bytes([Said.TAG]) + h("said_body"))
    log.fold(said)
    assert log.state == (h("room_head_1"), 1)
    assert log.code() == (V["room_code_1"], 1)

#!/usr/bin/env python3
"""Write handshake.json: the known answers of the chatclient handshake (protocol 3).

This script implements the formulas of docs/protocol.md (issue 3) directly, with
HKDF and HMAC written out from RFC 5869 and the Fernet spec; it never calls
chatclient, so the known-answer test compares two independent implementations.

    python tests/vectors/make_handshake_vector.py      # rewrites handshake.json
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).resolve().parent
VECTOR = HERE / "handshake.json"

CONFIG_KEY = "DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0="
# RFC 7748 section 6.1: Alice's private key for the connector, Bob's for the listener.
CONNECTOR_PRIVATE = bytes.fromhex(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
)
LISTENER_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 8032 section 7.1, tests 1 and 2: the identity keys of connector and listener.
CONNECTOR_IDENTITY = bytes.fromhex(
    "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
)
LISTENER_IDENTITY = bytes.fromhex(
    "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
)

# A resume of the session (mode 4) runs a fresh X25519 exchange with these keys.
RESUME_CONNECTOR_PRIVATE = bytes(range(1, 33))
RESUME_LISTENER_PRIVATE = bytes(range(33, 65))
MODE_RESUME = 4
RESUMED_TYPE = 21

SPAKE2_KEY = bytes(range(100, 132))
ROOM = bytes(range(200, 216))  # the listener's room id
JOIN = bytes(range(216, 232))  # the connector's join nonce, its WELCOME's room field
OFFER_TO_JOIN = bytes(range(232, 248))  # bob's join nonce, for the signed offer

MAGIC = b"CCHT"
VERSION = 4
MODE_SHARED_KEY = 1
# Fixed Fernet parts so the sample tokens are known answers too.
TOKEN_TIME = 1_700_000_000
TOKEN_IV = bytes(range(16))
WELCOME_TYPE = 1
CHAT_TYPE = 2
READY_TYPE = 6
# A member's words in the room: the connector (RFC 8032 test 1) as "laptop", in the
# listener's room (the host's identity is RFC 8032 test 2's public key).
SAY_AUTHOR = "laptop"
SAY_TEXT = "hello all \N{WAVING HAND SIGN}"
SAY_SEQ = 2  # laptop's third words to the whole room
WHISPER_TO = "desktop"
WHISPER_TEXT = "see you at 5"


def safety_half(public: bytes) -> str:
    """30 digits from one identity key: SHA-512 iterated 5200 times, 6 chunks of 5 bytes."""
    digest = hashlib.sha512(b"chatclient/2 safety number" + public).digest()
    for _ in range(5200):
        digest = hashlib.sha512(digest + public).digest()
    chunks = [int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5)]
    return "".join(f"{chunk:05d}" for chunk in chunks)


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256; a missing salt is 32 zero bytes."""
    prk = hmac.new(salt if salt is not None else bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def fernet_token(key32: bytes, plaintext: bytes, when: int, iv: bytes) -> bytes:
    """A Fernet token per the spec: signing key = first 16 bytes, AES key = last 16."""
    signing_key, encryption_key = key32[:16], key32[16:]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    signed = b"\x80" + struct.pack(">Q", when) + iv + ciphertext
    return base64.urlsafe_b64encode(signed + hmac.new(signing_key, signed, hashlib.sha256).digest())


def length_prefixed(data: bytes) -> bytes:
    """A length-prefixed field: 4-byte big-endian length, then the bytes."""
    return len(data).to_bytes(4, "big") + data


def words(
    signer: Ed25519PrivateKey, host: bytes, form: int, seq: int, to: str, text: str
) -> dict[str, bytes]:
    """A SAY by SAY_AUTHOR: the bytes its signature covers, the signature, its body, and
    the body of the SAID the host relays it in."""
    author, recipient, said = SAY_AUTHOR.encode(), to.encode(), text.encode()
    signed = (
        b"chatclient/3 words\0"
        + host
        + ROOM
        + JOIN  # the author's join nonce
        + bytes(16)  # the audience's: none for the room, none for the host
        + bytes([form])
        + seq.to_bytes(8, "big")
        + length_prefixed(author)
        + length_prefixed(recipient)
        + said
    )
    signature = signer.sign(signed)
    body = bytes([form]) + seq.to_bytes(8, "big") + signature + length_prefixed(recipient) + said
    return {
        "signed": signed,
        "signature": signature,
        "body": body,
        "said": length_prefixed(author) + body,
    }


def payload(seq: int, kind: int, body: bytes, ack: int = 0) -> bytes:
    """Plaintext of an encrypted frame: 8-byte big-endian seq, 8-byte acknowledgement,
    1-byte type, body."""
    return seq.to_bytes(8, "big") + ack.to_bytes(8, "big") + bytes([kind]) + body


def compute() -> dict[str, Any]:
    """Every value of the vector, as JSON-ready strings."""
    key = base64.urlsafe_b64decode(CONFIG_KEY)
    assert len(key) == 32
    psk = hkdf_sha256(key, None, b"chatclient/2 psk", 32)
    # Cross-check the hand-written HKDF against the library's.
    assert psk == HKDF(hashes.SHA256(), 32, None, b"chatclient/2 psk").derive(key)
    digest = hashlib.sha256(psk).hexdigest()
    key_id = f"{digest[:4]}-{digest[4:8]}"
    # Mode 3's public PSK, and mode 2's PSK from a fixed SPAKE2 result (SPAKE2 itself
    # is randomised; its key is HKDF'd the same way whatever it is).
    contact_psk = hkdf_sha256(b"", None, b"chatclient/2 contacts", 32)
    invite_psk = hkdf_sha256(SPAKE2_KEY, None, b"chatclient/2 invite", 32)

    connector = X25519PrivateKey.from_private_bytes(CONNECTOR_PRIVATE)
    listener = X25519PrivateKey.from_private_bytes(LISTENER_PRIVATE)
    connector_pub = connector.public_key().public_bytes_raw()
    listener_pub = listener.public_key().public_bytes_raw()
    shared = connector.exchange(listener.public_key())
    assert shared == listener.exchange(connector.public_key()) == RFC7748_SHARED

    m1 = MAGIC + bytes([VERSION, MODE_SHARED_KEY]) + hashlib.sha256(connector_pub).digest()
    m2 = MAGIC + bytes([VERSION]) + listener_pub
    th = hashlib.sha256(m1 + m2 + connector_pub).digest()
    okm = hkdf_sha256(shared, psk, b"chatclient/2 keys" + th, 128)
    c2l, l2c, confirm_key = okm[0:32], okm[32:64], okm[64:96]
    # Protocol 4: the next 32 bytes are the session's resume secret, named in the clear
    # by the first 16 bytes of SHA-256("chatclient/4 resume id" 0x00 || secret).
    resume_secret = okm[96:128]
    resume_name = hashlib.sha256(b"chatclient/4 resume id\0" + resume_secret).digest()[:16]
    confirm_tag = hmac.new(confirm_key, b"connector" + th, hashlib.sha256).digest()
    m3 = connector_pub + confirm_tag
    # The connection is lost; the connector resumes in mode 4 with fresh keys, naming the
    # session by its resume id and proving its resume secret, used as the PSK as it is.
    again_c = X25519PrivateKey.from_private_bytes(RESUME_CONNECTOR_PRIVATE)
    again_l = X25519PrivateKey.from_private_bytes(RESUME_LISTENER_PRIVATE)
    again_c_pub = again_c.public_key().public_bytes_raw()
    again_l_pub = again_l.public_key().public_bytes_raw()
    again_shared = again_c.exchange(again_l.public_key())
    resume_m1 = (
        MAGIC + bytes([VERSION, MODE_RESUME]) + hashlib.sha256(again_c_pub).digest() + resume_name
    )
    resume_m2 = MAGIC + bytes([VERSION]) + again_l_pub
    resume_th = hashlib.sha256(resume_m1 + resume_m2 + again_c_pub).digest()
    resume_okm = hkdf_sha256(again_shared, resume_secret, b"chatclient/2 keys" + resume_th, 128)
    resume_confirm = hmac.new(resume_okm[64:96], b"connector" + resume_th, hashlib.sha256)
    resume_m3 = again_c_pub + resume_confirm.digest()
    next_secret = resume_okm[96:128]
    next_name = hashlib.sha256(b"chatclient/4 resume id\0" + next_secret).digest()[:16]
    # The connector's first message after its WELCOME (seq 0) and READY (seq 1): RESUMED
    # (seq 2), having taken 5 of the listener's messages and keeping its own from number 3.
    resumed_plain = payload(2, RESUMED_TYPE, (5).to_bytes(8, "big") + (3).to_bytes(8, "big"), 5)
    # File chunks: AES-256-GCM keys per direction from their own HKDF label; a chunk
    # frame body is 0x00, id (4), offset (8), then the sealed data; the nonce is the
    # direction (4; 0 = connector->listener) and the chunk counter (8); the associated
    # data is the label, the id and the offset.
    file_okm = hkdf_sha256(shared, psk, b"chatclient/2 files" + th, 64)
    file_c2l, file_l2c = file_okm[0:32], file_okm[32:64]
    chunk_data = b"chunk of holiday.jpg"
    chunk_nonce = (1).to_bytes(4, "big") + (2).to_bytes(8, "big")  # listener's third
    chunk_aad = b"chatclient/2 chunk\0" + (7).to_bytes(4, "big") + (65536).to_bytes(8, "big")
    chunk_body = (
        b"\0"
        + (7).to_bytes(4, "big")
        + (65536).to_bytes(8, "big")
        + AESGCM(file_l2c).encrypt(chunk_nonce, chunk_data, chunk_aad)
    )
    assert chunk_nonce.hex() == "000000010000000000000002"  # big-endian, both fields

    # Each WELCOME: identity key, Ed25519 signature (deterministic) over the label, the
    # sender's role, a zero byte, th, the room id and the name; then the room id and the
    # name. The listener hosts the room; a connector sends its join nonce there.
    identities = {}
    welcomes = {}
    for role, seed, name, room in (
        ("connector", CONNECTOR_IDENTITY, b"laptop", JOIN),
        ("listener", LISTENER_IDENTITY, b"desktop", ROOM),
    ):
        signer = Ed25519PrivateKey.from_private_bytes(seed)
        identity = signer.public_key().public_bytes_raw()
        signed = b"chatclient/2 welcome from the " + role.encode() + b"\0" + th + room + name
        identities[role] = identity
        welcomes[role] = identity + signer.sign(signed) + room + name
    # RFC 8032's public keys for those secret keys.
    assert identities["connector"].hex().startswith("d75a980182b10ab7")
    assert identities["listener"].hex().startswith("3d4017c3e843895a")
    ordered = sorted(identities.values())
    digits = "".join(safety_half(key) for key in ordered)
    safety = " ".join(digits[i : i + 5] for i in range(0, 60, 5))

    # laptop's words to the room, then to desktop alone (/msg desktop ...): the first words
    # to that audience, so number 0. Both said (form 1), signed with laptop's identity.
    laptop = Ed25519PrivateKey.from_private_bytes(CONNECTOR_IDENTITY)
    say = words(laptop, identities["listener"], 1, SAY_SEQ, "", SAY_TEXT)
    whisper = words(laptop, identities["listener"], 1, 0, WHISPER_TO, WHISPER_TEXT)
    laptop.public_key().verify(say["signature"], say["signed"])

    # laptop offers holiday.jpg to bob through the host: its own offer id 1 (the origin),
    # 12345 bytes, the file's fingerprint, one file (bundle kind 0, count 1); signed over
    # both joins (bob's is OFFER_TO_JOIN).
    offer_fingerprint = hashlib.sha256(b"holiday").digest()
    offer_signed = (
        b"chatclient/4 offer\0"
        + identities["listener"]
        + ROOM
        + JOIN
        + OFFER_TO_JOIN
        + (1).to_bytes(4, "big")
        + (12345).to_bytes(8, "big")
        + offer_fingerprint
        + bytes([0])
        + (1).to_bytes(4, "big")
        + length_prefixed(SAY_AUTHOR.encode())
        + length_prefixed(b"bob")
        + b"holiday.jpg"
    )
    offer_signature = laptop.sign(offer_signed)
    # Once every byte is sent, laptop's FILEDONE carries the file's SHA-256, signed.
    done_digest = hashlib.sha256(b"holiday.jpg's 12345 bytes").digest()
    done_signed = (
        b"chatclient/4 file done\0"
        + identities["listener"]
        + ROOM
        + JOIN
        + OFFER_TO_JOIN
        + (1).to_bytes(4, "big")
        + done_digest
    )
    done_signature = laptop.sign(done_signed)

    # The room code: the head before any line, then after the host relays the SAY above
    # (its SAID: tag 9, a 4-byte length, the SAID body).
    head_0 = hashlib.sha256(b"chatclient/3 room head\0" + identities["listener"] + ROOM).digest()
    head_1 = hashlib.sha256(
        head_0 + bytes([9]) + len(say["said"]).to_bytes(4, "big") + say["said"]
    ).digest()
    digits = f"{int.from_bytes(head_1[:9], 'big') % 10**20:020d}"
    room_code = " ".join(digits[i : i + 4] for i in range(0, 20, 4))

    c2l_plain = payload(0, WELCOME_TYPE, welcomes["connector"])
    l2c_plain = payload(1, CHAT_TYPE, "hello laptop \N{WAVING HAND SIGN}".encode())
    c2l_token = fernet_token(c2l, c2l_plain, TOKEN_TIME, TOKEN_IV)
    l2c_token = fernet_token(l2c, l2c_plain, TOKEN_TIME, TOKEN_IV)
    # The hand-made tokens must be real Fernet tokens under the urlsafe-base64 keys.
    assert Fernet(base64.urlsafe_b64encode(c2l)).decrypt(c2l_token) == c2l_plain
    assert Fernet(base64.urlsafe_b64encode(l2c)).decrypt(l2c_token) == l2c_plain
    return {
        "description": (
            "chatclient protocol 3 handshake known answers; made by make_handshake_vector.py "
            "from the protocol formulas, independently of chatclient"
        ),
        "config_key": CONFIG_KEY,
        "connector_private": CONNECTOR_PRIVATE.hex(),
        "listener_private": LISTENER_PRIVATE.hex(),
        "connector_public": connector_pub.hex(),
        "listener_public": listener_pub.hex(),
        "psk": psk.hex(),
        "key_id": key_id,
        "contact_psk": contact_psk.hex(),
        "spake2_key": SPAKE2_KEY.hex(),
        "invite_psk": invite_psk.hex(),
        "shared_secret": shared.hex(),
        "m1": m1.hex(),
        "m2": m2.hex(),
        "m3": m3.hex(),
        "th": th.hex(),
        "okm": okm.hex(),
        "resume_secret": resume_secret.hex(),
        "resume_id": resume_name.hex(),
        "resume_connector_private": RESUME_CONNECTOR_PRIVATE.hex(),
        "resume_listener_private": RESUME_LISTENER_PRIVATE.hex(),
        "resume_m1": resume_m1.hex(),
        "resume_m2": resume_m2.hex(),
        "resume_m3": resume_m3.hex(),
        "resume_th": resume_th.hex(),
        "resume_okm": resume_okm.hex(),
        "resume_next_secret": next_secret.hex(),
        "resume_next_id": next_name.hex(),
        "resumed_plaintext": resumed_plain.hex(),
        "key_connector_to_listener": c2l.hex(),
        "key_listener_to_connector": l2c.hex(),
        "fernet_key_connector_to_listener": base64.urlsafe_b64encode(c2l).decode("ascii"),
        "fernet_key_listener_to_connector": base64.urlsafe_b64encode(l2c).decode("ascii"),
        "confirm_key": confirm_key.hex(),
        "file_key_connector_to_listener": file_c2l.hex(),
        "file_key_listener_to_connector": file_l2c.hex(),
        "chunk_data": chunk_data.hex(),
        "chunk_nonce": chunk_nonce.hex(),
        "chunk_associated_data": chunk_aad.hex(),
        "chunk_listener_to_connector_third_body": chunk_body.hex(),
        "confirm_tag": confirm_tag.hex(),
        "connector_identity_private": CONNECTOR_IDENTITY.hex(),
        "listener_identity_private": LISTENER_IDENTITY.hex(),
        "connector_identity": identities["connector"].hex(),
        "listener_identity": identities["listener"].hex(),
        "connector_welcome_body": welcomes["connector"].hex(),
        "listener_welcome_body": welcomes["listener"].hex(),
        "room": ROOM.hex(),
        "join": JOIN.hex(),
        "safety_number": safety,
        "token_time": TOKEN_TIME,
        "token_iv": TOKEN_IV.hex(),
        "connector_to_listener_payload": c2l_plain.hex(),
        "connector_to_listener_token": c2l_token.decode("ascii"),
        "listener_to_connector_payload": l2c_plain.hex(),
        "listener_to_connector_token": l2c_token.decode("ascii"),
        "say_author": SAY_AUTHOR,
        "say_text": SAY_TEXT,
        "say_seq": SAY_SEQ,
        "say_signed_data": say["signed"].hex(),
        "say_signature": say["signature"].hex(),
        "say_body": say["body"].hex(),
        "said_body": say["said"].hex(),
        "whisper_to": WHISPER_TO,
        "whisper_text": WHISPER_TEXT,
        "whisper_signed_data": whisper["signed"].hex(),
        "whisper_signature": whisper["signature"].hex(),
        "whisper_body": whisper["body"].hex(),
        "offer_to_join": OFFER_TO_JOIN.hex(),
        "offer_fingerprint": offer_fingerprint.hex(),
        "offer_signed_data": offer_signed.hex(),
        "offer_signature": offer_signature.hex(),
        "done_digest": done_digest.hex(),
        "done_signed_data": done_signed.hex(),
        "done_signature": done_signature.hex(),
        "room_head_0": head_0.hex(),
        "room_head_1": head_1.hex(),
        "room_code_1": room_code,
    }


def main() -> None:
    VECTOR.write_text(json.dumps(compute(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {VECTOR}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write handshake.json: the known answers of the chatclient/1 handshake.

This script implements the README / issue 3 formulas directly, with HKDF and
HMAC written out from RFC 5869 and the Fernet spec; it never calls chatclient,
so the known-answer test compares two independent implementations.

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
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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

MAGIC = b"CCHT"
VERSION = 1
# Fixed Fernet parts so the sample tokens are known answers too.
TOKEN_TIME = 1_700_000_000
TOKEN_IV = bytes(range(16))
WELCOME_TYPE = 1
CHAT_TYPE = 2


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


def payload(seq: int, kind: int, body: bytes) -> bytes:
    """Plaintext of an encrypted frame: 8-byte big-endian seq, 1-byte type, UTF-8 body."""
    return seq.to_bytes(8, "big") + bytes([kind]) + body


def compute() -> dict[str, Any]:
    """Every value of the vector, as JSON-ready strings."""
    key = base64.urlsafe_b64decode(CONFIG_KEY)
    assert len(key) == 32
    psk = hkdf_sha256(key, None, b"chatclient/1 psk", 32)
    # Cross-check the hand-written HKDF against the library's.
    assert psk == HKDF(hashes.SHA256(), 32, None, b"chatclient/1 psk").derive(key)
    digest = hashlib.sha256(psk).hexdigest()
    key_id = f"{digest[:4]}-{digest[4:8]}"

    connector = X25519PrivateKey.from_private_bytes(CONNECTOR_PRIVATE)
    listener = X25519PrivateKey.from_private_bytes(LISTENER_PRIVATE)
    connector_pub = connector.public_key().public_bytes_raw()
    listener_pub = listener.public_key().public_bytes_raw()
    shared = connector.exchange(listener.public_key())
    assert shared == listener.exchange(connector.public_key()) == RFC7748_SHARED

    m1 = MAGIC + bytes([VERSION]) + hashlib.sha256(connector_pub).digest()
    m2 = MAGIC + bytes([VERSION]) + listener_pub
    th = hashlib.sha256(m1 + m2 + connector_pub).digest()
    okm = hkdf_sha256(shared, psk, b"chatclient/1 keys" + th, 100)
    c2l, l2c, confirm_key = okm[0:32], okm[32:64], okm[64:96]
    code = f"{int.from_bytes(okm[96:100], 'big') % 1_000_000:06d}"
    confirm_tag = hmac.new(confirm_key, b"connector" + th, hashlib.sha256).digest()
    m3 = connector_pub + confirm_tag

    c2l_plain = payload(0, WELCOME_TYPE, b"laptop")
    l2c_plain = payload(1, CHAT_TYPE, "hello laptop \N{WAVING HAND SIGN}".encode())
    c2l_token = fernet_token(c2l, c2l_plain, TOKEN_TIME, TOKEN_IV)
    l2c_token = fernet_token(l2c, l2c_plain, TOKEN_TIME, TOKEN_IV)
    # The hand-made tokens must be real Fernet tokens under the urlsafe-base64 keys.
    assert Fernet(base64.urlsafe_b64encode(c2l)).decrypt(c2l_token) == c2l_plain
    assert Fernet(base64.urlsafe_b64encode(l2c)).decrypt(l2c_token) == l2c_plain
    return {
        "description": (
            "chatclient/1 handshake known answers; made by make_handshake_vector.py "
            "from the protocol formulas, independently of chatclient.py"
        ),
        "config_key": CONFIG_KEY,
        "connector_private": CONNECTOR_PRIVATE.hex(),
        "listener_private": LISTENER_PRIVATE.hex(),
        "connector_public": connector_pub.hex(),
        "listener_public": listener_pub.hex(),
        "psk": psk.hex(),
        "key_id": key_id,
        "shared_secret": shared.hex(),
        "m1": m1.hex(),
        "m2": m2.hex(),
        "m3": m3.hex(),
        "th": th.hex(),
        "okm": okm.hex(),
        "key_connector_to_listener": c2l.hex(),
        "key_listener_to_connector": l2c.hex(),
        "fernet_key_connector_to_listener": base64.urlsafe_b64encode(c2l).decode("ascii"),
        "fernet_key_listener_to_connector": base64.urlsafe_b64encode(l2c).decode("ascii"),
        "confirm_key": confirm_key.hex(),
        "confirm_tag": confirm_tag.hex(),
        "session_code": code,
        "token_time": TOKEN_TIME,
        "token_iv": TOKEN_IV.hex(),
        "connector_to_listener_payload": c2l_plain.hex(),
        "connector_to_listener_token": c2l_token.decode("ascii"),
        "listener_to_connector_payload": l2c_plain.hex(),
        "listener_to_connector_token": l2c_token.decode("ascii"),
    }


def main() -> None:
    VECTOR.write_text(json.dumps(compute(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {VECTOR}")


if __name__ == "__main__":
    main()

"""config.py's values, without a process: the fernet_key as typed (canonical, URL-safe
base64, neither a published nor a weak key), port numbers, and the program name that
the hints print. Config files and flags read by a real process are in
test_cli_setup.py."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from pair import KEY

from chatclient.config import decode_key, parse_port, program_name
from chatclient.errors import ConfigError

# --- configuration values --------------------------------------------------------


def test_decode_key_accepts_a_canonical_key() -> None:
    raw = decode_key(KEY, program="chatclient")
    assert raw == base64.urlsafe_b64decode(KEY)
    assert len(raw) == 32
    assert decode_key(f"  {KEY}\n", program="chatclient") == raw


def test_decode_key_accepts_urlsafe_characters() -> None:
    raw = bytes.fromhex("fbefbeffffff") * 5 + b"\x00\x01"
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    assert "-" in text and "_" in text
    assert decode_key(text, program="chatclient") == raw


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_decode_key_refuses_empty_and_mentions_init(text: str) -> None:
    with pytest.raises(ConfigError, match="--init"):
        decode_key(text, "my.ini", program="chatclient")


@pytest.mark.parametrize(
    "text",
    [
        KEY[:-2] + "=",  # 42 characters and '='
        KEY[:-1],  # padding missing
        KEY + "A",
        KEY[:-1] + "A",  # 44 characters, no '='
        base64.urlsafe_b64encode(bytes(16)).decode("ascii"),
        base64.urlsafe_b64encode(bytes(33)).decode("ascii"),
        KEY.replace("_", "*"),
        KEY[:10] + " " + KEY[11:],
    ],
)
def test_decode_key_refuses_wrong_length_or_alphabet(text: str) -> None:
    with pytest.raises(ConfigError, match="fernet_key"):
        decode_key(text, program="chatclient")


def test_decode_key_refuses_non_canonical_last_character() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # Flipping the lowest bit changes only the two bits a 32-byte key leaves unused.
    noncanonical = KEY[:-2] + alphabet[alphabet.index(KEY[-2]) ^ 1] + "="
    assert base64.urlsafe_b64decode(noncanonical) == base64.urlsafe_b64decode(KEY)
    with pytest.raises(ConfigError, match="canonical"):
        decode_key(noncanonical, program="chatclient")


def test_decode_key_refuses_standard_base64_characters() -> None:
    raw = bytes.fromhex("fbefbeffffff") * 5 + b"\x00\x01"
    standard = base64.b64encode(raw).decode("ascii")
    assert "+" in standard and "/" in standard
    with pytest.raises(ConfigError):
        decode_key(standard, program="chatclient")
    with pytest.raises(ConfigError):
        decode_key(KEY.replace("_", "/"), program="chatclient")


@pytest.mark.parametrize(
    "text",
    [
        "DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0=",  # the original example config's key
        base64.urlsafe_b64encode(bytes(32)).decode("ascii"),
        base64.urlsafe_b64encode(b"A" * 32).decode("ascii"),
        base64.urlsafe_b64encode(b"\xff" * 32).decode("ascii"),
    ],
)
def test_decode_key_refuses_public_and_weak_keys_and_says_to_run_genkey(text: str) -> None:
    with pytest.raises(ConfigError, match="--genkey") as caught:
        decode_key(text, program="chatclient")
    assert "fernet_key" in str(caught.value)


def test_readme_prints_no_key_that_would_be_accepted() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for candidate in set(re.findall(r"[A-Za-z0-9_-]{43}=", readme)):
        with pytest.raises(ConfigError, match="--genkey"):
            decode_key(candidate, program="chatclient")


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("65535", 65535), (" 50233 ", 50233)])
def test_parse_port_accepts(text: str, port: int) -> None:
    assert parse_port(text, "port") == port


@pytest.mark.parametrize(
    "text", ["0", "65536", "-1", "+80", "abc", "", "1.5", "5 0", "99999999999999999999"]
)
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.ini: port must be a number from 1 to 65535"):
        parse_port(text, "config.ini: port")


@pytest.mark.parametrize("text", ["\u00b2", "1\u00b2", "\u2460"])
def test_parse_port_refuses_digit_like_characters_with_config_error(text: str) -> None:
    # str.isdigit() is true for superscripts and circled digits, but int() refuses them.
    with pytest.raises(ConfigError):
        parse_port(text, "port")


def test_program_name_is_the_command_as_run() -> None:
    cwd = "/home/me/chat"
    assert (
        program_name("chatclient.py", "/usr/bin/python3", cwd, "/usr/bin")
        == "python3 chatclient.py"
    )
    assert (
        program_name("chatclient.py", "/home/me/chat/.venv/bin/python", cwd, "")
        == ".venv/bin/python chatclient.py"
    )
    assert program_name("/nowhere/bin/chatclient", "/x/python", cwd, "") == (
        "/nowhere/bin/chatclient"
    )
    # A Python that PATH would not find is named by its path, so the hint works as typed.
    assert program_name("chatclient.py", "/other/.venv/bin/python", cwd, "/usr/bin") == (
        "/other/.venv/bin/python chatclient.py"
    )

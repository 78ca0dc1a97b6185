"""lan.py: what a listener's LAN announcement says, how contacts (and only contacts)
recognise it, how records from anyone on the LAN are parsed, and how a slot is chosen."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.errors import ProtocolError
from chatclient.handshake import VERSION
from chatclient.identity import new_invite_code, parse_invite_code
from chatclient.lan import (
    MAX_SLOT,
    TAG_BYTES,
    choose_slot,
    contact_tag,
    parse_announcement,
    recognise,
    txt_record,
)

DESKTOP = bytes(range(32))
LAPTOP = bytes(range(32, 64))
NOON = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.timezone.utc)


def record(**fields: str) -> dict[bytes, bytes | None]:
    return {key.encode(): value.encode() for key, value in fields.items()}


# --- Tags: recognised by contacts, unlinkable by strangers ---------------------------------


def test_a_tag_changes_every_day_and_differs_between_people() -> None:
    today, tomorrow = NOON.date(), NOON.date() + datetime.timedelta(days=1)
    assert contact_tag(DESKTOP, today) != contact_tag(DESKTOP, tomorrow)
    assert contact_tag(DESKTOP, today) != contact_tag(LAPTOP, today)
    assert len(contact_tag(DESKTOP, today)) == TAG_BYTES


def test_a_contact_recognises_the_tag_and_a_stranger_does_not() -> None:
    tag = contact_tag(DESKTOP, NOON.date())
    assert recognise(tag, [("laptop", LAPTOP), ("desktop", DESKTOP)], NOON) == "desktop"
    assert recognise(tag, [("laptop", LAPTOP)], NOON) is None  # knows someone else only
    assert recognise(None, [("desktop", DESKTOP)], NOON) is None


def test_a_tag_made_just_before_midnight_is_still_recognised_after_it() -> None:
    tag = contact_tag(DESKTOP, NOON.date())
    just_after = datetime.datetime(2026, 12, 6, 0, 5, tzinfo=datetime.timezone.utc)
    assert recognise(tag, [("desktop", DESKTOP)], just_after) == "desktop"
    week_later = NOON + datetime.timedelta(days=7)
    assert recognise(tag, [("desktop", DESKTOP)], week_later) is None


def test_the_record_carries_no_name_and_no_stable_identifier() -> None:
    monday = txt_record(7, contact_tag(DESKTOP, NOON.date()))
    tuesday = txt_record(None, contact_tag(DESKTOP, NOON.date() + datetime.timedelta(days=1)))
    assert set(monday) == {"v", "t", "s"} and set(tuesday) == {"v", "t"}
    assert monday["v"] == tuesday["v"] == str(VERSION)
    assert monday["t"] != tuesday["t"]  # nothing in common between two days but the version
    assert DESKTOP.hex() not in str(monday)


# --- Records from anyone on the LAN ---------------------------------------------------------


def test_a_good_record_parses() -> None:
    tag = contact_tag(DESKTOP, NOON.date())
    found = parse_announcement(record(v="2", t=tag.hex(), s="7"), 50233, ["192.168.1.112"])
    assert found.slot == 7 and found.tag == tag and found.version == 2
    assert found.address == "192.168.1.112:50233"
    ipv6 = parse_announcement(record(v="2"), 50233, ["fe80::1"])
    assert ipv6.address == "[fe80::1]:50233" and ipv6.slot is None and ipv6.tag is None


@pytest.mark.parametrize(
    ("properties", "port", "addresses", "words"),
    [
        (record(v="2", s="0"), 1, ["10.0.0.1"], "slot '0' is not a number from 1 to 99"),
        (record(v="2", s="100"), 1, ["10.0.0.1"], "slot '100'"),
        (record(v="2", s="٣"), 1, ["10.0.0.1"], "not ASCII"),  # an Arabic-Indic digit
        (record(v="two"), 1, ["10.0.0.1"], "version 'two' is not a number"),
        (record(v="2", t="zz" * TAG_BYTES), 1, ["10.0.0.1"], "not hexadecimal"),
        (record(v="2", t="00"), 1, ["10.0.0.1"], "its tag is 1 bytes, not 8"),
        (record(v="2"), 0, ["10.0.0.1"], "port 0 is not a TCP port"),
        (record(v="2"), 70000, ["10.0.0.1"], "port 70000"),
        (record(v="2"), 1, [], "it gives no address"),
        (record(v="2"), 1, ["attacker.example"], "is not an IP address"),
        ({b"v": b"2", b"x": b"\xff"}, 1, ["10.0.0.1"], "not ASCII"),
        ({b"v": b"2", b"x": None}, 1, ["10.0.0.1"], "empty or too long"),
        ({b"v": b"2", b"x": b"a" * 65}, 1, ["10.0.0.1"], "empty or too long"),
        ({b"k%d" % i: b"a" * 60 for i in range(8)}, 1, ["10.0.0.1"], "more than 400"),
    ],
)
def test_a_bad_record_is_one_clear_reason(
    properties: dict[bytes, bytes | None], port: int, addresses: list[str], words: str
) -> None:
    with pytest.raises(ProtocolError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_announcement(properties, port, addresses)


@given(
    st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=80), max_size=12),
    st.integers(min_value=-5, max_value=70000),
    st.lists(st.text(max_size=40), max_size=10),
)
def test_no_record_raises_anything_but_a_protocol_error(
    properties: dict[bytes, bytes | None], port: int, addresses: list[str]
) -> None:
    try:
        found = parse_announcement(properties, port, addresses)
    except ProtocolError:
        return
    assert found.addresses and all(address in addresses for address in found.addresses)


def test_only_the_records_own_addresses_are_used() -> None:
    found = parse_announcement(record(v="2"), 50233, ["10.0.0.9", "not-an-address"][:1])
    assert found.addresses == ("10.0.0.9",)
    many = [f"10.0.0.{i}" for i in range(1, 40)]
    assert len(parse_announcement(record(v="2"), 1, many).addresses) == 8  # bounded


# --- Slots -------------------------------------------------------------------------------


def test_a_slot_is_never_one_another_listener_holds() -> None:
    taken = set(range(1, MAX_SLOT + 1)) - {42}
    assert all(choose_slot(taken, bytes([i, 7, 9, i])) == 42 for i in range(50))
    chosen = {choose_slot({1, 2, 3}, i.to_bytes(4, "big")) for i in range(500)}
    assert not chosen & {1, 2, 3} and chosen <= set(range(1, MAX_SLOT + 1))
    assert 1 <= choose_slot(range(1, MAX_SLOT + 1), b"\xff" * 4) <= MAX_SLOT  # all taken


def test_an_invite_code_carries_its_slot() -> None:
    code = new_invite_code(42)
    assert code.startswith("42-") and parse_invite_code(code) == code

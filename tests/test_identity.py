"""Identities, known_peers, safety numbers and invite codes: the pure parts and the
handshake of protocol 2 between two PeerProtocol objects (no sockets, no sleeps)."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pair import PSK, FakeClock, PeerPair

from chatclient.errors import ConfigError
from chatclient.handshake import Mode, Role
from chatclient.identity import (
    MAX_INVITE_FAILURES,
    Invite,
    KnownPeers,
    Trust,
    fingerprint,
    load_identity,
    new_invite_code,
    parse_invite_code,
    read_known_peers,
    safety_number,
    update_known_peers,
)
from chatclient.messages import Refuse, Welcome
from chatclient.peer import (
    Established,
    Event,
    Failed,
    IdentityRefused,
    KeyProven,
    PeerProtocol,
    Stage,
)
from chatclient.trust import identity_judge
from chatclient.wordlist import EVEN_WORDS, ODD_WORDS

ALICE = bytes(range(32))
BOB = bytes(range(1, 33))
B64 = base64.b64encode(ALICE).decode()


def public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# --- Safety numbers and fingerprints ----------------------------------------------------


def test_the_safety_number_is_60_digits_in_12_groups_the_same_from_both_sides() -> None:
    number = safety_number(ALICE, BOB)
    assert re.fullmatch(r"\d{5}( \d{5}){11}", number)
    assert number == safety_number(BOB, ALICE)


def test_the_safety_number_changes_with_either_key() -> None:
    carol = bytes(range(2, 34))
    assert (
        len({safety_number(ALICE, BOB), safety_number(ALICE, carol), safety_number(carol, BOB)})
        == 3
    )


def test_a_fingerprint_is_8_groups_of_4_hex_digits() -> None:
    assert re.fullmatch(r"[0-9a-f]{4}( [0-9a-f]{4}){7}", fingerprint(ALICE))
    assert fingerprint(ALICE) != fingerprint(BOB)


# --- known_peers ---------------------------------------------------------------------------


def test_known_peers_round_trips_and_names_may_hold_spaces() -> None:
    peers = KnownPeers("kp").pin("laptop", ALICE, False, "2026-11-26T10:00:00Z")
    peers = peers.pin("my desk top", BOB, True, "2026-11-26T11:00:00Z")
    again = KnownPeers.parse("kp", peers.render())
    assert [(p.name, p.key, p.first_seen, p.verified) for p in again.peers] == [
        ("laptop", ALICE, "2026-11-26T10:00:00Z", False),
        ("my desk top", BOB, "2026-11-26T11:00:00Z", True),
    ]
    assert again.named("laptop") is not None and again.named("laptop").line == 4  # type: ignore[union-attr]


def test_a_look_alike_of_a_contacts_name_is_judged_as_that_contact() -> None:
    peers = KnownPeers("kp").pin("alice", ALICE, True, "t")
    impostor = peers.recognize("\u0430lice", BOB)  # a Cyrillic a
    assert impostor.trust is Trust.CHANGED and impostor.pinned is not None
    assert impostor.pinned.name == "alice"
    same = peers.recognize("Alice", ALICE)  # the same identity under a look-alike name
    assert same.trust is Trust.VERIFIED and same.aliases == ("alice",)
    assert peers.recognize("bob", BOB).trust is Trust.NEW


def test_recognize_says_new_known_verified_changed_and_other_names() -> None:
    peers = KnownPeers("kp").pin("laptop", ALICE, False, "t").pin("desk", BOB, True, "t")
    assert peers.recognize("stranger", bytes(32)).trust is Trust.NEW
    assert peers.recognize("laptop", ALICE).trust is Trust.KNOWN
    assert peers.recognize("desk", BOB).trust is Trust.VERIFIED
    assert peers.recognize("laptop", BOB).trust is Trust.CHANGED
    renamed = peers.recognize("laptop2", ALICE)
    assert renamed.trust is Trust.KNOWN and renamed.aliases == ("laptop",)


def test_pinning_again_keeps_first_seen_and_verification_only_grows() -> None:
    peers = KnownPeers("kp").pin("laptop", ALICE, True, "first")
    peers = peers.pin("laptop", ALICE, False, "later")
    [entry] = peers.peers
    assert (entry.first_seen, entry.verified) == ("first", True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("laptop\n", "is not of the form"),
        ("laptop ed25519:abc 2026 verified\n", "the key is not valid"),
        (f"laptop ed25519:{B64} 2026 trusted\n", "trust"),
        (f"a ed25519:{B64} 2026 verified\na ed25519:{B64} 2026 verified\n", "also on line 1"),
    ],
)
def test_a_damaged_known_peers_is_one_clear_error_naming_the_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        KnownPeers.parse("known_peers", text)
    assert "known_peers line" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_damaged_known_peers_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match="line 1"):
        update_known_peers(str(path), lambda peers: peers.pin("x", ALICE, False, "t"))
    assert path.read_text() == "garbage\n"


def test_forgetting_an_unknown_name_says_which_names_there_are() -> None:
    peers = KnownPeers("kp").pin("laptop", ALICE, False, "t")
    with pytest.raises(ConfigError, match=r"no peer named 'desk' \(names there: laptop\)"):
        peers.forget("desk")
    assert peers.forget("laptop").peers == ()


def test_known_peers_is_written_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    update_known_peers(str(path), lambda peers: peers.pin("laptop", ALICE, False, "t"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_known_peers(str(path)).named("laptop") is not None


# --- The identity file ---------------------------------------------------------------------


def test_a_missing_identity_is_created_mode_600_and_then_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "identity.key")
    key, created = load_identity(path)
    assert created and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created_again = load_identity(path)
    assert not created_again and public(again) == public(key)


@pytest.mark.parametrize(
    "text", ["", "ed25519-private:short\n", "hello\n", "ed25519-private:" + "A" * 43 + "=\nmore\n"]
)
def test_a_damaged_identity_is_an_error_and_never_replaced(tmp_path: Path, text: str) -> None:
    path = tmp_path / "identity.key"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"identity\.key is damaged") as caught:
        load_identity(str(path))
    assert "\n" not in str(caught.value)
    assert path.read_text() == text


def test_an_unreadable_identity_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.mkdir()  # a folder where the file should be: reading it fails
    with pytest.raises(ConfigError, match="cannot read your identity"):
        load_identity(str(path))


# --- Invite codes --------------------------------------------------------------------------


def test_new_codes_are_a_number_and_an_even_and_an_odd_word() -> None:
    for _ in range(50):
        code = new_invite_code()
        number, first, second = code.split("-")
        assert 1 <= int(number) <= 99 and first in EVEN_WORDS and second in ODD_WORDS
        assert parse_invite_code(code) == code


def test_the_word_lists_are_the_pgp_lists() -> None:
    assert len(set(EVEN_WORDS)) == len(set(ODD_WORDS)) == 256
    assert EVEN_WORDS[0] == "aardvark" and ODD_WORDS[0] == "adroitness"
    assert EVEN_WORDS[255] == "zulu" and ODD_WORDS[255] == "yucatan"


def test_codes_are_read_leniently_and_checked_strictly() -> None:
    assert parse_invite_code("  7 Gazelle  GUITARIST ") == "7-gazelle-guitarist"
    with pytest.raises(ConfigError, match="swapped: try 7-gazelle-guitarist"):
        parse_invite_code("7-guitarist-gazelle")
    with pytest.raises(ConfigError, match="'gazele' is not a word"):
        parse_invite_code("7-gazele-guitarist")
    with pytest.raises(ConfigError, match="'aardvark' cannot be the second word"):
        parse_invite_code("7-aardvark-aardvark")
    for bad in ("", "gazelle-guitarist", "0-gazelle-guitarist", "100-gazelle-guitarist"):
        with pytest.raises(ConfigError, match="is not an invite code"):
            parse_invite_code(bad)


def test_an_invite_allows_three_wrong_tries_and_one_right_one() -> None:
    invite = Invite("7-gazelle-guitarist")
    for _ in range(MAX_INVITE_FAILURES):
        assert invite.open
        invite.tried(False)
    assert invite.void and not invite.open
    used = Invite("7-gazelle-guitarist")
    used.tried(True)
    assert used.used and not used.open


# --- Protocol 2 between two PeerProtocols ----------------------------------------------------


def test_each_welcome_is_signed_and_checked_before_established() -> None:
    pair = PeerPair()
    pair.pump()
    [connector_done] = pair.events[pair.connector]
    nonce = pair.connector.nonce  # the connector's join nonce: fresh, in its WELCOME
    assert connector_done == Established(
        "desktop", pair.listener.identity, Mode.SHARED_KEY, nonce=nonce
    )
    assert len(nonce) == 16 and nonce != bytes(16) and pair.listener.nonce == nonce


def tamper_welcome(pair: PeerPair, change: Any) -> list[Event]:
    """Run the handshake, replacing the connector's WELCOME with change(welcome, pair)."""
    listener_saw: list[Event] = []
    m1 = pair.connector.data_to_send()
    pair.listener.receive_data(m1, 0)
    pair.connector.receive_data(pair.listener.data_to_send(), 0)
    # What the connector sends now is M3, then its WELCOME: the WELCOME is replaced.
    m3_frame = pair.connector.data_to_send()[: 4 + 64]
    pair.listener.receive_data(m3_frame, 0)
    for event in pair.listener.events():
        listener_saw.append(event)
        if isinstance(event, KeyProven):
            pair.listener.admit()
    pair.listener.receive_data(change(pair), 0)
    listener_saw += list(pair.listener.events())
    return listener_saw


def signed_by(pair: PeerPair, signer: Ed25519PrivateKey, announced: bytes, th: bytes) -> bytes:
    """A connector WELCOME frame (sequence 0 of a fresh session twin) signed by `signer`."""
    from chatclient.handshake import welcome_signed_data
    from chatclient.session import Session

    assert pair.connector._keys is not None
    data = welcome_signed_data(Role.CONNECTOR, th, "laptop", bytes(16))
    return Session(pair.connector._keys).encode(Welcome("laptop", announced, signer.sign(data)))


def test_a_signature_by_another_key_than_the_announced_one_is_refused() -> None:
    pair = PeerPair()
    mallory = Ed25519PrivateKey.generate()

    def change(pair: PeerPair) -> bytes:
        assert pair.connector._keys is not None
        return signed_by(pair, mallory, pair.connector.identity, pair.connector._keys.transcript)

    [_, failed] = tamper_welcome(pair, change)
    assert isinstance(failed, Failed) and "not signed by the identity it announces" in str(
        failed.error
    )
    assert pair.listener.stage is Stage.CLOSED


def test_a_welcome_signature_replayed_from_another_session_is_refused() -> None:
    identity = Ed25519PrivateKey.generate()
    earlier = PeerPair(connector={"identity": identity})
    earlier.pump()
    assert earlier.connector._keys is not None
    old_th = earlier.connector._keys.transcript
    pair = PeerPair(connector={"identity": identity})
    [_, failed] = tamper_welcome(pair, lambda p: signed_by(p, identity, public(identity), old_th))
    assert isinstance(failed, Failed) and "replayed from another session" in str(failed.error)


def test_a_welcome_signature_reflected_to_the_other_role_is_refused() -> None:
    from chatclient.handshake import welcome_signed_data
    from chatclient.session import Session

    identity = Ed25519PrivateKey.generate()
    pair = PeerPair(listener={"identity": identity})

    def reflect(pair: PeerPair) -> bytes:
        # The listener's own identity, signed as the listener would sign: sent back to it.
        keys = pair.connector._keys
        assert keys is not None
        data = welcome_signed_data(Role.LISTENER, keys.transcript, "laptop", bytes(16))
        welcome = Welcome("laptop", public(identity), identity.sign(data))
        return Session(keys).encode(welcome)

    [_, failed] = tamper_welcome(pair, reflect)
    assert isinstance(failed, Failed) and "not signed" in str(failed.error)


def refuse_with(reason: Refuse, text: str) -> Any:
    def judge(name: str, identity: bytes, mode: Mode) -> None:
        raise IdentityRefused(reason, text)

    return judge


def test_a_listener_that_refuses_an_identity_shows_nothing_and_tells_the_connector() -> None:
    pair = PeerPair(listener={"judge": refuse_with(Refuse.IDENTITY_CHANGED, "changed!")})
    pair.pump()
    [_, listener_failed] = pair.events[pair.listener]
    [connector_failed] = pair.events[pair.connector]
    assert isinstance(listener_failed, Failed) and str(listener_failed.error) == "changed!"
    assert isinstance(connector_failed, Failed)
    assert (
        "desktop refused the connection: it knows a different identity under your name laptop"
        in (str(connector_failed.error))
    )
    assert not any(isinstance(e, Established) for events in pair.events.values() for e in events)


def test_a_connector_that_refuses_the_listener_is_never_shown_as_joined() -> None:
    pair = PeerPair(connector={"judge": refuse_with(Refuse.IDENTITY_CHANGED, "changed!")})
    pair.pump()
    assert not any(isinstance(e, Established) for events in pair.events.values() for e in events)
    [_, listener_failed] = pair.events[pair.listener]
    assert isinstance(listener_failed, Failed)
    assert "laptop refused the connection" in str(listener_failed.error)


def test_a_stranger_without_key_or_code_gets_the_contacts_line(tmp_path: Path) -> None:
    config = str(tmp_path / "config.ini")
    pair = PeerPair(
        connector_psk=None,
        listener_psk=None,
        listener={"judge": identity_judge(config, Role.LISTENER, "chatclient")},
    )
    pair.pump()
    [connector_failed] = pair.events[pair.connector]
    assert isinstance(connector_failed, Failed)
    assert str(connector_failed.error) == (
        "you are not one of desktop's contacts: ask for an invite code"
    )
    [_, listener_failed] = pair.events[pair.listener]
    assert "laptop is not one of your contacts" in str(listener_failed.error)


def test_contacts_connect_with_no_key_at_all(tmp_path: Path) -> None:
    laptop, desktop = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    for folder, name, key in (("l", "laptop", laptop), ("c", "desktop", desktop)):
        (tmp_path / folder).mkdir()
        path = str(tmp_path / folder / "known_peers")
        update_known_peers(path, lambda p, n=name, k=key: p.pin(n, public(k), True, "t"))
    pair = PeerPair(
        connector_psk=None,
        listener_psk=None,
        connector={
            "identity": laptop,
            "judge": identity_judge(
                str(tmp_path / "c" / "config.ini"), Role.CONNECTOR, "chatclient"
            ),
        },
        listener={
            "identity": desktop,
            "judge": identity_judge(
                str(tmp_path / "l" / "config.ini"), Role.LISTENER, "chatclient"
            ),
        },
    )
    pair.pump()
    assert pair.established()
    assert pair.events[pair.listener][-1] == Established(
        "laptop", public(laptop), Mode.CONTACT, nonce=pair.connector.nonce
    )


def test_a_contact_connector_refuses_a_listener_it_does_not_know(tmp_path: Path) -> None:
    pair = PeerPair(
        connector_psk=None,
        listener_psk=None,
        connector={
            "judge": identity_judge(str(tmp_path / "config.ini"), Role.CONNECTOR, "chatclient")
        },
    )
    pair.pump()
    [connector_failed] = pair.events[pair.connector]
    assert "desktop at that address is not one of your contacts" in str(connector_failed.error)
    assert not pair.established()


def invite_pair(code: str, invite: Invite) -> PeerPair:
    pair = PeerPair(
        connector_psk=None, listener_psk=None, connector={"code": code}, listener={"invite": invite}
    )
    pair.pump()
    return pair


def test_the_right_invite_code_connects_and_uses_the_invite() -> None:
    invite = Invite("7-gazelle-guitarist")
    pair = invite_pair("7-gazelle-guitarist", invite)
    assert pair.established() and invite.used
    assert pair.events[pair.connector][-1] == Established(
        "desktop", pair.listener.identity, Mode.INVITE, nonce=pair.connector.nonce
    )
    second = invite_pair("7-gazelle-guitarist", invite)  # single use
    [failed] = second.events[second.connector]
    assert isinstance(failed, Failed) and "no open invite" in str(failed.error)


def test_three_wrong_codes_void_the_invite_then_even_the_right_one_fails() -> None:
    invite = Invite("7-gazelle-guitarist")
    for attempt in range(1, MAX_INVITE_FAILURES + 1):
        pair = invite_pair("8-gazelle-guitarist", invite)
        [connector_failed] = pair.events[pair.connector]
        assert "the invite code is wrong" in str(connector_failed.error)
        [listener_failed] = pair.events[pair.listener]
        left = MAX_INVITE_FAILURES - attempt
        assert f"wrong invite code ({left} of {MAX_INVITE_FAILURES} tries left)" in str(
            listener_failed.error
        )
    assert invite.void
    pair = invite_pair("7-gazelle-guitarist", invite)
    assert not pair.established()
    [failed] = pair.events[pair.connector]
    assert "no open invite" in str(failed.error)


def test_an_invite_code_to_a_listener_with_no_invite_is_told_so() -> None:
    pair = PeerPair(connector_psk=None, connector={"code": "7-gazelle-guitarist"})
    pair.pump()
    [failed] = pair.events[pair.connector]
    assert isinstance(failed, Failed) and "no open invite" in str(failed.error)


def test_a_fernet_key_to_a_listener_without_one_is_told_to_use_a_code() -> None:
    pair = PeerPair(listener_psk=None)
    pair.pump()
    [failed] = pair.events[pair.connector]
    assert isinstance(failed, Failed) and "the peer has no fernet_key" in str(failed.error)


def test_a_handshake_abandoned_after_m2_is_marked_so() -> None:
    pair = PeerPair()
    pair.listener.receive_data(pair.connector.data_to_send(), 0)
    assert pair.listener.data_to_send()  # M2
    pair.listener.receive_data(b"", 0)
    assert pair.listener.abandoned
    silent = PeerProtocol(Role.LISTENER, PSK, "desktop", 0)
    silent.receive_data(b"", 0)
    assert not silent.abandoned  # never got as far as M2


def wrong_guess_at_m1(invite: Invite) -> PeerPair:
    """A connector with a wrong code whose M1 has reached the listener (nothing more)."""
    pair = PeerPair(
        connector_psk=None,
        listener_psk=None,
        connector={"code": "8-gazelle-guitarist"},
        listener={"invite": invite},
    )
    pair.listener.receive_data(pair.connector.data_to_send(), 0)
    return pair


def test_abandoned_invite_tries_cost_nothing_and_never_block_the_invitee() -> None:
    invite = Invite("7-gazelle-guitarist")
    # Half-finished tries, some left hanging, some given up.
    idle = [wrong_guess_at_m1(invite) for _ in range(5)]
    idle[0].listener.receive_data(b"", 0)
    assert invite.open and invite.failures == 0
    real = invite_pair("7-gazelle-guitarist", invite)
    assert real.established() and invite.used


def test_guesses_in_flight_get_no_answer_once_the_invite_is_void() -> None:
    invite = Invite("7-gazelle-guitarist")
    pairs = [wrong_guess_at_m1(invite) for _ in range(MAX_INVITE_FAILURES + 2)]
    for pair in pairs:  # all reach M2 before any M3 is checked
        pair.connector.receive_data(pair.listener.data_to_send(), 0)
    answers = []
    for pair in pairs:
        pair.pump()
        [failed] = pair.events[pair.connector]
        answers.append(str(failed.error))  # type: ignore[attr-defined]
    assert invite.void and invite.failures == MAX_INVITE_FAILURES
    assert [a.startswith("the invite code is wrong") for a in answers] == [True] * 3 + [False] * 2
    assert all("no open invite" in a for a in answers[3:])


def test_an_invite_does_not_let_a_newcomer_take_a_pinned_name(tmp_path: Path) -> None:
    config = str(tmp_path / "config.ini")
    update_known_peers(str(tmp_path / "known_peers"), lambda p: p.pin("laptop", ALICE, True, "t"))
    judge = identity_judge(config, Role.LISTENER, "chatclient")
    with pytest.raises(IdentityRefused, match="laptop's identity has changed"):
        judge("laptop", BOB, Mode.INVITE)
    judge("laptop", ALICE, Mode.INVITE)  # the pinned one is welcome


def test_known_peers_refuses_a_name_it_could_not_show_safely() -> None:
    with pytest.raises(ConfigError, match="line 1: the name must not contain control characters"):
        KnownPeers.parse("kp", f"be\x07ll ed25519:{B64} t verified\n")


# --- A man in the middle who holds the fernet_key ---------------------------------------------


def test_a_man_in_the_middle_with_the_key_shows_different_safety_numbers() -> None:
    """Mallory has the shared key and runs a handshake with each side; the chats work,
    but the safety numbers the two screens show cannot match."""
    clock = FakeClock()
    laptop = PeerProtocol(Role.CONNECTOR, PSK, "laptop", clock.now)
    desktop = PeerProtocol(Role.LISTENER, PSK, "desktop", clock.now)
    mallory = Ed25519PrivateKey.generate()
    fake_desktop = PeerProtocol(Role.LISTENER, PSK, "desktop", clock.now, identity=mallory)
    fake_laptop = PeerProtocol(Role.CONNECTOR, PSK, "laptop", clock.now, identity=mallory)
    links = [(laptop, fake_desktop), (fake_laptop, desktop)]
    seen: dict[PeerProtocol, list[Event]] = {p: [] for link in links for p in link}
    moved = True
    while moved:
        moved = False
        for a, b in links:
            for sender, receiver in ((a, b), (b, a)):
                if data := sender.data_to_send():
                    receiver.receive_data(data, clock.now)
                    moved = True
                for event in sender.events():
                    seen[sender].append(event)
                    if isinstance(event, KeyProven):
                        sender.admit()
                        moved = True
    [laptop_sees] = seen[laptop]
    [_, desktop_sees] = seen[desktop]
    assert isinstance(laptop_sees, Established) and isinstance(desktop_sees, Established)
    on_laptop = safety_number(laptop.identity, laptop_sees.identity)
    on_desktop = safety_number(desktop.identity, desktop_sees.identity)
    honest = safety_number(laptop.identity, desktop.identity)
    assert on_laptop != on_desktop
    assert honest not in (on_laptop, on_desktop)

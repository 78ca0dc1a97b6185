"""The rules that let a chat survive a dropped link (resume.py, pure): what each side
keeps until it is acknowledged, what a receiver takes, and the connector's tries, with a
fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatclient.errors import ProtocolError
from chatclient.resume import (
    FIRST_TRY_SECONDS,
    LAST_TRY_SECONDS,
    Inbox,
    Outbox,
    Reconnect,
)
from chatclient.text import parse_duration


def test_what_is_acknowledged_is_let_go_and_the_rest_is_sent_again_in_order() -> None:
    out: Outbox[bytes] = Outbox()
    numbers = [out.add(f"line {n}".encode(), 6) for n in range(1, 6)]
    assert numbers == [1, 2, 3, 4, 5]
    out.acknowledge(2)
    assert out.waiting == 3
    assert out.after(3) == (0, [b"line 4", b"line 5"])  # the peer took 3 before the drop
    assert out.after(5) == (0, [])


def test_an_acknowledgement_past_what_was_sent_or_going_back_ends_the_session() -> None:
    out: Outbox[bytes] = Outbox()
    out.add(b"a", 1)
    with pytest.raises(ProtocolError, match="acknowledged 2 messages of 1 sent"):
        out.acknowledge(2)
    out.acknowledge(1)
    with pytest.raises(ProtocolError, match="went back from 1 to 0"):
        out.acknowledge(0)


def test_past_its_bounds_the_oldest_go_and_the_peer_learns_how_many() -> None:
    out: Outbox[bytes] = Outbox(max_messages=3, max_bytes=1000)
    for n in range(1, 6):
        out.add(bytes([n]), 1)
    assert out.dropped == 2
    assert out.after(0) == (2, [b"\x03", b"\x04", b"\x05"])
    by_bytes: Outbox[bytes] = Outbox(max_messages=100, max_bytes=10)
    for _ in range(3):
        by_bytes.add(b"x" * 4, 4)
    assert by_bytes.dropped == 1 and by_bytes.after(0)[0] == 1


def test_a_receiver_takes_each_message_once_and_in_order() -> None:
    inbox = Inbox()
    assert [inbox.take(n) for n in (1, 2, 1, 2, 3)] == [True, True, False, False, True]
    with pytest.raises(ProtocolError, match="message 5 came after 3: a loss"):
        inbox.take(5)
    inbox.skip(2)  # the sender let two go
    assert inbox.take(6)


@given(st.lists(st.integers(0, 3), max_size=30), st.integers(1, 40))
def test_any_number_of_drops_shows_every_message_exactly_once(cuts: list[int], total: int) -> None:
    """However many times the link drops, and however much of what was in flight is lost,
    resending after the peer's count shows each message once, in order."""
    out: Outbox[bytes] = Outbox()
    inbox, shown = Inbox(), []
    bodies = [str(n).encode() for n in range(1, total + 1)]
    for body in bodies:
        out.add(body, len(body))
    for cut in [*cuts, 10**6]:  # each round, `cut` of what was resent arrives, then a drop
        missed, again = out.after(inbox.taken)
        assert missed == 0
        for number, body in enumerate(again[:cut] if cut < 10**6 else again, inbox.taken + 1):
            if inbox.take(number):
                shown.append(body)
    assert shown == bodies


def test_the_connector_tries_at_0_5_s_doubling_to_15_s_until_the_window_ends() -> None:
    tries = Reconnect(lost_at=100.0, window=60.0)
    times = []
    while (due := tries.due()) is not None:
        times.append(due)
        tries.failed(due)
    assert times[0] == 100.0 + FIRST_TRY_SECONDS
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, LAST_TRY_SECONDS]
    assert max(gaps) == LAST_TRY_SECONDS
    assert times[-1] <= 160.0


def test_tries_come_at_least_every_keepalive_interval_and_a_hung_try_is_followed_at_once() -> None:
    tries = Reconnect(lost_at=0.0, window=60.0, most=2.0)
    times = []
    while (due := tries.due()) is not None and len(times) < 6:
        times.append(due)
        tries.failed(due)
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [1.0, 2.0, 2.0, 2.0, 2.0]
    began = tries.due()
    assert began is not None
    tries.failed(began)  # the try hung for its whole timeout, and more
    assert tries.due() == began + 2.0  # due from when it began: at once, if that has passed


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("0", 0.0)]
)
def test_durations_are_seconds_or_have_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "ten", "-5", "5x", "1e3", "9999h"])
def test_a_duration_that_is_not_one_says_so(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration|over a week"):
        parse_duration(text)


def test_reconnect_for_is_read_from_config_ini_and_refused_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from chatclient.config import ConfigError, read_config, render_config

    path = tmp_path / "config.ini"
    base = "[parameters]\nip = 127.0.0.1\nport = 50233\nfernet_key =\nusername = me\n"
    path.write_text(base + "reconnect_for = 90s\n")
    path.chmod(0o600)
    config = read_config(str(path), "chatclient")
    assert config.reconnect_for == 90.0
    assert "reconnect_for = 90s" in render_config(config)
    path.write_text(base + "reconnect_for = soon\n")
    with pytest.raises(ConfigError, match=r"reconnect_for 'soon' is not a duration"):
        read_config(str(path), "chatclient")
    path.write_text(base)
    assert read_config(str(path), "chatclient").reconnect_for == 600.0

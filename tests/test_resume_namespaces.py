"""A chat that survives a pulled cable (issue 18): two network namespaces joined by a veth
pair, real chatclient processes in each, and the link taken down mid-chat while people
type. Skipped where namespaces cannot be made (not root, or no `ip`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import netns
import pytest
from conftest import KEY, ChatProcess
from netns import Host, ip
from test_lan_namespaces import Lan, lan  # noqa: F401  (lan: the fixture)

# A loss is noticed within 5 s (a 2 s keepalive); a redial comes at least every 2 s.
WAIT = 45.0


def keyed(net: Lan, host: Host, name: str) -> Path:
    """`name`'s folder, with the suite's shared key (no invite, no contacts)."""
    folder = net.person(host, name)
    (folder / "dl").mkdir(exist_ok=True)
    config = folder / "config.ini"
    config.write_text(config.read_text().replace("fernet_key =", f"fernet_key = {KEY}"))
    return folder


def desktop(net: Lan, *extra: str) -> ChatProcess:
    desk = net.run(
        net.a,
        keyed(net, net.a, "desktop"),
        "--listen",
        "--keepalive",
        "2",
        "--no-announce",
        "--downloads",
        "dl",
        *extra,
    )
    desk.expect(r"^Listening on ")
    return desk


def join(net: Lan, host: Host, name: str) -> ChatProcess:
    """`name` connects to desktop from `host`, resuming for up to 2 minutes."""
    member = net.run(
        host,
        keyed(net, host, name),
        "--connect",
        f"{net.a.address}:50233",
        "--keepalive",
        "2",
        "--reconnect-for",
        "2m",
        "--downloads",
        "dl",
    )
    member.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    return member


def cable(net: Lan) -> str:
    """b's end of the veth pair."""
    return netns.cable(net.b)


def slow(net: Lan) -> str:
    """Shape b's end of the cable to 10 MB/s (so a cut comes mid-file); its device."""
    device = cable(net)
    shaped = subprocess.run(
        [
            *("ip", "netns", "exec", net.b.netns, "tc", "qdisc", "add", "dev", device, "root"),
            *("tbf", "rate", "80mbit", "burst", "256kb", "latency", "100ms"),
        ],
        check=False,
        capture_output=True,
    )
    if shaped.returncode:
        pytest.skip("needs tc to slow the link down")
    return device


def says(proc: ChatProcess, who: str) -> list[str]:
    return [line for line in proc.out if line.startswith(f"{who} says: ")]


def test_a_cut_mid_chat_loses_nothing_and_shows_nothing_twice(lan: Lan) -> None:  # noqa: F811
    desk = desktop(lan)
    lap = join(lan, lan.b, "laptop")
    desk.expect(r"^laptop joined the chat\.$")
    lap.send("before the cut")
    desk.expect(r"^laptop says: before the cut$")
    device = cable(lan)
    ip("-n", lan.b.netns, "link", "set", device, "down")
    lap.expect(r"^Connection to desktop lost: reconnecting \(Ctrl-C to give up\)$", timeout=WAIT)
    desk.expect(r"^laptop lost the connection; keeping their place for 10 minutes\.$", timeout=WAIT)
    for number in range(1, 4):
        lap.send(f"laptop {number}")
        lap.expect(r"^Waiting: it goes when desktop is back\.$")
        desk.send(f"desktop {number}")
        desk.expect(r"^Waiting: it goes when laptop is back\.$")
    ip("-n", lan.b.netns, "link", "set", device, "up")
    lap.expect(
        r"^Back with desktop after \d+ s: 3 waiting messages sent, nothing missed\.$",
        timeout=WAIT,
    )
    desk.expect(r"^laptop is back\.$", timeout=WAIT)
    for number in range(1, 4):
        desk.expect(rf"^laptop says: laptop {number}$", timeout=WAIT)
        lap.expect(rf"^desktop says: desktop {number}$", timeout=WAIT)
    lap.send("after")
    desk.expect(r"^laptop says: after$")
    assert says(desk, "laptop") == ["laptop says: before the cut"] + [
        f"laptop says: laptop {n}" for n in (1, 2, 3)
    ] + ["laptop says: after"]
    assert says(lap, "desktop") == [f"desktop says: desktop {n}" for n in (1, 2, 3)]


def test_the_chat_goes_on_when_the_connector_comes_back_from_a_new_address(
    lan: Lan,  # noqa: F811
) -> None:
    desk = desktop(lan)
    lap = join(lan, lan.b, "laptop")
    desk.expect(r"^laptop joined the chat\.$")
    device = cable(lan)
    ip("-n", lan.b.netns, "link", "set", device, "down")
    lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
    desk.send("while you were away")
    new = lan.b.address.rsplit(".", 1)[0] + ".3"  # a new DHCP lease, say
    ip("-n", lan.b.netns, "addr", "del", f"{lan.b.address}/24", "dev", device)
    ip("-n", lan.b.netns, "addr", "add", f"{new}/24", "dev", device)
    ip("-n", lan.b.netns, "link", "set", device, "up")
    lap.expect(r"^Back with desktop after \d+ s: ", timeout=WAIT)
    lap.expect(r"^desktop says: while you were away$", timeout=WAIT)
    lap.send("from my new address")
    desk.expect(r"^laptop says: from my new address$", timeout=WAIT)


def test_a_member_cut_from_a_room_of_three_sees_what_was_said_exactly_once(
    lan: Lan,  # noqa: F811
) -> None:
    desk = desktop(lan)
    alice = join(lan, lan.b, "alice")  # behind the cable that will be pulled
    desk.expect(r"^alice joined the chat\.$")
    bob = join(lan, lan.a, "bob")  # beside the host
    desk.expect(r"^bob joined the chat\.$")
    alice.expect(r"^bob joined the chat\.$")
    device = cable(lan)
    ip("-n", lan.b.netns, "link", "set", device, "down")
    desk.expect(r"^alice lost the connection; keeping their place for 10 minutes\.$", timeout=WAIT)
    bob.expect(r"^alice lost the connection; keeping their place for 10 minutes\.$", timeout=WAIT)
    for number in range(1, 4):
        bob.send(f"bob {number}")
        desk.send(f"desktop {number}")
    desk.expect(r"^bob says: bob 3$")
    ip("-n", lan.b.netns, "link", "set", device, "up")
    alice.expect(r"^Back with desktop after \d+ s: ", timeout=WAIT)
    bob.expect(r"^alice is back\.$", timeout=WAIT)
    for number in range(1, 4):
        alice.expect(rf"^bob says: bob {number}$", timeout=WAIT)
        alice.expect(rf"^desktop says: desktop {number}$", timeout=WAIT)
    alice.send("I am back")
    bob.expect(r"^alice says: I am back$", timeout=WAIT)
    assert says(alice, "bob") == [f"bob says: bob {n}" for n in (1, 2, 3)]
    assert says(alice, "desktop") == [f"desktop says: desktop {n}" for n in (1, 2, 3)]


def test_a_transfer_cut_at_about_half_finishes_without_a_new_offer(
    lan: Lan,  # noqa: F811
) -> None:
    desk = desktop(lan)
    lap = join(lan, lan.b, "laptop")
    desk.expect(r"^laptop joined the chat\.$")
    data = os.urandom(50 * 2**20)
    (lan.root / "laptop" / "big.bin").write_bytes(data)
    device = slow(lan)
    lap.send("/send big.bin")
    desk.expect(r"^laptop offers big\.bin \(52\.4 MB\): /accept 1 or /reject 1$", timeout=WAIT)
    desk.send("/accept 1")
    desk.expect(r"^big\.bin: 50% of 52\.4 MB received$", timeout=WAIT)
    ip("-n", lan.b.netns, "link", "set", device, "down")
    lap.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
    ip("-n", lan.b.netns, "link", "set", device, "up")
    lap.expect(r"^Back with desktop after \d+ s: ", timeout=WAIT)
    desk.expect(r"^Received big\.bin from laptop \(52\.4 MB, SHA-256 verified\)", timeout=120.0)
    assert not any(
        " offers big.bin" in line for line in desk.out[desk.out.index("laptop is back.") :]
    )
    saved = lan.root / "desktop" / "dl" / "big.bin"
    assert saved.read_bytes() == data


@pytest.mark.parametrize("cut", ["author", "receiver"])
def test_a_file_relayed_between_members_goes_on_when_either_is_cut(
    lan: Lan,  # noqa: F811
    cut: str,
) -> None:
    """alice is behind the cable, bob beside the host. With `author` alice sends to bob and
    is cut; with `receiver` bob sends to alice, who is cut. Either way the host's two legs
    go on from where the receiver has the file, with no new offer."""
    desk = desktop(lan)
    alice = join(lan, lan.b, "alice")
    desk.expect(r"^alice joined the chat\.$")
    bob = join(lan, lan.a, "bob")
    desk.expect(r"^bob joined the chat\.$")
    alice.expect(r"^bob joined the chat\.$")
    author, receiver, to = (alice, bob, "bob") if cut == "author" else (bob, alice, "alice")
    sender = "alice" if cut == "author" else "bob"
    data = os.urandom(50 * 2**20)
    (lan.root / sender / "big.bin").write_bytes(data)
    device = slow(lan)
    author.send(f"/send {to} big.bin")
    receiver.expect(
        rf"^{sender} offers big\.bin \(52\.4 MB\): /accept 1 or /reject 1$", timeout=WAIT
    )
    receiver.send("/accept 1")
    receiver.expect(r"^big\.bin: 50% of 52\.4 MB received$", timeout=WAIT)
    ip("-n", lan.b.netns, "link", "set", device, "down")
    alice.expect(r"^Connection to desktop lost: reconnecting", timeout=WAIT)
    ip("-n", lan.b.netns, "link", "set", device, "up")
    alice.expect(r"^Back with desktop after \d+ s: ", timeout=WAIT)
    receiver.expect(
        rf"^Received big\.bin from {sender} \(52\.4 MB, SHA-256 verified\)", timeout=120.0
    )
    author.expect(rf"^{to} received big\.bin ", timeout=WAIT)
    assert sum(" offers big.bin" in line for line in receiver.out) == 1
    saved = lan.root / to / "dl" / "big.bin"
    assert saved.read_bytes() == data


def test_with_reconnect_for_0_a_pulled_cable_ends_the_chat_on_both_sides(
    lan: Lan,  # noqa: F811
) -> None:
    """The pulled cable as before resuming existed: both sides say the connection is lost
    (within 30 s: 2.5 keepalive intervals of 2 s, and the close), and exit with 1."""
    desk = desktop(lan, "--reconnect-for", "0")
    lap = lan.run(
        lan.b,
        keyed(lan, lan.b, "laptop"),
        "--connect",
        f"{lan.a.address}:50233",
        "--keepalive",
        "2",
        "--reconnect-for",
        "0",
    )
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    desk.expect(r"^laptop joined the chat\.$")
    ip("-n", lan.b.netns, "link", "set", cable(lan), "down")
    lap.expect(r"^Connection lost: nothing heard from the peer for 5 s ", timeout=30.0)
    desk.expect(r"^Connection lost: nothing heard from the peer for 5 s ", timeout=30.0)
    assert lap.wait(30.0) == 1 and desk.wait(30.0) == 1
    assert not [line for line in lap.out + desk.out if "reconnecting" in line]

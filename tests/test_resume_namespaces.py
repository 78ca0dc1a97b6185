"""A chat that survives a pulled cable (issue 18): two network namespaces joined by a veth
pair, real chatclient processes in each, and the link taken down mid-chat while both
type. Skipped where namespaces cannot be made (not root, or no `ip`)."""

from __future__ import annotations

from conftest import KEY
from test_lan_namespaces import Lan, ip, lan  # noqa: F401  (the fixture)

TIMEOUT = 45.0  # a loss is noticed within 5 s; a redial waits at most 15 s, then connects


def two(lan: Lan, *flags: str) -> tuple[object, object]:  # noqa: F811
    """desktop listens in namespace a, laptop connects from b, with a 2 s keepalive."""
    folders = []
    for host, name in ((lan.a, "desktop"), (lan.b, "laptop")):
        folder = lan.person(host, name)
        config = folder / "config.ini"
        config.write_text(config.read_text().replace("fernet_key =", f"fernet_key = {KEY}"))
        folders.append(folder)
    desk = lan.run(lan.a, folders[0], "--listen", "--keepalive", "2", "--no-announce", *flags)
    desk.expect(r"^Listening on ")  # type: ignore[attr-defined]
    lap = lan.run(
        lan.b, folders[1], "--connect", f"{lan.a.address}:50233", "--keepalive", "2", *flags
    )
    lap.expect(r"^WELCOME Welcome to the chat! I am desktop$")  # type: ignore[attr-defined]
    desk.expect(r"^laptop joined the chat\.$")  # type: ignore[attr-defined]
    return desk, lap


def test_a_cut_mid_chat_loses_nothing_and_shows_nothing_twice(lan: Lan) -> None:  # noqa: F811
    desk, lap = two(lan, "--reconnect-for", "2m")
    lap.send("before the cut")  # type: ignore[attr-defined]
    desk.expect(r"^laptop says: before the cut$")  # type: ignore[attr-defined]
    links = (
        __import__("subprocess")
        .run(
            ["ip", "-n", lan.b.netns, "-o", "link", "show", "type", "veth"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout
    )
    device = links.split(":")[1].strip().split("@")[0]
    ip("-n", lan.b.netns, "link", "set", device, "down")
    lap.expect(r"^Connection to desktop lost: reconnecting \(Ctrl-C to give up\)$", timeout=TIMEOUT)  # type: ignore[attr-defined]
    desk.expect(
        r"^laptop lost the connection; keeping their place for 2 minutes\.$", timeout=TIMEOUT
    )  # type: ignore[attr-defined]
    for number in range(1, 4):
        lap.send(f"laptop {number}")  # type: ignore[attr-defined]
        lap.expect(r"^Waiting: it goes when desktop is back\.$")  # type: ignore[attr-defined]
        desk.send(f"desktop {number}")  # type: ignore[attr-defined]
        desk.expect(r"^Waiting: it goes when laptop is back\.$")  # type: ignore[attr-defined]
    ip("-n", lan.b.netns, "link", "set", device, "up")
    lap.expect(
        r"^Back with desktop after \d+ s: 3 waiting messages sent, nothing missed\.$",
        timeout=TIMEOUT,
    )  # type: ignore[attr-defined]
    desk.expect(r"^laptop is back\.$", timeout=TIMEOUT)  # type: ignore[attr-defined]
    for number in range(1, 4):
        desk.expect(rf"^laptop says: laptop {number}$", timeout=TIMEOUT)  # type: ignore[attr-defined]
        lap.expect(rf"^desktop says: desktop {number}$", timeout=TIMEOUT)  # type: ignore[attr-defined]
    lap.send("after")  # type: ignore[attr-defined]
    desk.expect(r"^laptop says: after$")  # type: ignore[attr-defined]
    for proc, who in ((desk, "laptop"), (lap, "desktop")):
        said = [line for line in proc.out if line.startswith(f"{who} says: ")]  # type: ignore[attr-defined]
        assert len(said) == len(set(said))  # nothing shown twice

"""Two hosts on one link, made of network namespaces joined by a veth pair: for the tests
that pull a cable or multicast, and for the bench's resume figures. Nothing here reaches
outside the namespaces it makes. Needs root and iproute2."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IP_SECONDS = 15.0


@dataclass
class Host:
    """One namespace: its name and its address on the veth link."""

    netns: str
    address: str


class Unavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`, or the kernel says no)."""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_SECONDS)


@contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Hosts a and b on one /24 of 10.80-119.x, removed (with their veth ends) at the end."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise Unavailable("needs root and iproute2 to make network namespaces")
    tag = f"{os.getpid() % 100000}{random.randrange(100)}"
    subnet = f"10.{random.randrange(80, 120)}.{random.randrange(256)}"
    a, b = Host(f"cca{tag}", f"{subnet}.1"), Host(f"ccb{tag}", f"{subnet}.2")
    try:
        for host in (a, b):
            ip("netns", "add", host.netns)
        ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for host, device in ((a, f"va{tag}"), (b, f"vb{tag}")):
            ip("link", "set", device, "netns", host.netns)
            ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", device)
            ip("-n", host.netns, "link", "set", device, "up")
            ip("-n", host.netns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        remove(a, b)
        raise Unavailable(f"network namespaces are not available here: {exc}") from exc
    try:
        yield a, b
    finally:
        remove(a, b)


def remove(*hosts: Host) -> None:
    for host in hosts:  # their veth ends go with them
        subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)


def cable(host: Host) -> str:
    """The host's end of the veth pair: `ip -n NS link set DEV down` pulls the cable."""
    shown = subprocess.run(
        ["ip", "-n", host.netns, "-o", "link", "show", "type", "veth"],
        capture_output=True,
        text=True,
        check=True,
        timeout=IP_SECONDS,
    ).stdout
    return shown.split(":")[1].strip().split("@")[0]

"""Multicast DNS service discovery on the LAN (RFC 6762/6763), through python-zeroconf:
the listener's announcement, and browsing for listeners. lan.py holds the rules.

zeroconf is imported only here, and only when discovery runs: start-up does not pay
for it (about 70 ms), and a chat that never uses the LAN never loads it. Every wait
here has a deadline; what the network sends is parsed by lan.parse_announcement.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import secrets
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import NetworkError, ProtocolError
from .lan import SERVICE_TYPE, Announcement, parse_announcement, txt_record

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

# How long one record may take to resolve once its name is seen.
RESOLVE_SECONDS = 1.0
# Names seen while browsing that are resolved at most (a flood on the LAN costs no more).
MAX_RESOLVED = 64


def lan_addresses(listen_ip: str) -> list[str]:
    """The addresses an announcement for a listener on `listen_ip` names: that address, or
    for a wildcard every address of the machine but loopback and link-local; none for a
    loopback listener, which nobody else could reach."""
    try:
        listening = ipaddress.ip_address(listen_ip)
    except ValueError:
        return []
    if listening.is_loopback:
        return []
    if not listening.is_unspecified:
        return [str(listening)]
    import ifaddr  # zeroconf's own dependency

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):  # IPv6 comes as a tuple; IPv4 is announced
                continue
            address = ipaddress.ip_address(ip.ip)
            if not (address.is_loopback or address.is_link_local):
                found.append(str(address))
    return found


def start_zeroconf(interfaces: list[str] | None) -> Zeroconf:
    """A Zeroconf on these interface addresses (all when None); NetworkError if it fails."""
    try:
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf

        return Zeroconf(interfaces=interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only)
    except (OSError, ValueError, RuntimeError) as exc:
        raise NetworkError(f"cannot use multicast on this network: {exc}") from exc


class Announcer:
    """A listener's announcement, while it listens; also watches the slots others hold."""

    def __init__(self, addresses: list[str], port: int, tag: bytes) -> None:
        from zeroconf import ServiceBrowser

        self._zc = start_zeroconf(addresses)
        self._addresses, self._port, self._tag = addresses, port, tag
        self._info: ServiceInfo | None = None
        self._lock = threading.Lock()
        self._others: set[str] = set()  # the names of the other listeners seen
        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[self._changed])

    def _changed(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        """On zeroconf's thread: note which other listeners there are (never blocks)."""
        from zeroconf import ServiceStateChange

        with self._lock:
            if state_change is ServiceStateChange.Removed:
                self._others.discard(name)
            elif len(self._others) < MAX_RESOLVED:
                self._others.add(name)

    def taken(self, wait: float = 0.0) -> set[int]:
        """The invite slots other listeners announce (after `wait` seconds of listening,
        and up to RESOLVE_SECONDS more to read their records)."""
        from zeroconf import ServiceInfo

        if wait > 0:
            time.sleep(wait)  # mDNS answers the browser's first queries within a second
        with self._lock:
            names = [name for name in self._others if self._info is None or name != self._info.name]
        slots = set()
        deadline = time.monotonic() + RESOLVE_SECONDS
        for name in names:
            info = ServiceInfo(SERVICE_TYPE, name)
            left = deadline - time.monotonic()
            if left <= 0 or not info.request(self._zc, left * 1000) or info.port is None:
                continue
            try:
                found = parse_announcement(info.properties, info.port, info.parsed_addresses())
            except ProtocolError:
                continue
            if found.slot is not None:
                slots.add(found.slot)
        return slots

    def announce(self, slot: int | None) -> None:
        """Announce (or update) with the open invite's slot, or with none."""
        from zeroconf import ServiceInfo

        token = secrets.token_hex(6)  # a new instance and host name each time: unlinkable
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{token}.{SERVICE_TYPE}",
            port=self._port,
            properties=txt_record(slot, self._tag),
            server=f"cc-{token}.local.",
            parsed_addresses=self._addresses,
        )
        try:
            if self._info is not None:
                self._zc.unregister_service(self._info)
            self._zc.register_service(info, allow_name_change=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise NetworkError(f"cannot announce on the LAN: {exc}") from exc
        self._info = info

    def close(self) -> None:
        """Withdraw the announcement (a goodbye on the LAN) and stop."""
        try:
            self._browser.cancel()
            if self._info is not None:
                self._zc.unregister_service(self._info)
        except (OSError, RuntimeError):
            pass
        finally:
            self._zc.close()


def browse(
    seconds: float,
    done: Callable[[list[Announcement]], bool] = lambda found: False,
    problems: list[str] | None = None,
) -> list[Announcement]:
    """Listeners announced on the LAN, looked for during `seconds` (less once `done`
    holds). A record that breaks the rules is left out, with a line in `problems`."""
    from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange

    zc = start_zeroconf(None)
    names: queue.Queue[str] = queue.Queue(MAX_RESOLVED)

    def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is not ServiceStateChange.Removed:
            with contextlib.suppress(queue.Full):  # a flood of names: the rest wait
                names.put_nowait(name)

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[changed])
    found: list[Announcement] = []
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0 and not done(found):
            try:
                name = names.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            if name in seen:
                continue
            seen.add(name)
            info = ServiceInfo(SERVICE_TYPE, name)
            if not info.request(zc, min(RESOLVE_SECONDS, left) * 1000) or info.port is None:
                continue
            try:
                found.append(
                    parse_announcement(info.properties, info.port, info.parsed_addresses())
                )
            except ProtocolError as exc:
                if problems is not None:
                    problems.append(f"ignored a listener's announcement: {exc}")
    finally:
        browser.cancel()
        zc.close()
    return found

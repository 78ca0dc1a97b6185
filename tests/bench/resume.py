"""Resuming after a pulled cable (issue 18): two real `python chatclient.py` processes in
two network namespaces joined by a veth pair, both with `--keepalive 2`. Each round takes
the connector's end of the cable down, waits until both sides have noticed (within 5 s),
has each side type 3 lines, keeps the cable down until the cut has lasted its length (10 s
in the first round to 20 s in the last, evenly: the link comes back at every point of the
connector's tries, as it would in life), brings the cable back up, and times from that
moment to the connector's "Back with desktop" line. Every line typed in every round is then
looked for on the other side: missing ones count as lost, extra copies as duplicated.
Skipped (None) where namespaces cannot be made (not root, or no `ip`)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from netns import Host, Unavailable, cable, ip, two_hosts

from bench.common import KEY, SCRIPT, BenchError, Counts, Process

KEEPALIVE = "2"
PORT = 50233
LINES = 3  # typed on each side during each cut
ROUND_SECONDS = 30.0  # the loss is noticed within 5 s, the resume within 2 s of the link
SHORTEST_CUT, LONGEST_CUT = 10.0, 20.0  # seconds the cable is down, first and last round


def person(folder: Path, host: Host, name: str) -> Path:
    home = folder / name
    home.mkdir(parents=True)
    config = home / "config.ini"
    config.write_text(
        f"[parameters]\nip = {host.address}\nport = {PORT}\nfernet_key = {KEY}\n"
        f"username = {name}\n",
        encoding="utf-8",
    )
    config.chmod(0o600)
    return home


def run_in(host: Host, home: Path, *args: str) -> Process:
    command = ["ip", "netns", "exec", host.netns, sys.executable, str(SCRIPT), *args]
    return Process(command, home)


def typed(side: str, number: int, line: int) -> str:
    return f"{side} round {number} line {line}"


def resume_rounds(folder: Path, a: Host, b: Host, rounds: int) -> tuple[list[float], int, int]:
    """Milliseconds from link-up to the resumed session, per round; lines lost; lines shown
    more than once."""
    home_a, home_b = person(folder, a, "desktop"), person(folder, b, "laptop")
    desk = run_in(a, home_a, "--listen", "--keepalive", KEEPALIVE, "--no-announce")
    lap = None
    try:
        desk.wait_for("Listening on")
        lap = run_in(
            b, home_b, "--connect", f"{a.address}:{PORT}", "--keepalive", KEEPALIVE,
            "--reconnect-for", "10m",
        )  # fmt: skip
        lap.wait_for("WELCOME Welcome to the chat!")
        desk.wait_for("laptop joined the chat.")
        device = cable(b)
        times = []
        for number in range(1, rounds + 1):
            spread = (number - 1) / (rounds - 1) if rounds > 1 else 0.0
            length = SHORTEST_CUT + spread * (LONGEST_CUT - SHORTEST_CUT)
            cut = time.perf_counter()
            ip("-n", b.netns, "link", "set", device, "down")
            lap.wait_count("Connection to desktop lost: reconnecting", number, ROUND_SECONDS)
            desk.wait_count("laptop lost the connection; keeping", number, ROUND_SECONDS)
            for line in range(1, LINES + 1):
                lap.send(typed("laptop", number, line))
                desk.send(typed("desktop", number, line))
            lap.wait_count("Waiting: it goes when desktop is back.", number * LINES)
            desk.wait_count("Waiting: it goes when laptop is back.", number * LINES)
            time.sleep(max(0.0, cut + length - time.perf_counter()))  # the cut's length
            up = time.perf_counter()
            ip("-n", b.netns, "link", "set", device, "up")
            lap.wait_count("Back with desktop after", number, ROUND_SECONDS)
            times.append((time.perf_counter() - up) * 1000)
            desk.wait_for(f"laptop says: {typed('laptop', number, LINES)}\n", ROUND_SECONDS)
            lap.wait_for(f"desktop says: {typed('desktop', number, LINES)}\n", ROUND_SECONDS)
        lap.send("last")
        desk.wait_for("laptop says: last\n")
        desk.send("last")
        lap.wait_for("desktop says: last\n")
        lost = duplicated = 0
        for side, shown_on in (("laptop", desk), ("desktop", lap)):
            shown = shown_on.output.splitlines()
            for number in range(1, rounds + 1):
                for line in range(1, LINES + 1):
                    copies = shown.count(f"{side} says: {typed(side, number, line)}")
                    lost += copies == 0
                    duplicated += max(0, copies - 1)
        return times, lost, duplicated
    finally:
        if lap is not None:
            lap.kill()
        desk.kill()


def measure_resume(counts: Counts, folder: Path) -> dict[str, float | str | None]:
    """resume_ms_p50 (median over the rounds), resume_lost, resume_duplicated; None where
    namespaces cannot be made, with the reason in resume_skipped."""
    try:
        with two_hosts() as (a, b):
            times, lost, duplicated = resume_rounds(folder / "resume", a, b, counts.resumes)
    except Unavailable as exc:
        return {
            "resume_ms_p50": None,
            "resume_lost": None,
            "resume_duplicated": None,
            "resume_skipped": str(exc),
        }
    if not times:
        raise BenchError("no resume was timed")
    return {
        "resume_ms_p50": statistics.median(times),
        "resume_ms_max": max(times),
        "resume_lost": lost,
        "resume_duplicated": duplicated,
        "resume_keepalive_ms": float(KEEPALIVE) * 1000,
        "resume_skipped": None,
    }

#!/usr/bin/env python3
"""Benchmarks: the chat against the limits of this machine, side by side in one run.

    python tests/bench_chat.py [--quick] [--json PATH]

Every figure drives the real code path of chatclient.py (this repository's copy, not an
installed one) over real TCP on 127.0.0.1 port 0, each peer in its own process
(multiprocessing 'spawn'): the chat's peers each run the program's own Network thread, with a
PeerProtocol per connection, and a small NetworkUser in the place of the program's
Conversation that echoes or counts messages on the network thread and hands everything else
to the peer's main thread, which sends with Network.send as the program's input loop does.
Start-up and memory come from real `python chatclient.py` processes. Each figure has a
baseline measured in the same run:

- round trip of a 100-byte Chat (main thread to main thread, the echo sent back from the
  echoing peer's network thread), p50 and p99, against the same ping-pong over plain
  blocking sockets with the same 4-byte length framing and no crypto ("raw"), and against
  the seed's approach: the same, with each body a Fernet token under the one shared key,
  and no session layer (no handshake, no sequence numbers) ("seed");
- a one-way burst of 100-byte Chat messages, posted with Network.send as fast as the main
  thread can, messages/s at the receiver from the first to the last, and how many did not
  arrive in order; against raw and seed bursts (one sendall per message), and against
  Fernet encrypt+decrypt alone in one process;
- connect to WELCOME, median: from connect_socket to the Established event reaching the
  connector's main thread through a real Network (one per connection, its thread started
  inside the timing, as main() does), with one long-lived listening Network admitting the
  connectors one after another; against a bare TCP connect;
- a room: a host (the real Network) with 20 members, one of whom sends a burst of signed
  100-byte words that the host relays to the 19 others, messages/s from the first arrival to
  the last and deliveries lost; against the host's one-core limit (decrypt each message once,
  encrypt it for each other member, in one process); and the same with one member stopped
  (SIGSTOP) as the burst starts;
- a file: FILE_MIB MiB of random bytes sent between two real `python chatclient.py`
  processes (from typing /send to the receiver's "Received ... SHA-256 verified" line: the
  sender's hashing, the offer, /accept, the transfer, the receiver's hash check and rename),
  MB/s and bytes wrong; against two processes moving the same file as AES-256-GCM chunks
  over TCP with no protocol (the crypto-and-socket limit), and against `ncat --ssl
  --send-only` into `ncat --ssl -l --recv-only` (skipped where ncat is absent), with the
  bytes ncat lost; and the chat round trip (a line typed on one side, shown on the other,
  answered, shown back) while a second such transfer runs, p99;
- start-up to the listen/connect prompt, median, of `python chatclient.py` in a copy of the
  checkout whose bytecode compileall wrote first (the second run of a checkout, and what pip
  install gives), and in a copy with none (a first run), against
  `python -c "import cryptography.fernet"`;
- resident memory of an idle connected `python chatclient.py --connect`, against a bare
  `python -c` waiting on stdin;
- resuming after a pulled cable (where network namespaces can be made: root and iproute2):
  two `python chatclient.py --keepalive 2` in two namespaces joined by a veth pair; each of
  10 rounds takes the cable down for 10 to 20 s, types 3 lines on each side once both have
  noticed, and times from bringing the cable up to the connector's "Back with" line, median;
  every
  line typed is then counted on the other side (lost, duplicated); against the target of one
  keepalive interval plus one handshake (the connect-to-WELCOME median above).

Targets are printed as met or not met; nothing here asserts a timing. The exit status is
non-zero only when a measurement could not be made.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

# This repository's chatclient, never a copy installed in site-packages; spawned peers
# inherit this path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chat import measure_bursts, measure_fernet, measure_handshakes, measure_round_trips
from bench.common import FULL, QUICK, BenchError, Counts
from bench.files import file_folder, measure_files
from bench.report import render
from bench.resume import measure_resume
from bench.room import measure_room
from bench.startup import measure_memory, measure_startup


def measure(counts: Counts) -> dict[str, Any]:
    """Every figure, in one run."""
    figures: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("round trips", lambda: measure_round_trips(counts)),
        ("bursts", lambda: measure_bursts(counts)),
        ("Fernet alone", lambda: measure_fernet(counts)),
        ("handshakes", lambda: measure_handshakes(counts)),
        ("a room's fan-out", lambda: measure_room(counts)),
    ]
    with tempfile.TemporaryDirectory(prefix="bench_chat_") as tmp:
        folder = Path(tmp)
        steps.append(("start-up", lambda: measure_startup(counts, folder)))
        steps.append(("memory", lambda: measure_memory(folder)))
        steps.append(("a file", lambda: measure_files(counts, file_folder(folder))))
        steps.append(("resuming after a pulled cable", lambda: measure_resume(counts, folder)))
        for name, step in steps:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            figures.update(step())
    figures.update(
        round_trips=counts.round_trips,
        burst_messages=counts.burst,
        handshakes=counts.handshakes,
        startups=counts.startups,
    )
    return figures


def on_terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every child is still cleaned up."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, on_terminate)
    counts = QUICK if args.quick else FULL
    try:
        figures = measure(counts)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(figures, counts))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

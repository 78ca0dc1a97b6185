"""The table: each figure beside its same-run baseline, the ratio and the target."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from bench.common import Counts, peer_cpus

# --- Report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    figure: str
    program: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def ratio(a: float, b: float) -> str:
    """a/b as '1.23x', or '-' when b is zero."""
    return f"{a / b:.2f}x" if b else "-"


STARTUP_LIMIT = 2.0  # start-up to the prompt (bytecode warm), times the bare import of Fernet
SEED_RTT_LIMIT = 1.2  # round trip p50, times the seed's


def checks(f: dict[str, Any]) -> dict[str, bool]:
    """Each condition a target is made of, met or not."""
    return {
        "rtt_raw": f["rtt_p50_us"] <= 2.5 * f["raw_rtt_p50_us"],
        "rtt_seed": f["rtt_p50_us"] <= SEED_RTT_LIMIT * f["seed_rtt_p50_us"],
        "burst_rate": f["burst_msgs_per_s"] >= 30_000,
        "burst_fernet": 2 * f["burst_msgs_per_s"] >= f["fernet_msgs_per_s"],
        "burst_seed": f["burst_msgs_per_s"] >= f["seed_burst_msgs_per_s"],
        "burst_lost": f["burst_lost"] == 0,
        "handshake": f["handshake_ms"] <= 3.0,
        "startup": f["startup_warm_ms"] <= STARTUP_LIMIT * f["startup_import_baseline_ms"],
        "room": 2 * f["room_delivered_msgs_per_s"] >= f["room_baseline_msgs_per_s"]
        and f["room_lost"] == 0,
        "room_stalled": f["room_stalled_ratio"] >= 0.8,
        "file": 2 * f["file_mb_per_s"] >= f["file_crypto_limit_mb_per_s"]
        and f["file_bytes_wrong"] == 0,
        "file_ncat": f["file_ncat_ssl_mb_per_s"] is None
        or f["file_mb_per_s"] >= f["file_ncat_ssl_mb_per_s"],
        "file_rtt": f["chat_rtt_p99_during_transfer_ms"] <= 50,
        "resume": f.get("resume_ms_p50") is None
        or f["resume_ms_p50"] <= f["resume_keepalive_ms"] + f["handshake_ms"],
        "resume_exact": f.get("resume_ms_p50") is None
        or (f["resume_lost"] == 0 and f["resume_duplicated"] == 0),
    }


def resume_target(f: dict[str, Any]) -> float:
    """One keepalive interval plus one handshake (ms)."""
    return float(f["resume_keepalive_ms"] + f["handshake_ms"])


def targets(f: dict[str, Any]) -> dict[str, bool]:
    """The targets, each met or not (the ncat one only where ncat ran)."""
    c = checks(f)
    ncat = (
        {} if f["file_ncat_ssl_mb_per_s"] is None else {"file >= 1.0x ncat --ssl": c["file_ncat"]}
    )
    return {
        "round trip p50 <= 2.5x raw": c["rtt_raw"],
        f"round trip p50 <= {SEED_RTT_LIMIT}x seed": c["rtt_seed"],
        "burst >= 30,000/s, 0 lost, >= 0.5x Fernet": c["burst_rate"]
        and c["burst_lost"]
        and c["burst_fernet"],
        "burst >= 1.0x seed, 0 lost": c["burst_seed"] and c["burst_lost"],
        "handshake median <= 3 ms": c["handshake"],
        f"start-up <= {STARTUP_LIMIT}x import": c["startup"],
        "room delivery >= 0.5x the host's one-core limit, 0 lost": c["room"],
        "room with one member stopped >= 0.8x": c["room_stalled"],
        "file >= 0.5x the AES-GCM limit, 0 bytes wrong": c["file"],
        **ncat,
        "chat round trip p99 during a transfer <= 50 ms": c["file_rtt"],
        **(
            {}
            if f.get("resume_ms_p50") is None
            else {
                "resume p50 <= one keepalive interval + one handshake": c["resume"],
                "resume: 0 lost, 0 duplicated": c["resume_exact"],
            }
        ),
    }


def resume_rows(f: dict[str, Any]) -> list[Row]:
    """The resume figures, or one row saying why they were skipped."""
    if f.get("resume_ms_p50") is None:
        reason = f.get("resume_skipped") or "not measured"
        return [Row("resume after a pulled cable", "-", f"skipped: {reason}", "-", "", None)]
    c = checks(f)
    return [
        Row(
            "resume_ms_p50: link up to resumed (ms)",
            f"{f['resume_ms_p50']:,.0f}",
            f"{f['resume_keepalive_ms']:,.0f} keepalive + {f['handshake_ms']:.1f} handshake",
            ratio(f["resume_ms_p50"], resume_target(f)),
            "<= 1.0x",
            c["resume"],
        ),
        Row("  slowest of the rounds (ms)", f"{f['resume_ms_max']:,.0f}", "", "-", "", None),
        Row("resume_lost (lines)", f"{f['resume_lost']:.0f}", "", "-", "0", f["resume_lost"] == 0),
        Row(
            "resume_duplicated (lines)",
            f"{f['resume_duplicated']:.0f}",
            "",
            "-",
            "0",
            f["resume_duplicated"] == 0,
        ),
    ]


def ncat_row(figure: str, rate: float, f: dict[str, Any], target: str, met: bool | None) -> Row:
    """A file rate against ncat --ssl's, or marked skipped where ncat did not run."""
    ncat = f["file_ncat_ssl_mb_per_s"]
    if ncat is None:
        return Row(figure, f"{rate:,.0f}", "no ncat: skipped", "-", target, None)
    return Row(figure, f"{rate:,.0f}", f"{ncat:,.0f} ncat", ratio(rate, ncat), target, met)


def rows(f: dict[str, Any]) -> list[Row]:
    """The table, with each target checked."""
    c = checks(f)
    return [
        Row(
            "round trip p50 (us)",
            f"{f['rtt_p50_us']:.1f}",
            f"{f['raw_rtt_p50_us']:.1f} raw",
            ratio(f["rtt_p50_us"], f["raw_rtt_p50_us"]),
            "<= 2.5x raw",
            c["rtt_raw"],
        ),
        Row(
            "round trip p50 vs seed (us)",
            f"{f['rtt_p50_us']:.1f}",
            f"{f['seed_rtt_p50_us']:.1f} seed",
            ratio(f["rtt_p50_us"], f["seed_rtt_p50_us"]),
            f"<= {SEED_RTT_LIMIT}x seed",
            c["rtt_seed"],
        ),
        Row(
            "round trip p99 (us)",
            f"{f['rtt_p99_us']:.1f}",
            f"{f['raw_rtt_p99_us']:.1f} raw",
            ratio(f["rtt_p99_us"], f["raw_rtt_p99_us"]),
            "",
            None,
        ),
        Row(
            "round trip p99 vs seed (us)",
            f"{f['rtt_p99_us']:.1f}",
            f"{f['seed_rtt_p99_us']:.1f} seed",
            ratio(f["rtt_p99_us"], f["seed_rtt_p99_us"]),
            "",
            None,
        ),
        Row(
            "burst (msg/s)",
            f"{f['burst_msgs_per_s']:,.0f}",
            f"{f['raw_burst_msgs_per_s']:,.0f} raw",
            ratio(f["burst_msgs_per_s"], f["raw_burst_msgs_per_s"]),
            ">= 30,000/s",
            c["burst_rate"],
        ),
        Row(
            "burst vs seed (msg/s)",
            f"{f['burst_msgs_per_s']:,.0f}",
            f"{f['seed_burst_msgs_per_s']:,.0f} seed",
            ratio(f["burst_msgs_per_s"], f["seed_burst_msgs_per_s"]),
            ">= 1.0x seed",
            c["burst_seed"],
        ),
        Row(
            "burst vs Fernet (msg/s)",
            f"{f['burst_msgs_per_s']:,.0f}",
            f"{f['fernet_msgs_per_s']:,.0f} Fernet",
            ratio(f["burst_msgs_per_s"], f["fernet_msgs_per_s"]),
            ">= 0.5x Fernet",
            c["burst_fernet"],
        ),
        Row(
            "burst lost (messages)",
            f"{f['burst_lost']:.0f}",
            f"{f['raw_burst_lost']:.0f} raw, {f['seed_burst_lost']:.0f} seed",
            "-",
            "0",
            c["burst_lost"],
        ),
        Row(
            "connect to WELCOME (ms)",
            f"{f['handshake_ms']:.2f}",
            f"{f['tcp_connect_ms']:.3f} TCP",
            ratio(f["handshake_ms"], f["tcp_connect_ms"]),
            "<= 3 ms",
            c["handshake"],
        ),
        Row(
            "start-up to prompt, bytecode warm (ms)",
            f"{f['startup_warm_ms']:.1f}",
            f"{f['startup_import_baseline_ms']:.1f} import",
            ratio(f["startup_warm_ms"], f["startup_import_baseline_ms"]),
            f"<= {STARTUP_LIMIT}x import",
            c["startup"],
        ),
        Row(
            "start-up to prompt, first run (ms)",
            f"{f['startup_cold_ms']:.1f}",
            f"{f['startup_import_baseline_ms']:.1f} import",
            ratio(f["startup_cold_ms"], f["startup_import_baseline_ms"]),
            "-",
            None,
        ),
        Row(
            f"room of {f['room_members']:.0f}: delivered (msg/s)",
            f"{f['room_delivered_msgs_per_s']:,.0f}",
            f"{f['room_baseline_msgs_per_s']:,.0f} limit",
            ratio(f["room_delivered_msgs_per_s"], f["room_baseline_msgs_per_s"]),
            ">= 0.5x limit, 0 lost",
            c["room"],
        ),
        Row(
            "room, one member stopped",
            f"{f['room_stalled_msgs_per_s']:,.0f}",
            f"{f['room_delivered_msgs_per_s']:,.0f} none",
            ratio(f["room_stalled_msgs_per_s"], f["room_delivered_msgs_per_s"]),
            ">= 0.8x",
            c["room_stalled"],
        ),
        Row(
            "room lost (deliveries)",
            f"{f['room_lost']:.0f}",
            "",
            "-",
            "0",
            f["room_lost"] == 0,
        ),
        Row(
            f"file of {f['file_mib']} MiB (MB/s)",
            f"{f['file_mb_per_s']:,.0f}",
            f"{f['file_crypto_limit_mb_per_s']:,.0f} AES-GCM",
            ratio(f["file_mb_per_s"], f["file_crypto_limit_mb_per_s"]),
            ">= 0.5x limit",
            c["file"],
        ),
        Row(
            "file vs AES-GCM + SHA-256 (MB/s)",
            f"{f['file_mb_per_s']:,.0f}",
            f"{f['file_crypto_hash_limit_mb_per_s']:,.0f} AES-GCM + SHA-256",
            ratio(f["file_mb_per_s"], f["file_crypto_hash_limit_mb_per_s"]),
            ">= 0.9x (issue 20)",
            f["file_mb_per_s"] >= 0.9 * f["file_crypto_hash_limit_mb_per_s"],
        ),
        Row(
            "file: CPU over both processes (s per GB)",
            f"{f['file_cpu_s_per_gb']:.2f}",
            "4.52 ssh aes128-gcm (issue 20)",
            "-",
            "<= 4.5",
            f["file_cpu_s_per_gb"] <= 4.5 if f["file_cpu_s_per_gb"] else None,
        ),
        ncat_row("  of which from /accept on (MB/s)", f["file_after_accept_mb_per_s"], f, "", None),
        ncat_row(
            "file vs ncat --ssl (MB/s)", f["file_mb_per_s"], f, ">= 1.0x ncat", c["file_ncat"]
        ),
        Row(
            "file bytes wrong",
            f"{f['file_bytes_wrong']:.0f}",
            ""
            if f["file_ncat_ssl_bytes_lost"] is None
            else f"ncat lost {f['file_ncat_ssl_bytes_lost']:,}",
            "-",
            "0",
            f["file_bytes_wrong"] == 0,
        ),
        Row(
            "chat round trip p99, file moving (ms)",
            f"{f['chat_rtt_p99_during_transfer_ms']:.1f}",
            f"{f['chat_rtts_during_transfer']} samples",
            "-",
            "<= 50 ms",
            c["file_rtt"],
        ),
        Row(
            "idle peer RSS (MiB)",
            f"{f['idle_rss_mib']:.1f}",
            f"{f['bare_rss_mib']:.1f} bare",
            ratio(f["idle_rss_mib"], f["bare_rss_mib"]),
            "",
            None,
        ),
        *resume_rows(f),
    ]


def render(figures: dict[str, Any], counts: Counts) -> str:
    """The table as aligned text, the sample counts above it and the targets below."""
    header = Row("figure", "the program", "baseline", "ratio", "target", None)
    cells = [
        [
            r.figure,
            r.program,
            r.baseline,
            r.ratio,
            r.target,
            "met?" if r is header else {True: "met", False: "NOT met", None: ""}[r.met],
        ]
        for r in [header, *rows(figures)]
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(6)]
    cpus = peer_cpus()
    pinned = f"CPUs {cpus[0]} and {cpus[1]}" if cpus[0] is not None else "no CPU"
    lines = [
        f"{counts.round_trips} round trips, {counts.burst:,} burst messages, "
        f"{counts.handshakes} handshakes, {counts.startups} start-ups; "
        f"{os.cpu_count()} CPUs, peers pinned to {pinned}; Python {sys.version.split()[0]}"
    ]
    for line in cells:
        left = [line[0].ljust(widths[0])]
        middle = [cell.rjust(width) for cell, width in zip(line[1:4], widths[1:4], strict=True)]
        right = [cell.ljust(width) for cell, width in zip(line[4:], widths[4:], strict=True)]
        lines.append("  ".join(left + middle + right).rstrip())
    met = targets(figures)
    lines.append(f"targets met: {sum(met.values())} of {len(met)}")
    lines += [f"  {'met' if ok else 'NOT met'}: {name}" for name, ok in met.items()]
    return "\n".join(lines)

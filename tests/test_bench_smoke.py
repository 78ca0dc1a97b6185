"""The benchmark runs end to end with tiny counts, so it cannot rot; no timing is asserted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_chat.py"
TIMEOUT = 120.0
KEYS = (
    "rtt_p50_us",
    "rtt_p99_us",
    "raw_rtt_p50_us",
    "seed_rtt_p50_us",
    "burst_msgs_per_s",
    "burst_lost",
    "raw_burst_msgs_per_s",
    "seed_burst_msgs_per_s",
    "fernet_msgs_per_s",
    "handshake_ms",
    "tcp_connect_ms",
    "startup_warm_ms",
    "startup_cold_ms",
    "startup_import_baseline_ms",
    "idle_rss_mib",
    "bare_rss_mib",
    "file_mb_per_s",
    "file_crypto_limit_mb_per_s",
    "file_crypto_hash_limit_mb_per_s",
    "file_cpu_s_per_gb",
    "file_bytes_wrong",
    "chat_rtt_p99_during_transfer_ms",
)
# Measured only where ncat is installed (CI has none): None there, a number here.
NCAT_KEYS = ("file_ncat_ssl_mb_per_s", "file_ncat_ssl_bytes_lost")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the benchmark; on a timeout stop it with SIGTERM (it then cleans up its peers)."""
    with subprocess.Popen(
        [sys.executable, str(BENCH), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise AssertionError(
                f"the benchmark did not finish within {TIMEOUT:g} s\n{out}\n{err}"
            ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    result = run_bench("--quick", "--json", str(path))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    figures = json.loads(path.read_text(encoding="utf-8"))
    for key in KEYS:
        assert key in figures, f"{key} missing from {figures}"
        value = figures[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    for key in NCAT_KEYS:
        value = figures[key]
        if shutil.which("ncat") is None:
            assert value is None, (key, value)
        else:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    assert figures["burst_lost"] == 0
    # Measured only where network namespaces can be made (root and iproute2).
    if figures["resume_skipped"] is None:
        assert figures["resume_ms_p50"] > 0
        assert figures["resume_lost"] == 0 and figures["resume_duplicated"] == 0
        assert "resume_ms_p50" in result.stdout
    else:
        assert figures["resume_ms_p50"] is None
        assert "resume after a pulled cable" in result.stdout
    assert "start-up to prompt" in result.stdout

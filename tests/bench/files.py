"""A file between two real programs, against AES-GCM over TCP and ncat --ssl."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bench.common import (
    HOST,
    SCRIPT,
    STEP_SECONDS,
    BenchError,
    Counts,
    Process,
    WorkerQueue,
    child,
    free_tcp_port,
    peer_cpus,
    peers,
    percentile,
    write_config,
)
from bench.users import accept_plain, connect_plain, open_listener
from chatclient.messages import FrameDecoder, encode_frame

# --- Files: the crypto-and-socket limit ------------------------------------------------

FILE_KEY = bytes(range(32))
FILE_CHUNK = 64 * 1024


def gcm_receiver(out: WorkerQueue, path: str, digest: bool = False) -> None:
    """Receive AES-GCM chunks into `path` (with `digest`: and a SHA-256 of them, as the
    program checks every file); report when the last byte is written."""
    server = open_listener(out)
    sock = accept_plain(server)
    aead, counter, decoder = AESGCM(FILE_KEY), 0, FrameDecoder()
    whole = hashlib.sha256()
    with open(path, "wb") as file:
        while data := sock.recv(262144):
            decoder.feed(data)
            for body in decoder.frames():
                plain = aead.decrypt(counter.to_bytes(12, "big"), body, None)
                file.write(plain)
                if digest:
                    whole.update(plain)
                counter += 1
    whole.digest()
    sock.close()
    out.put(("result", time.perf_counter()))


def gcm_sender(out: WorkerQueue, port: int, path: str) -> None:
    """Send `path` as AES-GCM chunks, one frame each; report when it started."""
    sock = connect_plain(port)
    aead, counter = AESGCM(FILE_KEY), 0
    start = time.perf_counter()
    with open(path, "rb") as file:
        while chunk := file.read(FILE_CHUNK):
            sealed = aead.encrypt(counter.to_bytes(12, "big"), chunk, None)
            sock.sendall(encode_frame(sealed))
            counter += 1
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    out.put(("result", start))


def make_file(path: Path, mib: int) -> None:
    """`mib` MiB of random bytes."""
    with path.open("wb") as file:
        for _ in range(mib):
            file.write(os.urandom(1 << 20))


def bytes_wrong(expected: Path, got: Path) -> int:
    """Bytes missing, extra or different in `got`."""
    if not got.exists():
        return expected.stat().st_size
    wrong = abs(expected.stat().st_size - got.stat().st_size)
    with expected.open("rb") as a, got.open("rb") as b:
        while (x := a.read(1 << 20)) and (y := b.read(1 << 20)) is not None:
            if x != y:
                wrong += sum(1 for p, q in zip(x, y, strict=False) if p != q)
            if not y:
                break
    return wrong


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux: /proc); 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def file_run(
    folder: Path, source: Path, pings: bool, cpu: list[float] | None = None
) -> tuple[float, float, int, list[float]]:
    """One transfer of `source` between two real chatclient processes: seconds from /send
    to the receiver's "Received" line, seconds from /accept to it, bytes wrong, and (with
    `pings`) chat round trips timed while it moved. `cpu` gets the CPU seconds both
    processes spent from /send to the verified file."""
    port = free_tcp_port()
    for name in ("desktop", "laptop"):
        (folder / name / "dl").mkdir(parents=True)
        write_config(folder / name, port=port, username=name)
    listen = [sys.executable, str(SCRIPT), "--listen", "--downloads", "dl"]
    connect = [sys.executable, str(SCRIPT), "--connect", f"{HOST}:{port}"]
    rtts: list[float] = []
    with child(listen, folder / "desktop") as desk:
        desk.wait_for("Listening on")
        lap = Process(connect, folder / "laptop")
        lap.wait_for("WELCOME Welcome to the chat!")
        desk.wait_for("laptop joined the chat.")
        pids = (desk.popen.pid, lap.popen.pid)
        cpu_before = sum(map(cpu_seconds, pids))
        start = time.perf_counter()
        lap.send(f"/send {source}")
        desk.wait_for("/accept 1 ")
        accepted = time.perf_counter()
        desk.send("/accept 1")
        number = 0
        while pings and "Received " not in desk.output:
            number += 1
            sent = time.perf_counter()
            lap.send(f"ping {number}")
            desk.wait_for(f"laptop says: ping {number}\n")
            desk.send(f"pong {number}")
            lap.wait_for(f"desktop says: pong {number}\n")
            rtts.append(time.perf_counter() - sent)
        desk.wait_for("SHA-256 verified")
        seconds, moving = time.perf_counter() - start, time.perf_counter() - accepted
        if cpu is not None:
            cpu.append(sum(map(cpu_seconds, pids)) - cpu_before)
        lap.send("exit")
        lap.send("")
        lap.finish()
        lap.kill()
        desk.finish()
    return seconds, moving, bytes_wrong(source, folder / "desktop" / "dl" / source.name), rtts


def ncat_run(folder: Path, source: Path) -> tuple[float, int] | None:
    """`ncat --ssl` moving `source` over 127.0.0.1: seconds and bytes lost; None without ncat."""
    ncat = shutil.which("ncat")
    if ncat is None:
        return None
    port, received = free_tcp_port(), folder / "ncat-received"
    with received.open("wb") as sink:
        server = subprocess.Popen(
            [ncat, "-v", "--ssl", "-l", "--recv-only", HOST, str(port)],
            stdout=sink,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert server.stderr is not None
            seen = ""
            deadline = time.monotonic() + STEP_SECONDS
            while "Listening on" not in seen:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise BenchError(f"ncat did not start listening: {seen}")
                seen += server.stderr.readline().decode("utf-8", "replace")
            start = time.perf_counter()
            with source.open("rb") as data:
                subprocess.run(
                    [ncat, "--ssl", "--send-only", HOST, str(port)],
                    stdin=data,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=STEP_SECONDS,
                    check=False,
                )
            server.wait(STEP_SECONDS)
            seconds = time.perf_counter() - start
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    return seconds, bytes_wrong(source, received)


def gcm_run(folder: Path, source: Path, digest: bool = False) -> float:
    """Seconds for two processes to move `source` as AES-GCM chunks over TCP (with
    `digest`: the receiver also hashes what it writes)."""
    with peers() as pool:
        cpus = peer_cpus()
        received = str(folder / "gcm-received")
        receiver = pool.start(gcm_receiver, received, digest, cpu=cpus[0])
        port = receiver.receive("port")
        sender = pool.start(gcm_sender, port, str(source), cpu=cpus[1])
        started, finished = sender.receive("result"), receiver.receive("result")
    return float(finished - started)


def file_folder(fallback: Path) -> Path:
    """Where the file step writes: /dev/shm (memory) when it has room, so that every row,
    baselines too, measures the program and not how busy the disk happens to be."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**31:
        return Path(tempfile.mkdtemp(prefix="bench_chat_files_", dir=shm))
    return fallback


def measure_files(counts: Counts, folder: Path) -> dict[str, float | None]:
    """A file between two real programs, against AES-GCM over TCP and ncat --ssl."""
    source = folder / "big.bin"
    make_file(source, counts.file_mib)
    megabytes = source.stat().st_size / 1e6
    times, moving, limits, hashed, ncats, wrong, lost = [], [], [], [], [], 0, []
    cpu: list[float] = []
    for run in range(counts.file_runs):
        seconds, after_accept, wrong_here, _ = file_run(folder / f"run{run}", source, False, cpu)
        times.append(seconds)
        moving.append(after_accept)
        wrong += wrong_here
        limits.append(gcm_run(folder, source))
        hashed.append(gcm_run(folder, source, digest=True))
        if (ncat := ncat_run(folder, source)) is not None:
            ncats.append(ncat[0])
            lost.append(ncat[1])
        for received in folder.glob(f"run{run}/*/dl/*"):
            received.unlink()
    _, _, wrong_too, rtts = file_run(folder / "pings", source, pings=True)
    wrong += wrong_too
    if folder.parent == Path("/dev/shm"):
        shutil.rmtree(folder, ignore_errors=True)
    if not ncats:
        print("note: ncat is not installed: its row is skipped", file=sys.stderr)
    samples = sorted(int(rtt * 1e9) for rtt in rtts)
    return {
        "file_mib": counts.file_mib,
        "file_mb_per_s": megabytes / statistics.median(times),
        "file_crypto_limit_mb_per_s": megabytes / statistics.median(limits),
        # the same with the receiver's SHA-256 of the whole file: what the program must do
        "file_crypto_hash_limit_mb_per_s": megabytes / statistics.median(hashed),
        # both processes, from /send to the verified file (0 where /proc is missing)
        "file_cpu_s_per_gb": statistics.median(cpu) / (megabytes / 1000),
        # from /accept on: without the sender's hashing before its offer
        "file_after_accept_mb_per_s": megabytes / statistics.median(moving),
        "file_ncat_ssl_mb_per_s": megabytes / statistics.median(ncats) if ncats else None,
        "file_ncat_ssl_bytes_lost": max(lost) if ncats else None,  # the worst run
        "file_ncat_ssl_bytes_lost_per_run": lost,
        "file_runs": counts.file_runs,
        "file_bytes_wrong": wrong,
        "chat_rtt_p99_during_transfer_ms": percentile(samples, 99) / 1e6 if samples else 0.0,
        "chat_rtts_during_transfer": len(samples),
    }

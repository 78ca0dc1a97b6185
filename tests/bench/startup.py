"""Start-up to the first prompt (bytecode warm and cold) and an idle peer's memory, against
the bare import of cryptography.fernet and a bare Python.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    HOST,
    IDLE_CHECK,
    PROMPT,
    ROOT,
    SCRIPT,
    STEP_SECONDS,
    Counts,
    WorkerQueue,
    child,
    peers,
    vm_rss_mib,
    write_config,
)
from bench.users import Greeter, end_listener, listen_chat, open_listener
from chatclient.peer import Established


def idle_listener(out: WorkerQueue) -> None:
    """Listener for the memory figure: greet the CLI connector, then wait for its goodbye."""
    user = Greeter()
    net = listen_chat(open_listener(out), user)
    user.expect(Established)
    end_listener(user, net)  # the parent kills a connector that overstays: no error then
    out.put(("result", None))


def checkout_copy(folder: Path, compiled: bool) -> Path:
    """The launcher and the package copied into `folder`, with their bytecode compiled
    (what a second run, or pip install, gives) or with none at all (a first run)."""
    folder.mkdir()
    shutil.copy2(SCRIPT, folder / SCRIPT.name)
    shutil.copytree(
        ROOT / "chatclient", folder / "chatclient", ignore=shutil.ignore_patterns("__pycache__")
    )
    if compiled:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(folder / "chatclient")],
            check=True,
            timeout=STEP_SECONDS,
        )
    return folder / SCRIPT.name


# These machines set PYTHONDONTWRITEBYTECODE: a run reads what compileall wrote, and a
# cold run stays cold, compiling the package each time as a first run does.
NO_NEW_BYTECODE = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def time_to_prompt(folder: Path, script: Path) -> float:
    """Seconds from starting `python chatclient.py` to its listen/connect prompt."""
    start = time.perf_counter()
    with child([sys.executable, str(script)], folder, NO_NEW_BYTECODE) as process:
        process.wait_for(PROMPT)
        return time.perf_counter() - start


def time_import(folder: Path) -> float:
    """Seconds of `python -c "import cryptography.fernet"`, timed like the program.

    The child prints a line once the import is done and that line is awaited
    exactly as the program's prompt is: waiting for the process to exit with a
    timeout would add the polling back-off of Popen.wait to the baseline.
    """
    code = "import cryptography.fernet; print('imported', flush=True)"
    start = time.perf_counter()
    with child([sys.executable, "-c", code], folder) as process:
        process.wait_for("imported")
        return time.perf_counter() - start


def measure_startup(counts: Counts, folder: Path) -> dict[str, float]:
    """Median start-up to the prompt with the bytecode cache warm and cold, and the median
    bare import, interleaved, after a warm-up."""
    write_config(folder)
    warm_script = checkout_copy(folder / "warm", compiled=True)
    cold_script = checkout_copy(folder / "cold", compiled=False)
    time_to_prompt(folder, warm_script)
    time_import(folder)
    warm: list[float] = []
    cold: list[float] = []
    bare: list[float] = []
    for _ in range(counts.startups):
        warm.append(time_to_prompt(folder, warm_script))
        cold.append(time_to_prompt(folder, cold_script))
        bare.append(time_import(folder))
    return {
        "startup_warm_ms": statistics.median(warm) * 1000,
        "startup_cold_ms": statistics.median(cold) * 1000,
        "startup_import_baseline_ms": statistics.median(bare) * 1000,
    }


def measure_memory(folder: Path) -> dict[str, float]:
    """VmRSS of an idle connected CLI peer, and of a bare Python waiting on stdin."""
    write_config(folder)
    with peers() as pool:
        listener = pool.start(idle_listener)
        port = listener.receive("port")
        args = [sys.executable, str(SCRIPT), "--connect", f"{HOST}:{port}"]
        with child(args, folder) as connector:
            connector.wait_for("WELCOME Welcome to the chat!")
            # The greeting printed proves the receiver thread runs; the peer is now idle.
            connector.wait_for(f"says: {IDLE_CHECK}")
            idle = vm_rss_mib(connector.popen.pid)
            connector.finish()
        listener.receive("result")
    waiting = "import sys; print('ready', flush=True); sys.stdin.readline()"
    with child([sys.executable, "-c", waiting], folder) as bare:
        bare.wait_for("ready")
        baseline = vm_rss_mib(bare.popen.pid)
        bare.finish()
    return {"idle_rss_mib": idle, "bare_rss_mib": baseline}

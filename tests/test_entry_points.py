"""The four ways to start chatclient are one program: the launcher, `python -m chatclient`,
the console script and chatclient.pyz. Real processes on 127.0.0.1, waited on by output."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPT, TIMEOUT, ChatProcess, free_port, write_config

from chatclient.config import program_name

Spawn = Callable[..., ChatProcess]
BUILD = ROOT / "tools" / "build_pyz.py"


def chat_with(spawn: Spawn, tmp_path: Path, listener: list[str], connector: list[str]) -> None:
    """`listener` hosts, `connector` joins; a line each way, then `exit` ends both with 0."""
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    host = spawn("--config", "desktop.ini", "--listen", command=listener)
    host.expect(r"^Listening on ")
    guest = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}", command=connector)
    guest.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    host.expect(r"^laptop joined the chat\.$")
    guest.send("hello from laptop")
    host.expect(r"^laptop says: hello from laptop$")
    host.send("hello from desktop")
    guest.expect(r"^desktop says: hello from desktop$")
    guest.send("exit", "bye")
    host.expect(r"^laptop left the chat: bye$")
    host.expect(r"^Connection closed by peer\.$")
    assert guest.wait() == 0
    assert host.wait() == 0
    for proc in (host, guest):
        assert "Traceback" not in proc.all_output()


def build_pyz(folder: Path) -> Path:
    """chatclient.pyz built by the documented command, in `folder`."""
    result = subprocess.run(
        [sys.executable, str(BUILD), "-o", str(folder / "chatclient.pyz")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Wrote {folder / 'chatclient.pyz'} (")
    return folder / "chatclient.pyz"


def test_python_m_chatclient_chats_with_the_launcher(spawn: Spawn, tmp_path: Path) -> None:
    module = [sys.executable, "-m", "chatclient"]
    env = {"PYTHONPATH": str(ROOT)}
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    host = spawn("--config", "desktop.ini", "--listen", command=module, env=env)
    host.expect(r"^Listening on ")
    guest = spawn("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
    guest.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    guest.send("hi", "exit", "")
    host.expect(r"^laptop says: hi$")
    assert guest.wait() == 0
    assert host.wait() == 0


def test_the_one_file_pyz_chats_with_the_package(spawn: Spawn, tmp_path: Path) -> None:
    pyz = build_pyz(tmp_path)
    chat_with(spawn, tmp_path, [sys.executable, str(pyz)], [sys.executable, str(SCRIPT)])


def test_the_pyz_runs_alone_in_an_empty_folder_and_names_itself(tmp_path: Path) -> None:
    pyz = build_pyz(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.move(pyz, work / "chatclient.pyz")
    result = subprocess.run(
        [sys.executable, "chatclient.pyz", "--bogus"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert result.returncode == 2
    shown = program_name("chatclient.pyz", sys.executable, str(work), os.environ["PATH"])
    assert result.stderr.endswith(f"(see {shown} -h)\n")
    assert "chatclient.pyz -h" in result.stderr


def test_the_installed_console_script_chats(spawn: Spawn, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "chatclient"
    if not script.exists():
        pytest.skip("no chatclient console script beside this Python (pip install . makes one)")
    chat_with(spawn, tmp_path, [str(script)], [sys.executable, str(SCRIPT)])


def test_the_launcher_without_its_package_says_so_in_one_line(tmp_path: Path) -> None:
    shutil.copy(SCRIPT, tmp_path / "chatclient.py")
    result = subprocess.run(
        [sys.executable, "chatclient.py", "--listen"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: there is no chatclient/ folder beside ")
    assert "chatclient.pyz" in line


def test_the_launcher_prefers_its_own_package_to_an_installed_one(tmp_path: Path) -> None:
    stale = tmp_path / "site" / "chatclient"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise SystemExit('stale copy imported')\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("chatclient ")


def test_program_name_for_python_m_and_the_pyz() -> None:
    cwd = "/home/me/chat"
    main = "/home/me/chat/chatclient/__main__.py"
    assert program_name(main, "/usr/bin/python3", cwd, "/usr/bin") == "python3 -m chatclient"
    assert program_name("chatclient.pyz", "/usr/bin/python3", cwd, "/usr/bin") == (
        "python3 chatclient.pyz"
    )

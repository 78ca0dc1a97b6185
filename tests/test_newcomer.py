"""What a newcomer trips over: a missing dependency, the console script, where the
config lives, exit codes and messages, typed text, and reaching a peer through a
SOCKS5 proxy. Real processes on 127.0.0.1; every wait has a timeout."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    OTHER_KEY,
    SCRIPT,
    TIMEOUT,
    ChatProcess,
    free_port,
    run,
    start_pair,
    write_config,
)
from socks5 import Socks5Server

from chatclient.cli import parse_args
from chatclient.sockets import socks5_request

Spawn = Callable[..., ChatProcess]


def console_script(tmp_path: Path) -> Path:
    """A `chatclient` command like the one `pip install .` makes, in a folder of its own."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "chatclient"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "from chatclient.cli import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def home_env(tmp_path: Path, bin_dir: Path | None = None) -> dict[str, str]:
    """HOME and XDG_CONFIG_HOME inside tmp_path (and the console script on PATH)."""
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


# --- Slips ---------------------------------------------------------------------------------


def test_a_python_without_cryptography_gets_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # -S leaves out site-packages, where cryptography lives: a Python without it.
    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPT)],
        cwd=tmp_path,
        input="l\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "error: chatclient needs cryptography>=41, spake2>=0.9, zeroconf>=0.132; this Python"
    )
    specs = "'cryptography>=41' 'spake2>=0.9' 'zeroconf>=0.132'"
    assert f"{sys.executable} -m pip install {specs}" in line
    # works where only a copy of chatclient.py is: no pyproject needed
    assert f"python3 -m venv .venv && .venv/bin/pip install {specs}" in line
    assert f"then run `.venv/bin/python {SCRIPT}`" in line
    assert list(tmp_path.iterdir()) == []  # no question asked, no config written


def test_a_cryptography_too_old_for_chatclient_is_named_with_its_version(tmp_path: Path) -> None:
    # Debian 12's python3-cryptography is 38.0.4: it lacks X25519's public_bytes_raw.
    fake = tmp_path / "old" / "cryptography"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "38.0.4"\n', encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPT), "--listen"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "old")},
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "error: chatclient needs cryptography>=41 (it has 38.0.4), spake2>=0.9, "
        "zeroconf>=0.132; this Python"
    )
    assert list(work.iterdir()) == []


def test_the_console_script_names_itself_in_its_hints(tmp_path: Path) -> None:
    script = console_script(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = home_env(tmp_path, script.parent)
    result = run("--init", "--username", "desktop", cwd=work, env=env, command=[str(script)])
    assert result.returncode == 0, result.stderr
    assert "    chatclient --init --key - --username THEIR_NAME" in result.stdout
    assert "    chatclient --connect " in result.stdout
    assert "python chatclient.py" not in result.stdout
    bad = run("--port", "abc", cwd=work, env=env, command=[str(script)])
    assert "(see chatclient -h)" in bad.stderr


def test_the_console_script_outside_a_checkout_keeps_one_config_per_user(
    tmp_path: Path,
) -> None:
    script = console_script(tmp_path)
    env = home_env(tmp_path, script.parent)
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    created = run("--init", "--username", "desktop", cwd=first, env=env, command=[str(script)])
    user_config = tmp_path / "xdg" / "chatclient" / "config.ini"
    assert created.returncode == 0, created.stderr
    assert f"Saved {user_config} (readable only by you)." in created.stdout
    assert user_config.stat().st_mode & 0o777 == 0o600
    assert not (first / "config.ini").exists()
    # From another folder, the same file: the same key, and every message names it.
    again = run("--init", cwd=second, env=env, command=[str(script)])
    assert again.returncode == 1
    assert str(user_config) in again.stderr and "already has a fernet_key (line " in again.stderr
    # ./config.ini still comes first, as in the original script.
    write_config(second, port=free_port(), key=OTHER_KEY, username="local")
    local = run("--init", cwd=second, env=env, command=[str(script)])
    assert "config.ini already has a fernet_key" in local.stderr
    assert str(user_config) not in local.stderr


def test_the_script_run_with_python_still_creates_config_ini_here(tmp_path: Path) -> None:
    result = run("--init", "--username", "desktop", cwd=tmp_path, env=home_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "config.ini").exists()
    assert not (tmp_path / "xdg").exists()


def test_init_prints_the_key_id_both_people_compare(tmp_path: Path) -> None:
    mine = run("--init", "--username", "desktop", cwd=tmp_path)
    key = re.search(r"^    ([A-Za-z0-9_-]{43}=)$", mine.stdout, re.M)
    assert key, mine.stdout
    (tmp_path / "peer").mkdir()
    theirs = run("--init", "--key", "-", cwd=tmp_path / "peer", stdin=key[1] + "\n")
    ids = [re.search(r"^Key ID: (\w{4}-\w{4}) ", out, re.M) for out in (mine.stdout, theirs.stdout)]
    assert ids[0] and ids[1] and ids[0][1] == ids[1][1]


# --- Exit codes and messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--username", ""), "argument --username: username is empty"),
        (("--username", "a\tb"), "argument --username: username must not contain control"),
        (
            ("--init", "--key", "abc"),
            "argument --key: the key given: fernet_key is not a valid key",
        ),
        (("--port", "abc"), "argument --port: must be a number from 1 to 65535, not 'abc'"),
        (("--port", "0"), "argument --port: must be a number from 1 to 65535, not '0'"),
        (("--connect", "::1"), "brackets"),
        (("--connect", ":5"), "no host"),
        (("--keepalive", "0"), "argument --keepalive: must be a number of seconds above 0"),
        (("--keepalive", "abc"), "argument --keepalive: must be a number of seconds above 0"),
        (("--init", "--key", ""), "argument --key: no key given: use --key -"),
        (("--init", "--listen"), "--init only writes the config"),
        (("--genkey", "--connect", "127.0.0.1:1"), "--genkey only prints a key"),
        (("--proxy", "http://127.0.0.1:8080", "--connect", "127.0.0.1:1"), "use socks5://"),
        (("--proxy", "socks5://127.0.0.1:1080"), "--proxy only goes with --connect"),
        (("--key", "-"), "--key only goes with --init"),
        (("--config",), "expected one argument"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ],
)
def test_every_flag_mistake_exits_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and words in line, line
    assert line.count("--port") <= 1
    assert not (tmp_path / "config.ini").exists()


def test_help_fits_an_80_column_terminal(tmp_path: Path) -> None:
    result = run("-h", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert all(len(line) <= 80 for line in description.splitlines()), description


@pytest.mark.parametrize("program", ["python3 chatclient.py", ".venv/bin/python chatclient.py"])
def test_every_line_of_help_fits_80_columns(
    program: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        parse_args(["-h"], program)
    shown = capsys.readouterr().out
    assert [line for line in shown.splitlines() if len(line) > 80] == []
    assert f"  {program} --connect 192.168.1.112:50233" in shown  # examples name the program


def test_an_empty_key_pasted_for_init_says_so(tmp_path: Path) -> None:
    result = run("--init", "--key", "-", cwd=tmp_path, stdin="\n")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: --key -: no key given")
    assert not (tmp_path / "config.ini").exists()


def test_a_busy_port_names_where_it_came_from(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        write_config(tmp_path, "mine.ini", port=busy)
        from_file = run("--config", "mine.ini", "--listen", cwd=tmp_path)
        assert "choose another port in mine.ini" in from_file.stderr
        write_config(tmp_path, "other.ini", port=free_port())
        from_flag = run("--config", "other.ini", "--listen", "--port", str(busy), cwd=tmp_path)
        assert "choose another --port" in from_flag.stderr


def test_the_missing_config_hint_names_the_config_given(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "missing.ini"
    result = run("--config", str(path), "--listen", cwd=tmp_path)
    assert result.returncode == 1
    assert f"--init --config {path}" in result.stderr


def test_no_config_and_no_terminal_points_to_a_name_not_a_key(tmp_path: Path) -> None:
    result = run("--listen", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    program = line.split("run `", 1)[1].split("`", 1)[0]
    assert line == (
        f"error: config.ini not found: run `{program}` on a terminal to be asked for a name, or "
        f"create it with `{program} --init --username NAME` (no key is needed: the first chat "
        "uses an invite code)"
    )
    assert "fernet_key" not in line


# --- Typing and reading ----------------------------------------------------------------------


def test_tabs_are_shown_as_spaces_and_actions_in_the_third_person(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, connector = start_pair(spawn, tmp_path)
    connector.send("def f():\treturn 1", "/me waves", "/ME  nods slowly")
    listener.expect(r"^laptop says: def f\(\):    return 1$")  # to the next 4-column stop
    listener.expect(r"^\* laptop waves$")
    listener.expect(r"^\* laptop nods slowly$")
    connector.expect(r"^Sent ACTION message\.$")
    assert not any("\t" in line or "\\t" in line for line in listener.out)
    connector.send("exit", "")
    listener.expect(r"^Connection closed by peer\.$")
    assert listener.wait() == 0 and connector.wait() == 0


def test_timestamps_prefix_incoming_lines(spawn: Spawn, tmp_path: Path) -> None:
    listener, connector = start_pair(spawn, tmp_path, extra=("--timestamps",))
    connector.send("on the hour")
    listener.expect(r"^\[\d\d:\d\d\] laptop says: on the hour$")
    connector.send("exit", "")
    listener.expect(r"^\[\d\d:\d\d\] laptop left the chat\.$")
    assert listener.wait() == 0 and connector.wait() == 0


def test_timestamps_and_bell_in_config_ini(tmp_path: Path) -> None:
    path = write_config(tmp_path, port=free_port())
    path.write_text(path.read_text() + "timestamps = yes\nbell = maybe\n", encoding="utf-8")
    result = run("--listen", cwd=tmp_path)
    assert result.returncode == 1
    assert "config.ini: bell must be yes or no, not 'maybe'" in result.stderr


# --- Beyond the LAN: SOCKS5 --------------------------------------------------------------


def test_connect_through_a_socks5_proxy_that_resolves_the_name(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = spawn("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on ")
    with Socks5Server(allowed_hosts={"desktop.example": "127.0.0.1"}) as proxy:
        connector = spawn(
            "--config",
            "laptop.ini",
            "--connect",
            f"desktop.example:{port}",
            "--proxy",
            f"socks5://127.0.0.1:{proxy.port}",
        )
        connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
        listener.expect(r"^laptop joined the chat\.$")
        assert proxy.requests == [(3, "desktop.example", port)]  # the name, resolved there
        connector.send("through the proxy")
        listener.expect(r"^laptop says: through the proxy$")
        connector.send("/who")  # where the peer is, not where the proxy is
        connector.expect(
            rf"^Talking to desktop at desktop\.example:{port} through the proxy at "
            rf"127\.0\.0\.1:{proxy.port}, connected "
        )
        connector.send("exit", "bye")
        listener.expect(r"^laptop left the chat: bye$")
        assert listener.wait() == 0 and connector.wait() == 0


def test_socks5_failures_are_one_clear_line(tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    nobody = free_port()
    refused = run(
        "--connect", "127.0.0.1:1", "--proxy", f"socks5://127.0.0.1:{nobody}", cwd=tmp_path
    )
    assert refused.returncode == 1
    assert f"connection to the proxy at 127.0.0.1:{nobody} refused" in refused.stderr
    with Socks5Server() as proxy:
        result = run(
            "--connect",
            "nowhere.example:1",
            "--proxy",
            f"socks5://127.0.0.1:{proxy.port}",
            cwd=tmp_path,
        )
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.startswith("error: the proxy could not connect to nowhere.example:1: ")
        closed = run(
            "--connect",
            f"127.0.0.1:{nobody}",
            "--proxy",
            f"socks5://127.0.0.1:{proxy.port}",
            cwd=tmp_path,
        )
        assert "connection refused" in closed.stderr


def test_a_proxy_that_closes_instead_of_replying_is_not_blamed(tmp_path: Path) -> None:
    # OpenSSH's ssh -D closes without a reply when the destination refuses or is unknown.
    write_config(tmp_path, port=free_port())
    nobody = free_port()
    with Socks5Server(like_openssh=True) as proxy:
        for target in (f"127.0.0.1:{nobody}", "nowhere.example:1"):
            result = run(
                "--connect", target, "--proxy", f"socks5://127.0.0.1:{proxy.port}", cwd=tmp_path
            )
            assert result.returncode == 1
            [line] = result.stderr.splitlines()
            assert line == (
                f"error: the proxy at 127.0.0.1:{proxy.port} could not reach {target} (or "
                "refused to): it closed the connection without saying why; check that "
                f"{target} is right and that the peer is listening there"
            )
            assert "check --proxy" not in line


def test_the_socks5_request_carries_names_as_names() -> None:
    assert socks5_request("127.0.0.1", 80) == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    assert socks5_request("::1", 80)[3] == 4
    assert socks5_request("peer.example", 80) == (b"\x05\x01\x00\x03\x0cpeer.example\x00\x50")

"""Starting chatclient: the flags, config.ini and --init, and the single `error:` line
and non-zero exit for each way a start goes wrong, from a bad config to a port in use,
a wrong key or a full chat. Real `python chatclient.py` processes on 127.0.0.1, each
checked for a traceback by the `chat` fixture (conftest.py); and parse_target, which
reads the value of --connect."""

from __future__ import annotations

import argparse
import configparser
import re
import signal
import socket
import threading
from pathlib import Path

import pytest
from conftest import (
    KEY,
    OTHER_KEY,
    ROOT,
    TIMEOUT,
    Spawn,
    finish,
    free_port,
    leave,
    run,
    start_pair,
    write_config,
)
from cryptography.fernet import Fernet

from chatclient import __version__
from chatclient.cli import parse_target

# --- Helpers -------------------------------------------------------------------------------


def one_error(stderr: str) -> str:
    """The single `error: ...` line that stderr must consist of."""
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def config_text(**fields: str) -> str:
    """An INI file with the given [parameters] fields."""
    return "[parameters]\n" + "".join(f"{name} = {value}\n" for name, value in fields.items())


def good_fields() -> dict[str, str]:
    return {"ip": "127.0.0.1", "port": "50233", "fernet_key": KEY, "username": "desktop"}


def read_ini(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return dict(parser.items("parameters"))


# --- Bad configuration and network errors: one `error:` line, non-zero exit ----------------


def without(name: str) -> str:
    fields = good_fields()
    del fields[name]
    return config_text(**fields)


def with_field(name: str, value: str) -> str:
    return config_text(**{**good_fields(), name: value})


BAD_CONFIGS = {
    "not INI at all": ("ip = 127.0.0.1\n", r"is not a valid INI file"),
    "missing section": ("[other]\nip = 127.0.0.1\n", r"missing the \[parameters\] section"),
    "missing ip": (without("ip"), r"missing field 'ip'"),
    "missing port": (without("port"), r"missing field 'port'"),
    "missing fernet_key": (without("fernet_key"), r"missing field 'fernet_key'"),
    "missing username": (without("username"), r"missing field 'username'"),
    "empty username": (with_field("username", ""), r"username is empty"),
    "invalid key": (with_field("fernet_key", "not-a-key"), r"fernet_key is not a valid key"),
    "non-canonical key": (with_field("fernet_key", KEY[:42] + "1="), r"not canonical"),
    "published key": (
        with_field("fernet_key", "DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0="),
        r"published example key.*--genkey",
    ),
    "weak key": (with_field("fernet_key", "A" * 43 + "="), r"32 identical bytes.*--genkey"),
    "port abc": (with_field("port", "abc"), r"port must be a number from 1 to 65535, not 'abc'"),
    "port 0": (with_field("port", "0"), r"port must be a number from 1 to 65535, not '0'"),
    "port 70000": (with_field("port", "70000"), r"from 1 to 65535, not '70000'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_error_line(tmp_path: Path, case: str) -> None:
    text, pattern = BAD_CONFIGS[case]
    path = tmp_path / "config.ini"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    result = run(cwd=tmp_path, stdin="l\n")
    assert result.returncode != 0
    assert re.search(pattern, one_error(result.stderr))
    assert "Listening on" not in result.stdout


def test_missing_config_says_how_to_create_one(tmp_path: Path) -> None:
    result = run("--listen", cwd=tmp_path)
    assert result.returncode != 0
    line = one_error(result.stderr)
    assert "config.ini" in line
    assert "--init" in line
    assert not (tmp_path / "config.ini").exists()


def test_a_connector_given_an_address_does_not_say_where_it_listens(
    spawn: Spawn, tmp_path: Path
) -> None:
    listener, connector = start_pair(spawn, tmp_path)
    assert any(line.startswith("Your IP and port are: ") for line in listener.out)
    assert not any(line.startswith("Your IP and port are: ") for line in connector.out)
    leave(connector)
    listener.expect(r"^Connection closed by peer\.$")


def test_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        write_config(tmp_path, port=port)
        result = run("--listen", cwd=tmp_path)
    assert result.returncode != 0
    assert f"port {port} is already in use" in one_error(result.stderr)


def test_address_not_on_this_machine(tmp_path: Path) -> None:
    write_config(tmp_path, ip="203.0.113.77", port=free_port())  # TEST-NET-3: not local
    result = run("--listen", cwd=tmp_path)
    assert result.returncode != 0
    assert "that address is not on this machine" in one_error(result.stderr)


def test_host_that_does_not_resolve(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = run("--connect", "nonexistent.invalid:50233", cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot resolve host 'nonexistent.invalid'" in one_error(result.stderr)


def test_connection_refused(tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path)
    result = run("--connect", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode != 0
    assert f"connection to 127.0.0.1:{port} refused" in one_error(result.stderr)


def test_wrong_peer_port_at_the_prompt_is_asked_again(tmp_path: Path) -> None:
    write_config(tmp_path)
    result = run(cwd=tmp_path, stdin="c\n127.0.0.1\n99999\n")  # then end of input
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "try again: peer port must be a number from 1 to 65535, not '99999'"
    ]  # asked again, not the end: no `error:`
    assert result.stdout.splitlines().count("Enter peer port: ") == 2


def test_wrong_peer_port_then_the_right_one_connects(chat: Spawn, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on ")
    connector = chat("--config", "laptop.ini")
    connector.send("c", "127.0.0.1", "port", str(port))
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^laptop joined the chat\.$")
    assert connector.err == ["try again: peer port must be a number from 1 to 65535, not 'port'"]
    assert connector.out.count("Enter peer port: ") == 2
    leave(connector)
    assert finish(listener) == 0


def test_wrong_key_is_refused_on_both_sides_and_the_listener_goes_on(
    chat: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    write_config(tmp_path, "desktop.ini", port=port, username="desktop")
    write_config(tmp_path, "intruder.ini", port=port, username="intruder", key=OTHER_KEY)
    write_config(tmp_path, "laptop.ini", port=port, username="laptop")
    listener = chat("--config", "desktop.ini", "--listen")
    listener.expect(r"^Listening on ")
    intruder = chat("--config", "intruder.ini", "--connect", f"127.0.0.1:{port}")
    assert finish(intruder) != 0
    assert len(intruder.err) == 1
    assert intruder.err[0] == (
        "error: could not authenticate the peer: your fernet_keys differ, "
        "or someone tampered with the connection"
    )
    listener.expect(r"^Refused a connection from .*fernet_key differs", stream="err")
    assert not [line for line in listener.out if line.startswith("Connected by")]

    connector = chat("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
    connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
    listener.expect(r"^Connected by \('127\.0\.0\.1', \d+\)$")
    listener.expect(r"^laptop joined the chat\.$")
    assert [line for line in listener.out if line.startswith("Connected by")] == [
        listener.out[listener.out.index("laptop joined the chat.") - 1]
    ]
    leave(connector)
    assert finish(listener) == 0


def test_silent_connection_does_not_block_and_a_third_is_refused(
    chat: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    for name in ("desktop", "laptop", "third"):
        write_config(tmp_path, f"{name}.ini", port=port, username=name)
    listener = chat("--config", "desktop.ini", "--listen", "--max-members", "1")
    listener.expect(r"^Listening on ")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):  # says nothing
        connector = chat("--config", "laptop.ini", "--connect", f"127.0.0.1:{port}")
        connector.expect(r"^WELCOME Welcome to the chat! I am desktop$")
        listener.expect(r"^laptop joined the chat\.$")
        third = chat("--config", "third.ini", "--connect", f"127.0.0.1:{port}")
        assert finish(third) != 0
        assert one_error("\n".join(third.err)) == "error: the chat is full (1 person)"
        connector.send("still here")
        listener.expect(r"^laptop says: still here$")
    leave(connector)
    assert finish(listener) == 0


# --- Flags -----------------------------------------------------------------------------------


def test_genkey_prints_a_valid_key(tmp_path: Path) -> None:
    first, second = (run("--genkey", cwd=tmp_path) for _ in range(2))
    for result in (first, second):
        assert result.returncode == 0
        assert result.stderr == ""
        key = result.stdout.strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}=", key)
        Fernet(key.encode())
    assert first.stdout != second.stdout
    assert not (tmp_path / "config.ini").exists()


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path: Path, flag: str) -> None:
    result = run(flag, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"chatclient {__version__}")


def test_help_mentions_every_flag(tmp_path: Path) -> None:
    result = run("-h", cwd=tmp_path)
    assert result.returncode == 0
    for flag in (
        "-h",
        "--config",
        "--listen",
        "--connect",
        "--username",
        "--port",
        "--init",
        "--key",
        "--genkey",
        "--keepalive",
        "--version",
        "[::1]:50233",
    ):
        assert flag in result.stdout, flag


def test_init_writes_a_private_config_and_never_overwrites_a_key(tmp_path: Path) -> None:
    result = run("--init", "--username", "bob", "--port", "50555", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "config.ini"
    assert path.stat().st_mode & 0o777 == 0o600
    fields = read_ini(path)
    assert fields["username"] == "bob"
    assert fields["port"] == "50555"
    Fernet(fields["fernet_key"].encode())
    assert fields["fernet_key"] in result.stdout  # shown so it can be handed to the peer
    before = path.read_bytes()

    again = run("--init", "--username", "eve", "--port", "50556", cwd=tmp_path)
    assert again.returncode != 0
    assert "already has a fernet_key" in one_error(again.stderr)
    assert path.read_bytes() == before


def test_init_with_key_saves_that_key(tmp_path: Path) -> None:
    result = run("--init", "--key", OTHER_KEY, "--username", "laptop", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "config.ini"
    assert read_ini(path)["fernet_key"] == OTHER_KEY
    assert read_ini(path)["username"] == "laptop"
    assert path.stat().st_mode & 0o777 == 0o600


def test_init_with_key_dash_reads_the_key_from_standard_input(tmp_path: Path) -> None:
    result = run(
        "--init", "--key", "-", "--username", "laptop", cwd=tmp_path, stdin=OTHER_KEY + "\n"
    )
    assert result.returncode == 0, result.stderr
    assert read_ini(tmp_path / "config.ini")["fernet_key"] == OTHER_KEY
    assert OTHER_KEY not in result.stdout + result.stderr


def test_init_with_key_dash_and_no_input_writes_nothing(tmp_path: Path) -> None:
    result = run("--init", "--key", "-", cwd=tmp_path, stdin="")
    assert result.returncode != 0
    assert one_error(result.stderr).startswith("error: --key -: no key on standard input")
    assert not (tmp_path / "config.ini").exists()


def test_the_hints_for_the_peer_never_put_the_key_on_a_command_line(tmp_path: Path) -> None:
    result = run("--init", "--username", "desktop", cwd=tmp_path)
    key = read_ini(tmp_path / "config.ini")["fernet_key"]
    assert "--init --key - --username" in result.stdout
    assert f"--key {key}" not in result.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    keys_in_readme = re.findall(r"--key ([^\s`\]]+)", readme)
    assert keys_in_readme and all(word == "-" for word in keys_in_readme), keys_in_readme


def test_init_with_an_invalid_key_writes_nothing(tmp_path: Path) -> None:
    result = run("--init", "--key", "nonsense", cwd=tmp_path)
    assert result.returncode != 0
    assert "not a valid key" in one_error(result.stderr)
    assert not (tmp_path / "config.ini").exists()


def test_config_readable_by_others_gives_a_warning(chat: Spawn, tmp_path: Path) -> None:
    path = write_config(tmp_path, "shared.ini", port=free_port(), mode=0o644)
    listener = chat("--config", str(path), "--listen")
    listener.expect(r"^Listening on ")
    warning = listener.expect(r"^warning: ", stream="err")  # stderr is read by its own thread
    assert listener.err == [warning]
    assert str(path) in warning
    assert f"chmod 600 {path}" in warning
    listener.signal(signal.SIGINT)
    assert finish(listener) == 130


def test_private_config_gives_no_warning(chat: Spawn, tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    listener = chat("--listen")
    listener.expect(r"^Listening on ")
    listener.signal(signal.SIGINT)
    finish(listener)
    assert listener.err == []


# --- Mistakes a newcomer makes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--port", "abc"), "argument --port: must be a number from 1 to 65535, not 'abc'"),
        (("--connect", "::1"), "brackets"),
        (("--listen", "--connect", "127.0.0.1:1"), "not allowed with"),
        (("--key", KEY), "--key only goes with --init"),
        (("--bogus",), "unrecognized arguments: --bogus (see "),
        (("--conect", "127.0.0.1"), "--conect 127.0.0.1; did you mean --connect? (see "),
        (("--keepalive", "nan"), "argument --keepalive: must be a number of seconds above 0"),
        (("--keepalive", "inf"), "argument --keepalive: must be a number of seconds above 0"),
    ],
)
def test_a_mistake_in_the_flags_is_one_line(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert words in one_error(result.stderr)
    assert result.stdout == ""


def test_flag_values_are_named_in_errors(tmp_path: Path) -> None:
    write_config(tmp_path, port=free_port())
    line = one_error(run("--username", "a\x1b[31mb", "--listen", cwd=tmp_path).stderr)
    assert line.startswith("error: argument --username: username must not contain control")
    line = one_error(run("--init", "--key", "abc", "--config", "new.ini", cwd=tmp_path).stderr)
    assert line.startswith("error: argument --key: ")
    assert not (tmp_path / "new.ini").exists()
    line = one_error(run("--config", "elsewhere/x.ini", "--listen", cwd=tmp_path).stderr)
    assert "--init --config elsewhere/x.ini" in line


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("junk\n[parameters]\n", "line 1: text before the [parameters] header"),
        ("[parameters]\nip = 1\nfoo\n", "line 3: 'foo\\n' is not of the form name = value"),
        ("[parameters]\n[parameters]\n", "config.ini line 2: [parameters] appears twice"),
        (
            "[parameters]\nip = 1\nport = 1\nfernet_key =\nusername = a\nusername = b\n",
            "config.ini line 6: username appears twice",
        ),
    ],
)
def test_a_broken_ini_file_names_the_line(tmp_path: Path, text: str, words: str) -> None:
    (tmp_path / "config.ini").write_text(text, encoding="utf-8")
    result = run("--listen", cwd=tmp_path)
    assert result.returncode == 1
    assert words in one_error(result.stderr)


def test_connecting_to_something_else_says_so(tmp_path: Path) -> None:
    write_config(tmp_path)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(TIMEOUT)

        def answer_like_a_web_server() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.recv(100)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_like_a_web_server, daemon=True)
        thread.start()
        result = run("--connect", f"127.0.0.1:{server.getsockname()[1]}", cwd=tmp_path)
        thread.join(TIMEOUT)
    assert result.returncode == 1
    assert "not speaking the chatclient protocol" in one_error(result.stderr)


# --- The value of --connect (pure) ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("192.168.1.112:50233", ("192.168.1.112", 50233)),
        ("[::1]:50233", ("::1", 50233)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("laptop.local", ("laptop.local", None)),
        ("192.168.1.112", ("192.168.1.112", None)),
        ("[::1]", ("::1", None)),
        (" host:80 ", ("host", 80)),
    ],
)
def test_parse_target_accepts(text: str, target: tuple[str, int | None]) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("::1", "brackets"),
        ("fe80::1:50233", "brackets"),
        ("[::1]50233", r"\[::1\]:50233"),
        ("[::1", r"\[::1\]:50233"),
        (":50233", "no host"),
        ("", "no host"),
        ("host:0", "1 to 65535"),
        ("host:", "1 to 65535"),
        ("host:port", "1 to 65535"),
        ("[::1]:70000", "1 to 65535"),
    ],
)
def test_parse_target_refuses(text: str, words: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        parse_target(text)

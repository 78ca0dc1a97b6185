"""config.ini as one Config value, the command line's Options, and the checks and
hints shared by both (keys, ports, names, where the file lives, the dependencies).
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import getpass
import importlib
import importlib.util
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import TextIO

from .errors import ConfigError, ConfigMissing, describe_os_error
from .text import name_problem, parse_duration

DEFAULT_PORT = 50233
# A connection must finish its handshake within this many seconds (connect included).
HANDSHAKE_SECONDS = 10.0
KEEPALIVE_SECONDS = 10.0
RECONNECT_SECONDS = 600.0  # a lost session is kept this long by default (10 minutes)
# A peer is declared lost after this many keepalive intervals of silence.
DEAD_AFTER_INTERVALS = 2.5


# --- Configuration -------------------------------------------------------------
#
# One Config value: read from the file, flags laid over it (dataclasses.replace),
# the file rendered from it. The first-run questions, further down, only fill
# one in.

CONFIG_SECTION = "parameters"
REQUIRED_FIELDS = ("ip", "port", "fernet_key", "username")
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}=")
# Keys printed in the original example config and in earlier READMEs: public, so refused.
PUBLIC_KEYS = frozenset({"DN80giegpRHpNHLClZep_maYg2iXRGHsbq9Uy1Cobi0="})
# What `--key -` means: read the key from standard input, never from the command line.
KEY_FROM_INPUT = "-"
# Every package the program needs beyond the standard library, with the oldest
# version that has what it uses (X25519 public_bytes_raw), checked before anything.
DEPENDENCIES = {"cryptography": (41,), "spake2": (0, 9), "zeroconf": (0, 132)}
# Importing spake2 or zeroconf costs 22 and 70 ms of start-up (measured): only their
# presence is checked; pip installs a new enough one from pyproject.toml.
PRESENCE_ONLY = frozenset({"spake2", "zeroconf"})


@dataclass(frozen=True)
class Config:
    """config.ini as one value: its file, its fields (validated), and the optional ones."""

    path: str
    ip: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    key: bytes | None = None  # the 32 raw bytes of fernet_key; None until one is made
    username: str = ""
    timestamps: bool = False
    bell: bool = False
    downloads: str = ""  # where received files go; "" means the default (downloads_folder)
    announce: bool = True  # a listener announces itself on the LAN (nearby.py)
    reconnect_for: float = RECONNECT_SECONDS  # a lost session is kept this long to resume

    @property
    def fernet_key(self) -> str:
        """The key as config.ini holds it (empty when there is none yet)."""
        return base64.urlsafe_b64encode(self.key).decode("ascii") if self.key else ""


def missing_dependencies() -> list[str]:
    """What this Python lacks of DEPENDENCIES: 'name>=version', with what it has if older."""
    missing = []
    for name, oldest in DEPENDENCIES.items():
        wanted = f"{name}>={'.'.join(map(str, oldest))}"
        if importlib.util.find_spec(name) is None:
            missing.append(wanted)
            continue
        if name in PRESENCE_ONLY:
            continue
        version = str(getattr(importlib.import_module(name), "__version__", "0"))
        if version_numbers(version) < oldest:
            missing.append(f"{wanted} (it has {version})")
    return missing


def version_numbers(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: '41.0.1rc1' -> (41, 0, 1)."""
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits[0]))
    return tuple(numbers)


def dependency_error(missing: list[str], executable: str, script: str) -> str:
    """One line: what is missing, and the commands that fix it."""
    needs = ", ".join(missing)
    specs = " ".join(f"'{item.split(' ')[0]}'" for item in missing)
    return (
        f"error: chatclient needs {needs}; this Python ({executable}) does not have it: "
        f"install it with `{executable} -m pip install {specs}`, or (where the system "
        "refuses that) in a virtual environment, as README does: "
        f"`python3 -m venv .venv && .venv/bin/pip install {specs}`, "
        f"then run `.venv/bin/python {script}`"
    )


def program_name(argv0: str, executable: str, cwd: str, search_path: str) -> str:
    """The command the person ran, as a hint should repeat it.

    `python chatclient.py` (or `chatclient.pyz`, or `-m chatclient`) names its
    Python (by path if it lives below the current folder, as .venv/bin/python
    does); the `chatclient` console script is its bare name when PATH finds it,
    else its path.
    """
    python = command_path(executable, cwd, search_path)
    if os.path.basename(argv0) == "__main__.py":  # python -m chatclient
        return f"{python} -m {os.path.basename(os.path.dirname(argv0)) or 'chatclient'}"
    if os.path.basename(argv0).endswith((".py", ".pyz")):
        return f"{python} {shown_path(argv0, cwd)}"
    return command_path(argv0, cwd, search_path)


def command_path(path: str, cwd: str, search_path: str) -> str:
    """A program as it can be typed: its bare name if PATH finds that very file, else a path."""
    name = os.path.basename(path)
    for folder in search_path.split(os.pathsep):
        with contextlib.suppress(OSError):
            if folder and os.path.samefile(os.path.join(folder, name), path):
                return name
    return shown_path(path, cwd)


def shown_path(path: str, cwd: str) -> str:
    """A path relative to the current folder when it lies below it, else as given."""
    absolute = os.path.abspath(path)
    if absolute.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, cwd)
    return os.path.normpath(path)


def user_config_path() -> str:
    """The per-user config.ini: XDG on Linux, Application Support on macOS, APPDATA on Windows."""
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".config")
    return os.path.join(base, "chatclient", "config.ini")


def xdg_download_dir(home: str) -> str | None:
    """XDG_DOWNLOAD_DIR from user-dirs.dirs (xdg-user-dirs), when it names a folder other
    than the home folder itself (which, by that spec, means there is none)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(home, ".config")
    try:
        with open(os.path.join(base, "user-dirs.dirs"), encoding="utf-8") as file:
            lines = file.read(65536).splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        name, equals, value = line.strip().partition("=")
        if name != "XDG_DOWNLOAD_DIR" or not equals:
            continue
        value = value.strip().strip('"')
        if value.startswith("$HOME"):
            value = home + value[len("$HOME") :]
        folder = os.path.normpath(value)
        if os.path.isabs(value) and folder != os.path.normpath(home):
            return folder
    return None


def default_downloads() -> tuple[str, bool]:
    """Where received files go when nothing says: the desktop's download folder
    (XDG_DOWNLOAD_DIR, else ~/Downloads where it exists), else chatclient's own folder
    in the user's data directory, never the current folder (a checkout, say). The bool:
    whether the folder is chatclient's own, to be created (mode 700) if missing."""
    home = os.path.expanduser("~")
    if sys.platform not in ("win32", "darwin") and (folder := xdg_download_dir(home)):
        if os.path.isdir(folder):
            return folder, False
    downloads = os.path.join(home, "Downloads")
    if os.path.isdir(downloads):
        return downloads, False
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".local", "share")
    return os.path.join(base, "chatclient", "downloads"), True


def choose_config_path(explicit: str | None, console_script: bool) -> str:
    """Which config.ini to use: --config, then ./config.ini, then the per-user one.

    With none of them there yet, a first run creates ./config.ini (the original
    script's place), except that the console script run outside a checkout
    creates the per-user one, so every folder shares one key.
    """
    if explicit is not None:
        return explicit
    user = user_config_path()
    if os.path.exists("config.ini"):
        return "config.ini"
    if os.path.exists(user):
        return user
    if console_script and not os.path.exists("chatclient.py"):
        return user
    return "config.ini"


def is_console_script(program: str) -> bool:
    """Whether `program` (as program_name() gives it) is the installed command, not the script."""
    return not program.endswith((".py", ".pyz"))


def config_flag(path: str, program: str) -> str:
    """` --config PATH` when the path is not the one found without it, else ''."""
    found = choose_config_path(None, is_console_script(program))
    return "" if os.path.abspath(path) == os.path.abspath(found) else f" --config {path}"


def generate_key() -> str:
    """A fresh random key in the urlsafe base64 form config.ini holds."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def decode_key(text: str, where: str = "config.ini", *, program: str) -> bytes:
    """Decode fernet_key strictly: canonical urlsafe base64 of exactly 32 secret bytes.

    `program` is the command as the person ran it, for the hints.
    """
    text = text.strip()
    if not text:
        raise ConfigError(
            f"{where}: fernet_key is empty: create one with "
            f"`{program} --init{config_flag(where, program)}` (or paste the key your peer gave you)"
        )
    if not _KEY_PATTERN.fullmatch(text):
        raise ConfigError(
            f"{where}: fernet_key is not a valid key (it must be 44 characters of "
            f"urlsafe base64 ending in '='): make one with `{program} --genkey`"
        )
    raw = base64.urlsafe_b64decode(text)
    if base64.urlsafe_b64encode(raw).decode("ascii") != text:
        raise ConfigError(
            f"{where}: fernet_key is not canonical base64 (its last character before "
            "'=' is off): copy the key exactly as it was generated"
        )
    if text in PUBLIC_KEYS:
        raise ConfigError(
            f"{where}: fernet_key is a published example key that anyone can read: "
            f"make your own with `{program} --genkey`"
        )
    if raw == raw[:1] * len(raw):
        raise ConfigError(
            f"{where}: fernet_key is 32 identical bytes, which anyone could guess: "
            f"make a random one with `{program} --genkey`"
        )
    return raw


def read_secret(prompt: str, stdin: TextIO, interactive: bool) -> str:
    """One line holding a secret: a hidden prompt on a terminal, else a line of stdin."""
    if interactive:
        return getpass.getpass(prompt)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.strip()


def parse_port(text: str, what: str = "") -> int:
    """A TCP port from 1 to 65535, or a ConfigError naming `what` (if given)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        prefix = f"{what} " if what else ""
        raise ConfigError(f"{prefix}must be a number from 1 to 65535, not {text!r}")
    return int(text)


def check_username(name: str, where: str = "") -> str:
    """A username that fits the protocol and prints safely; `where` prefixes errors."""
    name = name.strip()
    if (problem := name_problem(name)) is not None:
        prefix = f"{where}: " if where else ""
        hint = ": set a name your peer will see" if not name else ""
        raise ConfigError(f"{prefix}username {problem}{hint}")
    return name


_SWITCHES = {"yes": True, "on": True, "true": True, "1": True}
_SWITCHES.update({"no": False, "off": False, "false": False, "0": False, "": False})


def parse_switch(text: str, where: str) -> bool:
    """An optional yes/no field."""
    value = _SWITCHES.get(text.strip().lower())
    if value is None:
        raise ConfigError(f"{where} must be yes or no, not {text.strip()!r}")
    return value


def read_config(path: str, program: str) -> Config:
    """config.ini as a Config; an empty key or username is left for the caller to fill."""
    fields = read_fields(path, program)
    for name in REQUIRED_FIELDS:
        if name not in fields:
            raise ConfigError(
                f"{path}: missing field '{name}' in [{CONFIG_SECTION}]: "
                "see the example config.ini in README.md"
            )
    ip = fields["ip"].strip().strip("[]")
    if not ip:
        raise ConfigError(f"{path}: ip is empty: use 0.0.0.0 to listen on all interfaces")
    key_text = fields["fernet_key"].strip()
    return Config(
        path=path,
        ip=ip,
        port=parse_port(fields["port"], f"{path}: port"),
        key=decode_key(key_text, path, program=program) if key_text else None,
        username=check_username(fields["username"], path) if fields["username"].strip() else "",
        timestamps=parse_switch(fields.get("timestamps", ""), f"{path}: timestamps"),
        bell=parse_switch(fields.get("bell", ""), f"{path}: bell"),
        downloads=fields.get("downloads", "").strip(),
        announce=parse_switch(fields.get("announce", "yes"), f"{path}: announce"),
        reconnect_for=parse_reconnect(fields.get("reconnect_for", ""), path),
    )


def parse_reconnect(text: str, path: str) -> float:
    """config.ini's reconnect_for: a duration (90, 90s, 10m), 0 for never; empty: 10m."""
    if not text.strip():
        return RECONNECT_SECONDS
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: reconnect_for {exc}") from None


def read_fields(path: str, program: str) -> dict[str, str]:
    """The raw [parameters] fields of an INI file (strings, possibly empty)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except FileNotFoundError:
        flag = config_flag(path, program)
        raise ConfigMissing(
            f"{path} not found: run `{program}{flag}` on a terminal to be asked for a name, or "
            f"create it with `{program} --init{flag} --username NAME` (no key is needed: the "
            "first chat uses an invite code)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {describe_os_error(exc)}") from exc
    except configparser.Error as exc:
        raise ConfigError(describe_ini_error(path, exc)) from exc
    if not parser.has_section(CONFIG_SECTION):
        raise ConfigError(
            f"{path}: missing the [{CONFIG_SECTION}] section: "
            "see the example config.ini in README.md"
        )
    return dict(parser.items(CONFIG_SECTION))


def describe_ini_error(path: str, exc: configparser.Error) -> str:
    """configparser's complaint in one line, naming the line it concerns."""
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"{path} line {exc.lineno}: {exc.option} appears twice: keep one"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{path} line {exc.lineno}: [{exc.section}] appears twice: keep one"
    invalid = f"{path} is not a valid INI file"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"{invalid}: line {exc.lineno}: text before the [{CONFIG_SECTION}] header"
    errors = getattr(exc, "errors", None)
    if errors:
        lineno, line = errors[0]
        return f"{invalid}: line {lineno}: {line} is not of the form name = value"
    return f"{invalid}: {str(exc).splitlines()[0]}"


def field_line(path: str, name: str) -> int | None:
    """The line number of `name = ...` in an INI file, for messages that point at it."""
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.split("=", 1)[0].strip().lower() == name:
                return number
    return None


def complete(config: Config) -> Config:
    """The config, once it has what a chat needs: a username (a key is optional)."""
    check_username(config.username, config.path)
    return config


def permission_warning(path: str, holds: str = "your secret key") -> str | None:
    """A warning when a file holding a secret (a key, an identity) is readable by others."""
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"warning: {path} holds {holds} and is readable by other users: run `chmod 600 {path}`"
        )
    return None


def render_config(config: Config) -> str:
    """The text of a config.ini file."""
    return (
        "# chatclient configuration. Keep this file secret: fernet_key lets anyone\n"
        "# who has it read and join your chats.\n"
        f"[{CONFIG_SECTION}]\n"
        "# Address to listen on; 0.0.0.0 (or ::) means all interfaces.\n"
        f"ip = {config.ip}\n"
        f"port = {config.port}\n"
        "# Optional: a key both people share (chatclient --genkey makes one).\n"
        "# Left empty, you chat by invite codes and, after that, as contacts.\n"
        f"fernet_key = {config.fernet_key}\n"
        f"username = {config.username}\n"
        "# Optional: [14:03] before incoming lines, and the terminal bell for each.\n"
        f"timestamps = {'yes' if config.timestamps else 'no'}\n"
        f"bell = {'yes' if config.bell else 'no'}\n"
        "# Optional: where received files are saved (empty: your download folder, else\n"
        "# chatclient/downloads in your data folder).\n"
        f"downloads = {config.downloads}\n"
        "# Optional: while listening, let peers on the LAN find you by invite code or by\n"
        "# your name as their contact (no name or identity is announced).\n"
        f"announce = {'yes' if config.announce else 'no'}\n"
        "# Optional: after a lost connection, how long to try to resume the same chat\n"
        "# (90, 90s, 10m; 0: never).\n"
        f"reconnect_for = {spoken_seconds(config.reconnect_for)}\n"
    )


def spoken_seconds(seconds: float) -> str:
    """A duration as reconnect_for takes it: 10m, 90s."""
    whole = round(seconds)
    return f"{whole // 60}m" if whole and whole % 60 == 0 else f"{whole}s" if whole else "0"


def write_config(config: Config) -> None:
    """Write config.ini readable and writable by its owner only (its folder too, if new)."""
    path = config.path
    if os.path.islink(path):  # a link (dangling or not) would take the key elsewhere
        raise ConfigError(
            f"{path} is a symbolic link: chatclient does not write a key through one; "
            "remove the link, or give the real file with --config"
        )
    try:
        if folder := os.path.dirname(path):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o600)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # an existing file loses its wider mode before the key lands
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(render_config(config))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {describe_os_error(exc)}") from exc


def login_name() -> str:
    """The user's login name as a safe default username."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = ""
    name = "".join(ch for ch in name if ch.isprintable() and not ch.isspace())
    return name[:32] or "me"


NO_KEY_GIVEN = (
    "no key given: use --key - and paste the key your peer gave you, "
    "or leave --key out to make a new one"
)


@dataclass
class Options:
    """The command line; these defaults are what no flags mean."""

    program: str  # the command as it was run, for every hint (program_name())
    config: str | None = None  # None: ./config.ini, else the per-user one
    listen: bool = False
    connect: tuple[str, int | None] | None = None
    proxy: tuple[str, int] | None = None
    username: str | None = None
    port: int | None = None
    init: bool = False
    key: str | None = None
    genkey: bool = False
    keepalive: float = KEEPALIVE_SECONDS
    reconnect_for: float | None = None  # None: config.ini's reconnect_for
    timestamps: bool | None = None
    bell: bool | None = None
    invite: bool = False
    code: str | None = None
    forget: str | None = None
    max_members: int = 20
    downloads: str | None = None
    no_announce: bool = False
    list_listeners: bool = False

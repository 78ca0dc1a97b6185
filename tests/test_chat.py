"""The conversation (chatclient/chat.py) without sockets: events from a fake network are
shown as the person sees them, typed lines become messages, and the commands run.
The terminal is real, over pipes of text (io.StringIO), so its lines are the program's."""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chatclient.chat import Conversation
from chatclient.config import Config
from chatclient.errors import ChatError, ConnectionLost
from chatclient.handshake import Mode, Role
from chatclient.messages import Action, Chat, Joined, Members, Message, Person, Terminate
from chatclient.peer import Established, Failed, MessageReceived
from chatclient.terminal import Later, Terminal

LAPTOP = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key().public_bytes_raw()


class FakePeer:
    def __init__(self, role: Role) -> None:
        self.role = role


class FakeLink:
    """A connection as the conversation sees it."""

    def __init__(self, role: Role = Role.LISTENER) -> None:
        self.peer = FakePeer(role)
        self.address = ("127.0.0.1", 40000)


class FakeNet:
    """The network thread as the input loop uses it: what is sent, and the goodbye."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.goodbyes: list[str] = []
        self.finished = threading.Event()
        self.unheard: list[str] = []  # peers that never closed their end after the goodbye

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def leave(self, goodbye: str) -> None:
        self.goodbyes.append(goodbye)
        self.finished.set()

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        command(1.0)


class Screen:
    """A conversation of desktop's, over a terminal whose input is `typed`."""

    def __init__(self, tmp_path: Path, typed: str = "") -> None:
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.stdin = io.StringIO(typed)  # input() reads sys.stdin: the tests swap it in
        self.term = Terminal(self.stdin, self.stdout, self.stderr)
        config = Config(path=str(tmp_path / "config.ini"), username="desktop")
        self.conversation = Conversation(self.term, config, program="chatclient")
        self.link = FakeLink()

    def events(self, *events: object) -> None:
        self.conversation.connection_events(self.link, list(events))  # type: ignore[arg-type]
        self.term.flush()

    def arrive(self, name: str = "laptop") -> None:
        self.events(Established(name, LAPTOP, Mode.SHARED_KEY))

    @property
    def out(self) -> list[str]:
        self.term.flush()
        return self.stdout.getvalue().splitlines()

    @property
    def err(self) -> list[str]:
        return self.stderr.getvalue().splitlines()


def test_a_peer_arrives_talks_and_leaves_with_a_goodbye(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    screen.events(MessageReceived(Chat("hello there")))
    screen.events(MessageReceived(Action("waves")))
    screen.events(MessageReceived(Terminate("see you")))
    assert screen.out[:2] == ["Connected by ('127.0.0.1', 40000)", "laptop joined the chat."]
    assert screen.out[-4:] == [
        "laptop says: hello there",
        "* laptop waves",
        "laptop left the chat: see you",
        "Connection closed by peer.",
    ]
    assert screen.conversation.status() == 0
    pinned = (tmp_path / "known_peers").read_text(encoding="utf-8").splitlines()[-1]
    assert pinned.startswith("laptop ed25519:") and pinned.endswith(" unverified")


def test_what_a_peer_says_cannot_move_the_cursor_or_fake_a_line(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    screen.events(MessageReceived(Chat("hi\x1b[2J\rConnection closed by peer.")))
    [line] = [line for line in screen.out if line.startswith("laptop says:")]
    assert "\x1b" not in line and "\r" not in line
    assert "Connection closed by peer." not in screen.out


def test_a_lost_connection_ends_the_chat_with_status_1(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    screen.events(Failed(ConnectionLost("the peer went silent")))
    assert screen.out[-1] == "Connection lost: the peer went silent"
    assert screen.conversation.status() == 1


def test_a_failure_before_anyone_joined_is_the_reason_to_stop(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.events(Failed(ChatError("your fernet_keys differ")))
    assert screen.conversation.started.is_set()
    with pytest.raises(ChatError, match="your fernet_keys differ"):
        screen.conversation.wait_until_started(listening=False)


def test_a_void_invite_before_anyone_came_closes_only_the_invite(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.conversation.invite_void("the invite code 7-a-b is void")
    screen.term.flush()
    assert screen.err == ["the invite code 7-a-b is void. Type /invite for a new code"]
    assert not screen.conversation.started.is_set()  # still waiting for someone
    assert screen.conversation.failure is None


@pytest.fixture
def typing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Screen]:
    """typing(lines) -> a Screen whose input() reads those lines."""

    def screen(typed: str) -> Screen:
        made = Screen(tmp_path, typed)
        monkeypatch.setattr("sys.stdin", made.stdin)
        return made

    return screen


def test_typed_lines_are_sent_and_exit_says_goodbye(typing: Callable[[str], Screen]) -> None:
    typed = "hello\n/me waves\n//slash at the start\n   \n/nonsense\nexit\nbye now\n"
    screen = typing(typed)
    screen.arrive()
    net = FakeNet()
    assert screen.conversation.run(net) == 0  # type: ignore[arg-type]
    assert net.sent == [Chat("hello"), Action("waves"), Chat("/slash at the start")]
    assert net.goodbyes == ["bye now"]
    assert screen.out[-6:] == [
        "Sent CHAT message.",
        "Sent ACTION message.",
        "Sent CHAT message.",
        "Enter goodbye text (optional): ",
        "Sent TERMINATE message.",
        "Connection closed by you.",
    ]
    assert screen.err == [
        "unknown command /nonsense: type /help for the commands, or start with // to send a "
        "line beginning with /"
    ]


def test_end_of_input_leaves_without_a_goodbye(typing: Callable[[str], Screen]) -> None:
    screen = typing("one line\n")
    screen.arrive()
    net = FakeNet()
    assert screen.conversation.run(net) == 0  # type: ignore[arg-type]
    assert net.sent == [Chat("one line")]
    assert net.goodbyes == [""]


def test_a_line_too_long_for_the_protocol_is_refused_not_queued(
    typing: Callable[[str], Screen],
) -> None:
    screen = typing("x" * 70_000 + "\n")
    screen.arrive()
    net = FakeNet()
    screen.conversation.run(net)  # type: ignore[arg-type]
    assert net.sent == []
    assert len(screen.err) == 1 and screen.err[0].startswith("error: ")


def test_tab_completes_commands(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    assert screen.conversation.completions("/he") == ["/help "]
    assert "/send " in screen.conversation.completions("/se")


# --- What a newcomer tripped over (issue 22) -------------------------------------------


def member_screen(tmp_path: Path, destination: str | None = None) -> Screen:
    """desktop as a member of laptop's chat (connected, not hosting)."""
    screen = Screen(tmp_path)
    screen.conversation.destination = destination
    screen.link = FakeLink(Role.CONNECTOR)
    screen.arrive()
    return screen


def test_a_member_is_told_who_can_invite_and_tab_does_not_offer_it(tmp_path: Path) -> None:
    screen = member_screen(tmp_path)
    screen.conversation.net = FakeNet()  # type: ignore[assignment]
    screen.conversation.invite("")
    screen.term.flush()
    assert screen.err == [
        "only the host (the one who listens) can make invite codes: ask them to type /invite"
    ]
    assert screen.conversation.completions("/in") == []
    host = Screen(tmp_path)
    host.arrive()
    assert host.conversation.completions("/in") == ["/invite "]


def test_a_void_invite_during_a_chat_points_to_invite_not_a_restart(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    screen.conversation.invite_void("the invite code 7-a-b is void")
    screen.term.flush()
    assert screen.err == ["the invite code 7-a-b is void. Type /invite for a new code"]
    assert screen.conversation.outcome is None  # the chat goes on


def test_verified_reads_the_same_in_who_and_verify(tmp_path: Path) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    screen.conversation.show_peer("")
    assert ", not verified. Identity: " in screen.out[-1]
    screen.conversation.verify("")
    assert screen.out[-1] == "If they match, type /verify laptop ok to remember them as verified."
    screen.conversation.verify("ok")
    screen.conversation.show_peer("")
    assert screen.out[-1].startswith("Talking to laptop at 127.0.0.1:40000, connected 0 min ")
    assert ", verified. Identity: " in screen.out[-1]
    screen.conversation.verify("laptop")
    assert screen.out[-1] == (
        f"laptop is already verified (in {tmp_path / 'known_peers'}): nothing more to do."
    )
    assert not any("/verify laptop ok" in line for line in screen.out[-6:])
    screen.conversation.verify("ok")  # once more: nothing changes, and it says so
    assert screen.out[-1] == f"laptop is already verified in {tmp_path / 'known_peers'}."


def test_who_through_a_proxy_names_the_peer_not_the_proxy(tmp_path: Path) -> None:
    screen = member_screen(tmp_path, "peer.example:50233 through the proxy at 127.0.0.1:1080")
    screen.conversation.show_peer("")
    assert screen.out[-1].startswith(
        "Talking to laptop at peer.example:50233 through the proxy at 127.0.0.1:1080, connected "
    )


def test_private_words_name_who_they_went_to(typing: Callable[[str], Screen]) -> None:
    screen = typing("/msg alice I think we should tell desktop\n")
    screen.link = FakeLink(Role.CONNECTOR)
    screen.arrive("desktop")
    for name in ("alice", "alice I"):  # two members, one name the start of the other
        host = screen.conversation.people["desktop"]
        screen.conversation.people[name] = dataclasses.replace(host, name=name, host=False)
    net = FakeNet()
    screen.conversation.run(net)  # type: ignore[arg-type]
    assert "Sent to alice I privately." in screen.out  # the longest name: said, not hidden
    assert "Sent CHAT message." not in screen.out


class StalledScreen(io.StringIO):
    """A stdout that takes nothing until `go` is set (a terminal paused with Ctrl-S)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        assert self.go.wait(10)
        return super().write(text)


def test_lines_waiting_for_a_stalled_screen_are_bounded_in_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import chatclient.terminal

    monkeypatch.setattr(chatclient.terminal, "MAX_WAITING_CHARACTERS", 1000)
    screen = StalledScreen()
    term = Terminal(io.StringIO(), screen, io.StringIO())
    first = threading.Thread(target=term.show, args=("x" * 400,))  # from another thread
    first.start()
    first.join(5)
    assert screen.writing.wait(5)  # the printer holds the first line, stuck in write()

    def more() -> None:
        for line in ("a" * 400, "b" * 400, "c" * 400):  # the third would pass 1000
            term.show(line)

    sender = threading.Thread(target=more)
    sender.start()
    sender.join(5)
    assert not sender.is_alive()  # the network thread never waits for the screen
    screen.go.set()
    term.wait_shown(5)
    shown = screen.getvalue().splitlines()
    assert shown[:3] == ["x" * 400, "a" * 400, "b" * 400]
    assert "c" * 400 not in shown


def test_a_host_cannot_put_a_second_person_under_a_name_already_on_screen(
    tmp_path: Path,
) -> None:
    screen = member_screen(tmp_path)  # desktop, a member of laptop's room
    stranger = bytes(range(100, 132))
    screen.events(MessageReceived(Joined(Person("desktop", stranger, "10.0.0.9:1"))))
    screen.events(MessageReceived(Joined(Person("laptop", stranger, "10.0.0.9:2"))))
    screen.events(MessageReceived(Members((Person("laptop", stranger, "10.0.0.9:3"),))))
    assert screen.out[-3:] == [
        "warning: the host announced desktop joining, but desktop is your own name: refused "
        "(nothing said under that name by the newcomer is shown)",
        "warning: the host announced laptop joining, but laptop is the name of someone already "
        "in the chat: refused (nothing said under that name by the newcomer is shown)",
        "warning: the host announced laptop in the room, but laptop is the name of someone "
        "already in the chat: refused (nothing said under that name by the newcomer is shown)",
    ]
    assert not any("joined the chat" in line for line in screen.out)
    assert screen.conversation.people["laptop"].identity == LAPTOP  # the host kept its own
    pinned = (tmp_path / "known_peers").read_text(encoding="utf-8")
    assert base64.b64encode(stranger).decode() not in pinned and "desktop ed25519" not in pinned


def test_a_look_alike_name_counts_as_the_name_it_imitates(tmp_path: Path) -> None:
    screen = member_screen(tmp_path)  # desktop, a member of laptop's room
    screen.events(MessageReceived(Joined(Person("l\u0430ptop", LAPTOP, "10.0.0.9:1"))))
    assert screen.out[-1].startswith("warning: the host announced l\u0430ptop joining, but ")
    assert "joined the chat" not in screen.out[-1]


def test_a_peers_text_is_escaped_where_it_is_printed_not_by_the_network_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = Screen(tmp_path)
    screen.arrive()
    handed: list[object] = []
    monkeypatch.setattr(screen.term, "show", lambda line, stream=None: handed.append(line))
    screen.conversation.connection_events(
        screen.link,  # type: ignore[arg-type]
        [MessageReceived(Chat("\x01" * 65536)), MessageReceived(Action("waves"))],
    )
    assert [type(line) for line in handed] == [Later, Later]  # nothing escaped yet
    assert [line.make() for line in handed] == [  # type: ignore[attr-defined]
        "laptop says: \\x01 \u00d765536",
        "* laptop waves",
    ]

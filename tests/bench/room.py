"""A room's fan-out: a host relaying one member's signed words to the others, against the
host's one-core limit, with and without a stopped member.
"""

from __future__ import annotations

import base64
import os
import select
import signal
import socket
import time
from collections import deque

from cryptography.fernet import Fernet

from bench.common import (
    HOST,
    INDEX_DIGITS,
    SOCKET_SECONDS,
    STEP_SECONDS,
    TEXT_SIZE,
    BenchError,
    Counts,
    WorkerQueue,
    peer_cpus,
    peers,
)
from bench.users import BenchUser, chat_texts, connect_plain, leave_chat, open_listener, shared_psk
from chatclient.handshake import ROOM_ID_SIZE, Role
from chatclient.messages import Form, FrameDecoder, Said, decode_payload
from chatclient.network import Network
from chatclient.peer import Established, Event, Failed, MessageReceived, PeerProtocol, Stage
from chatclient.room import Voice
from chatclient.sockets import connect_socket

# The room: a host relays one member's burst to every other member.

ROOM_ID = bytes(range(ROOM_ID_SIZE))


class RoomHost(BenchUser):
    """The host's user: takes the relayed words (the program would print them) and hands
    the sender's goodbye to the main thread."""

    def __init__(self) -> None:
        super().__init__()
        self.heard = 0

    def handle(self, event: Event) -> bool:
        if isinstance(event, MessageReceived) and isinstance(event.message, Said):
            self.heard += 1
            return True
        return not isinstance(event, (MessageReceived, Failed))


def host_room(out: WorkerQueue, capacity: int) -> None:
    """Listener: host a room of `capacity` members until the sender says goodbye."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    user = RoomHost()
    identity = Ed25519PrivateKey.generate()
    net = Network(shared_psk(), "host", user, identity=identity, room=ROOM_ID, capacity=capacity)
    user.net = net
    net.listen(open_listener(out))
    net.start()
    while not isinstance(user.next_event(STEP_SECONDS), MessageReceived):
        pass  # the sender's goodbye: everything before it is relayed
    out.put(("result", user.heard))
    net.finished.wait(STEP_SECONDS)  # keeps relaying until the parent ends this process


def room_receivers(out: WorkerQueue, port: int, count: int, messages: int, first: int) -> None:
    """`count` members in one process, each a PeerProtocol over its own socket; what each
    received of the burst, and when its first and last message came.

    Decrypting every copy here would make this process, not the host, the limit (on two
    cores the members' decrypting equals the host's encrypting), so a member decrypts until
    the burst's first message, then counts frames and opens the last one: its index, and
    its sequence number against the first's, prove that every message came, in order.
    """
    members = [join_room(port, f"m{first + n}") for n in range(count)]
    out.put(("joined", count))
    deadline = time.monotonic() + STEP_SECONDS
    waiting = {member.sock.fileno(): member for member in members}
    while waiting and time.monotonic() < deadline:
        ready, _, _ = select.select(list(waiting), [], [], 1.0)
        for fd in ready:
            member = waiting[fd]
            if member.take(messages):
                del waiting[fd]
    out.put(("result", [member.report(messages) for member in members]))


class RoomMember:
    """One receiving member of the room benchmark (see room_receivers)."""

    def __init__(self, sock: socket.socket, peer: PeerProtocol) -> None:
        self.sock, self.peer = sock, peer
        self.frames: FrameDecoder | None = None  # once counting: the protocol's own decoder
        self.counted = 0  # frames since the burst's first message, that one included
        self.last_index = -1
        self.first = self.last = 0.0
        keys = peer._keys  # the session's receiving key, to open the last frame
        assert keys is not None
        self.fernet = Fernet(base64.urlsafe_b64encode(keys.recv_key))

    def take(self, messages: int) -> bool:
        """Read what is there; True once the burst's last message (or the end) came."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return False
        if not data:
            return True
        if self.frames is None:  # still decrypting: until the burst's first message
            self.peer.receive_data(data, time.monotonic())
            for event in self.peer.events():
                if isinstance(event, MessageReceived) and isinstance(event.message, Said):
                    if not self.counted:
                        self.first = time.perf_counter()
                    self.counted += 1
                    self.last_index = int(event.message.words.text[:INDEX_DIGITS])
            if self.counted:  # what is left of this read stays in the protocol's decoder
                self.frames = self.peer._decoder
                return self.done(messages)
            return False
        self.frames.feed(data)
        recent: deque[bytes] = deque(maxlen=8)  # notices (the sender left) may follow
        for body in self.frames.frames():
            self.counted += 1
            recent.append(body)
        if self.counted >= messages:
            for body in reversed(recent):
                _, _, message = decode_payload(self.fernet.decrypt(body))
                if isinstance(message, Said):
                    self.last_index = int(message.words.text[:INDEX_DIGITS])
                    break
        return self.done(messages)

    def done(self, messages: int) -> bool:
        if self.last_index == messages - 1:
            self.last = time.perf_counter()
            return True
        return False

    def report(self, messages: int) -> tuple[int, float, float]:
        """How many arrived in order (all, when the last one's index is the last), and when
        the first and last came."""
        if self.last_index == messages - 1:
            return min(self.counted, messages), self.first, self.last
        return max(self.last_index, 0), self.first, self.last


def join_room(port: int, name: str) -> RoomMember:
    """A member in the room: handshake done, the socket made non-blocking."""
    sock = connect_plain(port)
    peer = PeerProtocol(Role.CONNECTOR, shared_psk(), name, time.monotonic())
    sock.sendall(peer.data_to_send())
    while peer.stage is not Stage.OPEN:
        data = sock.recv(65536)
        if not data:
            raise BenchError("the host closed a member's connection during its handshake")
        peer.receive_data(data, time.monotonic())
        if sent := peer.data_to_send():
            sock.sendall(sent)
        for event in peer.events():
            if isinstance(event, Failed):
                raise BenchError(f"a member could not join: {event.error}")
    sock.setblocking(False)
    return RoomMember(sock, peer)


def room_sender(out: WorkerQueue, port: int, messages: int) -> None:
    """The member who talks: signs and sends `messages` words as fast as it can."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    identity = Ed25519PrivateKey.generate()
    user = BenchUser()
    net = Network(shared_psk(), "sender", user, identity=identity)
    user.net = net
    net.connect(connect_socket(HOST, port, SOCKET_SECONDS))
    net.start()
    joined = user.expect(Established)
    user.expect(MessageReceived)  # MEMBERS: everyone is in
    voice = Voice(identity, "sender", joined.identity, joined.room, joined.nonce)
    words = [voice.say(text, Form.CHAT) for text in chat_texts(messages)]
    for say in words:
        net.send(say)
    leave_chat(net)
    out.put(("result", messages))


def room_baseline(count: int, members: int) -> float:
    """The host's one-core limit: decrypt each message once and encrypt it for each other
    member (members - 1 Fernet keys), in one process; messages/s."""
    keys = [Fernet(Fernet.generate_key()) for _ in range(members)]
    token = keys[0].encrypt(b"x" * TEXT_SIZE)
    start = time.perf_counter()
    for _ in range(count):
        plain = keys[0].decrypt(token)
        for key in keys[1:]:
            key.encrypt(plain)
    return count / (time.perf_counter() - start)


def room_run(counts: Counts, stop_one: bool) -> tuple[float, int]:
    """One member's burst through a host to every other member: messages/s (first to last
    arrival anywhere) and how many deliveries were lost. With `stop_one`, one member is
    stopped (SIGSTOP) as the burst starts, and only the others are counted."""
    members, messages = counts.room_members, counts.room_messages
    host_cpu, member_cpu = peer_cpus()
    with peers() as pool:
        host = pool.start(host_room, members, cpu=host_cpu)
        port = host.receive("port")
        listeners = pool.start(room_receivers, port, members - 2, messages, 0, cpu=member_cpu)
        listeners.receive("joined")
        lone = pool.start(room_receivers, port, 1, messages, members - 2, cpu=member_cpu)
        lone.receive("joined")
        sender = pool.start(room_sender, port, messages, cpu=member_cpu)
        if stop_one:
            os.kill(lone.process.pid, signal.SIGSTOP)
        try:
            sender.receive("result")
            host.receive("result")
            seen = listeners.receive("result")
            if not stop_one:
                seen += lone.receive("result")
        finally:
            if stop_one:
                lone.process.kill()
    delivered = sum(count for count, _, _ in seen)
    first, last = min(f for _, f, _ in seen), max(t for _, _, t in seen)
    rate = (messages - 1) / (last - first) if last > first else 0.0
    return rate, messages * len(seen) - delivered


def measure_room(counts: Counts) -> dict[str, float]:
    """A room's fan-out, the host's one-core limit, and the same with one member stopped."""
    rate, lost = room_run(counts, stop_one=False)
    stalled, stalled_lost = room_run(counts, stop_one=True)
    return {
        "room_members": counts.room_members,
        "room_messages": counts.room_messages,
        "room_delivered_msgs_per_s": rate,
        "room_baseline_msgs_per_s": room_baseline(counts.room_messages, counts.room_members),
        "room_lost": lost + stalled_lost,
        "room_stalled_msgs_per_s": stalled,
        "room_stalled_ratio": stalled / rate if rate else 0.0,
    }

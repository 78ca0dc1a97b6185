"""The transfer desk (chatclient/transfers.py) without sockets: a fake network thread
carries its messages and runs what its disk threads post, so every step of an offer,
an answer, the chunks and the SHA-256 check is seen in order. Files live in tmp_path."""

from __future__ import annotations

import hashlib
import os
import queue
from collections.abc import Callable
from pathlib import Path

import pytest

from chatclient.disk import (
    FILE_WINDOW,
    MAX_OPEN_OFFERS,
    MAX_RELAYED_OFFERS,
    RELAYED_OFFER_SECONDS,
    PreparedFile,
    file_fingerprint,
    file_stamp,
    open_for_sending,
)
from chatclient.errors import ProtocolError
from chatclient.handshake import Role
from chatclient.messages import (
    CHUNK_SIZE,
    FieldReader,
    FileAccept,
    FileCancel,
    FileCredit,
    FileDone,
    FileOffer,
    FileReceived,
    FileReject,
    Message,
)
from chatclient.peer import ChunkReceived
from chatclient.transfers import FileDesk

WAIT = 15.0  # seconds any disk thread may take to report


class FakePeer:
    """The parts of a PeerProtocol the desk uses: who is on the link, and framing."""

    def __init__(self, name: str, role: Role) -> None:
        self.peer_name, self.role = name, role
        self.peer_identity = hashlib.sha256(name.encode()).digest()
        self.failed: list[str] = []
        self.chunks: list[tuple[int, int, bytes]] = []
        self.sent: list[Message] = []

    def connection_failed(self, reason: str) -> None:
        self.failed.append(reason)

    def send_chunk(self, transfer: int, offset: int, data: bytes, now: float) -> bytes:
        self.chunks.append((transfer, offset, data))
        return b"c"

    def send(self, message: Message, now: float) -> bytes:
        self.sent.append(message)
        return b"m"


class FakeLink:
    """A connection as the desk sees it (hashable by identity, like Link)."""

    def __init__(self, peer: FakePeer) -> None:
        self.peer = peer
        self.outgoing = bytearray()


class FakeCarrier:
    """The network thread: records what the desk delivers and runs what is posted."""

    def __init__(self, links: dict[str, FakeLink]) -> None:
        self.links = links
        self.delivered: list[tuple[FakeLink, Message]] = []
        self.posted: queue.Queue[Callable[[float], None]] = queue.Queue()
        self.nudged = 0

    @property
    def username(self) -> str:
        return "desktop"

    def post(self, command: Callable[[float], None], *, urgent: bool = False) -> None:
        self.posted.put(command)

    def deliver(self, link: FakeLink, message: Message, now: float) -> None:
        self.delivered.append((link, message))

    def nudge(self, link: FakeLink) -> None:
        """From the reader thread: a chunk is ready (wakes run_until, as it wakes the loop)."""
        self.nudged += 1
        self.posted.put(lambda now: None)

    def low_water(self, link: FakeLink) -> None:
        pass

    def route_to(self, name: str, is_host: bool) -> tuple[FakeLink, str] | None:
        link = self.links.get(name)
        return (link, "") if link is not None else None

    def run_until(self, done: Callable[[], bool]) -> None:
        """Run posted commands, as the network thread would, until `done()` holds."""
        while not done():
            try:
                command = self.posted.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError("the desk's threads reported nothing in time") from None
            command(1.0)

    def of_kind(self, kind: type[Message]) -> list[Message]:
        return [message for _, message in self.delivered if isinstance(message, kind)]


class FakeUser:
    """The conversation: the lines the desk shows."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.status = ""

    def file_lines(self, lines: list[str], error: bool = False) -> None:
        (self.errors if error else self.lines).extend(lines)

    def file_status(self, text: str) -> None:
        self.status = text

    def identity_of(self, name: str) -> bytes | None:
        return None

    def sign_offer(self, offer: Message, to: str) -> Message:
        return offer

    def offer_forgery(self, offer: Message) -> str | None:
        return None

    def sign_done(self, to: str, origin: int, digest: bytes) -> bytes:
        return bytes(64)

    def done_forgery(self, author: str, origin: int, done: Message) -> bool:
        return False


class Desk:
    """A desk on the listener's side of one connection with laptop."""

    def __init__(self, folder: Path) -> None:
        self.peer = FakePeer("laptop", Role.LISTENER)
        self.link = FakeLink(self.peer)
        self.carrier = FakeCarrier({"laptop": self.link})
        self.user = FakeUser()
        self.downloads = folder / "Downloads"
        self.downloads.mkdir()
        self.desk = FileDesk(self.carrier, self.user, str(self.downloads), plain_progress=True)

    def receive(self, message: Message) -> None:
        self.desk.message(self.link, message, 1.0)  # type: ignore[arg-type]

    def chunk(self, transfer: int, offset: int, data: bytes) -> None:
        self.desk.chunk(self.link, ChunkReceived(transfer, offset, data), 1.0)  # type: ignore[arg-type]


@pytest.fixture
def desk(tmp_path: Path) -> Desk:
    return Desk(tmp_path)


def offered(desk: Desk, data: bytes, name: str = "holiday.jpg") -> None:
    """An offer of `data` (its fingerprint: any 32 bytes that name it)."""
    desk.receive(FileOffer(1, len(data), sha(data), name))


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_an_offer_is_shown_with_the_commands_that_answer_it(desk: Desk) -> None:
    offered(desk, b"x" * 2_400_000)
    assert desk.user.lines == [
        f"Files you accept are saved in {desk.downloads} (--downloads DIR changes it).",
        "laptop offers holiday.jpg (2.4 MB): /accept 1 or /reject 1",
    ]
    desk.receive(FileOffer(2, 5, bytes(32), "notes.txt"))
    assert desk.user.lines[2:] == ["laptop offers notes.txt (5 bytes): /accept 2 or /reject 2"]
    assert desk.carrier.delivered == []  # nothing is answered until the person does


def test_accepted_data_is_written_checked_and_saved_then_the_sender_is_told(desk: Desk) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 1234)
    offered(desk, data)
    desk.desk.accept(None, 1.0)  # the oldest waiting offer
    [accept] = desk.carrier.of_kind(FileAccept)
    assert accept == FileAccept(1, 0, FILE_WINDOW)
    assert desk.user.lines[-1] == f"Receiving holiday.jpg from laptop into {desk.downloads}."
    for offset in range(0, len(data), CHUNK_SIZE):
        desk.chunk(1, offset, data[offset : offset + CHUNK_SIZE])
    desk.receive(FileDone(1, sha(data)))
    desk.carrier.run_until(lambda: bool(desk.carrier.of_kind(FileReceived)))
    saved = desk.downloads / "holiday.jpg"
    assert desk.user.lines[-1] == (
        f"Received holiday.jpg from laptop (197.8 kB, SHA-256 verified): saved as {saved}"
    )
    assert saved.read_bytes() == data
    assert sorted(p.name for p in desk.downloads.iterdir()) == ["holiday.jpg"]  # no .part left
    assert saved.stat().st_mode & 0o777 == 0o600  # the person widens it if they want


def test_a_pause_keeps_what_came_and_the_next_offer_says_so_and_resumes(desk: Desk) -> None:
    """Issue 20: /pause keeps the partial file; /cancel discards it."""
    data = os.urandom(3 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, data[:CHUNK_SIZE])
    desk.desk.pause(1, 1.0)
    assert desk.carrier.delivered[-1] == (desk.link, FileCancel(1, False, "paused", True))
    assert desk.user.lines[-1].startswith("Paused holiday.jpg (33%, 65.5 kB kept): it resumes")
    desk.desk.finish_writing(WAIT)
    desk.receive(FileOffer(2, len(data), sha(data), "holiday.jpg"))
    assert desk.user.lines[-1] == (
        "laptop offers holiday.jpg (196.6 kB, 33% already here): /accept 2 to resume or /reject 2"
    )
    desk.desk.accept(2, 2.0)
    assert desk.carrier.of_kind(FileAccept)[-1] == FileAccept(2, CHUNK_SIZE, FILE_WINDOW)
    desk.desk.pause(1, 2.0)  # an ended one: said, nothing sent
    assert desk.user.errors[-1] == "try again: 1 is not moving (paused): /files"


def test_a_pause_from_the_sender_keeps_the_file_and_a_cancel_does_not(desk: Desk) -> None:
    data = os.urandom(2 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, data[:CHUNK_SIZE])
    desk.receive(FileCancel(1, True, "paused", keep=True))
    assert desk.user.lines[-1].startswith("laptop paused holiday.jpg at 50%: what came is kept")
    desk.desk.finish_writing(WAIT)
    assert sorted(p.name for p in desk.downloads.iterdir()) == [
        "holiday.jpg.part",
        "holiday.jpg.part.meta",
    ]
    desk.receive(FileOffer(2, len(data), sha(data), "holiday.jpg"))
    desk.desk.accept(2, 2.0)
    desk.chunk(2, CHUNK_SIZE, data[CHUNK_SIZE:])
    desk.receive(FileCancel(2, True, "changed my mind"))
    desk.desk.finish_writing(WAIT)
    assert list(desk.downloads.iterdir()) == []  # a cancel discards
    with pytest.raises(ProtocolError, match="flags"):
        FileCancel.decode_body(FieldReader(bytes(4) + b"\x01\x02", "FILECANCEL"))


def test_a_resume_that_does_not_match_starts_over_once_then_fails(desk: Desk) -> None:
    """Issue 20: the offer carries a fingerprint, not the SHA-256. A kept part that turns
    out to be another file (same fingerprint) is received again from zero, once."""
    kept, data = os.urandom(CHUNK_SIZE), os.urandom(2 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, kept)  # not the start of `data`: the sender's file changed unseen
    desk.desk.pause(1, 1.0)
    desk.desk.finish_writing(WAIT)
    desk.receive(FileOffer(2, len(data), sha(data), "holiday.jpg"))
    desk.desk.accept(2, 2.0)
    assert desk.carrier.of_kind(FileAccept)[-1] == FileAccept(2, CHUNK_SIZE, FILE_WINDOW)
    desk.chunk(2, CHUNK_SIZE, data[CHUNK_SIZE:])
    desk.receive(FileDone(2, sha(data)))
    desk.carrier.run_until(lambda: desk.carrier.of_kind(FileAccept)[-1].offset == 0)  # type: ignore[attr-defined]
    assert desk.carrier.of_kind(FileAccept)[-1] == FileAccept(2, 0, FILE_WINDOW)
    assert desk.user.lines[-1] == (
        "holiday.jpg did not match after the resume: receiving it again from the start "
        "(the part kept was not this file)."
    )
    desk.chunk(2, 0, data[:CHUNK_SIZE])
    desk.chunk(2, CHUNK_SIZE, data[CHUNK_SIZE:])
    desk.receive(FileDone(2, sha(data)))
    desk.carrier.run_until(lambda: bool(desk.carrier.of_kind(FileReceived)))
    assert (desk.downloads / "holiday.jpg").read_bytes() == data
    assert sorted(p.name for p in desk.downloads.iterdir()) == ["holiday.jpg"]


def test_a_second_mismatch_after_starting_over_deletes_the_file(desk: Desk) -> None:
    data = os.urandom(2 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, data[:CHUNK_SIZE])
    desk.desk.pause(1, 1.0)
    desk.desk.finish_writing(WAIT)
    desk.receive(FileOffer(2, len(data), sha(data), "holiday.jpg"))
    desk.desk.accept(2, 2.0)
    desk.chunk(2, CHUNK_SIZE, data[CHUNK_SIZE:])
    desk.receive(FileDone(2, sha(b"other")))
    desk.carrier.run_until(lambda: desk.carrier.of_kind(FileAccept)[-1].offset == 0)  # type: ignore[attr-defined]
    desk.chunk(2, 0, data)
    desk.receive(FileDone(2, sha(b"other")))
    desk.carrier.run_until(lambda: bool(desk.user.errors))
    assert desk.user.errors == [
        "error: holiday.jpg from laptop does not match the SHA-256 it was sent with: "
        "the partial file was deleted"
    ]
    desk.desk.finish_writing(WAIT)
    assert list(desk.downloads.iterdir()) == []


def test_a_sender_sends_a_resumed_file_again_from_zero_once_when_asked(
    desk: Desk, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    fd, size = open_for_sending(str(path))
    stamp = file_stamp(fd)
    prepared = PreparedFile(str(path), "photo.png", fd, size, sha(data), stamp)
    desk.desk.offer(prepared, [("laptop", False)], 1.0)
    desk.receive(FileAccept(1, CHUNK_SIZE, 4 * CHUNK_SIZE))  # a resume

    def pump_until(done: Callable[[], bool]) -> None:
        def pumped() -> bool:
            while desk.desk.pump(desk.link, 1.0):  # type: ignore[arg-type]
                pass
            return done()

        desk.carrier.run_until(pumped)

    pump_until(lambda: bool(desk.peer.sent))
    assert desk.peer.sent == [FileDone(1, sha(data))]  # the SHA-256 covers the whole file
    assert [offset for _, offset, _ in desk.peer.chunks] == [CHUNK_SIZE]
    desk.receive(FileAccept(1, 0, 4 * CHUNK_SIZE))  # it did not match: from zero
    assert desk.user.lines[-1] == (
        "laptop is receiving photo.png again from the start (what they had kept did not match)."
    )
    pump_until(lambda: len(desk.peer.sent) == 2)
    assert [offset for _, offset, _ in desk.peer.chunks] == [CHUNK_SIZE, 0, CHUNK_SIZE]
    assert desk.peer.sent[1] == FileDone(1, sha(data))
    desk.receive(FileAccept(1, 0, 4 * CHUNK_SIZE))  # not twice
    assert desk.peer.failed == ["it accepted file 1 twice or past its end"]


def test_stray_messages_after_the_end_are_named_and_never_cost_the_file(desk: Desk) -> None:
    data = os.urandom(CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, data)
    desk.receive(FileDone(1, sha(data)))  # the check starts on the disk thread
    desk.chunk(1, len(data), b"one more")
    desk.receive(FileDone(1, sha(data)))
    assert desk.user.errors == [
        "laptop sent data for holiday.jpg after its end: ignored",
        "laptop said twice that holiday.jpg was all sent: ignored",
    ]
    desk.carrier.run_until(lambda: bool(desk.carrier.of_kind(FileReceived)))
    assert (desk.downloads / "holiday.jpg").read_bytes() == data
    assert desk.carrier.of_kind(FileCancel) == []


def test_data_that_does_not_match_the_offered_hash_is_deleted(desk: Desk) -> None:
    data = b"the real thing" * 1000
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, 0, data)
    desk.receive(FileDone(1, sha(b"something else")))
    desk.carrier.run_until(lambda: bool(desk.user.errors))
    assert desk.user.errors == [
        "error: holiday.jpg from laptop does not match the SHA-256 it was sent with: "
        "the partial file was deleted"
    ]
    [cancel] = desk.carrier.of_kind(FileCancel)
    assert cancel == FileCancel(1, False, "its SHA-256 did not match: deleted")
    desk.desk.finish_writing(WAIT)
    assert list(desk.downloads.iterdir()) == []


def test_data_before_the_accept_ends_the_transfer_and_nothing_is_written(desk: Desk) -> None:
    offered(desk, b"abc")
    desk.chunk(1, 0, b"abc")
    assert desk.user.errors == [
        "error: laptop sent data for holiday.jpg before it was accepted: transfer ended, "
        "nothing saved"
    ]
    assert desk.carrier.of_kind(FileCancel) == [
        FileCancel(1, False, "laptop sent data for holiday.jpg before it was accepted")
    ]
    assert list(desk.downloads.iterdir()) == []


def test_data_out_of_place_or_beyond_the_credit_is_refused(desk: Desk) -> None:
    data = os.urandom(2 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(1, 1.0)
    desk.chunk(1, CHUNK_SIZE, data[CHUNK_SIZE:])  # skips the first chunk
    assert desk.user.errors[-1].startswith(
        "error: laptop sent data for holiday.jpg out of place (at 65536, not 0)"
    )


def test_a_rejected_offer_is_answered_and_listed(desk: Desk) -> None:
    offered(desk, b"abc")
    desk.desk.reject(1, 1.0)
    assert desk.carrier.of_kind(FileReject) == [FileReject(1)]
    assert desk.user.lines[-1] == "Declined holiday.jpg from laptop."
    desk.desk.listing()
    assert desk.user.lines[-1] == "Files:\n  1. holiday.jpg (3 bytes) from laptop: declined"


def test_a_flood_of_offers_is_bounded_and_said_once(desk: Desk) -> None:
    for number in range(1, MAX_OPEN_OFFERS + 11):
        desk.receive(FileOffer(number, 1, bytes(32), f"f{number}"))
    assert len(desk.user.lines) == 1 + MAX_OPEN_OFFERS  # the folder, then each offer
    assert len(desk.carrier.of_kind(FileReject)) == 10
    assert desk.user.errors == [
        f"laptop offered over {MAX_OPEN_OFFERS} files at once: the rest are declined until "
        "you answer some"
    ]


def test_a_name_offered_twice_under_one_number_fails_the_connection(desk: Desk) -> None:
    offered(desk, b"abc")
    offered(desk, b"abc")
    assert desk.peer.failed == ["it offered two files as number 1"]


def test_a_sent_file_goes_out_in_chunks_within_the_credit_then_done(
    desk: Desk, tmp_path: Path
) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 10)
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    fd, size = open_for_sending(str(path))
    stamp = file_stamp(fd)
    print_of = file_fingerprint(fd, size, stamp)
    desk.desk.offer(
        PreparedFile(str(path), "photo.png", fd, size, print_of, stamp), [("laptop", False)], 1.0
    )
    [offer] = desk.carrier.of_kind(FileOffer)
    assert offer == FileOffer(1, size, print_of, "photo.png", "")
    assert desk.user.lines[-1] == "Offered photo.png (131.1 kB) to laptop."
    desk.receive(FileAccept(1, 0, CHUNK_SIZE))  # credit for one chunk only
    assert desk.user.lines[-1] == "laptop accepted photo.png."

    def send_until(done: Callable[[], bool]) -> None:
        """Pump as the network loop does whenever the reader nudges, until `done()`."""

        def pumped_all() -> bool:
            while desk.desk.pump(desk.link, 1.0):  # type: ignore[arg-type]
                pass
            return done()

        desk.carrier.run_until(pumped_all)

    send_until(lambda: len(desk.peer.chunks) == 1)
    assert not desk.desk.has_data(desk.link)  # type: ignore[arg-type]
    assert not desk.desk.pump(desk.link, 1.0)  # type: ignore[arg-type]  # the credit is spent
    desk.receive(FileCredit(1, len(data)))
    send_until(lambda: bool(desk.peer.sent))
    assert b"".join(chunk for _, _, chunk in desk.peer.chunks) == data
    assert [offset for _, offset, _ in desk.peer.chunks] == [0, CHUNK_SIZE, 2 * CHUNK_SIZE]
    assert desk.peer.sent == [FileDone(1, sha(data))]  # the SHA-256 of what was sent
    desk.receive(FileReceived(1))
    assert desk.user.lines[-1].startswith("laptop received photo.png (131.1 kB in ")


def test_two_accepted_offers_are_checked_against_the_space_left_by_each_other(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chatclient.transfers.free_space", lambda folder: 100_000)
    desk.receive(FileOffer(1, 60_000, bytes(32), "one.bin"))
    desk.receive(FileOffer(2, 60_000, bytes(32), "two.bin"))
    desk.desk.accept(1, 1.0)
    assert desk.carrier.of_kind(FileAccept) == [FileAccept(1, 0, FILE_WINDOW)]
    desk.desk.accept(2, 1.0)  # the first will still write 60 kB of the 100 kB free
    assert desk.user.errors == [
        f"error: not enough space in {desk.downloads} for two.bin: it needs 60.0 kB, 40.0 kB "
        "is free (make room and /accept 2 again, or /reject 2)"
    ]
    assert len(desk.carrier.of_kind(FileAccept)) == 1
    desk.desk.cancel(1, 1.0)
    desk.desk.finish_writing(WAIT)


def test_a_host_relays_few_unanswered_offers_per_author_and_per_receiver(desk: Desk) -> None:
    alice, bob = (
        FakeLink(FakePeer("alice", Role.LISTENER)),
        FakeLink(FakePeer("bob", Role.LISTENER)),
    )
    desk.carrier.links.update(alice=alice, bob=bob)  # laptop, alice and bob in desktop's room
    for number in range(1, MAX_RELAYED_OFFERS + 5):  # laptop floods alice
        desk.receive(FileOffer(number, 1, bytes(32), f"f{number}", "alice"))
    relayed = [m for link, m in desk.carrier.delivered if link is alice]
    assert len(relayed) == MAX_RELAYED_OFFERS
    refused = [m for link, m in desk.carrier.delivered if link is desk.link]
    assert refused == [
        FileCancel(
            n, False, f"{MAX_RELAYED_OFFERS} of your offers are still unanswered: wait for answers"
        )
        for n in range(MAX_RELAYED_OFFERS + 1, MAX_RELAYED_OFFERS + 5)
    ]
    assert len(desk.user.errors) == 1 and desk.user.errors[0].startswith("laptop offered many")
    desk.desk.message(bob, FileOffer(1, 1, bytes(32), "real.jpg", "alice"), 1.0)  # type: ignore[arg-type]
    assert desk.carrier.delivered[-1] == (
        bob,
        FileCancel(
            1, False, f"alice has {MAX_RELAYED_OFFERS} offers still unanswered: try again later"
        ),
    )


def test_relayed_offers_nobody_answers_expire_and_free_their_places(desk: Desk) -> None:
    alice = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.carrier.links.update(alice=alice)
    for number in range(1, MAX_RELAYED_OFFERS + 1):  # laptop fills alice's places at time 1
        desk.receive(FileOffer(number, 1, bytes(32), f"f{number}", "alice"))
    assert desk.desk.expire(1.0) == 1.0 + RELAYED_OFFER_SECONDS
    alice_answers = FileReject(1)
    desk.desk.message(alice, alice_answers, 2.0)  # type: ignore[arg-type]
    before = len(desk.carrier.delivered)
    assert desk.desk.expire(RELAYED_OFFER_SECONDS) == 1.0 + RELAYED_OFFER_SECONDS
    assert len(desk.carrier.delivered) == before  # not yet
    assert desk.desk.expire(1.0 + RELAYED_OFFER_SECONDS) is None
    told = desk.carrier.delivered[before:]
    reason = f"not answered in {RELAYED_OFFER_SECONDS / 60:g} minutes"
    assert [(link, m) for link, m in told if link is desk.link] == [
        (desk.link, FileCancel(n, False, reason)) for n in range(2, MAX_RELAYED_OFFERS + 1)
    ]
    assert [m for link, m in told if link is alice] == [
        FileCancel(n, True, reason) for n in range(2, MAX_RELAYED_OFFERS + 1)
    ]
    desk.receive(FileOffer(99, 1, bytes(32), "later.jpg", "alice"))  # places are free again
    assert desk.carrier.delivered[-1][0] is alice


def test_a_receiver_counts_waiting_offers_per_person(tmp_path: Path) -> None:
    member = Desk(tmp_path)
    member.peer.role = Role.CONNECTOR  # our link to the host, who relays mallory's offers
    for number in range(1, MAX_OPEN_OFFERS + 3):
        member.receive(FileOffer(number, 1, bytes(32), f"f{number}", "mallory"))
    member.receive(FileOffer(999, 1, bytes(32), "host.jpg", ""))  # the host's own file
    assert member.user.lines[-1] == "laptop offers host.jpg (1 byte): /accept 65 or /reject 65"
    assert member.user.errors == [
        f"mallory offered over {MAX_OPEN_OFFERS} files at once: the rest are declined until "
        "you answer some"
    ]


def relaying(desk: Desk, chunks: int, size: int, credit: int = 2**30) -> FakeLink:
    """laptop's file of `chunks` chunks of `size` bytes, relayed by the host to alice, who
    accepted it with `credit`; every chunk has gone on to alice. Her link."""
    alice = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.carrier.links.update(alice=alice)
    desk.receive(FileOffer(1, chunks * size, bytes(32), "big.bin", "alice"))
    desk.desk.message(alice, FileAccept(1, 0, credit), 1.0)  # type: ignore[arg-type]
    for number in range(chunks):
        desk.chunk(1, number * size, bytes([number]) * size)
        assert desk.desk.pump(alice, 1.0)  # type: ignore[arg-type]
    assert [offset for _, offset, _ in alice.peer.chunks] == [n * size for n in range(chunks)]
    return alice


def test_a_relayed_file_goes_on_from_the_chunks_kept_when_its_receiver_resumes(
    desk: Desk,
) -> None:
    alice = relaying(desk, 4, 1000)
    again = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.desk.link_resumed(alice, again, 2.0)  # type: ignore[arg-type]
    desk.desk.message(again, FileAccept(1, 2000, 2**20), 2.0)  # type: ignore[arg-type]
    while desk.desk.pump(again, 2.0):  # type: ignore[arg-type]
        pass
    assert again.peer.chunks == [(1, 2000, bytes([2]) * 1000), (1, 3000, bytes([3]) * 1000)]
    assert not desk.carrier.of_kind(FileCancel)


def test_a_relayed_file_ends_when_its_receiver_resumes_off_a_chunk_or_past_what_is_kept(
    desk: Desk,
) -> None:
    alice = relaying(desk, 4, 1000)
    again = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.desk.link_resumed(alice, again, 2.0)  # type: ignore[arg-type]
    desk.desk.message(again, FileAccept(1, 2500, 2**20), 2.0)  # type: ignore[arg-type]
    reason = "it resumed further back than the host keeps"
    assert desk.carrier.of_kind(FileCancel) == [
        FileCancel(1, True, reason),
        FileCancel(1, False, reason),  # laptop, its author, is told too
    ]


def test_the_host_keeps_one_window_of_a_relayed_file_and_no_more(desk: Desk) -> None:
    """A receiver that granted more than the window may lack more than the host keeps."""
    big = CHUNK_SIZE
    alice = relaying(desk, FILE_WINDOW // big + 2, big)
    again = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.desk.link_resumed(alice, again, 2.0)  # type: ignore[arg-type]
    desk.desk.message(again, FileAccept(1, big, 2**20), 2.0)  # type: ignore[arg-type]
    reason = "it resumed further back than the host keeps"
    assert FileCancel(1, True, reason) in desk.carrier.of_kind(FileCancel)
    assert not again.peer.chunks


def test_a_relayed_file_resumed_past_what_was_sent_ends_the_connection(desk: Desk) -> None:
    alice = relaying(desk, 2, 1000)
    again = FakeLink(FakePeer("alice", Role.LISTENER))
    desk.desk.link_resumed(alice, again, 2.0)  # type: ignore[arg-type]
    desk.desk.message(again, FileAccept(1, 3000, 2**20), 2.0)  # type: ignore[arg-type]
    assert again.peer.failed == ["it resumed file 1 past what was sent"]


def test_the_host_asks_a_resumed_author_for_the_rest_with_the_credit_it_had_left(
    desk: Desk,
) -> None:
    relaying(desk, 3, 1000, credit=2**20)
    granted = desk.carrier.of_kind(FileAccept)[-1]
    assert isinstance(granted, FileAccept) and granted.offset == 0
    again = FakeLink(FakePeer("laptop", Role.LISTENER))
    desk.desk.link_resumed(desk.link, again, 2.0)  # type: ignore[arg-type]
    desk.desk.caught_up(again, frozenset(), 2.0)  # type: ignore[arg-type]
    link, asked = desk.carrier.delivered[-1]
    assert link is again and isinstance(asked, FileAccept)
    assert (asked.id, asked.offset) == (1, 3000)
    assert asked.credit == granted.credit - 3000 + sum(
        m.amount for m in desk.carrier.of_kind(FileCredit) if isinstance(m, FileCredit)
    )


def test_after_a_resume_the_receiver_asks_for_the_rest_once(desk: Desk) -> None:
    """Unless its earlier FILEACCEPT is among the messages sent again (found by a hostile
    review: with both, a second drop made the sender end the session)."""
    data = os.urandom(3 * CHUNK_SIZE)
    offered(desk, data)
    desk.desk.accept(None, 1.0)
    desk.chunk(1, 0, data[:CHUNK_SIZE])
    again = FakeLink(FakePeer("laptop", Role.LISTENER))
    desk.desk.link_resumed(desk.link, again, 2.0)  # type: ignore[arg-type]
    asked = len(desk.carrier.of_kind(FileAccept))
    desk.desk.caught_up(again, frozenset({1}), 2.0)  # type: ignore[arg-type]
    assert len(desk.carrier.of_kind(FileAccept)) == asked  # the one sent again says it
    third = FakeLink(FakePeer("laptop", Role.LISTENER))
    desk.desk.link_resumed(again, third, 3.0)  # type: ignore[arg-type]
    desk.desk.caught_up(third, frozenset(), 3.0)  # type: ignore[arg-type]
    # The chunk is not on disk yet (its report has not run): the window less what waits
    # to be written, which is granted once it is.
    assert desk.carrier.delivered[-1] == (
        third,
        FileAccept(1, CHUNK_SIZE, FILE_WINDOW - CHUNK_SIZE),
    )
    desk.carrier.run_until(lambda: bool(desk.carrier.of_kind(FileCredit)))
    assert desk.carrier.delivered[-1] == (third, FileCredit(1, CHUNK_SIZE))


def test_what_the_host_sends_again_earns_the_author_no_credit(desk: Desk) -> None:
    """Found by a hostile review: a receiver resuming again and again made the host send
    its kept chunks again, grant the author that much more, and hold ever more of it."""
    alice = relaying(desk, 4, 1000)

    def granted() -> int:
        return sum(m.amount for m in desk.carrier.of_kind(FileCredit) if isinstance(m, FileCredit))

    before = granted()
    for number in range(3):
        again = FakeLink(FakePeer("alice", Role.LISTENER))
        desk.desk.link_resumed(alice, again, 2.0)  # type: ignore[arg-type]
        desk.desk.message(again, FileAccept(1, 2000, 2**20), 2.0)  # type: ignore[arg-type]
        while desk.desk.pump(again, 2.0):  # type: ignore[arg-type]
            pass
        assert [offset for _, offset, _ in again.peer.chunks] == [2000, 3000], number
        alice = again
    assert granted() == before

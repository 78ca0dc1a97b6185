"""Folders and several files on disk (bundles.py): gathering them to send, reading them as
one stream, writing a received stream back into files, and what a resume finds kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_transfers import Desk

from chatclient.bundles import (
    BundleReader,
    BundleWriter,
    collect,
    create_bundle_part,
    kept,
)
from chatclient.errors import ChatError
from chatclient.manifest import LIST_FILE
from chatclient.messages import MAX_BUNDLE_FILES, Bundle, FileAccept, FileDone, FileOffer


def make(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


FILES = {
    "Holiday/b.jpg": os.urandom(200_000),
    "Holiday/a/empty": b"",
    "Holiday/a/x.txt": b"x" * 1000,
    "Holiday/c.bin": os.urandom(70_000),
}


def test_a_folder_is_gathered_in_order_and_links_and_devices_are_skipped(tmp_path: Path) -> None:
    make(tmp_path, FILES)
    (tmp_path / "Holiday" / "link").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "Holiday" / "pipe")
    collected = collect([str(tmp_path / "Holiday")])
    assert collected.bundle is Bundle.FOLDER and collected.name == "Holiday"
    assert [item.path for item in collected.items] == sorted(FILES)
    assert collected.skipped == (
        "skipped Holiday/link: a symbolic link (links are not followed)",
        "skipped Holiday/pipe: not a regular file (a device, FIFO or socket)",
    )
    stream = BundleReader(collected).read(0, collected.size)
    assert stream == collected.listing + b"".join(FILES[path] for path in sorted(FILES))
    assert collected.ends[-1] == collected.size


def test_what_cannot_be_one_offer_is_said(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChatError, match="holds no files to send"):
        collect([str(tmp_path / "empty")])
    make(tmp_path, {"a/x": b"1", "b/x": b"2", "many/0": b""})
    with pytest.raises(ChatError, match="two of the files are named x"):
        collect([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")])
    with pytest.raises(ChatError, match="is a folder: send a folder on its own"):
        collect([str(tmp_path / "a" / "x"), str(tmp_path / "b")])
    for number in range(1, MAX_BUNDLE_FILES + 1):
        (tmp_path / "many" / str(number)).touch()
    with pytest.raises(ChatError, match="holds over 10,000 files, the most one offer carries"):
        collect([str(tmp_path / "many")])


def test_a_file_changed_after_the_offer_stops_the_stream(tmp_path: Path) -> None:
    make(tmp_path, FILES)
    collected = collect([str(tmp_path / "Holiday")])
    (tmp_path / "Holiday" / "c.bin").write_bytes(b"changed")
    reader = BundleReader(collected)
    with pytest.raises(ChatError, match=r"changed while it was being sent \(Holiday/c\.bin\)"):
        reader.read(0, collected.size)
    reader.close()


@pytest.mark.parametrize("block", [1, 7, 4096, 300_000])
def test_a_stream_written_in_any_blocks_becomes_the_files_and_resumes(
    tmp_path: Path, block: int
) -> None:
    make(tmp_path / "from", FILES)
    collected = collect([str(tmp_path / "from" / "Holiday")])
    stream = BundleReader(collected).read(0, collected.size)
    downloads = tmp_path / "dl"
    downloads.mkdir()
    part = create_bundle_part(str(downloads), "Holiday", "record")
    args = (str(downloads), collected.size, Bundle.FOLDER, len(FILES), "Holiday")
    writer = BundleWriter(part, *args)
    cut = len(collected.listing) + 200_500  # b.jpg whole (a/ sorts first), into c.bin
    for start in range(0, cut, block):
        writer.write([stream[start : min(start + block, cut)]], start)
    writer.close()
    assert kept(part, Bundle.FOLDER, len(FILES), "Holiday") == cut
    again = BundleWriter(part, *args)  # a resume
    assert again.hash_start(cut).digest() == hashlib.sha256(stream[:cut]).digest()
    again.write([stream[cut:]], cut)
    again.sync()
    again.close()
    assert again.place() == str(downloads / "Holiday")
    assert sorted(os.listdir(downloads)) == ["Holiday"]  # the .part and its record are gone
    for path, data in FILES.items():
        assert (downloads / path).read_bytes() == data


def test_a_list_cut_short_is_kept_as_far_as_it_came(tmp_path: Path) -> None:
    make(tmp_path / "from", FILES)
    collected = collect([str(tmp_path / "from" / "Holiday")])
    part = create_bundle_part(str(tmp_path), "Holiday", "record")
    writer = BundleWriter(part, str(tmp_path), collected.size, Bundle.FOLDER, 4, "Holiday")
    writer.write([collected.listing[:10]], 0)
    assert kept(part, Bundle.FOLDER, 4, "Holiday") == 10
    assert os.listdir(part) == [LIST_FILE]  # no file is made before the list is whole


def test_a_resumed_folder_is_sent_from_the_offset_with_the_whole_streams_sha256(
    tmp_path: Path,
) -> None:
    desk = Desk(tmp_path)
    make(tmp_path, FILES)
    collected = collect([str(tmp_path / "Holiday")])
    desk.desk.offer(collected, [("laptop", False)], 1.0)
    [offer] = desk.carrier.of_kind(FileOffer)
    assert offer == FileOffer(
        1, collected.size, collected.fingerprint, "Holiday", "", 0, bytes(64), Bundle.FOLDER, 4
    )
    assert desk.user.lines[-1] == "Offered Holiday/ (4 files, 271.1 kB) to laptop."
    cut = collected.ends[1]  # a/empty and a/x.txt are there
    desk.receive(FileAccept(1, cut, 2**30))

    def pumped() -> bool:
        while desk.desk.pump(desk.link, 1.0):  # type: ignore[arg-type]
            pass
        return bool(desk.peer.sent)

    desk.carrier.run_until(pumped)
    stream = BundleReader(collected).read(0, collected.size)
    assert desk.peer.chunks[0][1] == cut
    assert b"".join(chunk for _, _, chunk in desk.peer.chunks) == stream[cut:]
    assert desk.peer.sent == [FileDone(1, hashlib.sha256(stream).digest())]

"""Snapshot images received in pieces: in order, resumable, verified before Raft may use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs.common.checksum import crc32c
from chunkfs.common.errors import ProtocolError
from chunkfs.raft.core import Snapshot
from chunkfs.raft.snapshot_files import SQLITE_MAGIC, Image, Receiver, forget_others, migrate_inline

DATA = os.urandom(100_000)
IMAGE = Image(index=42, term=3, size=len(DATA), crc=crc32c(DATA))
PIECE = 30_000


async def feed(receiver: Receiver, image: Image, data: bytes, start: int = 0) -> int:
    """Send pieces from `start` the way the master does: each at the offset the follower says it holds."""
    have = start
    for _ in range(100):
        if have >= image.size:
            break
        have = await receiver.piece(image, have, data[have:have + PIECE])
    return have


async def test_pieces_in_order_make_a_complete_image_that_raft_may_take(tmp_path: Path) -> None:
    r = Receiver(tmp_path)
    assert await r.piece(IMAGE, 0, b"") == 0  # an empty piece only asks
    assert await feed(r, IMAGE, DATA) == IMAGE.size
    assert r.complete(IMAGE)
    path = r.take(IMAGE)
    assert path == IMAGE.path(tmp_path) and path.read_bytes() == DATA
    assert not IMAGE.incoming(tmp_path).exists() and not r.complete(IMAGE)


async def test_a_piece_at_the_wrong_offset_is_not_written_and_gets_what_is_held(tmp_path: Path) -> None:
    r = Receiver(tmp_path)
    assert await r.piece(IMAGE, 0, DATA[:PIECE]) == PIECE
    assert await r.piece(IMAGE, 2 * PIECE, DATA[2 * PIECE:3 * PIECE]) == PIECE  # a gap
    assert await r.piece(IMAGE, 0, DATA[:PIECE]) == PIECE  # a repeat
    assert IMAGE.incoming(tmp_path).stat().st_size == PIECE
    with pytest.raises(ProtocolError):
        await r.piece(IMAGE, PIECE, DATA[PIECE:] + b"too long")


async def test_a_transfer_resumes_after_a_restart_of_the_follower(tmp_path: Path) -> None:
    r = Receiver(tmp_path)
    assert await r.piece(IMAGE, 0, DATA[:PIECE]) == PIECE
    restarted = Receiver(tmp_path)
    assert await restarted.piece(IMAGE, 0, b"") == PIECE  # the master resumes here
    assert await feed(restarted, IMAGE, DATA, PIECE) == IMAGE.size
    assert restarted.take(IMAGE).read_bytes() == DATA


async def test_a_damaged_image_is_dropped_and_received_again(tmp_path: Path) -> None:
    lying = Image(IMAGE.index, IMAGE.term, IMAGE.size, IMAGE.crc ^ 1)
    r = Receiver(tmp_path)
    assert await feed(r, lying, DATA) == 0  # whole, but not what was described: start again
    assert not r.complete(lying) and not lying.incoming(tmp_path).exists()
    with pytest.raises(ProtocolError):
        r.take(lying)


async def test_a_new_image_drops_what_was_received_of_another(tmp_path: Path) -> None:
    r = Receiver(tmp_path)
    await r.piece(IMAGE, 0, DATA[:PIECE])
    newer = Image(50, 3, 10, crc32c(b"0123456789"))
    assert await r.piece(newer, 0, b"0123456789") == 10
    assert not IMAGE.incoming(tmp_path).exists() and r.complete(newer)


def test_the_descriptor_round_trips_and_a_bad_one_is_refused() -> None:
    snap = Snapshot(IMAGE.index, IMAGE.term, (1, 2, 3), IMAGE.descriptor())
    assert Image.of(snap) == IMAGE
    assert Image.of(Snapshot.initial((1,))) is None
    for data in (b"\xc1", b"\x80", b"not msgpack at all \xff"):
        with pytest.raises(ProtocolError):
            Image.of(Snapshot(5, 1, (1,), data))


def test_an_inline_image_of_an_older_version_moves_to_a_file(tmp_path: Path) -> None:
    data = SQLITE_MAGIC + os.urandom(5000)
    snap = migrate_inline(tmp_path, Snapshot(7, 2, (1, 2, 3), data))
    image = Image.of(snap)
    assert image is not None and image.path(tmp_path).read_bytes() == data
    assert (snap.index, snap.term, snap.voters) == (7, 2, (1, 2, 3))
    (tmp_path / "incoming-2-9.db").write_bytes(b"x")
    (tmp_path / "snapshot-1-3.db").write_bytes(b"x")
    (tmp_path / "log-00000001").write_bytes(b"x")
    forget_others(tmp_path, image.path(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log-00000001", "snapshot-2-7.db"]


async def test_forgetting_other_images_keeps_the_one_being_received(tmp_path: Path) -> None:
    """A member compacting its own log while a master sends it an image keeps what it received of that."""
    r = Receiver(tmp_path)
    assert r.receiving() is None
    assert await r.piece(IMAGE, 0, DATA[:PIECE]) == PIECE
    own = tmp_path / "snapshot-2-17.db"
    own.write_bytes(b"its own image")
    (tmp_path / "snapshot-1-5.db").write_bytes(b"an older one")
    forget_others(tmp_path, own, r.receiving())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([own.name, IMAGE.incoming(tmp_path).name])
    assert await feed(r, IMAGE, DATA, PIECE) == IMAGE.size and r.complete(IMAGE)

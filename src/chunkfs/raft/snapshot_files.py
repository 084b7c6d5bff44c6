"""Snapshot images: files on disk, sent to a lagging follower in pieces.

A snapshot of the metadata store is a whole database: gigabytes at 10^7
files.  Holding it in RAM, or sending it as one message that the leader sends
again on every heartbeat until it lands, does not scale.  So an image is a
file in the Raft directory, taken in a worker thread (the state machine's
`snapshot_to`), and a follower that needs it receives it `PIECE` bytes at a
time, each piece acknowledged with how much it holds, so a transfer broken by
a lost connection resumes where it stopped.  Only a complete image whose size
and CRC32C match is handed to Raft.

Files in the Raft directory:

    snapshot-<term>-<index>.db    the image of this member's current snapshot
    incoming-<term>-<index>.db    an image being received from the master

The Raft snapshot itself (what the log storage persists and the core passes
around) carries only a descriptor of its image (`Image.descriptor`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from chunkfs.common.checksum import crc32c
from chunkfs.common.durable import fsync_dir, write_file_durably
from chunkfs.common.errors import ChunkFSError, ProtocolError
from chunkfs.common.knobs import lowered
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection
from chunkfs.raft.core import Snapshot

logger = logging.getLogger(__name__)

#: Bytes per piece: well under the frame payload limit, big enough that a round trip per piece is cheap.
PIECE = lowered("CHUNKFS_RAFT_SNAPSHOT_PIECE", 4 << 20)
#: How long one piece may take to be written and acknowledged.
PIECE_TIMEOUT = 30.0
#: What SQLite database files start with: a snapshot written by an older version held the image itself.
SQLITE_MAGIC = b"SQLite format 3\x00"

_NAME = re.compile(r"^(snapshot|incoming)-(\d+)-(\d+)\.db$")


@dataclass(frozen=True, slots=True)
class Image:
    """Which image: the snapshot's place in the log, and the file's size and checksum."""

    index: int
    term: int
    size: int
    crc: int

    def descriptor(self) -> bytes:
        """What `Snapshot.data` holds for this image."""
        return msgpack.packb({"size": self.size, "crc": self.crc})

    @classmethod
    def of(cls, snap: Snapshot) -> Image | None:
        """The image a snapshot describes; None for the empty initial snapshot."""
        if snap.index == 0 and not snap.data:
            return None
        try:
            d = msgpack.unpackb(snap.data)
            image = cls(snap.index, snap.term, int(d["size"]), int(d["crc"]))
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"raft snapshot {snap.index} has no valid image descriptor") from exc
        if image.size <= 0:
            raise ProtocolError(f"raft snapshot {snap.index} describes an empty image")
        return image

    def path(self, directory: Path) -> Path:
        return directory / f"snapshot-{self.term}-{self.index}.db"

    def incoming(self, directory: Path) -> Path:
        return directory / f"incoming-{self.term}-{self.index}.db"


def measure(path: Path) -> tuple[int, int]:
    """(size, CRC32C) of a file, read in pieces (never whole in RAM)."""
    size = crc = 0
    with path.open("rb") as f:
        while block := f.read(PIECE):
            size += len(block)
            crc = crc32c(block, crc)
    return size, crc


def forget_others(directory: Path, *keep: Path | None) -> None:
    """Delete every image file but those in `keep`: older snapshots, abandoned transfers, temporary copies."""
    for p in directory.iterdir():
        if p not in keep and (_NAME.match(p.name) or p.name.endswith(".db.tmp")):
            p.unlink(missing_ok=True)


def scratch(directory: Path) -> Path:
    """Where a new image is written before it is sealed."""
    return directory / "snapshot.db.tmp"


def seal(directory: Path, tmp: Path, index: int, term: int) -> Image:
    """A fully written (fsynced) image file becomes the image of snapshot (index, term)."""
    size, crc = measure(tmp)
    image = Image(index, term, size, crc)
    os.replace(tmp, image.path(directory))
    fsync_dir(directory)
    return image


def migrate_inline(directory: Path, snap: Snapshot) -> Snapshot:
    """A snapshot written by an older version carries the whole image as its data: move it to a file."""
    if not snap.data.startswith(SQLITE_MAGIC):
        return snap
    image = Image(snap.index, snap.term, len(snap.data), crc32c(snap.data))
    write_file_durably(image.path(directory), snap.data, mode=0o600)
    return Snapshot(snap.index, snap.term, snap.voters, image.descriptor())


class Receiver:
    """The follower's side: pieces of one image at a time, written in order, verified when whole."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._image: Image | None = None
        self._have = 0
        self._complete = False
        self._lock = asyncio.Lock()

    async def piece(self, image: Image, offset: int, data: bytes) -> int:
        """Take a piece at `offset` (an empty one only asks); returns the bytes held in order."""
        async with self._lock:
            if image != self._image:
                await asyncio.to_thread(self._start, image)
            if not data or offset != self._have or self._complete:
                return self._have
            if self._have + len(data) > image.size:
                raise ProtocolError(f"snapshot piece at {offset} runs past the image's {image.size} bytes")
            await asyncio.to_thread(self._write, image, offset, data)
            self._have += len(data)
            if self._have == image.size:
                await asyncio.to_thread(self._finish, image)
            return self._have

    def receiving(self) -> Path | None:
        """The file of the image being received, if any: a compaction of this member's own log keeps it."""
        return None if self._image is None else self._image.incoming(self.directory)

    def complete(self, image: Image) -> bool:
        return self._image == image and self._complete

    def take(self, image: Image) -> Path:
        """The complete image becomes this member's snapshot image (the caller installs it)."""
        if not self.complete(image):
            raise ProtocolError(f"snapshot image {image.index} is not here in full")
        path = image.path(self.directory)
        os.replace(image.incoming(self.directory), path)
        fsync_dir(self.directory)
        self._image, self._have, self._complete = None, 0, False
        return path

    def _start(self, image: Image) -> None:
        """A new image: drop what was received of another; resume one received in part before a restart."""
        incoming = image.incoming(self.directory)
        for p in self.directory.glob("incoming-*.db"):
            if p != incoming:
                p.unlink(missing_ok=True)
        have = incoming.stat().st_size if incoming.exists() else 0
        if have > image.size:
            incoming.unlink()
            have = 0
        self._image, self._have, self._complete = image, have, False
        if have == image.size:
            self._finish(image)

    def _write(self, image: Image, offset: int, data: bytes) -> None:
        fd = os.open(image.incoming(self.directory), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def _finish(self, image: Image) -> None:
        path = image.incoming(self.directory)
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        if measure(path) != (image.size, image.crc):
            logger.warning("raft: snapshot image %d arrived damaged (size or CRC32C differ): receiving it again",
                           image.index)
            path.unlink()
            self._have = 0
            return
        self._complete = True


async def send(conn: Connection, image: Image, path: Path, alive: Callable[[], bool], peer: str) -> None:
    """Stream an image to a follower from where it got to; `alive()` says whether to go on.

    Raises ChunkFSError (or OSError) when the transfer cannot go on; the
    caller reports it failed, and Raft sends the snapshot again later.
    """
    header = {"index": image.index, "term": image.term, "size": image.size, "crc": image.crc}
    started = time.monotonic()
    reply, _ = await conn.call(Msg.RAFT_SNAPSHOT, {**header, "offset": 0}, b"", timeout=PIECE_TIMEOUT)
    have = resumed = int(reply["have"])
    with path.open("rb") as f:
        while have < image.size:
            if not alive():
                raise ChunkFSError(f"stopped sending snapshot {image.index} to {peer}")
            data = await asyncio.to_thread(os.pread, f.fileno(), min(PIECE, image.size - have), have)
            if not data:
                raise ChunkFSError(f"snapshot image {path.name} is shorter than its {image.size} bytes")
            reply, _ = await conn.call(Msg.RAFT_SNAPSHOT, {**header, "offset": have}, data, timeout=PIECE_TIMEOUT)
            got = int(reply["have"])
            if got != have + len(data) and have + len(data) == image.size:
                raise ChunkFSError(f"snapshot image {image.index} failed its checksum at {peer}")
            have = got  # less than sent if the follower lost a piece (it restarted): resume from there
    seconds = time.monotonic() - started
    logger.info("raft: snapshot %d sent to %s: %d bytes (%d resumed) in %.1f s", image.index, peer,
                image.size - resumed, resumed, seconds)

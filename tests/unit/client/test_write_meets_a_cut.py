"""A write in flight when this mount hears of another client's cut (client/fuse_ops.py `write`).

The notice of a truncate by another mount may be served after a write that
began once the truncate had returned (the event loop served the FUSE request
first; over a network, the notice came later than the request that followed
it).  Such a write went through a chunk map the master gave after the cut:
the cut moved or deleted the chunks it touched before it was answered, so the
write's bytes are in the file, and its end must count.  A CI run under load
lost such a write (acknowledged by fsync, read back as nothing) when every
write that met a notice was taken for one made before the cut.  A write
through maps from before the cut did come before it: the cut removed its
bytes, and its end must not grow the file again with zeros.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions
from chunkfs.protocol.messages import Msg

INO = 5
BEFORE, CUT = 10, 20  # the file's cut when opened, and another client's truncate to CUT_SIZE
CUT_SIZE = 4096


class Chunks:
    """The client's chunk I/O: the notice of the cut is served while the write is on its way."""

    def __init__(self, map_cut: int | None, notice_during: bool = True) -> None:
        self.map_cut = map_cut
        self.notice_during = notice_during
        self.ops: ChunkFSOperations | None = None

    async def write(self, ino: int, off: int, buf: Any, sync: bool = False) -> int | None:
        if self.notice_during:
            serve_the_notice(self.ops)
        return self.map_cut


def serve_the_notice(ops: ChunkFSOperations | None) -> None:
    assert ops is not None
    notice = {"entries": [], "inodes": [INO], "cuts": [[INO, CUT, CUT_SIZE]]}
    ops._notice(None, Msg.INVALIDATE, notice, b"")  # type: ignore[arg-type]


async def master_getattr(ino: int) -> dict[str, Any]:
    """The master's attributes of the file after the cut."""
    return {"ino": ino, "size": CUT_SIZE, "mtime_ns": 2, "cut": CUT}


def mount(io: Chunks) -> ChunkFSOperations:
    client: Any = SimpleNamespace(creds=SimpleNamespace(node="test"), io=io, on_dir_attrs=None, chunk_size=1 << 20,
                                  getattr=master_getattr)
    ops = ChunkFSOperations(client, MountOptions())
    ops._session_keeper = object()  # type: ignore[assignment]  # no session to keep in a unit test
    ops.cache.watching(object())  # the master tells this mount of other clients' cuts
    io.ops = ops
    return ops


@pytest.mark.parametrize(("map_cut", "after"), [
    (CUT, True),  # a map the master gave after the cut: the write came after it
    (BEFORE, False),  # maps from before the cut: the write came before it, and the cut removed its bytes
    (None, False),  # a master that does not say: as before, the cut wins
])
async def test_a_write_through_a_map_from_after_the_cut_counts_whenever_the_notice_comes(map_cut, after) -> None:
    io = Chunks(map_cut)
    ops = mount(io)
    fh = int(ops._open({"ino": INO, "size": 3 * CUT_SIZE, "mtime_ns": 1, "cut": BEFORE}, os.O_WRONLY, 0).fh)
    of = ops.handles[fh]
    assert of.cut == BEFORE
    assert await ops.write(fh, 2 * CUT_SIZE, b"q" * CUT_SIZE) == CUT_SIZE
    assert of.cut == CUT
    if after:
        assert (of.size, of.written_end, of.dirty) == (3 * CUT_SIZE, 3 * CUT_SIZE, True)
    else:
        assert (of.size, of.written_end) == (CUT_SIZE, 0)


async def test_a_write_through_a_map_from_after_the_cut_counts_when_it_ends_before_the_notice() -> None:
    """The residual of the above: the write ended before the notice came, and its end was then taken
    for one before the cut.  The map tells of a cut this mount has not heard of: it asks at once."""
    io = Chunks(CUT, notice_during=False)
    ops = mount(io)
    fh = int(ops._open({"ino": INO, "size": 3 * CUT_SIZE, "mtime_ns": 1, "cut": BEFORE}, os.O_WRONLY, 0).fh)
    of = ops.handles[fh]
    assert await ops.write(fh, 2 * CUT_SIZE, b"q" * CUT_SIZE) == CUT_SIZE
    serve_the_notice(ops)  # late
    assert (of.cut, of.size, of.written_end, of.dirty) == (CUT, 3 * CUT_SIZE, 3 * CUT_SIZE, True)

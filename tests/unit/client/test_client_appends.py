"""Writes through an O_APPEND handle go to the end of the file as the mount knows it (client/fuse_ops.py).

The kernel appends at the size it keeps, which another mount's close may
have moved past; the mount writes at its own end instead.  Appends in flight
at once (asynchronous direct I/O sends several) each take their own range
before they are sent, and a failed append gives its range back.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions
from chunkfs.common.errors import Unavailable


class Chunks:
    """The client's chunk I/O: records each write's offset, and holds it until released."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.go = asyncio.Event()
        self.fail = False

    async def write(self, ino: int, off: int, buf: Any, sync: bool = False) -> None:
        self.offsets.append(off)
        await self.go.wait()
        if self.fail:
            raise Unavailable("no replica")


def mount(io: Chunks) -> ChunkFSOperations:
    client: Any = SimpleNamespace(creds=SimpleNamespace(node="test"), io=io, on_dir_attrs=None, chunk_size=1 << 20)
    ops = ChunkFSOperations(client, MountOptions())
    ops._session_keeper = object()  # type: ignore[assignment]  # no session to keep in a unit test
    return ops


def opened(ops: ChunkFSOperations, flags: int, size: int = 1000) -> int:
    return int(ops._open({"ino": 5, "size": size, "mtime_ns": 1}, flags, 0).fh)


async def test_appends_in_flight_at_once_each_take_their_own_range() -> None:
    io = Chunks()
    ops = mount(io)
    fh = opened(ops, os.O_WRONLY | os.O_APPEND)
    # The kernel's offsets (0) are what it kept: not the end of the file.
    writes = [asyncio.create_task(ops.write(fh, 0, b"x" * n)) for n in (10, 20, 30)]
    await asyncio.sleep(0)
    assert io.offsets == [1000, 1010, 1030]
    io.go.set()
    assert await asyncio.gather(*writes) == [10, 20, 30]
    assert ops.handles[fh].size == 1060 and ops.handles[fh].written_end == 1060


async def test_attributes_answered_while_an_append_is_in_flight_keep_its_range() -> None:
    io = Chunks()
    io.go.set()
    ops = mount(io)
    fh = opened(ops, os.O_WRONLY | os.O_APPEND)
    await ops.write(fh, 0, b"a" * 10)  # written, not committed: the master still says 1000
    io.go.clear()
    second = asyncio.create_task(ops.write(fh, 0, b"b" * 10))
    await asyncio.sleep(0)
    attr = {"ino": 5, "size": 1000, "mtime_ns": 1, "ctime_ns": 1, "atime_ns": 1, "mode": 0o100644, "nlink": 1}
    assert ops._entry(attr).st_size == 1010  # the kernel asks meanwhile
    third = asyncio.create_task(ops.write(fh, 0, b"c" * 10))
    await asyncio.sleep(0)
    io.go.set()
    await asyncio.gather(second, third)
    assert io.offsets == [1000, 1010, 1020]


async def test_a_failed_append_gives_its_range_back() -> None:
    io = Chunks()
    ops = mount(io)
    fh = opened(ops, os.O_WRONLY | os.O_APPEND)
    io.fail = True
    io.go.set()
    with pytest.raises(pyfuse3.FUSEError):
        await ops.write(fh, 0, b"x" * 10)
    io.fail = False
    await ops.write(fh, 0, b"y" * 5)
    assert io.offsets == [1000, 1000]
    assert ops.handles[fh].size == 1005


async def test_a_handle_for_reading_too_writes_where_the_kernel_says() -> None:
    """`a+` keeps the page cache: a program may map it, and dirty pages come back through it at their offsets."""
    io = Chunks()
    io.go.set()
    ops = mount(io)
    info = ops._open({"ino": 5, "size": 1000, "mtime_ns": 1}, os.O_RDWR | os.O_APPEND, 0)
    assert not info.direct_io
    await ops.write(int(info.fh), 100, b"p" * 4096)  # a mapped page written back
    assert io.offsets == [100]
    assert ops._open({"ino": 5, "size": 1000, "mtime_ns": 1}, os.O_WRONLY | os.O_APPEND, 0).direct_io


async def test_a_handle_without_o_append_writes_where_asked() -> None:
    io = Chunks()
    io.go.set()
    ops = mount(io)
    fh = opened(ops, os.O_WRONLY)
    await ops.write(fh, 3, b"z" * 4)
    assert io.offsets == [3] and ops.handles[fh].size == 1000

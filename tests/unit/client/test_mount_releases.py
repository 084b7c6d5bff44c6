"""Files closed in a mount are released on the master together, and a release never undoes a later open.

Each last close of a file was a round trip to the master (RELEASE); closes now go
together (`RELEASE_DELAY`, `RELEASE_BATCH`).  A release is numbered: it counts the
mount's registrations of the file (OPEN, CREATE) up to the last one its closed file
knew, so an open answered after the release was sent, or a file opened again while
its release waits, stays held on the master (an unlinked file it holds keeps its data).
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.client import fuse_ops
from chunkfs.client.chunk_io import ChunkIO
from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions
from chunkfs.mds.open_files import OpenFileTable

#: The request context of a caller: root.
ROOT = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)


class Master:
    """The master's side of OPEN and RELEASE, on its real table of open files."""

    def __init__(self) -> None:
        self.table = OpenFileTable()
        self.releases: list[dict[int, int]] = []
        self.read_only: list[list[int]] = []
        #: While set and clear, an OPEN is registered at once but answered only when it is set.
        self.answer_opens: asyncio.Event | None = None

    async def open_ino(
        self, ino: int, session: str, truncate: bool = False, linked: bool = False, oseq: int = 0,
        at: tuple[int, bytes] | None = None, read_only: bool = False,
    ) -> dict[str, Any]:
        self.table.open(session, ino, oseq, read_only=read_only)
        if self.answer_opens is not None:
            await self.answer_opens.wait()
        return {"ino": ino, "type": "f", "size": 0, "mtime_ns": 1}

    async def release_inos(self, session: str, releases: dict[int, int], read_only: list[int] | None = None) -> None:
        self.releases.append(dict(releases))
        self.read_only.append(list(read_only or []))
        for ino, upto in releases.items():
            if ino in (read_only or ()):
                self.table.to_read(session, ino, upto)
            else:
                self.table.release(session, ino, upto)


def mount(master: Master) -> ChunkFSOperations:
    client: Any = SimpleNamespace(creds=SimpleNamespace(node="test"), on_dir_attrs=None,
                                  open_ino=master.open_ino, release_inos=master.release_inos)
    ops = ChunkFSOperations(client, MountOptions())
    ops._session_keeper = object()  # type: ignore[assignment]  # no session to keep in a unit test
    return ops


async def opened(ops: ChunkFSOperations, ino: int) -> int:
    return int((await ops.open(ino, os.O_RDWR, ROOT)).fh)  # type: ignore[arg-type]


async def settle() -> None:
    """Past the release delay, and the batch's round trip."""
    await asyncio.sleep(fuse_ops.RELEASE_DELAY * 3)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse_ops, "RELEASE_DELAY", 0.01)


async def test_files_closed_together_are_released_in_one_request() -> None:
    master = Master()
    ops = mount(master)
    handles = [await opened(ops, ino) for ino in range(10, 20)]
    for fh in handles:
        await ops.release(fh)
    assert master.releases == [], "released before the delay"
    await settle()
    assert master.releases == [{ino: n for n, ino in enumerate(range(10, 20), 1)}]
    assert not any(master.table.held(ino) for ino in range(10, 20))


async def test_a_full_batch_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuse_ops, "RELEASE_BATCH", 4)
    monkeypatch.setattr(fuse_ops, "RELEASE_DELAY", 60.0)
    master = Master()
    ops = mount(master)
    for ino in range(10, 19):
        await ops.release(await opened(ops, ino))
    await asyncio.sleep(0.01)
    assert [sorted(batch) for batch in master.releases] == [[10, 11, 12, 13], [14, 15, 16, 17]]
    assert master.table.held(18), "the ninth waits for the delay"


async def test_a_file_opened_again_while_its_release_waits_stays_held() -> None:
    master = Master()
    ops = mount(master)
    await ops.release(await opened(ops, 7))  # registration 1, closed: its release waits
    again = await opened(ops, 7)  # registration 2
    await settle()
    assert master.releases == [{7: 1}]
    assert master.table.held(7), "the release of the first open undid the second"
    await ops.release(again)
    await settle()
    assert master.releases[-1] == {7: 2}
    assert not master.table.held(7)


async def test_an_open_answered_after_the_release_was_sent_stays_held() -> None:
    """The master registers an open, the mount's last close of the older handle is released, then the
    open's answer arrives: the release was sent after the open, but counts only the older handle."""
    master = Master()
    ops = mount(master)
    first = await opened(ops, 7)
    master.answer_opens = asyncio.Event()
    second = asyncio.get_running_loop().create_task(opened(ops, 7))
    await asyncio.sleep(0)
    assert master.table.opens[ops.session][7] == 2, "the second open is registered"
    await ops.release(first)  # the mount's last close of the handle it has: the file is released
    await settle()
    assert master.releases == [{7: 1}]
    master.answer_opens.set()
    fh = await second
    assert master.table.held(7), "the release undid an open registered before it arrived"
    await ops.release(fh)
    await settle()
    assert not master.table.held(7)


async def test_a_file_removed_while_nothing_here_holds_it_leaves_no_chunks_to_sync() -> None:
    """A soak: every file written and closed, never synced, left its written chunks in the mount's
    memory for good, removed or not (42,000 small files).  Removed here while no process here holds it,
    nothing can `fsync` it again: they go.  One still open keeps them for its `fsync`."""
    master = Master()
    io = ChunkIO(SimpleNamespace(mds=None, chunk_size=1 << 20))  # type: ignore[arg-type]

    async def unlink_at(parent: int, name: bytes) -> None:
        pass

    client: Any = SimpleNamespace(creds=SimpleNamespace(node="test"), on_dir_attrs=None, io=io,
                                  open_ino=master.open_ino, release_inos=master.release_inos, unlink_at=unlink_at)
    ops = ChunkFSOperations(client, MountOptions())
    ops._session_keeper = object()  # type: ignore[assignment]
    for ino, name in ((10, b"closed"), (11, b"open")):
        ops.cache.remember(ino, 1, name)
        io.dirty[ino] = {0}
    fh = await opened(ops, 11)
    await ops.unlink(1, b"closed", ROOT)  # type: ignore[arg-type]
    await ops.unlink(1, b"open", ROOT)  # type: ignore[arg-type]
    assert io.dirty == {11: {0}}
    await ops.release(fh)


async def test_a_file_whose_last_handle_that_could_write_is_closed_is_said_to_be_held_only_to_read() -> None:
    """With everything committed, the master is told with the next batch (RELEASE's `read_only`), so a dead
    writer's trim need not wait for this mount's last close; an open that may write takes it back."""
    master = Master()
    ops = mount(master)
    ops._read_holds = True
    reader = int((await ops.open(7, os.O_RDONLY, ROOT)).fh)  # type: ignore[arg-type]
    writer = await opened(ops, 7)
    assert master.table.may_be_written(7)
    await ops.release(writer)
    await settle()
    assert master.releases == [{7: 2}] and master.read_only == [[7]]
    assert master.table.held(7) and not master.table.may_be_written(7)
    again = await opened(ops, 7)  # to write again: the master counts it as a writer's once more
    assert master.table.may_be_written(7)
    second = await opened(ops, 7)
    await ops.release(again)  # another handle that can write is still open: nothing to say
    await settle()
    assert len(master.releases) == 1 and master.table.may_be_written(7)
    await ops.release(second)
    await ops.release(reader)  # the last close: released, not held only to read
    await settle()
    assert master.releases[-1] == {7: 4} and master.read_only[-1] == []
    assert not master.table.held(7)


async def test_a_master_that_does_not_take_read_holds_is_not_told_them() -> None:
    master = Master()
    ops = mount(master)
    reader = int((await ops.open(7, os.O_RDONLY, ROOT)).fh)  # type: ignore[arg-type]
    await ops.release(await opened(ops, 7))
    await settle()
    assert master.releases == [] and master.table.may_be_written(7)
    await ops.release(reader)


async def test_an_open_says_read_only_only_to_a_master_that_takes_it() -> None:
    """A master of an earlier version refuses OPEN's `read_only` as an unknown field: an upgrade probe's new
    mount failed every read-only open (451 of 451) with EPROTO against such metadata servers."""
    seen: list[bool] = []
    master = Master()

    async def open_ino(*args: Any, read_only: bool = False, **kw: Any) -> dict[str, Any]:
        seen.append(read_only)
        return await master.open_ino(*args, read_only=read_only, **kw)

    ops = mount(master)
    ops.client.open_ino = open_ino
    await ops.open(7, os.O_RDONLY, ROOT)  # type: ignore[arg-type]  # not watching yet, or an earlier master
    ops._read_holds = True  # the master's answer to WATCH named FEATURE_READ_HOLDS
    await ops.open(8, os.O_RDONLY, ROOT)  # type: ignore[arg-type]
    await ops.open(9, os.O_RDWR, ROOT)  # type: ignore[arg-type]
    assert seen == [False, True, False]

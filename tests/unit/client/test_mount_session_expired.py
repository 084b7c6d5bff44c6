"""A mount taken for dead by the master (its session expired) says so at the next commit of each file it wrote.

The master cuts what an expired session wrote past the sizes it had
committed (mds/open_files.py).  A mount that was only silent (stopped, cut
off) and reconnects must not then commit those writes' ends, as if they
were there: the next fsync, flush or close of each such file fails with EIO,
once.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.client import fuse_ops
from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions, OpenFile
from chunkfs.common.errors import Unavailable, WritesLost
from chunkfs.protocol.messages import Msg


class Client:
    """A master whose file was trimmed (at cut 9) when `trimmed`, else last cut at 9 by a truncate."""

    def __init__(self, trimmed: bool = True) -> None:
        self.creds = SimpleNamespace(node="mount-test")
        self.on_dir_attrs = None
        self.trimmed = trimmed
        self.extends: list[tuple[int, int | None]] = []

    async def extend(self, ino: int, size: int, mtime_ns: int | None = None, cut: Any = None) -> dict[str, Any]:
        sent = cut() if callable(cut) else cut
        self.extends.append((ino, sent))
        if sent is not None and sent < 9:
            if self.trimmed:
                raise WritesLost(f"inode {ino}: writes past its size made before ... were cut")
            size = 100  # made before a cut: the size is left alone
        return {"ino": ino, "size": size, "mtime_ns": mtime_ns or 0, "ctime_ns": 0, "cut": 9}


class Conn:
    """A new connection to the master, answering SESSION as told, after `refusals` Unavailable (None: always)."""

    def __init__(self, reply: dict[str, Any], refusals: int | None = 0) -> None:
        self.reply = reply
        self.refusals = refusals
        self.asked: list[dict[str, Any]] = []
        self.closed = False

    async def call(self, msg: Msg, header: dict[str, Any], payload: bytes = b"", timeout: float = 0) -> Any:
        assert msg == Msg.SESSION
        self.asked.append(header)
        if self.refusals is None or len(self.asked) <= self.refusals:
            raise Unavailable("this master has not read its list of mount sessions yet; retry shortly")
        return self.reply, b""


def _dirty(ino: int) -> OpenFile:
    of = OpenFile(ino, 100, 0, 100)
    of.dirty, of.written_end, of.cut = True, 8192, 9
    return of


@pytest.mark.parametrize(("reply", "lost"), [
    ({"known": False, "listed": False}, True),  # taken for dead: the files written here fail once
    ({"known": False, "listed": True}, False),  # a new master: it has not heard of the session yet
    ({"known": True, "listed": True}, False),
])
def test_writes_not_committed_when_the_session_expired_fail_their_next_commit_once(reply, lost) -> None:
    async def scenario() -> None:
        client = Client()
        ops = ChunkFSOperations(client, MountOptions())  # type: ignore[arg-type]
        ops._established = True
        written, clean = _dirty(7), OpenFile(8, 10, 0, 10)
        ops.files.update({7: written, 8: clean})
        conn = Conn(reply)
        await ops._check_session(conn)  # type: ignore[arg-type]
        assert conn.asked[0]["ask_listed"] is True
        assert ops._unsent is not reply["known"]  # the keeper re-sends the open files to a master that forgot
        assert (written.lost, clean.lost) == (lost, False)
        if lost:
            with pytest.raises(WritesLost):
                await ops._commit(written)  # sent with the oldest cut there is: the master refuses it
            assert not written.dirty and written.size == 100
        await ops._commit(written)  # said once; or committed as usual
        assert client.extends == [(7, 0 if lost else 9)]

    asyncio.run(scenario())


@pytest.mark.parametrize(("refusals", "lost"), [
    (3, False),  # a new master answers once it has read its list: it knew the session
    (None, True),  # never a word: taken as cut, an EIO rather than an fsync over zeros
])
def test_a_master_that_cannot_say_yet_is_asked_again_and_silence_counts_as_cut(monkeypatch, refusals, lost) -> None:
    monkeypatch.setattr(fuse_ops, "SESSION_CHECK_FOR", 0.3)
    monkeypatch.setattr(fuse_ops, "SESSION_CHECK_PAUSE", 0.01)

    async def scenario() -> None:
        ops = ChunkFSOperations(Client(), MountOptions())  # type: ignore[arg-type]
        ops._established = True
        written = ops.files[7] = _dirty(7)
        conn = Conn({"known": False, "listed": True}, refusals)
        await ops._check_session(conn)  # type: ignore[arg-type]
        assert len(conn.asked) > (refusals or 1)
        assert written.lost is lost

    asyncio.run(scenario())


def test_lost_writes_a_truncate_left_out_of_the_size_are_not_a_success() -> None:
    """Not trimmed (another mount held the file at the expiry), but cut by a truncate some time before:
    the master leaves the size alone for writes made before a cut, and the fsync must not succeed."""

    async def scenario() -> None:
        client = Client(trimmed=False)
        ops = ChunkFSOperations(client, MountOptions())  # type: ignore[arg-type]
        written = ops.files[7] = _dirty(7)
        written.lost = True
        with pytest.raises(WritesLost):
            await ops._commit(written)
        assert client.extends == [(7, 0)] and not written.dirty and not written.lost

    asyncio.run(scenario())

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

from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions, OpenFile
from chunkfs.common.errors import WritesLost
from chunkfs.protocol.messages import Msg


class Client:
    def __init__(self) -> None:
        self.creds = SimpleNamespace(node="mount-test")
        self.on_dir_attrs = None
        self.extends: list[int] = []

    async def extend(self, ino: int, size: int, mtime_ns: int | None = None, cut: int | None = None) -> dict[str, Any]:
        self.extends.append(ino)
        return {"ino": ino, "size": size, "mtime_ns": mtime_ns or 0, "ctime_ns": 0, "cut": cut or 0}


class Conn:
    """A new connection to the master, answering SESSION as told."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.asked: list[dict[str, Any]] = []

    async def call(self, msg: Msg, header: dict[str, Any], payload: bytes = b"", timeout: float = 0) -> Any:
        assert msg == Msg.SESSION
        self.asked.append(header)
        return self.reply, b""


def _dirty(ino: int) -> OpenFile:
    of = OpenFile(ino, 100, 0, 100)
    of.dirty, of.written_end, of.cut = True, 8192, 0
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
                await ops._commit(written)
            assert client.extends == [], "the lost writes' end was committed"
            assert not written.dirty and written.size == 100
        await ops._commit(written)  # said once; or committed as usual
        assert client.extends == ([] if lost else [7])

    asyncio.run(scenario())

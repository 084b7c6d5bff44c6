"""What a chunk server does at once on its event loop, and what it leaves to a task or a thread.

A replica's share of a small write is done at once (`ChunkServer.handle_now`)
unless something must go first: a write that arrived before it and waits in a
task, a holder of the chunk's lock, or a peer that does not read its answers.
Then it goes to a task too, and the chunk's writes are still done in the
order they arrived.  Writes that need a task of their own (on down a chain,
synced, large) always go to one.  A small read is done at once too, after the
writes that came before it.  Deleting large replicas goes to a thread.
"""

from __future__ import annotations

import threading
import time
import types

import pytest

from chunkfs.common.config import ClusterInfo, NodeConfig
from chunkfs.common.errors import InvalidArgument
from chunkfs.cs.server import INLINE_IO_MAX, ChunkServer
from chunkfs.protocol.messages import Msg

pytestmark = pytest.mark.timeout(60)

CID = 0x77
#: A client (a mount) whose connection reads what it is sent.
READS = types.SimpleNamespace(writable=True, peer_role="client")


def server(tmp_path) -> ChunkServer:  # type: ignore[no-untyped-def]
    node = NodeConfig(role="cs", cluster=ClusterInfo("c", "u", 8 << 20), addr="127.0.0.1:1")
    srv = ChunkServer(tmp_path, node, b"s" * 32)
    srv.store.create(CID, 1)
    srv.store.create(CID + 1, 1)
    srv.lease.renewed(time.monotonic())  # as a master's answer would (cs/master_lease.py)
    return srv


def write(offset: int, **more: object) -> dict[str, object]:
    return {"chunk_id": CID, "version": 1, "offset": offset, "sync": False, "chain": [], **more}


async def test_done_at_once_when_nothing_must_go_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = server(tmp_path)
    assert srv.handle_now(READS, Msg.CS_WRITE, write(0), b"a" * 10) == ({}, b"")
    assert srv.store.read(CID, 1, 0, 10) == b"a" * 10
    parts = {"parts": [[CID, 1, [], [[20, 2], [40, 1]]], [CID + 1, 1, [], [[5, 3]]]]}
    assert srv.handle_now(READS, Msg.CS_WRITE_CHUNKS, parts, b"bbcddd") == ({}, b"")
    assert srv.store.read(CID, 1, 20, 21) == b"bb" + bytes(18) + b"c"
    assert srv.store.read(CID + 1, 1, 5, 3) == b"ddd"
    # A client's writes to this replica alone, noted for a new master (cs/recent_writes.py); a head's are not.
    assert srv.recent.fanned_since(60) == [CID + 1, CID]
    head = types.SimpleNamespace(writable=True, peer_role="cs")
    assert srv.handle_now(head, Msg.CS_WRITE, write(100), b"e") == ({}, b"")
    assert srv.recent.fanned_since(60) == [CID + 1, CID]  # (CID first, had the head's write been noted)
    # How far writes reached into each chunk: every write's, the head's too.
    assert srv.recent.ends_between(60, 0) == [(CID, 101), (CID + 1, 8)]
    read = {"chunk_id": CID, "version": 1, "offset": 0, "length": 10}
    assert srv.handle_now(READS, Msg.CS_READ, read, b"") == ({}, b"a" * 10)  # a small read too
    srv.lease.until = 0.0  # no master's answer within its lease: a read waits for one, in a task
    assert srv.handle_now(READS, Msg.CS_READ, read, b"") is None
    srv.lease.renewed(time.monotonic())
    assert srv.handle_now(READS, Msg.CS_READ, {**read, "length": INLINE_IO_MAX + 1}, b"") is None
    assert srv.handle_now(READS, Msg.CS_FSYNC, {"chunk_id": CID, "version": 1, "chain": []}, b"") is None
    assert srv._writes_waiting == 0
    srv.store.close()


@pytest.mark.parametrize("why", ["chain", "sync", "large", "peer not reading", "chunk locked", "parts chained"])
async def test_passed_to_a_task_and_later_writes_wait_behind_it(tmp_path, why: str) -> None:  # type: ignore[no-untyped-def]
    srv = server(tmp_path)
    conn, msg, header, payload = READS, Msg.CS_WRITE, write(0), b"x" * 4
    if why == "chain":
        header["chain"] = [[2, "127.0.0.1:2"]]
    elif why == "sync":
        header["sync"] = True
    elif why == "large":
        payload = b"x" * (INLINE_IO_MAX + 1)
    elif why == "peer not reading":
        conn = types.SimpleNamespace(writable=False, peer_role="client")
    elif why == "parts chained":
        msg, header = Msg.CS_WRITE_CHUNKS, {"parts": [[CID, 1, [[2, "127.0.0.1:2"]], [[0, 4]]]]}
    hold = srv._locks.hold((CID,)) if why == "chunk locked" else None  # (joins the lock's queue at once)
    if hold is not None:
        await hold.__aenter__()
    assert srv.handle_now(conn, msg, header, payload) is None
    assert srv._writes_waiting == 1
    # A later write that could have been done at once waits behind it, in a task too (its order kept).
    assert srv.handle_now(READS, Msg.CS_WRITE, write(0), b"y") is None
    assert srv._writes_waiting == 2
    assert srv.store.read(CID, 1, 0, 1) == b"\0"
    # So does a read: it would not see the writes that came before it.
    assert srv.handle_now(READS, Msg.CS_READ, {"chunk_id": CID, "version": 1, "offset": 0, "length": 1}, b"") is None
    assert srv._writes_waiting == 2
    if hold is not None:
        await hold.__aexit__(None, None, None)
    if why not in ("chain", "parts chained"):  # (those would reach out to a server that is not there)
        await srv.handle(conn, msg, header, payload)
        await srv.handle(READS, Msg.CS_WRITE, write(0), b"y")
        assert srv.store.read(CID, 1, 0, 2) == b"yx"
        assert srv._writes_waiting == 0  # each task counted its write done
        assert srv.handle_now(READS, Msg.CS_WRITE, write(1), b"z") == ({}, b"")
        assert srv.store.read(CID, 1, 0, 2) == b"yz"
    srv.store.close()


@pytest.mark.parametrize("size, on_loop", [(64 << 10, True), (4 << 20, False)])
async def test_large_replicas_are_deleted_off_the_loop(tmp_path, size: int, on_loop: bool) -> None:  # type: ignore[no-untyped-def]
    """Unlinking a replica gives its blocks back there and then (about 0.5 ms per MiB): a large one in a
    thread, or every request to the server waits for it."""
    srv = server(tmp_path)
    srv.store.write(CID, 1, 0, b"x" * size)
    assert size <= srv.store.allocated([CID, CID + 1, 999]) < size + (1 << 20)
    where: list[bool] = []
    delete_many = srv.store.delete_many

    def watched(ids: list[int]) -> None:
        where.append(threading.current_thread() is threading.main_thread())
        delete_many(ids)

    srv.store.delete_many = watched  # type: ignore[method-assign]
    await srv.handle_master(READS, Msg.CS_DELETE_CHUNKS, {"chunk_ids": [CID]}, b"")
    assert where == [on_loop]
    assert srv.store.version_of(CID) is None and srv.store.allocated([CID]) == 0
    srv.store.close()


async def test_a_new_master_is_told_the_chunks_fanned_out_to_and_how_far_writes_reached(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = server(tmp_path)
    master = types.SimpleNamespace(writable=True, peer_role="mds")
    assert srv.handle_now(READS, Msg.CS_WRITE, write(4096), b"a" * 10) == ({}, b"")
    reply, _ = await srv.handle_master(master, Msg.CS_FANNED, {"within": 600}, b"")
    assert reply == {"chunks": [CID]}  # (an earlier master asks without `before`: no `ends`)
    reply, _ = await srv.handle_master(master, Msg.CS_FANNED, {"within": 600, "before": 0}, b"")
    assert reply == {"chunks": [CID], "ends": [[CID, 4106]]}
    with pytest.raises(InvalidArgument):
        await srv.handle_master(master, Msg.CS_FANNED, {"within": 600, "before": 601}, b"")
    srv.store.close()

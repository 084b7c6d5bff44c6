"""Registration in pages: the bound on one frame, and both ends of the exchange (issue 14)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.errors import ProtocolError, Unavailable
from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.cs.mds_link import MdsLink, _named, page_count
from chunkfs.mds.held_replicas import HeldReplicas
from chunkfs.mds.server import LiveServer, MetadataServer
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.frame import MAX_HEADER_LEN, encode_header
from chunkfs.protocol.messages import REPLICA_PAGE, Msg, validate_request, validate_response
from chunkfs.protocol.rpc import SCRATCH_SIZE

BIG = (1 << 64) - 1  # the widest msgpack integer


def register(replicas: list[list[int]], **more: Any) -> dict[str, Any]:
    return {"cluster_uuid": "u", "cs_id": 3, "addr": "127.0.0.1:1", "host": "h", "total": 1, "free": 1,
            "replicas": replicas, **more}


def test_a_worst_case_page_fits_any_receive_buffer() -> None:
    page = [[BIG, BIG]] * REPLICA_PAGE
    size = len(encode_header(register(page, more=True, location="room.row.rack", tier=3)))
    assert size < SCRATCH_SIZE // 2 and size < MAX_HEADER_LEN // 8
    assert len(encode_header({"delete": [BIG] * REPLICA_PAGE})) < SCRATCH_SIZE // 2


def test_one_frame_carries_at_most_one_page() -> None:
    validate_request(Msg.CS_REGISTER, register([[1, 2]] * REPLICA_PAGE, more=True), 0)
    validate_request(Msg.CS_REPORT_REPLICAS, {"cs_id": 3, "replicas": [[1, 2]] * REPLICA_PAGE, "last": True}, 0)
    with pytest.raises(ProtocolError, match="in pages"):
        validate_request(Msg.CS_REGISTER, register([[1, 2]] * (REPLICA_PAGE + 1)), 0)
    with pytest.raises(ProtocolError, match="in pages"):
        validate_request(Msg.CS_REPORT_REPLICAS, {"cs_id": 3, "replicas": [[1, 2]] * (REPLICA_PAGE + 1),
                                                  "last": False}, 0)
    with pytest.raises(ProtocolError, match="in pages"):
        validate_response(Msg.CS_REPORT_REPLICAS, {"delete": [1] * (REPLICA_PAGE + 1)})
    with pytest.raises(ProtocolError, match="last"):
        validate_request(Msg.CS_REPORT_REPLICAS, {"cs_id": 3, "replicas": []}, 0)


@pytest.mark.parametrize(("value", "want"), [("", 4096), ("32", 32), ("0", 1), ("100000", 4096), ("x", 4096)])
def test_page_size_knob_is_bounded(value: str, want: int) -> None:
    code = "from chunkfs.protocol.messages import REPLICA_PAGE; print(REPLICA_PAGE)"
    env = {**os.environ, "CHUNKFS_REPLICA_PAGE": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == want


@pytest.mark.parametrize(("count", "pages"), [(0, 1), (1, 1), (5, 1), (6, 2), (11, 3)])
def test_page_count(count: int, pages: int) -> None:
    assert page_count(count, 5) == pages


def test_cs_lists_ids_in_order_and_versions_as_they_are_now(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "data", 1 << 20)
    try:
        for chunk_id in (700, 3, 0x1FF, 42):
            store.create(chunk_id, 10)
        ids = store.replica_ids()
        assert list(ids) == [3, 42, 0x1FF, 700] and ids.itemsize == 8
        store.delete(42)
        store.set_version(700, 10, 12)
        assert store.versions_of(ids[1:]) == [(0x1FF, 10), (700, 12)]  # deleted meanwhile: skipped
    finally:
        store.close()


def test_cs_deletes_only_what_it_reported_at_the_version_reported(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "data", 1 << 20)
    try:
        for chunk_id in (1, 2, 3, 4):
            store.create(chunk_id, 10)
        store.set_version(3, 10, 11)  # copied again meanwhile: a newer version than reported
        page = [(1, 10), (2, 10), (3, 10)]
        named = _named(page, [1, 3, 4, True, "x"])
        assert named == [(1, 10), (3, 10)]  # 4 was not in the page, True and "x" are not chunk ids
        store.delete_stale(named)
        assert dict(store.list_replicas()) == {2: 10, 3: 11, 4: 10}
    finally:
        store.close()


class FakeMaster:
    """Just what the master's page handling reads: the store and the live servers."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.live: dict[int, LiveServer] = {}
        self._unknown = types.MethodType(MetadataServer._unknown, self)
        # Every replica behind its chunk's version here is stale, with a current one elsewhere: deleted
        # (keeping them when none is current: tests/cluster/test_master_died_while_moving_versions.py).
        self.behind = types.SimpleNamespace(keep=lambda cs_id, chunk_id, version: False)

    def take(self, server: LiveServer, pairs: list[tuple[int, int]], last: bool = False) -> list[int]:
        delete, _held, _upto = MetadataServer._take_replicas(self, server, pairs, last)  # type: ignore[arg-type]
        return delete

    def wait_for_reports(self, chunk: Any, cs_ids: set[int]) -> None:
        MetadataServer._wait_for_reports(self, chunk, cs_ids)  # type: ignore[arg-type]


def test_master_takes_pages_and_answers_each_pages_stale_replicas(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        index = 0

        def apply(op: str, **args: Any) -> Any:
            nonlocal index
            index += 1
            return store.apply(index, 1, encode_command(op, **args))

        ino = apply("create", parent=1, name="f", mode=0o644, time=1.0, exclusive=True)["attr"]["ino"]
        chunks = [apply("alloc_chunk", ino=ino, index=i, replicas=[1, 2] if i % 2 else [2, 3]) for i in range(6)]
        master = FakeMaster(store)
        server = LiveServer(1, "a:1", "h", conn=None, reporting=True,  # type: ignore[arg-type]
                            replicas=HeldReplicas(1, store.listed_on, store.still_listed))
        master.live[1] = server
        on_1 = [c for c in chunks if 1 in c.replicas]
        # Page 1: a current replica and a stale one (old version); page 2: current, orphan, not listed here.
        assert master.take(server, [(on_1[0].chunk_id, on_1[0].version), (on_1[1].chunk_id, 1)]) == [on_1[1].chunk_id]
        # Until the last page, a chunk not reported yet is unknown: writers wait, nothing is dropped.
        with pytest.raises(Unavailable, match="still reporting"):
            master.wait_for_reports(on_1[2], {1})
        master.wait_for_reports(on_1[0], {1})  # reported: no wait
        assert master.take(server, [(on_1[2].chunk_id, on_1[2].version), (999, 5), (chunks[0].chunk_id,
                                    chunks[0].version)], last=True) == [999, chunks[0].chunk_id]
        server.reporting = False
        master.wait_for_reports(on_1[1], {1})  # reporting over: a missing replica is simply missing
        assert [c.chunk_id for c in on_1 if c.chunk_id in server.replicas] == [on_1[0].chunk_id, on_1[2].chunk_id]
        assert (server.current, server.stale, server.pages) == (2, 3, 2)
    finally:
        store.close()


def test_no_event_loop_needed_for_page_handling() -> None:
    # _take_replicas and _wait_for_reports are plain functions: no await between check and update.
    assert not asyncio.iscoroutinefunction(MetadataServer._take_replicas)
    assert not asyncio.iscoroutinefunction(MetadataServer._wait_for_reports)


async def test_a_restarted_server_serves_only_once_its_stale_replicas_are_gone(tmp_path: Path) -> None:
    """The replicas a registration's answer names stale are gone before the server takes the lease it
    serves under (cs/master_lease.py): a reader whose map is older than the change that left one behind
    asks for exactly that version.  Unlinks alone, so that this is quick (no directory syncs)."""
    import threading

    from chunkfs.common.config import ClusterInfo, NodeConfig
    from chunkfs.cs.master_lease import MasterLease
    from chunkfs.protocol.rpc import Credentials, RpcServer

    creds = Credentials("c", b"s" * 32, "mds", "mds1")
    beats = asyncio.Event()
    release = threading.Event()
    deleted: list[tuple[int, int]] = []

    async def master(conn: Any, msg: Msg, h: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        if msg == Msg.CS_REGISTER:
            return {"cs_id": 7, "delete": [1, 2], "lease": True}, b""
        if msg == Msg.CS_HEARTBEAT:
            beats.set()
            return {"lease": True}, b""
        raise ProtocolError(f"unexpected {msg.name}")

    def slow_delete(replicas: list[tuple[int, int]]) -> None:
        release.wait(10)  # a slow disk: held until the test has looked
        deleted.extend(replicas)

    srv = RpcServer(creds, master)
    await srv.listen("127.0.0.1:0")
    store = types.SimpleNamespace(space=lambda: (1, 1), replica_ids=lambda: [1, 2, 3],
                                  versions_of=lambda ids: [(c, 4) for c in ids],
                                  replica_count=lambda: 3, delete_stale=slow_delete)
    server = types.SimpleNamespace(
        store=store, creds=Credentials("c", b"s" * 32, "cs", "cs7"), handle_master=None, directory=tmp_path,
        in_flight=0, stats=types.SimpleNamespace(heartbeat_fields=dict), lease=MasterLease(),
        scrubber=types.SimpleNamespace(update=lambda settings: None), unclean=False)
    node = NodeConfig(role="cs", cluster=ClusterInfo("c", "u", 1 << 20), addr="127.0.0.1:1", node_id=7,
                      mds=(f"127.0.0.1:{srv.port}",), heartbeat_interval=0.05)
    link = MdsLink(server, node, b"s" * 32)  # type: ignore[arg-type]
    link.start()
    try:
        await asyncio.sleep(0.5)
        assert not server.lease.holds() and not beats.is_set()  # no lease while the stale ones are there
    finally:
        release.set()
    await asyncio.wait_for(beats.wait(), 10)
    assert sorted(deleted) == [(1, 4), (2, 4)] and server.lease.holds()
    await link.stop()
    await srv.close()

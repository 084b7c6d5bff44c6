"""A new chunk's first small write travels with the request that allocates the chunk.

The master has the replicas made with those bytes in them (CS_CREATE_CHUNK with a payload) and
says `written`: the write takes no trip down the chain (mds/server.py `_on_chunk_write`).  A write
to a chunk that exists, or that another write allocated first, goes down the chain as before.
Whatever way each took, every replica holds the same bytes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from chunkfs.client.client import SyncClient
from chunkfs.protocol.messages import FEATURE_FIRST_WRITE, FIRST_WRITE_MAX, Msg

from ._disk_helpers import on_small_disk
from ._ops_helpers import replica_bytes, scrape, stat

KiB, MiB = 1 << 10, 1 << 20


def _steps(step: str) -> float:
    """`step`'s count over every chunk server."""
    return sum(scrape(m["url"]).get(f'chunkfs_cs_step_seconds_count{{step="{step}"}}', 0.0)
               for m in stat()["metrics"] if m["role"] == "cs")


def _first_writes_on(c: SyncClient) -> None:
    """What a mount does on each connection to the master: WATCH, and the feature its answer names."""
    reply = c.run(c.client.mds.call(Msg.WATCH, {}))
    assert FEATURE_FIRST_WRITE in reply["features"]
    c.client.io.first_writes = True


def test_a_new_chunks_first_write_is_made_with_itsreplica_bytes(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        _first_writes_on(c)
        f = c.open("/small", create=True)
        head, tail = os.urandom(6000), os.urandom(FIRST_WRITE_MAX)
        c.run(f.write(100, head))  # chunk 0: inside it, not at its start
        c.run(f.write(MiB + 10, tail))  # chunk 1: as large as such a write may be
        c.run(f.fsync())
        c.run(f.close())
        assert _steps("serve.CS_WRITE") == 0, "a first write went down the chain"
        assert _steps("cs.own_write") == 6, "each replica of each chunk writes its first write once"
        ino = c.stat("/small")["ino"]
        for index, offset, data in ((0, 100, head), (1, 10, tail)):
            expected = bytes(offset) + data
            held = replica_bytes(c, ino, index, len(expected))
            assert len(held) == 3
            for cs_id, got in held.items():
                assert got == expected, f"CS#{cs_id}'s replica of chunk {index} differs from what was written"
    with cluster.client() as r:
        whole = bytes(100) + head + bytes(MiB - 100 - len(head) + 10) + tail
        assert r.read(r.stat("/small")["ino"], 0, len(whole)) == whole


def test_writes_to_a_chunk_that_exists_go_down_the_chain(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as a:
        f = a.open("/f", create=True)
        a.run(f.write(0, b"a" * 8192))
        a.run(f.close())
    before = _steps("serve.CS_WRITE")
    with cluster.client() as b:  # another client: no map cached, so its write asks the master with its bytes
        _first_writes_on(b)
        f = b.open("/f")
        b.run(f.write(4096, b"b" * 100))
        b.run(f.close())
        assert _steps("serve.CS_WRITE") == before + 3, "a write to a chunk that exists goes down its chain of 3"
        ino = b.stat("/f")["ino"]
        for cs_id, got in replica_bytes(b, ino, 0, 8192).items():
            assert got == b"a" * 4096 + b"b" * 100 + b"a" * 3996, f"CS#{cs_id}'s replica differs"


def test_many_first_writes_to_one_new_chunk_at_once_leave_every_replica_the_same(make_cluster) -> None:
    """A queue of writes to a chunk not made yet: each asks the master with its bytes, one of them is
    made with the replicas, the others go down the chain after it; overlapping ones too."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        _first_writes_on(c)
        f = c.open("/queue", create=True)
        writes = [(i * 3000, os.urandom(4 * KiB)) for i in range(16)]  # each overlaps the next by 1,096 bytes

        async def all_at_once() -> None:
            await asyncio.gather(*(f.write(offset, data) for offset, data in writes))
            await f.fsync()

        c.run(all_at_once())
        c.run(f.close())
        ino = c.stat("/queue")["ino"]
        held = replica_bytes(c, ino, 0, 15 * 3000 + 4 * KiB)
        assert len(held) == 3 and len(set(held.values())) == 1, "the replicas differ"
        (got,) = set(held.values())
        for offset, data in writes:  # each write's bytes are there, but where a later-applied one overlaps
            assert got[offset + 1096:offset + 3000] == data[1096:3000]
        assert c.read(ino, 0, len(got)) == got


def test_a_first_write_a_full_chunk_server_cannot_hold_goes_down_the_chain_of_the_others(
        make_cluster, tmp_path: Path) -> None:
    """One chunk server on a small file system that fills up under new small files: the creation
    with the write fails there, the master drops that replica (naming the full disk), and the
    write goes down the chain of the other two; every file reads back whole."""
    cluster = make_cluster(n_cs=3)
    victim = cluster.find("cs", 3)
    with on_small_disk(cluster, "cs", 3, Path(victim.dir) / "data", tmp_path / "saved-data", 2 * MiB):
        cluster.wait_ready()
        with cluster.client() as c:
            c.set_replicas("/", 3, 2)
            _first_writes_on(c)
            files = {f"/f{i}": os.urandom(FIRST_WRITE_MAX - i) for i in range(48)}  # 3 MiB in all
            for path, blob in files.items():
                f = c.open(path, create=True)
                c.run(f.write(0, blob))
                c.run(f.fsync())
                c.run(f.close())
            for path, blob in files.items():
                assert c.read(c.stat(path)["ino"], 0, len(blob)) == blob, path
            cs_id = next(s["id"] for s in c.cluster_stat()["cs"] if s["addr"] == victim.addr)
            events = [e["message"] for e in c.events()]
            dropped = [m for m in events if f"on CS {cs_id}" in m or f"CS {cs_id} dropped" in m]
            assert any("no space" in m.lower() or "no_space" in m for m in dropped), events[-10:]

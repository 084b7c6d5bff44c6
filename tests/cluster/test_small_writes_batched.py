"""Many small writes to one chunk at once (a VM's queue): sent together, identical on every replica."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from chunkfs.client.client import File, SyncClient
from chunkfs.common.errors import InvalidArgument
from chunkfs.protocol.messages import Msg

from ._ops_helpers import scrape, stat

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 4 * MiB


def _image(c: SyncClient, expected: bytearray) -> tuple[File, int]:
    """A one-chunk file on three replicas (at least two), holding `expected`; (its handle, its inode)."""
    c.set_replicas("/", 3, 2)
    f = c.open("/image", create=True)
    c.run(f.write(0, bytes(expected)))
    return f, c.stat("/image")["ino"]


def _each_replica_holds(c: SyncClient, m: dict[str, Any], expected: bytearray, but: int | None = None) -> None:
    """Every replica of the chunk map `m` (but CS#`but`) holds exactly `expected`."""
    for cs_id, addr in m["replicas"]:
        if cs_id == but:
            continue
        conn = c.run(c.client.io.server(addr))
        _, held = c.run(conn.call(Msg.CS_READ, {
            "chunk_id": m["chunk_id"], "version": m["version"], "offset": 0, "length": CHUNK}))
        assert held == expected, f"CS#{cs_id}'s replica differs from what was written"


def test_small_writes_in_flight_together_go_as_batches_and_every_replica_holds_them_all(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    rng = random.Random(7)
    expected = bytearray(os.urandom(CHUNK))
    with cluster.client() as c:
        f, ino = _image(c, expected)
        # 300 writes of 4 KiB at distinct places of the one chunk, all issued at once (and a few
        # unaligned, across two checksum blocks), then one fsync.
        slots = rng.sample(range(CHUNK // (4 * KiB) - 1), 300)
        writes = []
        for i, slot in enumerate(slots):
            offset = slot * 4 * KiB + (1000 if i % 10 == 0 else 0)
            data = os.urandom(4 * KiB)
            expected[offset:offset + len(data)] = data
            writes.append((offset, data))

        async def all_at_once() -> None:
            await asyncio.gather(*(f.write(offset, data) for offset, data in writes))
            await f.fsync()

        c.run(all_at_once())
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
        assert len(m["replicas"]) == 3
        _each_replica_holds(c, m, expected)
        assert c.read(ino, 0, CHUNK) == bytes(expected)

        # A request of pieces with one outside the chunk is refused whole: not a byte of it is written.
        cs_id, addr = m["replicas"][-1]
        conn = c.run(c.client.io.server(addr))
        bad = {"chunk_id": m["chunk_id"], "version": m["version"], "offset": 0, "chain": [], "sync": False,
               "pieces": [[0, 4 * KiB], [CHUNK - 10, 4 * KiB]]}
        with pytest.raises(InvalidArgument, match="outside the chunk"):
            c.run(conn.call(Msg.CS_WRITE, bad, bytes(8 * KiB)))
        _, head = c.run(conn.call(Msg.CS_READ, {
            "chunk_id": m["chunk_id"], "version": m["version"], "offset": 0, "length": 4 * KiB}))
        assert head == expected[:4 * KiB]

    # Batches were sent: the chunk servers served fewer write requests than they wrote pieces.
    s = stat()
    urls = {m["id"]: m["url"] for m in s["metrics"] if m["role"] == "cs"}
    requests = ops = 0.0
    for url in urls.values():
        page = scrape(url)
        ops += page['chunkfs_cs_io_operations_total{op="write"}']
        requests += page['chunkfs_cs_io_latency_seconds_count{op="write"}']
    assert ops >= 3 * (1 + len(writes))
    assert requests < ops - 30, f"{requests:.0f} write requests for {ops:.0f} writes: no batch was sent"


@pytest.mark.parametrize("victim", ["head", "replica"])
def test_a_chunk_server_killed_while_small_writes_are_batched_loses_no_acknowledged_write(
    make_cluster, victim: str
) -> None:
    """`kill -9` of the chain's head (or of another replica) with hundreds of small writes in flight
    and held behind one another: every write still returns, and every one of them is on each
    surviving replica and reads back; the batches that met the dead server went again on a new chain."""
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    rng = random.Random(11)
    expected = bytearray(os.urandom(CHUNK))
    with cluster.client() as c:
        f, ino = _image(c, expected)
        chain = c.run(c.client.mds.call(Msg.CHUNK_WRITE, {"ino": ino, "index": 0}))["replicas"]
        dead = chain[0][0] if victim == "head" else chain[-1][0]
        number = cluster.cs_number(dead)
        writes = []
        for slot in rng.sample(range(CHUNK // (4 * KiB)), 600):
            data = os.urandom(4 * KiB)
            expected[slot * 4 * KiB:(slot + 1) * 4 * KiB] = data
            writes.append((slot * 4 * KiB, data))
        done = 0

        async def one(offset: int, data: bytes) -> None:
            nonlocal done
            await f.write(offset, data)
            done += 1

        async def kill_when_under_way() -> int:
            for _ in range(2000):  # bounded: at most 10 s
                if done >= 100:
                    break
                await asyncio.sleep(0.005)
            await asyncio.to_thread(cluster.kill, "cs", number)
            return done

        async def writes_and_a_kill() -> int:
            results = await asyncio.gather(kill_when_under_way(), *(one(o, d) for o, d in writes))
            await f.fsync()
            return results[0]

        done_at_kill = c.run(writes_and_a_kill())
        assert done_at_kill < len(writes), "every write was answered before the kill: nothing was tested"
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
        assert len([cs_id for cs_id, _ in m["replicas"] if cs_id != dead]) >= 2
        _each_replica_holds(c, m, expected, but=dead)
        assert c.read(ino, 0, CHUNK) == bytes(expected)

"""Many small writes at once (a VM's queue), to one chunk or many: sent together, identical on every replica."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs.client.client import File, SyncClient
from chunkfs.common.errors import InvalidArgument
from chunkfs.protocol.messages import Msg

from ._ops_helpers import replica_bytes, scrape, stat

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 4 * MiB


def _image(c: SyncClient, expected: bytearray) -> tuple[File, int]:
    """A file on three replicas (at least two) holding `expected`; (its handle, its inode)."""
    c.set_replicas("/", 3, 2)
    f = c.open("/image", create=True)
    c.run(f.write(0, bytes(expected)))
    return f, c.stat("/image")["ino"]


def _replicas(c: SyncClient, ino: int, index: int, chunk: int, but: int | None = None) -> dict[int, bytes]:
    """What each replica (but CS#`but`'s) of the file's chunk `index` holds: two at least."""
    held = replica_bytes(c, ino, index, chunk, but)
    assert len(held) >= 2
    return held


def _each_replica_holds(c: SyncClient, ino: int, expected: bytearray, chunk: int, but: int | None = None) -> None:
    """Every replica (but CS#`but`'s) of every chunk of the file holds exactly its share of `expected`."""
    for index in range(len(expected) // chunk):
        for cs_id, held in _replicas(c, ino, index, chunk, but).items():
            assert held == expected[index * chunk:(index + 1) * chunk], \
                f"CS#{cs_id}'s replica of chunk {index} differs from what was written"


def _write_all_at_once(
    c: SyncClient, f: File, expected: bytearray, rng: random.Random, n: int
) -> list[tuple[int, bytes]]:
    """`n` writes of 4 KiB at distinct places of the file, all issued at once (a tenth unaligned, across
    two checksum blocks), then one fsync; `expected` follows them.  The writes, in order."""
    writes = []
    for i, slot in enumerate(rng.sample(range(len(expected) // (4 * KiB) - 1), n)):
        offset = slot * 4 * KiB + (1000 if i % 10 == 0 else 0)
        data = os.urandom(4 * KiB)
        expected[offset:offset + len(data)] = data
        writes.append((offset, data))

    async def all_at_once() -> None:
        await asyncio.gather(*(f.write(offset, data) for offset, data in writes))
        await f.fsync()

    c.run(all_at_once())
    return writes


def _served(step: str) -> tuple[float, float, float]:
    """Over every chunk server: the writes done, the write requests served, and `step`'s count."""
    urls = [m["url"] for m in stat()["metrics"] if m["role"] == "cs"]
    ops = requests = steps = 0.0
    for url in urls:
        page = scrape(url)
        ops += page['chunkfs_cs_io_operations_total{op="write"}']
        requests += page['chunkfs_cs_io_latency_seconds_count{op="write"}']
        steps += page.get(f'chunkfs_cs_step_seconds_count{{step="{step}"}}', 0.0)
    return ops, requests, steps


def test_small_writes_in_flight_together_go_as_batches_and_every_replica_holds_them_all(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    rng = random.Random(7)
    expected = bytearray(os.urandom(CHUNK))
    with cluster.client() as c:
        f, ino = _image(c, expected)
        writes = _write_all_at_once(c, f, expected, rng, 300)
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
        assert len(m["replicas"]) == 3
        _each_replica_holds(c, ino, expected, CHUNK)
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
    ops, requests, _ = _served("serve.CS_WRITE_CHUNKS")
    assert ops >= 3 * (1 + len(writes))
    assert requests < ops - 30, f"{requests:.0f} write requests for {ops:.0f} writes: no batch was sent"


def test_small_writes_to_many_chunks_go_together_per_head_and_every_replica_holds_them_all(make_cluster) -> None:
    """A queue of writes over a disk image of many chunks (four servers, three replicas: the chunks'
    chains differ, so each server a head sends a request to gets the parts of the chunks it holds)."""
    chunk, chunks = 1 * MiB, 8
    cluster = make_cluster(n_cs=4, chunk_size=chunk)
    rng = random.Random(13)
    expected = bytearray(os.urandom(chunk * chunks))
    with cluster.client() as c:
        f, ino = _image(c, expected)
        _write_all_at_once(c, f, expected, rng, 500)
        _each_replica_holds(c, ino, expected, chunk)
        assert c.read(ino, 0, len(expected)) == bytes(expected)
    _, _, several = _served("serve.CS_WRITE_CHUNKS")
    assert several > 0, "no request carried writes to several chunks"


def test_two_mounts_writing_the_same_blocks_at_once_leave_every_replica_the_same(make_cluster) -> None:
    """Two clients, each with its own batches, write 4 KiB again and again to the same few places of four
    chunks at once: whichever write lands last, every replica of a chunk applied them in one order (the
    one head the master names for the chunk, whoever asks, and its order kept on every replica)."""
    chunk, chunks = 1 * MiB, 4
    cluster = make_cluster(n_cs=4, chunk_size=chunk)
    with cluster.client() as c1, cluster.client() as c2:
        f1, ino = _image(c1, bytearray(chunk * chunks))
        f2 = c2.open("/image")
        places = [index * chunk + slot * 64 * KiB for index in range(chunks) for slot in range(8)]

        def storm(c: SyncClient, f: File, seed: int) -> None:
            rng = random.Random(seed)
            writes = [(rng.choice(places), os.urandom(4 * KiB)) for _ in range(400)]

            async def all_at_once() -> None:
                await asyncio.gather(*(f.write(offset, data) for offset, data in writes))
                await f.fsync()

            c.run(all_at_once())

        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(storm, c1, f1, 1), pool.submit(storm, c2, f2, 2)]:
                done.result(timeout=120)
        for index in range(chunks):
            held = _replicas(c1, ino, index, chunk)
            assert len({bytes(b) for b in held.values()}) == 1, f"the replicas of chunk {index} differ: {sorted(held)}"
            assert c1.read(ino, index * chunk, chunk) == next(iter(held.values()))


@pytest.mark.parametrize(("victim", "chunks"), [("head", 1), ("replica", 1), ("head", 4)])
def test_a_chunk_server_killed_while_small_writes_are_batched_loses_no_acknowledged_write(
    make_cluster, caplog: pytest.LogCaptureFixture, victim: str, chunks: int
) -> None:
    """`kill -9` of the chain's head (or of another replica) with hundreds of small writes in flight
    and held behind one another: every write still returns, and every one of them is on each
    surviving replica and reads back; the batches that met the dead server went again on a new chain.
    Over 4 chunks on four servers the one killed heads some chains and is a replica in others."""
    chunk = CHUNK // chunks
    cluster = make_cluster(n_cs=3 if chunks == 1 else 4, chunk_size=chunk)
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
        _each_replica_holds(c, ino, expected, chunk, but=dead)
        assert c.read(ino, 0, CHUNK) == bytes(expected)
    # Hundreds of writes failed at the kill; the log says so once per chunk and version, not per write.
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "new chain" in r.getMessage()]
    assert 0 < len(warned) <= 3 * chunks, "\n".join(r.getMessage() for r in warned[:20])

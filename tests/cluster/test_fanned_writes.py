"""A chunk's one writer sends its small writes to every replica at once; a second writer ends that.

The head of a chunk's chain orders its writes for every replica.  A write
sent by the mount to the three replicas itself skips a hop (mds/fan_grants.py),
and is safe only while one writer alone writes the chunk: the master lets the
writer whose write allocated the chunk do it, at the chunk's first version,
and moves the chunk to a new version before anyone else gets its map.  The
replicas then refuse the fanned-out writes, whose writer sends them again
down the chain like everyone else.  Whatever way each write took, every
replica of a chunk ends up the same.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs.client.client import File, SyncClient
from chunkfs.common.errors import StaleVersion
from chunkfs.protocol.messages import FEATURE_FAN, Msg
from chunkfs.testing.cluster import master_id

from ._ops_helpers import replica_bytes, same_replicas, scrape, stat, wait_for

pytestmark = pytest.mark.timeout(300)

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 1 * MiB
CHUNKS = 2
#: Blocks both clients write at once, one round each.
ROUNDS = 300
BLOCK = 4 * KiB
#: What a head waits for when it sends a write on to the other replicas (cs/server.py).
FORWARDED = 'chunkfs_cs_step_seconds_count{step="cs.replicas_answered"}'


def _forwarded() -> float:
    """Writes (or batches of them) a head sent on to the other replicas, over every chunk server."""
    return sum(scrape(m["url"]).get(FORWARDED, 0.0) for m in stat()["metrics"] if m["role"] == "cs")


def _fans_on(c: SyncClient) -> None:
    """What a mount does on each connection to the master: WATCH, and take the feature its answer names."""
    reply = c.run(c.client.mds.call(Msg.WATCH, {}))
    assert FEATURE_FAN in reply["features"]
    c.client.io.fans = True


def _same_everywhere(c: SyncClient, ino: int, expected: bytes | None = None) -> None:
    for index in range(CHUNKS):
        first = same_replicas(c, ino, index, CHUNK)
        if expected is not None:
            assert first == expected[index * CHUNK:(index + 1) * CHUNK], f"chunk {index} holds what was not written"


def test_the_one_writer_of_a_chunk_sends_its_small_writes_to_every_replica_at_once(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    with cluster.client() as c:
        c.set_replicas("/", 3, 2)
        _fans_on(c)
        f = c.open("/image", create=True)
        model = bytearray(CHUNK * CHUNKS)
        c.run(f.write(0, bytes(model)))  # allocates both chunks: this client is their writer
        before = _forwarded()
        rng = random.Random(5)
        for _ in range(60):  # one at a time, as a VM's disk at queue depth 1
            offset, data = rng.randrange(0, len(model) - 8 * KiB), rng.randbytes(rng.choice([512, 4 * KiB, 8 * KiB]))
            c.run(f.write(offset, data))
            model[offset:offset + len(data)] = data
        assert _forwarded() == before, "a small write of the chunks' one writer went through a head"
        c.run(f.fsync())
        _same_everywhere(c, c.stat("/image")["ino"], bytes(model))


def _race(first: SyncClient, f: File, second: SyncClient, g: File) -> None:
    """Both clients write the same blocks at once, a round each: which lands last is a race, run on every
    replica; they must all run it the same way."""
    together = threading.Barrier(2, timeout=60)
    blocks = random.Random(3).sample(range(CHUNK * CHUNKS // BLOCK), ROUNDS)

    def write(c: SyncClient, h: File, fill: int) -> None:
        for block in blocks:
            together.wait()
            c.run(h.write(block * BLOCK, bytes([fill]) * BLOCK))

    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(write, first, f, 0xAA), pool.submit(write, second, g, 0x55)]:
            done.result(timeout=200)
    first.run(f.fsync())
    second.run(g.fsync())
    ino = first.stat("/image")["ino"]
    _same_everywhere(first, ino)
    assert second.read(ino, 0, CHUNK * CHUNKS) == first.read(ino, 0, CHUNK * CHUNKS)


def test_a_second_writer_ends_fanning_out_and_the_replicas_stay_the_same(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    with cluster.client() as first, cluster.client() as second:
        first.set_replicas("/", 3, 2)
        _fans_on(first)
        _fans_on(second)
        f = first.open("/image", create=True)
        first.run(f.write(0, bytes(CHUNK * CHUNKS)))
        _race(first, f, second, second.open("/image"))


def test_a_new_master_ends_what_the_old_one_let_a_writer_fan_out(make_cluster) -> None:
    """The new master cannot know whom the old one let send writes to every replica: before it gives
    anyone a chunk's map, a chunk still at its first version moves to a new one."""
    cluster = make_cluster(n_cs=3, n_mds=3, chunk_size=CHUNK)
    with cluster.client() as first:
        first.set_replicas("/", 3, 2)
        _fans_on(first)
        f = first.open("/image", create=True)
        first.run(f.write(0, bytes(CHUNK * CHUNKS)))
        old = master_id(first)
        cluster.kill("mds", old)
        first.client.mds.retry_for = 30.0
        first.mkdir("/probe")  # retried until a new master commits it
        assert master_id(first) != old
        with cluster.client() as second:
            _fans_on(second)
            _race(first, f, second, second.open("/image"))



def _left_different(c: SyncClient) -> tuple[int, int]:
    """What a writer that died between two of its sends leaves: a write on one replica only; (inode, version)."""
    c.set_replicas("/", 3, 2)
    _fans_on(c)
    f = c.open("/image", create=True)
    c.run(f.write(0, bytes(CHUNK)))  # this client allocated the chunk: its one writer
    ino = c.stat("/image")["ino"]
    m = c.client.io._write_maps[(ino, 0)]
    assert m.fan
    conn = c.run(c.client.io.server(m.replicas[1][1]))
    c.run(conn.call(Msg.CS_WRITE, {"chunk_id": m.chunk_id, "version": m.version, "offset": 2 * BLOCK,
                                   "chain": [], "sync": False}, b"\xee" * BLOCK))
    assert len({bytes(b) for b in replica_bytes(c, ino, 0, CHUNK).values()}) == 2
    return ino, m.version


def _made_the_same(r: SyncClient, ino: int, timeout: float) -> bytes:
    """Wait until the replicas of `ino`'s chunk are the same again; what they hold, checked."""

    def same_now() -> bool:
        try:
            held = replica_bytes(r, ino, 0, CHUNK)
        except StaleVersion:
            return False  # the mender is moving them to the new version one by one (a CI run under load)
        # All three: a new master's map names only the servers registered with it so far.
        return len(held) == 3 and len({bytes(b) for b in held.values()}) == 1

    wait_for("the replicas made the same", same_now, timeout=timeout)
    data = same_replicas(r, ino, 0, CHUNK)
    # Never acknowledged, so either bytes would do; but a reader that read the replica with the write read
    # them, and the replica that took the most of the writer's writes is copied from: they stay.
    assert data[2 * BLOCK:3 * BLOCK] == b"\xee" * BLOCK
    assert data[:2 * BLOCK] == bytes(2 * BLOCK) and data[3 * BLOCK:] == bytes(CHUNK - 3 * BLOCK)
    assert r.read(ino, 0, CHUNK) == data
    return data


def test_replicas_a_writer_left_different_when_it_went_are_made_the_same(make_cluster) -> None:
    """A writer that dies between its sends to the replicas leaves a write on some of them only (a probe:
    a mount killed while it connected to a slow replica).  Its connection to the master closes without its
    session ending, and the master compares the replicas of every chunk it let that writer fan out to, and
    mends those that differ (fanned_mender.py)."""
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    with cluster.client() as c:
        ino, version = _left_different(c)
    with cluster.client() as r:
        _made_the_same(r, ino, timeout=20)
        assert r.run(r.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))["version"] != version


def test_replicas_a_writer_left_different_are_made_the_same_when_the_master_died_with_it(make_cluster) -> None:
    """A machine lost with the master and a writer on it: what the master let the writer do went with it,
    and the replicas differed for good, a reader reading either (a fault probe: 3 of 37 node kills).  The
    chunk servers tell the new master the chunks clients lately wrote to them alone, and it mends them."""
    cluster = make_cluster(n_cs=3, n_mds=3, chunk_size=CHUNK)
    with cluster.client() as c:
        ino, _ = _left_different(c)
        cluster.kill("mds", master_id(c))  # first: it never hears that its writer went
        c.client.mds.retry_for = 1.0  # (the writer's goodbye to a master is not waited for)
    with cluster.client() as r:
        r.client.mds.retry_for = 30.0
        _made_the_same(r, ino, timeout=90)

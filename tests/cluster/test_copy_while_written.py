"""A chunk copied to a new server while it is written (healing after a server died).

The copy has two phases (mds/replication.py): the whole chunk while writers go on, then, with
the chunk frozen, the blocks written meanwhile.  Writes go on during the bulk of the copy, and
every replica ends identical to what was written, the blocks rewritten after the copy had read
them included.  Before, every write to the chunk waited for the whole copy, frozen: a 256 MiB
chunk at the cluster's replication rate is seconds, and at a low rate longer than a client waits.
"""

from __future__ import annotations

import os
import random
import signal
import time

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

CHUNK = 4 * MiB  # four pieces of a copy: at 0.5 MiB/s the bulk phase takes about 6 s


def test_writes_go_on_while_the_chunk_is_copied_and_every_replica_ends_equal(make_cluster) -> None:
    cluster = make_cluster(n_cs=4, chunk_size=CHUNK)
    data = bytearray(os.urandom(CHUNK))
    rng = random.Random(5)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        c.set_config({"replication-rate": "0.5"})
        f = c.open("/f", create=True)
        c.run(f.write(0, bytes(data)))
        c.run(f.fsync())

        def replicas() -> list[int]:
            return [r[0] for r in chunk_maps(c, f.ino, CHUNK, CHUNK)[0]["replicas"]]

        def copying() -> bool:
            return bool(c.cluster_stat()["chunks"].get("replicating"))

        victim = replicas()[-1]
        cluster.kill("cs", cluster.cs_number(victim), signal.SIGKILL)
        during = writes = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (len(holders := replicas()) == 3 and victim not in holders):
            before = copying()
            off = rng.randrange(CHUNK // 4096) * 4096
            piece = os.urandom(4096)
            c.run(f.write(off, piece))
            data[off:off + 4096] = piece
            writes += 1
            during += before and copying()  # began and ended while the copy ran
        c.run(f.fsync())
        assert victim not in replicas() and len(replicas()) == 3, "the chunk was not copied in time"
        assert during >= 10, f"only {during} of {writes} writes went through while the chunk was copied"
        assert c.read(f.ino, 0, CHUNK) == bytes(data)
        check_every_replica(c, f.ino, bytes(data), CHUNK)

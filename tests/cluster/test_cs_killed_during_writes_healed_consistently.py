"""A chunk server dies while a file is being rewritten; its chunks are re-replicated *while* the writes go on.

Every replica must end with the last acknowledged bytes: a copy of a chunk being written
is frozen (new version first, writers refetch the map and wait for the copy), never torn.
"""

from __future__ import annotations

import os
import random
import threading
import time

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, set_fast_timeouts

SIZE = 6 * MiB
PIECE = 128 << 10


def test_rereplication_during_writes_leaves_identical_replicas(make_cluster) -> None:
    cluster = make_cluster(n_cs=4)
    expected = bytearray(os.urandom(SIZE))
    rng = random.Random(5)  # noqa: S311 - test data
    stop = threading.Event()
    errors: list[BaseException] = []
    rounds = [0]
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=2)
        f = c.open("/hot", create=True)
        c.run(f.write(0, bytes(expected)))
        c.run(f.fsync())
        victim = chunk_maps(c, f.ino, SIZE)[0]["replicas"][1][0]

        with cluster.client() as w:
            wf = w.open("/hot")

            def writer() -> None:
                try:
                    while not stop.is_set():
                        offset = rng.randrange(0, SIZE // PIECE) * PIECE
                        piece = os.urandom(PIECE)
                        w.run(wf.write(offset, piece))  # acknowledged: on every replica of the chain
                        expected[offset:offset + PIECE] = piece
                        rounds[0] += 1
                    w.run(wf.fsync())
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                time.sleep(1.0)
                cluster.kill("cs", cluster.cs_number(victim))

                def healed() -> bool:
                    return all(len(m["replicas"]) == 3 and victim not in [r[0] for r in m["replicas"]]
                               for m in chunk_maps(c, f.ino, SIZE))

                wait_for("every chunk back to 3 replicas while being written", healed, timeout=120)
                time.sleep(1.0)  # and some writes after the healing, on the new chains
            finally:
                stop.set()
                thread.join(120)
            assert not thread.is_alive()
            assert not errors, errors
        assert rounds[0] > 20
        events = " | ".join(e["message"] for e in c.events())
        assert "replication" in events
        c.client.io.forget(f.ino)
        assert c.read(f.ino, 0, SIZE) == bytes(expected)
        check_every_replica(c, f.ino, bytes(expected))

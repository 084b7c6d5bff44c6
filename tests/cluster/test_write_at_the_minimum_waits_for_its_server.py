"""A write that a chunk server fails, on a chunk with no replica to spare, waits for that server and goes through.

With replicas 3:2 and one server already gone, every chunk has exactly the
minimum.  When a second holder dies, a write to such a chunk cannot drop it
(fewer than the minimum), so the writer waits; once the server is back, the
write goes down the same chain again.  Found by a fault probe: the writer's
report of the failure kept the master refusing after the server was back,
and the write failed with EIO after the client's whole wait (6 of 6).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

KiB = 1 << 10


@pytest.mark.timeout(240)
def test_a_write_failed_by_a_server_at_the_minimum_goes_through_once_it_is_back(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        c.set_replicas("/", 3, 2)
        f = c.open("/vm.img", create=True)
        blocks = [os.urandom(4 * KiB) for _ in range(3)]
        c.run(f.write(0, blocks[0]))
        c.run(f.fsync())

        def chain() -> list[int]:
            m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))
            return [cs_id for cs_id, _addr in m["replicas"]]

        first = chain()[0]
        cluster.kill("cs", cluster.cs_number(first))
        c.run(f.write(4 * KiB, blocks[1]))  # the master drops the dead replica: two left, the minimum
        c.run(f.fsync())
        assert len(chain()) == 2

        head = chain()[0]
        cluster.kill("cs", cluster.cs_number(head))  # the head: the write fails on its own request
        errors: list[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            try:
                c.run(f.write(8 * KiB, blocks[2]))
                c.run(f.fsync())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(2)
        assert not done.is_set(), errors  # it waits: the chunk cannot lose another replica
        cluster.start("cs", cluster.cs_number(head))
        thread.join(120)
        assert not thread.is_alive()
        assert not errors, errors  # before: Unavailable after the client's whole wait for the master
        assert c.read(f.ino, 0, 12 * KiB) == b"".join(blocks)
        wait_for("the server back in the chain", lambda: head in chain(), timeout=30)

        # The written bytes are on the server that came back as well: read from it alone.
        cluster.kill("cs", cluster.cs_number(next(cs for cs in chain() if cs != head)))
        with cluster.client() as fresh:
            assert fresh.read(fresh.stat("/vm.img")["ino"], 0, 12 * KiB) == b"".join(blocks)

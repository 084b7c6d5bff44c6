"""A chunk server already down when the master changes: the new master finds nothing listening at its
address and places new chunks without waiting out its reconnect grace for it (absent_servers.py).

Before, every new chunk waited up to 10 s after the election for a server that would never reconnect.
"""

from __future__ import annotations

import os

from chunkfs.testing.cluster import master_id, wait_for, wait_for_new_master


def test_new_master_places_new_chunks_without_waiting_for_a_server_that_is_down(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    down = cluster.find("cs", 3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        down_id = next(s["id"] for s in c.cluster_stat()["cs"] if s["addr"] == down.addr)
        cluster.kill("cs", 3)
        old = master_id(c)
        cluster.kill("mds", old)
        wait_for_new_master(c, old)
        word = f"CS#{down_id} at {down.addr} refuses connections"
        wait_for("the new master's word that the server that is down refuses connections",
                 lambda: any(word in e["message"] for e in c.events()), timeout=30)
        # Asked once, with no retry of an "I am new, waiting for chunk servers" answer: it places the chunk
        # on the two servers there are (replicas 3:2).
        c.client.mds.retry_for = 0.0
        data = os.urandom(8192)
        f = c.open("/new-after-failover", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        c.client.mds.retry_for = 30.0
        assert c.read(f.ino, 0, len(data)) == data
        live = {s["id"] for s in c.cluster_stat()["cs"] if s["status"] == "active"}
        assert down_id not in live

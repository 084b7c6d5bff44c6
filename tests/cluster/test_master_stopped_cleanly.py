"""A master stopped with SIGTERM does not log the chunk servers it disconnects as lost (a fault probe
found three "connection lost ... inactive" warnings in the event log, one per healthy server)."""

from __future__ import annotations

import signal

from chunkfs.testing.cluster import master_id, wait_for, wait_for_new_master


def test_a_master_stopped_with_sigterm_logs_no_chunk_server_lost(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        old = master_id(c)
        seen = max((e["seq"] for e in c.events()), default=0)
        cluster.kill("mds", old, signal.SIGTERM)
        wait_for_new_master(c, old)
        wait_for("the new master's election in the event log",
                 lambda: any("is the master" in e["message"] for e in c.events(seen)), timeout=30)
        lost = [e["message"] for e in c.events(seen) if "lost" in e["message"]]
        assert not lost, lost

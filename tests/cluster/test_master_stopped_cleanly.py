"""A master stopped with SIGTERM does not log the chunk servers it disconnects as lost (a fault probe
found three "connection lost ... inactive" warnings in the event log, one per healthy server)."""

from __future__ import annotations

import signal

from chunkfs.common.errors import Unavailable
from chunkfs.testing.cluster import master_id, wait_for


def test_a_master_stopped_with_sigterm_logs_no_chunk_server_lost(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        old = master_id(c)
        seen = max((e["seq"] for e in c.events()), default=0)
        cluster.kill("mds", old, signal.SIGTERM)

        def new_master() -> int | None:
            try:
                m = master_id(c)
            except Unavailable:
                return None
            return m if m != old else None

        wait_for("a new master", new_master, timeout=60)
        wait_for("the new master's election in the event log",
                 lambda: any("is the master" in e["message"] for e in c.events(seen)), timeout=30)
        lost = [e["message"] for e in c.events(seen) if "lost" in e["message"]]
        assert not lost, lost

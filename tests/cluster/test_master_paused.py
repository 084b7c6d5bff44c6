"""A master that was itself stopped (SIGSTOP, a stalled host) does not blame the chunk servers for its silence.

On resume its timers run before it has read what the servers sent meanwhile: silence measured on
the plain clock would declare every server offline, close their links and give up their replicas.
"""

from __future__ import annotations

import os
import signal
import time

from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, chunk_maps, set_fast_timeouts

SIZE = 2 * MiB
STOPPED = 8.0  # well past the offline timeout below


def test_servers_are_not_offline_after_the_master_was_stopped(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        set_fast_timeouts(c, inactive=1, offline=3)
        f = c.open("/f", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        maps = chunk_maps(c, f.ino, SIZE)
        seq = max((e["seq"] for e in c.events()), default=0)
        cluster.kill("mds", 1, signal.SIGSTOP)
        try:
            time.sleep(STOPPED)
        finally:
            cluster.kill("mds", 1, signal.SIGCONT)
        time.sleep(4)  # more than the offline timeout, running
        wait_for("every server active", lambda: {s["status"] for s in c.cluster_stat()["cs"]} == {"active"},
                 timeout=30)
        said = [e["message"] for e in c.events(since=seq)]
        # (The servers may have given up their links to the silent master and registered again: true, and said.)
        assert not [m for m in said if " offline:" in m or "given up" in m or "replication started" in m], said
        assert chunk_maps(c, f.ino, SIZE) == maps  # no replica dropped, no new version
        assert c.read(f.ino, 0, SIZE) == data

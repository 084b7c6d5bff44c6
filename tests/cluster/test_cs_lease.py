"""Chunk servers serve replicas only under a lease from the master (cs/master_lease.py): with the master
away for longer than the lease, a read of a file held open waits for it, and is served once it is back.

A server cut off from the masters cannot know whether a write acknowledged elsewhere left its replica
behind (a partition probe read such bytes: tests/cluster/test_hosts_in_netns.py has it).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from chunkfs.protocol.messages import REPLICA_LEASE

MiB = 1 << 20


def test_a_read_waits_out_a_master_away_for_longer_than_the_lease(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        assert c.run(f.read(0, 4096)) == data[:4096]  # map and size kept: no master is asked to read
        cluster.kill("mds", 1, signal.SIGSTOP)
        resumed: list[float] = []

        def resume() -> None:
            resumed.append(time.monotonic())
            cluster.kill("mds", 1, signal.SIGCONT)

        timer = threading.Timer(REPLICA_LEASE + 3.0, resume)
        timer.start()
        try:
            time.sleep(REPLICA_LEASE + 1.0)  # every server's lease ran out meanwhile
            assert c.run(f.read(4096, 8192)) == data[4096:12288]
            done = time.monotonic()
        finally:
            timer.cancel()
            if not resumed:
                cluster.kill("mds", 1, signal.SIGCONT)
        # Served only once the master was back (the code before served it from the replicas at once).
        assert resumed and done >= resumed[0]
        assert c.read(f.ino, 0, MiB) == data

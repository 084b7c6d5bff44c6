"""A replica further down a write's chain freezes (SIGSTOP, its connections stay open): the head of
the chain gives up on it before the client gives up on the head, names it, and the master drops
the frozen replica, not the healthy head (found by a fault probe: with equal waits, the client's
fired first and the head was dropped, leaving one current copy)."""

from __future__ import annotations

import os
import signal

from chunkfs.cs import server as cs_server
from chunkfs.protocol import rpc

from ._healing_helpers import MiB, chunk_maps

FORWARD_WAIT = 3  # the head's wait for a replica down the chain, lowered by a test knob (20 s by default)


def test_the_default_waits_blame_the_frozen_replica_not_the_head() -> None:
    assert cs_server.FORWARD_TIMEOUT < rpc.CALL_TIMEOUT


def test_a_frozen_replica_down_the_chain_is_dropped_and_the_head_kept(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_FORWARD_TIMEOUT", str(FORWARD_WAIT))
    cluster = make_cluster(n_cs=4)
    data = bytearray(os.urandom(MiB))
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, bytes(data)))
        c.run(f.fsync())
        chain = c.run(c.client.io._write_map(f.ino, 0, set()))
        head, victim = chain.replicas[0][0], chain.replicas[1][0]
        number = cluster.cs_number(victim)
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            data[4096:8192] = os.urandom(4096)
            c.run(f.write(4096, bytes(data[4096:8192])))  # waits FORWARD_WAIT s for the frozen one
            c.run(f.fsync())
            holders = [r[0] for r in chunk_maps(c, f.ino, MiB)[0]["replicas"]]
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        assert victim not in holders and head in holders, (head, victim, holders)
        assert c.read(f.ino, 0, MiB) == bytes(data)

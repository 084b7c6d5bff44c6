"""A replica of a write's chain freezes (SIGSTOP, its connections stay open).

Further down the chain: the head of the chain gives up on it before the client gives up on the
head, names it, and the master drops the frozen replica, not the healthy head (found by a fault
probe: with equal waits, the client's fired first and the head was dropped, leaving one current
copy).  Whether that happens by the head's wait for the request or by its watch for silence (the
frozen server answers no ping), the live head is kept.  The frozen head itself is given up by the
client's watch for silence, in seconds, where the request's own wait is 30 s.
"""

from __future__ import annotations

import os
import signal

import pytest

from chunkfs.client import chunk_io
from chunkfs.cs import server as cs_server
from chunkfs.protocol import rpc

from ._healing_helpers import MiB, chunk_maps

FORWARD_WAIT = 3  # the head's wait for a replica down the chain, lowered by a test knob (20 s by default)
SILENCE = 3  # how long a silent peer is waited for, lowered from 8 s (the chunk servers' knob, the client's constant)


def test_the_default_waits_blame_the_frozen_replica_not_the_head() -> None:
    assert cs_server.FORWARD_TIMEOUT < rpc.CALL_TIMEOUT


def write_with_one_frozen(cluster, position: int) -> tuple[list[int], int, list[int]]:
    """Write a file, freeze the replica at `position` of its chain, write 4 KiB more and fsync.

    Returns the chain, the frozen replica and the replicas after; the file must read back whole.
    """
    data = bytearray(os.urandom(MiB))
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, bytes(data)))
        c.run(f.fsync())
        chain = [r[0] for r in c.run(c.client.io._write_map(f.ino, 0, set())).replicas]
        victim = chain[position]
        number = cluster.cs_number(victim)
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            data[4096:8192] = os.urandom(4096)
            c.run(f.write(4096, bytes(data[4096:8192])))
            c.run(f.fsync())
            holders = [r[0] for r in chunk_maps(c, f.ino, MiB)[0]["replicas"]]
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        assert c.read(f.ino, 0, MiB) == bytes(data)
    return chain, victim, holders


def test_a_frozen_replica_down_the_chain_is_dropped_and_the_head_kept(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_FORWARD_TIMEOUT", str(FORWARD_WAIT))  # the head waits FORWARD_WAIT s for it
    chain, victim, holders = write_with_one_frozen(make_cluster(n_cs=4), 1)
    assert victim not in holders and chain[0] in holders, (chain, victim, holders)


@pytest.mark.parametrize("position", [0, 1], ids=["head", "second"])
def test_a_frozen_replica_is_given_up_for_its_silence(make_cluster, monkeypatch, caplog, position: int) -> None:
    monkeypatch.setenv("CHUNKFS_SILENCE_LIMIT", str(SILENCE))
    monkeypatch.setattr(chunk_io, "SILENCE_LIMIT", float(SILENCE))
    chain, victim, holders = write_with_one_frozen(make_cluster(n_cs=4), position)
    assert victim not in holders and set(chain) - {victim} <= set(holders), (chain, victim, holders)
    # Given up for its silence, not after the request's wait (30 s at the client, 20 s at the head).
    assert "sent nothing for" in caplog.text and "timed out" not in caplog.text, caplog.text

"""A chunk server frozen while it is the target of a copy does not hold the chunk's writers.

Writes to a chunk wait while it is copied (the chunk is frozen for the copy), so a copy to a
silent target held them for the copy's whole timeout.  Found by a fault probe: the head of a VM
image's chain was frozen, dropped from the chunk, and then chosen as the target of the copy that
restores the third replica (still "active": silent for less than cs-inactive-timeout); a 4 KiB
write to the image then failed with ETIMEDOUT after 30 s, with two healthy replicas.  The master's
link to a chunk server is now watched for silence: the frozen target is given up in seconds.  Here
the frozen target is a spare server chosen for a fourth replica.
"""

from __future__ import annotations

import os
import signal

from chunkfs.client import chunk_io
from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB

SILENCE = 3  # seconds a silent peer is waited for (8 by default): the chunk servers', master's and client's


def test_a_write_is_not_held_by_a_copy_to_a_frozen_server(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_SILENCE_LIMIT", str(SILENCE))
    monkeypatch.setattr(chunk_io, "SILENCE_LIMIT", float(SILENCE))
    cluster = make_cluster(n_cs=4)
    data = bytearray(os.urandom(MiB))
    with cluster.client() as c:
        # A slow copy: its own timeout is 30 s + 4 x 1 MiB / 0.1 MiB/s, longer than the client's 30 s wait.
        c.set_config({"replication-rate": "0.1"})
        f = c.open("/f", create=True)
        c.run(f.write(0, bytes(data)))
        c.run(f.fsync())
        holders = {cs for cs, _ in c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))["replicas"]}
        spare = next(s["id"] for s in c.cluster_stat()["cs"] if s["id"] not in holders)
        number = cluster.cs_number(spare)
        # Frozen while the master has nothing to ask of it (its link looks fine, silent for less than
        # cs-inactive-timeout): the only server that can take a fourth replica.  (The probe's way, a
        # head dropped while frozen, now has its replica deleted at once, and that request's silence
        # gives the frozen server up before any copy is planned.)
        cluster.kill("cs", number, signal.SIGSTOP)
        try:
            c.set_replicas("/f", 4, 2)
            wait_for("the copy to the frozen server", lambda: c.cluster_stat()["chunks"].get("replicating"),
                     timeout=30, pause=0.05)
            data[8192:12288] = os.urandom(4096)
            c.run(f.write(8192, bytes(data[8192:12288])))  # waits for the copy to be given up
            c.run(f.fsync())
        finally:
            cluster.kill("cs", number, signal.SIGCONT)
        assert c.read(f.ino, 0, MiB) == bytes(data)

"""Bytes flipped inside a replica file: found by the scrubber — or by a read — moved aside and replaced.

The client always gets the right bytes; the corrupt replica ends in the server's
quarantine folder and a good copy takes its place.
"""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps

SIZE = 2 * MiB


def _corrupt_one_replica(cluster, chunk_id: int, version: int) -> Path:
    """Flip 16 bytes in the middle of the data of one replica; returns that server's directory."""
    name = f"{chunk_id:016x}_{version:016x}.chunk"
    path = sorted(Path(cluster.dir).glob(f"cs*/data/chunks/*/{name}"))[0]
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) - MiB // 2)
        original = fh.read(16)
        fh.seek(-16, os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in original))
    return path.parents[3]


def _healed(c, ino: int, cs_dir: Path):
    def check() -> bool:
        quarantined = list((cs_dir / "data" / "quarantine").iterdir())
        stat = c.cluster_stat()
        return bool(quarantined) and stat["chunks"]["healthy"] == SIZE // MiB and all(
            len(m["replicas"]) == 3 for m in chunk_maps(c, ino, SIZE))
    return check


def test_scrubber_finds_corrupt_replica_and_it_is_replaced(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/scrubbed", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        m = chunk_maps(c, f.ino, SIZE)[1]
        cs_dir = _corrupt_one_replica(cluster, m["chunk_id"], m["version"])
        # Scrub every second, fast (the default is a pass a week at 4 MiB/s).
        c.run(c.client.mds.call(Msg.SET_CONFIG, {"values": {"scrub-interval": "1", "scrub-rate": "100"}}))
        wait_for("the scrubber to quarantine the replica and a good copy to replace it", _healed(c, f.ino, cs_dir),
                 timeout=90)
        check_every_replica(c, f.ino, data)
        assert c.read(f.ino, 0, SIZE) == data
        events = " | ".join(e["message"] for e in c.events())
        assert "scrubber reports a bad replica" in events and "is corrupt" in events
        wait_for("the healing to be reported finished",
                 lambda: any("replication finished" in e["message"] for e in c.events()), timeout=30)


def test_read_of_corrupt_replica_triggers_the_same_repair(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(SIZE)
    with cluster.client() as c:
        f = c.open("/read", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        m = chunk_maps(c, f.ino, SIZE)[0]
        cs_dir = _corrupt_one_replica(cluster, m["chunk_id"], m["version"])
        # The scrubber is idle (a pass a week): only reads can find it. Reads pick a replica at random.
        for _ in range(40):
            assert c.read(f.ino, 0, SIZE) == data
            c.client.io.forget(f.ino)
            if any("reports a bad replica" in e["message"] for e in c.events()):
                break
        else:
            raise AssertionError("40 reads never met the corrupt replica")
        wait_for("the corrupt replica to be quarantined and replaced", _healed(c, f.ino, cs_dir), timeout=90)
        check_every_replica(c, f.ino, data)
        events = " | ".join(e["message"] for e in c.events())
        assert "is corrupt" in events

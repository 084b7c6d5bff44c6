"""Bad blocks found while the chunk's other replicas are down are mended as soon as one of them is back.

Found by a fault probe: a replica corrupted while the two good ones were
down gave reads an I/O error (right), but once the good servers were back
the bad blocks stayed bad until the weekly scrub, the chunk counted as
healthy meanwhile, and every read that met them made another event
(80 in a second).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs.common.errors import ChecksumMismatch, ChunkFSError
from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import flip_bytes, read_replica, replica_files

MiB = 1 << 20


@pytest.mark.timeout(240)
def test_bad_blocks_no_good_copy_was_up_for_are_mended_when_one_is_back(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        f = c.open("/victim", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))
        chunk_id, version = m["chunk_id"], m["version"]
        (bad_id, bad_addr), *good = m["replicas"]
        path = next(p for p in replica_files(cluster, chunk_id, version)
                    if p.is_relative_to(Path(cluster.dir) / f"cs{cluster.cs_number(bad_id)}"))
        flip_bytes(path, -MiB // 2)  # in the middle of the data
        for cs_id, _ in good:
            cluster.kill("cs", cluster.cs_number(cs_id))
        wait_for("the master to see the good servers gone", lambda: sum(
            s["status"] != "active" for s in c.cluster_stat()["cs"]) == 2, timeout=30)
        # Said as it is, once: not also "silent for 10 s" a second after the kill.
        wait_for("the events of the servers gone", lambda: all(
            any(f"CS#{cs_id} connection from" in e["message"] and "lost" in e["message"] for e in c.events())
            for cs_id, _ in good), timeout=30)

        for _ in range(5):  # a program retrying its read: an I/O error each time, never other bytes
            with cluster.client() as reader:
                reader.client.mds.retry_for = 2.0
                with pytest.raises(ChunkFSError):
                    reader.read(f.ino, 0, MiB)

        def reports() -> int:
            return sum(f"reports a bad replica of chunk {chunk_id:#x}" in e["message"] for e in c.events())

        wait_for("the read's report", reports, timeout=30)
        assert reports() <= 2, [e["message"] for e in c.events()]  # not one per read
        assert not any("inactive: silent" in e["message"] for e in c.events())

        for cs_id, _ in good:
            cluster.start("cs", cluster.cs_number(cs_id))

        def mended() -> bool:
            try:
                payload = read_replica(c, bad_addr, chunk_id, version, MiB // 2, 4096)
            except ChecksumMismatch:
                return False
            assert payload == data[MiB // 2:MiB // 2 + 4096]
            return True

        wait_for("the bad block mended from a replica that is back", mended, timeout=60)
        # The event comes when the server has answered the repair: a moment after the block is mended.
        wait_for("the repair's event", lambda: any(
            f"replica of chunk {chunk_id:#x}" in e["message"] and "repaired" in e["message"] for e in c.events()),
            timeout=30)

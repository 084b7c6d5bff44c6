"""A mount reads each chunk from one replica, so the chunk servers' page caches do not all keep it."""

from __future__ import annotations

import os

from ._ops_helpers import scrape, stat

MiB = 1 << 20
READ = 'chunkfs_cs_io_operations_total{op="read"}'


def test_one_client_reads_a_chunk_from_one_replica_and_another_when_it_is_down(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)  # one chunk
    with cluster.client() as c:
        # The servers' own counts of reads served: no reads from the replica files on this machine
        # (local_reads.py), which read the same replica first (test_local_reads.py).
        c.client.io.local.enabled = False
        c.set_replicas("/", 3, 2)
        f = c.open("/one", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        ino = c.stat("/one")["ino"]
        urls = {m["id"]: m["url"] for m in stat()["metrics"] if m["role"] == "cs"}
        before = {cs: scrape(url).get(READ, 0) for cs, url in urls.items()}
        for i in range(30):
            assert c.read(ino, i * 32768, 32768) == data[i * 32768:(i + 1) * 32768]
        served = {cs: scrape(url).get(READ, 0) - before[cs] for cs, url in urls.items()}
        assert sorted(served.values()) == [0, 0, 30], f"reads per chunk server: {served}"

        # That replica's server gone: the reads go on from the others.
        reader = next(cs for cs, n in served.items() if n)
        cluster.kill("cs", cluster.cs_number(reader))
        assert c.read(ino, 0, MiB) == data

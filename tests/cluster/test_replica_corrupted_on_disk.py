"""Bytes flipped inside a replica file: the read is served from a good replica, and the bad one is reported."""

from __future__ import annotations

import os

from chunkfs.common.errors import ChecksumMismatch, NotFound, StaleVersion
from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import flip_bytes, replica_files

MiB = 1 << 20


def test_corrupt_replica_is_detected_and_skipped(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(MiB)
    with cluster.client() as c:
        f = c.open("/victim", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": f.ino, "index": 0}))
        chunk_id, version = m["chunk_id"], m["version"]
        # Corrupt the replica on every server but one, in the middle of the data.
        files = replica_files(cluster, chunk_id, version)
        assert len(files) == 3
        for path in files[:2]:
            flip_bytes(path, -MiB // 2)
        def read_as_a_new_mount(salt: int | None = None) -> bytes:
            # A mount reads a chunk from the same replica first each time: another one may start elsewhere.
            with cluster.client() as other:
                if salt is not None:
                    other.client.io._read_salt = salt  # which replica it starts at (random otherwise)
                return other.read(f.ino, 0, MiB)

        for salt in range(3):  # whichever replica the client picks first, it gets the right bytes
            assert c.read(f.ino, 0, MiB) == data
            c.client.io.forget(f.ino)
            assert read_as_a_new_mount(salt) == data  # each replica first once: the bad ones are met
        def outcomes() -> list[bool | str]:
            found: list[bool | str] = []
            for _, addr in m["replicas"]:
                conn = c.run(c.client.io.server(addr))
                try:
                    _, payload = c.run(conn.call(Msg.CS_READ, {
                        "chunk_id": chunk_id, "version": version, "offset": MiB // 2, "length": 4096}))
                    found.append(payload == data[MiB // 2:MiB // 2 + 4096])
                except ChecksumMismatch:
                    found.append("checksum")  # not mended yet: the replica refuses the damaged block
                except (NotFound, StaleVersion):
                    found.append("gone")
            return found

        # Never the wrong bytes: a corrupt replica refuses until its block is mended from the good one.
        assert False not in outcomes()
        events = " ".join(e["message"] for e in c.events())
        assert "bad replica" in events
        def mended() -> bool:
            # Reads go on meanwhile: each corrupt replica is reported once a read tries it first.
            assert read_as_a_new_mount() == data
            return outcomes() == [True, True, True]

        wait_for("both bad blocks to be mended", mended, timeout=60)

"""A file written with replicas=3 lands on three different chunk servers, identical on each."""

from __future__ import annotations

import os

from chunkfs.protocol.messages import Msg

MiB = 1 << 20


def test_64mib_file_has_three_identical_replicas_on_distinct_servers(make_cluster) -> None:
    cluster = make_cluster(n_cs=4, chunk_size=4 * MiB)
    data = os.urandom(64 * MiB)
    with cluster.client() as c:
        c.set_replicas("/", 3, 2)
        f = c.open("/big", create=True)
        for offset in range(0, len(data), 3 * MiB):  # unaligned to chunks on purpose
            c.run(f.write(offset, data[offset:offset + 3 * MiB]))
        c.run(f.fsync())
        attr = c.stat("/big")
        assert attr["size"] == len(data)
        assert attr["replicas"] == 3

        used_servers: set[int] = set()
        for index in range(len(data) // (4 * MiB)):
            m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": attr["ino"], "index": index}))
            replicas = m["replicas"]
            assert len(replicas) == 3
            assert len({cs for cs, _ in replicas}) == 3, "two replicas on one chunk server"
            used_servers.update(cs for cs, _ in replicas)
            crcs, contents = [], []
            for _, addr in replicas:
                conn = c.run(c.client.io.server(addr))
                reply, _ = c.run(conn.call(Msg.CS_CHECKSUMS, {"chunk_id": m["chunk_id"], "version": m["version"]}))
                crcs.append(reply["crcs"])
                _, payload = c.run(conn.call(Msg.CS_READ, {
                    "chunk_id": m["chunk_id"], "version": m["version"], "offset": 0, "length": 4 * MiB}))
                contents.append(payload)
            assert crcs[0] == crcs[1] == crcs[2]
            expected = data[index * 4 * MiB:(index + 1) * 4 * MiB]
            assert all(content == expected for content in contents)
        assert len(used_servers) >= 3

        assert c.read(attr["ino"], 0, len(data)) == data
        stat = c.cluster_stat()
        assert stat["chunks"]["healthy"] == 16
        assert sum(s["replicas"] for s in stat["cs"]) == 48

"""`kill -9` of a chunk server: reads and writes go on from the survivors."""

from __future__ import annotations

import os
import threading

from chunkfs.protocol.messages import Msg

MiB = 1 << 20


def test_read_after_kill_9_of_a_replica_holder(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    data = os.urandom(16 * MiB + 12345)
    with cluster.client() as c:
        f = c.open("/file", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        ino = f.ino
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": 0}))
        victim = m["replicas"][0][0]
        c.read(ino, 0, len(data))  # warm the client's chunk map cache with the victim in it
        cluster.kill("cs", cluster.cs_number(victim))
        assert c.read(ino, 0, len(data)) == data
    # A fresh client (no cached maps) reads it too.
    with cluster.client() as c:
        assert c.read(c.stat("/file")["ino"], 0, len(data)) == data
        stat = c.cluster_stat()
        # Inactive at once (no new chunks), offline after cs-offline-timeout (minutes by default).
        assert {s["id"]: s["status"] for s in stat["cs"]}[victim] in ("inactive", "offline")
        assert stat["chunks"]["degraded"] > 0 and stat["chunks"]["healthy"] == 0


def test_write_goes_on_when_a_chain_member_is_killed(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    piece = 256 * 1024
    data = os.urandom(24 * MiB)
    written = threading.Event()
    with cluster.client() as c:
        f = c.open("/during", create=True)
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for offset in range(0, len(data), piece):
                    c.run(f.write(offset, data[offset:offset + piece]))
                    if offset >= 4 * MiB:
                        written.set()
                c.run(f.fsync())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                written.set()

        thread = threading.Thread(target=writer)
        thread.start()
        assert written.wait(60)
        cluster.kill("cs", 2)
        thread.join(120)
        assert not thread.is_alive()
        assert not errors, errors
        assert c.stat("/during")["size"] == len(data)
        assert c.read(f.ino, 0, len(data)) == data
        events = [e["message"] for e in c.events()]
        assert any("offline" in e for e in events)

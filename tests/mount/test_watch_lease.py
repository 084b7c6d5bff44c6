"""A mount trusts its kernel's cache only within the watch lease (client/kernel_cache.py, rule 6).

A reader holding a file open reads it from the kernel's page cache; another client's change reaches it
as a notice from the master.  With the master frozen, a new one takes the change and this mount hears
of nothing: a probe read the old bytes for about 2 s after a write acknowledged through the new master.
"""

from __future__ import annotations

import os
import signal
import time

from chunkfs.protocol.messages import WATCH_LEASE
from chunkfs.testing.cluster import master_id, wait_for_new_master

MiB = 1 << 20
SIZE = 256 << 10


def test_a_reader_sees_a_write_made_through_a_new_master_while_the_old_one_is_frozen(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3, name="wl", chunk_size=MiB)
    mnt = mount(cluster)
    with cluster.client() as c:
        f = c.open("/f", create=True)
        c.run(f.write(0, b"a" * SIZE))
        c.run(f.fsync())
        c.run(f.close())
        old = master_id(c)
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, SIZE, 0) == b"a" * SIZE  # in the kernel's page cache from here
        cluster.kill("mds", old, signal.SIGSTOP)
        try:
            with cluster.client() as c:
                wait_for_new_master(c, old, timeout=60)
                f = c.open("/f")
                c.run(f.write(0, b"b" * SIZE))
                c.run(f.fsync())
                c.run(f.close())
            acknowledged = time.monotonic()
            seen = os.pread(fd, SIZE, 0)
            # (The code before: the old bytes, from the page cache, until the mount gave the master up.)
            assert seen == b"b" * SIZE, f"read {seen[:4]!r}... {time.monotonic() - acknowledged:.2f} s after the " \
                                        f"write was acknowledged, the old master frozen (lease {WATCH_LEASE:g} s)"
        finally:
            cluster.kill("mds", old, signal.SIGCONT)
        assert os.pread(fd, SIZE, 0) == b"b" * SIZE
    finally:
        os.close(fd)

"""Write-through: a file synced after every single small write gets its writes synced on every replica
as they are made, and its fsync then asks no chunk server (one round trip per synchronous write)."""

from __future__ import annotations

import os
import random

from .conftest import MiB, cs_steps


def test_a_file_synced_after_every_write_is_written_through_and_back_when_it_is_not(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    path = mnt / "disk.img"
    image = bytearray(os.urandom(2 * MiB))
    path.write_bytes(image)
    rng = random.Random(7)
    fd = os.open(path, os.O_RDWR)
    try:
        def write(n: int) -> None:
            for _ in range(n):
                off = rng.randrange(0, len(image) // 4096) * 4096  # a block, as a VM writes it
                data = os.urandom(4096)
                os.pwrite(fd, data, off)
                image[off:off + 4096] = data

        os.fsync(fd)
        before = cs_steps(cluster.dir)
        for _ in range(12):  # a VM's disk in write-through mode: fdatasync after every write
            write(1)
            os.fdatasync(fd)
        during = cs_steps(cluster.dir)
        for _ in range(6):  # two writes per sync: the sync does the work again
            write(2)
            os.fdatasync(fd)
        after = cs_steps(cluster.dir)
    finally:
        os.close(fd)

    def served(step: str, a: dict[str, int], b: dict[str, int]) -> int:
        return b.get(step, 0) - a.get(step, 0)

    # The first two syncs find the pattern; the next ten writes are synced on all three replicas.
    assert served("serve.CS_FSYNC", before, during) <= 2 * 3
    assert served("cs.own_write_synced", before, during) >= 10 * 3
    # Two writes per sync: the first pair is still written through, then the syncs sync again.
    assert served("serve.CS_FSYNC", during, after) >= 5 * 3
    assert served("cs.own_write_synced", during, after) <= 2 * 3
    assert path.read_bytes() == image

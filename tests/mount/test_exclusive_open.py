"""`-o exclusive`: two mounts never hold one file open for writing at once, across a master change too."""

from __future__ import annotations

import errno
import os
import time

import pytest

from chunkfs.client.fuse_session import state_dir
from chunkfs.common.daemon import LOG_FILE
from chunkfs.testing.cluster import master_id

from .conftest import MiB


def _master(cluster) -> int:
    with cluster.client() as c:
        c.client.mds.retry_for = 30.0
        return master_id(c)


def test_second_exclusive_writer_gets_ebusy_even_after_failover(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=2, n_mds=3, chunk_size=1 * MiB)
    a = mount(cluster, "a", "exclusive")
    b = mount(cluster, "b", "exclusive")
    (a / "vm.img").write_bytes(b"\0" * 4096)  # open, write, close: the lease is handed back at close
    fa = open(a / "vm.img", "r+b")  # noqa: SIM115 - held open across the test: "the VM runs"
    try:
        fa.write(b"running on host A")
        fa.flush()
        os.fsync(fa.fileno())
        with pytest.raises(OSError) as info:
            open(b / "vm.img", "r+b")  # noqa: SIM115
        assert info.value.errno == errno.EBUSY
        log = (state_dir(b) / LOG_FILE).read_text()
        assert "EBUSY" in log and f"{a} (pid" in log, log[-2000:]  # names the holder: host, mount point, pid
        with open(b / "vm.img", "rb") as f:  # reading is not exclusive
            assert f.read(17) == b"running on host A"

        # The master dies: the holder reclaims its lease on the new master within the grace period.
        old = _master(cluster)
        cluster.kill("mds", old)
        with pytest.raises(OSError) as info:
            open(b / "vm.img", "r+b")  # noqa: SIM115 - waits out the grace period, then refused
        assert info.value.errno == errno.EBUSY
        assert _master(cluster) != old
        fa.seek(0)
        fa.write(b"still running on A")  # the holder writes on
        fa.flush()
        os.fsync(fa.fileno())
    finally:
        fa.close()
    # Closed on A: B may open it now.
    deadline = time.monotonic() + 15
    while True:
        try:
            fb = open(b / "vm.img", "r+b")  # noqa: SIM115
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with fb:
        assert fb.read(18) == b"still running on A"
        fb.seek(0)
        fb.write(b"now on B")
    # Non-exclusive opens for reading on A still work while B holds it.
    assert (a / "vm.img").read_bytes()[:8] == b"now on B"

"""`st_blocks` counts the chunks a file holds, not its size: `du` and `qemu-img info` see a sparse
image's real use; never fewer blocks than data (`tar --sparse` reads fewer blocks as holes)."""

from __future__ import annotations

import os
import subprocess

from .conftest import MiB

CHUNK = 4 * MiB  # the mount tests' clusters


def test_a_sparse_image_counts_its_chunks_and_an_unsynced_file_its_size(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    image = mnt / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1024 * MiB)
    assert os.stat(image).st_blocks == 0  # nothing written: no chunk
    fd = os.open(image, os.O_RDWR)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        os.pwrite(fd, b"y" * 4096, 512 * MiB + 7)
        # Written here, not yet synced: the master has not counted what may be new chunks.
        assert os.fstat(fd).st_blocks * 512 >= 1024 * MiB
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(image)
    assert st.st_size == 1024 * MiB and st.st_blocks * 512 == 2 * CHUNK  # two chunks
    du = subprocess.run(["du", "-k", str(image)], capture_output=True, text=True, check=True, timeout=30)
    assert int(du.stdout.split()[0]) == 2 * CHUNK // 1024
    os.truncate(image, 100 * MiB)  # the chunk at 512 MiB goes
    assert os.stat(image).st_blocks * 512 == CHUNK


def test_a_small_file_counts_its_size(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    path = mnt / "small"
    path.write_bytes(b"z" * 6000)
    assert os.stat(path).st_blocks == (6000 + 511) // 512
    assert path.read_bytes() == b"z" * 6000

"""`cp` of a big random file onto the mount, compared with `cmp` there and from a second mount."""

from __future__ import annotations

import os

from .conftest import MiB, random_file, run

#: 256 MiB, as the issue asks (about 20 s here).
SIZE = 256 * MiB


def test_cp_then_cmp_here_and_from_a_second_mount(make_cluster, mount, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    a = mount(cluster, "a")
    src = random_file(tmp_path / "src.bin", SIZE)
    run("cp", src, a / "big.bin", timeout=300)
    assert os.stat(a / "big.bin").st_size == SIZE
    run("cmp", src, a / "big.bin", timeout=300)
    b = mount(cluster, "b")
    assert os.stat(b / "big.bin").st_size == SIZE
    run("cmp", src, b / "big.bin", timeout=300)


def test_data_fsynced_on_one_mount_is_read_on_another(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    a, b = mount(cluster, "a"), mount(cluster, "b")
    data = os.urandom(3 * MiB + 777)
    fd = os.open(a / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        # Still open on A: fsync alone must make data and size visible elsewhere.
        with open(b / "f", "rb") as f:
            assert f.read() == data
    finally:
        os.close(fd)

"""`kill -9` of a chunk server while `cp` writes a big file: the copy completes and compares equal."""

from __future__ import annotations

import os
import subprocess
import time

from .conftest import MiB, random_file, run

SIZE = (256 if os.environ.get("CHUNKFS_SLOW") == "1" else 64) * MiB


def test_cp_survives_kill_9_of_a_chunk_server(make_cluster, mount, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    src = random_file(tmp_path / "src.bin", SIZE)
    dst = mnt / "big.bin"
    cp = subprocess.Popen(["cp", str(src), str(dst)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Kill once the copy is under way (a quarter written), or after at most 30 s.
        deadline = time.monotonic() + 30
        while cp.poll() is None and time.monotonic() < deadline:
            if dst.exists() and dst.stat().st_size >= SIZE // 4:
                break
            time.sleep(0.02)
        assert cp.poll() is None, "the copy finished before a chunk server could be killed; raise SIZE"
        cluster.kill("cs", 2)
        _, err = cp.communicate(timeout=240)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait(10)
    assert cp.returncode == 0, err.decode()
    run("cmp", src, dst, timeout=240)

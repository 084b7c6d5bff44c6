"""`kill -9` of every process, then a restart: everything acknowledged is there."""

from __future__ import annotations

import os

import pytest

MiB = 1 << 20


@pytest.mark.parametrize("n_mds", [1, 3])
def test_restart_after_kill_9_of_everything(make_cluster, n_mds) -> None:
    cluster = make_cluster(n_cs=3, n_mds=n_mds)
    files = {f"/dir{i}/file{j}": os.urandom(j * MiB + i * 1000 + 1) for i in range(3) for j in range(3)}
    with cluster.client() as c:
        for i in range(3):
            c.mkdir(f"/dir{i}")
        for path, data in files.items():
            f = c.open(path, create=True)
            c.run(f.write(0, data))
            c.run(f.fsync())
        c.rename("/dir2/file2", "/dir1/moved")
        files["/dir1/moved"] = files.pop("/dir2/file2")
        c.unlink("/dir0/file0")
        del files["/dir0/file0"]
        big = c.open("/dir2/file1")
        c.run(big.truncate(12345))
        files["/dir2/file1"] = files["/dir2/file1"][:12345]
        term_before = max(m["term"] for m in c.cluster_stat()["mds"])
    # Every process at once, metadata servers included.
    for proc in cluster.processes:
        cluster.kill(proc.role, proc.id)
    assert not any(cluster.running(p) for p in cluster.processes)

    cluster.start_all()
    cluster.wait_ready()
    with cluster.client() as c:
        listed = {f"/dir{i}/{name}" for i in range(3) for name, _, _ in c.listdir(f"/dir{i}")}
        assert listed == set(files)
        for path, data in files.items():
            attr = c.stat(path)
            assert attr["size"] == len(data)
            assert c.read(attr["ino"], 0, len(data) + 10) == data
        # Writing after the restart works, on a new term.
        f = c.open("/after", create=True)
        c.run(f.write(0, b"x" * 1000))
        assert c.read(f.ino, 0, 1000) == b"x" * 1000
        mds = c.cluster_stat()["mds"]
        assert len(mds) == n_mds
        assert [m["role"] for m in mds].count("master") == 1
        assert all(m["term"] > term_before for m in mds if m["role"] == "master")

"""Small files written through the mount: each one's data travels with its chunk's allocation.

The mount learns from the master's answer to WATCH that it makes a new chunk's replicas with the
first write in them, and from then on a small file takes no write down a chain.  What `tar`
extracted, read back through another mount, is what went in.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from .conftest import cs_steps, run


def test_small_files_are_written_with_their_chunks_allocation(tmp_path: Path, make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt, other = mount(cluster), mount(cluster, "other")
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i}": os.urandom(size) for i, size in enumerate((1, 100, 4096, 6000, 20_000, 65_536))}
    for name, data in files.items():
        (src / name).write_bytes(data)
    archive = tmp_path / "small.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="tree")
    before = cs_steps(cluster.dir)
    run("tar", "-xf", archive, "-C", mnt)
    after = cs_steps(cluster.dir)
    # Every write is written on each of the 3 replicas; those down a chain were also served as CS_WRITE
    # there (the larger files' later writes, tar writing 10 KiB at a time).
    written = after["cs.own_write"] - before.get("cs.own_write", 0)
    chained = after.get("serve.CS_WRITE", 0) - before.get("serve.CS_WRITE", 0)
    assert (written - chained) == 3 * len(files), "not every file's first write came with its chunk's allocation"
    for name, data in files.items():
        assert (other / "tree" / name).read_bytes() == data, name
    run("tar", "-df", archive, "-C", other)  # sizes, modes and times as well

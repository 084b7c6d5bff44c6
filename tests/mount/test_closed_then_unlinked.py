"""A file closed and then unlinked at once (SQLite's journal in its default mode, a compiler's
temporary file) is freed by the unlink's own commit, not left as an orphan for a commit of its own.

The mount sends its last close of a file to the master in a batch, a little later; an unlink of the
file before that batch went would find it still held open, and the master would keep it as an
orphan until the release came, then free it with another Raft commit (and log it).  The mount now
sends the waiting releases ahead of the unlink.  The master counts the orphans it frees.
"""

from __future__ import annotations

import os
import time

from .conftest import master_metric

FILES = 20


def test_a_file_closed_then_unlinked_at_once_is_not_left_as_an_orphan(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    freed_before = master_metric(cluster.dir, "chunkfs_mds_orphans_freed_total")
    for i in range(FILES):
        path = mnt / f"journal{i}"
        with open(path, "wb") as f:
            f.write(b"x" * 512)
        path.unlink()
        assert not path.exists()
    # An orphan would be freed once its release arrives (20 ms batches): give it ample time to show.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        freed = master_metric(cluster.dir, "chunkfs_mds_orphans_freed_total") - freed_before
        if freed:
            break
        time.sleep(0.2)
    assert freed == 0, f"{freed:g} of {FILES} files closed then unlinked were left as orphans"


def test_a_file_unlinked_while_still_open_is_freed_at_its_close(make_cluster, mount) -> None:
    """The other side of the rule: an open file outlives its name, and is freed (as an orphan) once closed."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    freed_before = master_metric(cluster.dir, "chunkfs_mds_orphans_freed_total")
    path = mnt / "held"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"still here")
        path.unlink()
        assert os.pread(fd, 100, 0) == b"still here"
    finally:
        os.close(fd)
    deadline = time.monotonic() + 10
    while master_metric(cluster.dir, "chunkfs_mds_orphans_freed_total") == freed_before:
        assert time.monotonic() < deadline, "the unlinked file was never freed after its last close"
        time.sleep(0.2)

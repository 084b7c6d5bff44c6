"""Files behave through the mount as programs expect from a local disk.

Truncation on open, files that live on after unlink until their last close
(also across a master kill, and when another mount unlinks them),
``ENAMETOOLONG``, symbolic links, directory link counts and time stamps:
driven with the shell, coreutils, tar, sqlite3 and plain system calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chunkfs.client.fuse_session import state_dir
from chunkfs.common.daemon import read_pid
from chunkfs.protocol.messages import SESSION_TTL
from chunkfs.testing.cluster import LocalCluster, master_id, wait_for, wait_for_new_master

from .conftest import MiB, chunkfs, run
from .libc_calls import futimens

LONG = "n" * 256  # one byte over NAME_MAX


def chunk_count(cluster) -> int:
    with cluster.client() as client:
        return sum(client.cluster_stat()["chunks"].values())


def test_shell_redirection_truncates_and_updates_times(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    f = mnt / "f"
    run("sh", "-c", f"printf 'hello world\\n' > {f}")
    before = os.stat(f)
    time.sleep(0.05)
    run("sh", "-c", f"echo x > {f}")
    assert f.read_bytes() == b"x\n"
    after = os.stat(f)
    assert after.st_size == 2
    assert after.st_mtime_ns > before.st_mtime_ns and after.st_ctime_ns > before.st_ctime_ns
    # open(..., "w") and O_TRUNC on a file with data in several chunks, and on another handle already open.
    (mnt / "big").write_bytes(os.urandom(9 * MiB))
    with open(mnt / "big", "rb") as reader:
        with open(mnt / "big", "w") as w:
            w.write("short")
        assert os.fstat(reader.fileno()).st_size == 5
        assert reader.read() == b"short"
    fd = os.open(mnt / "big", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(mnt / "big").st_size == 0
    # Growing it again shows zeros, never the old bytes.
    os.truncate(mnt / "big", 8 * MiB)
    assert (mnt / "big").read_bytes() == bytes(8 * MiB)


def test_open_unlinked_file_lives_until_last_close(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    base = chunk_count(cluster)
    path = mnt / "tmp"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"a" * (3 * MiB), 0)
        os.unlink(path)
        assert not path.exists() and "tmp" not in os.listdir(mnt)
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 3 * MiB
        os.pwrite(fd, b"tail", 3 * MiB)
        os.fsync(fd)
        assert os.pread(fd, 4, 3 * MiB) == b"tail"
        assert os.pread(fd, 3, 0) == b"aaa"
        assert os.fstat(fd).st_size == 3 * MiB + 4
        # A name can be taken again while the old file lives on.
        path.write_bytes(b"new")
        assert os.pread(fd, 3, 0) == b"aaa"
        assert chunk_count(cluster) == base + 5  # 4 chunks of the orphan, 1 of the new file
    finally:
        os.close(fd)
    assert path.read_bytes() == b"new"
    # The last close frees the orphan's chunks (in the background).
    wait_for("the unlinked file's chunks to be freed", lambda: chunk_count(cluster) == base + 1, timeout=30)


def test_a_file_closed_reopened_and_unlinked_at_once_stays_readable(make_cluster, mount) -> None:
    """The last close's release and the next open of the same file reach the master in that order."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    for i in range(150):
        path, data = mnt / f"f{i}", b"%d" % i * 1000
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)  # the file lives on, held by this open
            assert os.pread(fd, len(data) + 1, 0) == data, i
        finally:
            os.close(fd)
    assert os.listdir(mnt) == []


def test_file_replaced_by_rename_while_open(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "old").write_bytes(b"old contents")
    (mnt / "new").write_bytes(b"new contents")
    with open(mnt / "old", "rb") as f:
        os.rename(mnt / "new", mnt / "old")
        assert os.fstat(f.fileno()).st_nlink == 0
        assert f.read() == b"old contents"
    assert (mnt / "old").read_bytes() == b"new contents"


def test_a_file_renamed_over_while_the_kernel_holds_it_opens_as_the_old_file(make_cluster, mount) -> None:
    """An open of a name that raced this mount's rename over it finds the old file, as on a local disk.

    The kernel reaches the file by the name, then a rename replaces it, then the open arrives: the
    master had freed the file, and the open failed with ESTALE (the kernel looks the name up again
    only once, so a file replaced every few milliseconds made opens fail).  An ``O_PATH``
    descriptor holds the kernel's inode the same way, for as long as the test wants; reopened
    through ``/proc``, ext4 gives the old file.  Once the kernel forgets it, the old file is freed.
    """
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    (mnt / "conf").write_bytes(b"old" * 1000)
    base = chunk_count(cluster)
    path_fd = os.open(mnt / "conf", os.O_PATH)
    try:
        for i in range(3):  # the new file replaced by yet another: each old one is freed
            (mnt / "conf.tmp").write_bytes(b"new%d" % i)
            os.rename(mnt / "conf.tmp", mnt / "conf")
        assert (mnt / "conf").read_bytes() == b"new2"
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY)
        try:
            assert os.pread(fd, 6, 0) == b"oldold"
            assert os.fstat(fd).st_nlink == 0
        finally:
            os.close(fd)
        assert os.stat(path_fd).st_size == 3000  # still held after its open file's close
        with open(f"/proc/self/fd/{path_fd}", "rb") as again:
            assert again.read(3) == b"old"
        # The old file's chunk (held) and the newest one's: the two files replaced in between are freed.
        wait_for("the files replaced after it to be freed", lambda: chunk_count(cluster) == base + 1, timeout=30)
    finally:
        os.close(path_fd)
    wait_for("the old file to be freed once the kernel forgot it", lambda: chunk_count(cluster) == base, timeout=30)
    assert (mnt / "conf").read_bytes() == b"new2"

    # Open here as well when replaced: its last close must not free it while the O_PATH descriptor
    # holds it (a POSIX probe: the reopen got ESTALE).
    (mnt / "log").write_bytes(b"OLD")
    path_fd = os.open(mnt / "log", os.O_PATH)
    try:
        writer = os.open(mnt / "log", os.O_WRONLY | os.O_APPEND)
        (mnt / "log.new").write_bytes(b"new")
        os.rename(mnt / "log.new", mnt / "log")
        os.write(writer, b"+w")
        os.close(writer)
        with open(f"/proc/self/fd/{path_fd}", "rb") as again:
            assert again.read() == b"OLD+w"
    finally:
        os.close(path_fd)


def test_an_unmounted_mounts_session_is_off_the_store_when_umount_returns(make_cluster, mount) -> None:
    """`local down` unmounts, then stops the daemons: the session's end must be committed by then, or
    the next master waits `session-timeout` (10 minutes) for that mount, holding removed files' space
    (a probe: `stat` counted the gone mount as silent, and a 600 MiB removal freed nothing meanwhile)."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "f").write_bytes(b"held once")  # the mount's session is stored with its first open
    with cluster.client() as c:
        assert c.cluster_stat()["mounts"]["sessions"] == 1
        assert chunkfs("umount", str(mnt)).returncode == 0
        assert c.cluster_stat()["mounts"]["sessions"] == 0


def test_unlinked_file_survives_master_kill_and_other_mount(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3, chunk_size=1 * MiB)
    one = mount(cluster, "one")
    two = mount(cluster, "two")
    fd = os.open(one / "held", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * MiB, 0)
        os.fsync(fd)
        # The other mount unlinks it; this one still reads and writes it.
        os.unlink(two / "held")
        with cluster.client() as client:
            old = master_id(client)
        cluster.kill("mds", old)
        # Longer than a session lasts: the new master must have kept the orphan through its grace period.
        time.sleep(12)
        os.pwrite(fd, b"y" * 10, MiB)
        os.fsync(fd)
        assert os.pread(fd, 2, MiB - 1) == b"xy"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert not (one / "held").exists()
    wait_for("the orphan's chunks to be freed after the master change",
             lambda: chunk_count(cluster) == 0, timeout=60)


def test_unlinked_file_survives_the_master_stopped_longer_than_a_session(make_cluster, mount) -> None:
    """The master does not count the time it was itself stopped as the mount's silence."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    fd = os.open(mnt / "held", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * MiB, 0)
        os.fsync(fd)
        os.unlink(mnt / "held")
        cluster.kill("mds", 1, signal.SIGSTOP)
        try:
            time.sleep(SESSION_TTL + 4)
        finally:
            cluster.kill("mds", 1, signal.SIGCONT)
        wait_for("the master to answer", lambda: chunk_count(cluster) >= 0, timeout=30)
        time.sleep(3)  # the master's reaper runs at once on resume, and again on the next renewal
        assert chunk_count(cluster) == 1
        assert os.pread(fd, MiB, 0) == b"x" * MiB
        os.pwrite(fd, b"y", MiB)
        os.fsync(fd)
        assert os.fstat(fd).st_size == MiB + 1
    finally:
        os.close(fd)
    wait_for("the orphan's chunk to be freed at its last close", lambda: chunk_count(cluster) == 0, timeout=30)


def test_unlinked_file_survives_the_mount_stopped_or_cut_off_for_a_while(make_cluster, mount) -> None:
    """A mount silent for longer than its renewals (stopped here; a network cut alike) keeps what it holds."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    pid = read_pid(state_dir(mnt))
    assert pid is not None
    fd = os.open(mnt / "held", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * MiB, 0)
        os.fsync(fd)
        os.unlink(mnt / "held")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(2 * SESSION_TTL)
            with cluster.client() as client:
                mounts = client.cluster_stat()["mounts"]  # shown to the operator
                assert (mounts["sessions"], mounts["silent"]) == (1, 1), mounts
        finally:
            os.kill(pid, signal.SIGCONT)
        assert os.pread(fd, MiB, 0) == b"x" * MiB  # on the code before: ESTALE, the file freed
        with cluster.client() as client:
            wait_for("the mount to renew", lambda: client.cluster_stat()["mounts"]["silent"] == 0, timeout=30)
        os.pwrite(fd, b"y", MiB)
        os.fsync(fd)
        assert chunk_count(cluster) == 2
    finally:
        os.close(fd)
    wait_for("the orphan's chunks to be freed at its last close", lambda: chunk_count(cluster) == 0, timeout=30)


def test_a_killed_mounts_unlinked_files_are_freed_after_the_session_timeout(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    with cluster.client() as client:
        client.set_config({"session-timeout": "10"})
    mnt = mount(cluster)
    pid = read_pid(state_dir(mnt))
    assert pid is not None
    fd = os.open(mnt / "held", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"x" * MiB, 0)
    os.fsync(fd)
    os.unlink(mnt / "held")
    assert chunk_count(cluster) == 1
    os.kill(pid, signal.SIGKILL)  # the mount fixture clears the dead mount
    try:
        wait_for("the dead mount's unlinked file to be freed", lambda: chunk_count(cluster) == 0, timeout=60)
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: nobody serves the mount any more
            os.close(fd)


def _writer_past_the_end(make_cluster, mount, *names: str, n_mds: int = 1,
                         files: tuple[str, ...] = ("f",)) -> tuple[LocalCluster, list[Path], int, list[int]]:
    """A cluster whose sessions expire after 10 s, mounted as `names` (the first one writes), `files` of 100
    committed bytes each, and 4 KiB the writer wrote past their end with O_DIRECT (on the replicas at once,
    the size not committed): in chunk 0 and in a chunk of its own.  (cluster, mount points, writer's PID,
    the writer's descriptor of each file)."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB, n_mds=n_mds)
    with cluster.client() as client:
        client.set_config({"session-timeout": "10"})
    mounts = [mount(cluster, name) for name in names]
    pid = read_pid(state_dir(mounts[0]))
    assert pid is not None
    block = mmap.mmap(-1, 4096)  # (aligned, as O_DIRECT wants)
    block.write(b"B" * 4096)
    fds = []
    for name in files:
        (mounts[0] / name).write_bytes(b"a" * 100)  # closed: 100 bytes committed
        fds.append(os.open(mounts[0] / name, os.O_WRONLY | os.O_DIRECT))
        assert os.pwrite(fds[-1], block, 4096) == 4096
        assert os.pwrite(fds[-1], block, MiB) == 4096
    assert chunk_count(cluster) == 2 * len(files)
    return cluster, mounts, pid, fds


@pytest.mark.parametrize("with_the_master", [False, True], ids=["alone", "with-the-master"])
def test_what_a_killed_writer_left_past_the_size_reads_as_zeros(make_cluster, mount, with_the_master) -> None:
    """POSIX: a file grown by truncate reads zeros past its old size.  A mount killed while writing
    leaves what it wrote past the size it had committed on the replicas; once its session expired,
    the master cuts it (a fault probe: `truncate` on another mount showed the dead writer's bytes).

    The same when the master dies with the writer (one machine lost, holding both): the new master
    does not know which files the writer's session held, so the chunk servers tell it how far writes
    made before its election reached into each chunk, and it trims the files written past their size
    (a fault probe of whole machines lost: a grown file showed the dead writer's bytes, 18 minutes on)."""
    cluster, (_, other), pid, [fd] = _writer_past_the_end(make_cluster, mount, "writer", "other",
                                                           n_mds=3 if with_the_master else 1)
    before = os.stat(other / "f")
    if with_the_master:
        with cluster.client() as client:
            cluster.kill("mds", master_id(client))  # first: it never hears that its writer went
    os.kill(pid, signal.SIGKILL)  # before it commits the size (at close, flush or fsync)
    with contextlib.suppress(OSError):  # ENOTCONN: nobody serves the mount any more
        os.close(fd)
    wait_for("the dead writer's chunk past the size to be dropped", lambda: chunk_count(cluster) == 1, timeout=90)
    after = os.stat(other / "f")
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (100, before.st_mtime_ns, before.st_ctime_ns)
    os.truncate(other / "f", 2 * MiB)
    data = (other / "f").read_bytes()
    assert data[:100] == b"a" * 100
    assert data[100:].count(0) == 2 * MiB - 100, "a dead writer's bytes shown past the old size"


def test_a_put_across_that_loss_fails_rather_than_leave_zeros_in_the_copy(make_cluster, mount) -> None:
    """A `put` holds no mount session: a new master that trims what writers it takes for dead wrote past
    their files' sizes cuts the partial copy of one that was running then too.  The copy's size, said at
    its end with the cut it knew, is refused, and `put` fails in one line, its target untouched (it
    would otherwise say "done" over a copy whose first megabytes were zeros)."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB, n_mds=3)
    with cluster.client() as client:
        client.set_config({"session-timeout": "10"})
    writer = mount(cluster, "writer")
    pid = read_pid(state_dir(writer))
    assert pid is not None
    (writer / "f").write_bytes(b"a" * 100)  # the mount's session is stored with its first open
    data = os.urandom(3 * MiB)
    # (No file of the mount open from here: a child process's copy of its descriptor, closed, flushes it.)
    with subprocess.Popen([sys.executable, "-m", "chunkfs", "-c", cluster.name, "put", "-", "/copy"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as put:
        assert put.stdin is not None and put.stderr is not None
        try:
            put.stdin.write(data[:2 * MiB])
            put.stdin.flush()
            wait_for("the partial copy's two chunks", lambda: chunk_count(cluster) == 3, timeout=60)
            with cluster.client() as client:
                cluster.kill("mds", master_id(client))
            os.kill(pid, signal.SIGKILL)  # the mount lost with the master: its session never comes back
            wait_for("the partial copy trimmed", lambda: chunk_count(cluster) == 1, timeout=90)
            put.stdin.write(data[2 * MiB:])
        finally:
            put.stdin.close()
        assert put.wait(timeout=120) != 0
        err = put.stderr.read().decode()
    assert err.startswith("chunkfs: error: ") and err.count("\n") == 1 and "write them again" in err, err
    with cluster.client() as client:
        assert [name for name, *_ in client.listdir("/")] == ["f"]


@pytest.mark.parametrize("master", ["same", "new"])
def test_a_dead_writers_file_held_by_another_mount_is_trimmed_once_that_mount_closes_it(make_cluster, mount,
                                                                                       master) -> None:
    """A mount holding the file open to write when the writer's session expires defers the trim (what it
    wrote past the size is not committed yet, and looks the same), not cancels it (a fault probe: a
    program reading the file every 0.4 s left the dead writer's bytes for good); and so does a new master
    meanwhile: the file was noted in the store before the session was closed (a fault probe: a master
    killed in between, and the file was never cut).  With a new master, the wait for one chunk left may
    end before the last chunk is zeroed (a chunk server not registered with it yet): the truncate waits
    for the zeroing (it cut at the grown size, 1 run in 4, in CI).

    Orders after the holder's close, each on a file of its own (one cluster: each case waits for a
    session to expire).  waited: the trim seen done, then a truncate.  grown-at-once: no wait for the
    trim.  The truncate reached the master before the mount's release of the file (sent a moment after
    the close, with others), grew the file while it was held, and the trim then cut at the grown size.
    The mount now sends its waiting releases before a size change, and the master trims a file that a
    size would grow first.  reopened-at-once: the same with an open for writing and an `ftruncate` (a
    fault probe, 4 of 4): the open found the file still held; created-at-once: with `O_CREAT` too.
    (With a new master, only waited: a size set during its grace period is in RELIABILITY.md, "Not
    done yet".)

    held-to-read: a mount holding the file only to read defers nothing (nothing it holds can be past the
    size): trimmed at the expiry, and grown by a truncate while still held, it reads zeros (a fault
    probe, 9 of 9: a reader held it across the expiry, and a truncate showed the dead writer's bytes).
    written-then-read: the same for a mount that had opened the file to write too, and closed that
    (a fault probe, 16 of 16: such a hold counted as one to write until its last close).  (A new
    master: `test_a_dead_writers_file_held_to_read_across_a_new_master_is_trimmed_once_the_writer_is_given_up`.)"""
    orders = ["grown-at-once", "reopened-at-once", "created-at-once", "waited"] if master == "same" else ["waited"]
    reads = ("held-to-read", "written-then-read") if master == "same" else ()
    names = [*orders, *reads]
    cluster, (_, other), pid, fds = _writer_past_the_end(make_cluster, mount, "writer", "other",
                                                          n_mds=3 if master == "new" else 1, files=tuple(names))
    holders = {name: os.open(other / name, os.O_RDONLY if name in reads else os.O_RDWR) for name in names}
    if reads:
        os.close(os.open(other / "written-then-read", os.O_RDWR))  # held only to read from its close on
    try:
        os.kill(pid, signal.SIGKILL)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        with cluster.client() as client:
            wait_for("the dead writer's session to be closed",
                     lambda: client.cluster_stat()["mounts"]["sessions"] == 1, timeout=60)
            if master == "new":
                cluster.kill("mds", master_id(client))
        trimmed = len(reads)  # one chunk left of each
        if trimmed:
            wait_for("the files held to read trimmed",
                     lambda: chunk_count(cluster) == 2 * len(orders) + trimmed, timeout=60)
        for name in reads:
            os.truncate(other / name, 2 * MiB)
            data = os.pread(holders[name], 3 * MiB, 0)
            assert len(data) == 2 * MiB and data[:100] == b"a" * 100, name
            assert data[100:].count(0) == 2 * MiB - 100, f"{name}: a dead writer's bytes shown past the old size"
        time.sleep(1)
        assert chunk_count(cluster) == 2 * len(orders) + trimmed, "trimmed while another mount held it to write"
        assert all(os.pread(holders[order], 200, 0) == b"a" * 100 for order in orders)
        for order in orders:  # (the last waits for every file's trim)
            os.close(holders.pop(order))
            if order == "waited":
                wait_for("the dead writer's chunks past the size to be dropped",
                         lambda: chunk_count(cluster) == len(names), timeout=60)
            if order in ("reopened-at-once", "created-at-once"):
                again = os.open(other / order, os.O_RDWR | (os.O_CREAT if order == "created-at-once" else 0))
                try:
                    os.ftruncate(again, 2 * MiB)
                finally:
                    os.close(again)
            else:
                os.truncate(other / order, 2 * MiB)
            data = (other / order).read_bytes()
            assert len(data) == 2 * MiB and data[:100] == b"a" * 100, order
            assert data[100:].count(0) == 2 * MiB - 100, f"{order}: a dead writer's bytes shown past the old size"
    finally:
        for holder in holders.values():
            os.close(holder)


def test_a_dead_writers_file_held_to_read_across_a_new_master_is_trimmed_once_the_writer_is_given_up(
        make_cluster, mount) -> None:
    """The files a mount re-sends to a new master say which it holds only to read: a dead writer's file
    held so is trimmed once the writer is given up, not at the reader's close (a fault probe, 4 of 4: the
    re-sent hold counted as one that may write, and a truncate showed the dead writer's bytes for good)."""
    cluster, (_, other), pid, [fd] = _writer_past_the_end(make_cluster, mount, "writer", "other", n_mds=3)
    reader = os.open(other / "f", os.O_RDONLY)
    try:
        with cluster.client() as client:
            old = master_id(client)
            cluster.kill("mds", old)
            wait_for_new_master(client, old)
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.close(fd)
        wait_for("the dead writer's chunk past the size to be dropped", lambda: chunk_count(cluster) == 1,
                 timeout=90)
        os.truncate(other / "f", 2 * MiB)
        data = os.pread(reader, 3 * MiB, 0)
    finally:
        os.close(reader)
    assert len(data) == 2 * MiB and data[:100] == b"a" * 100
    assert data[100:].count(0) == 2 * MiB - 100, "a dead writer's bytes shown past the old size"


def test_dead_writers_files_opened_to_write_before_the_reaper_trims_them_read_zeros_past_the_size(make_cluster,
                                                                                                  mount) -> None:
    """The reaper trims a dead writer's files one at a time after its session expired: an open for
    writing that came before a file's turn held it, the trim waited for that mount's release and
    was then made at the size its write past the end had grown the file to, leaving the dead writer's
    bytes in between (a fault probe: 7-10 files of 20 opened within 14-207 ms of the expiry).  An open
    of such a file that no mount holds now trims it first."""
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    with cluster.client() as client:
        client.set_config({"session-timeout": "10"})
    writer, other = mount(cluster, "writer"), mount(cluster, "other")  # (no fork while the writes' fds are open)
    pid = read_pid(state_dir(writer))
    assert pid is not None
    (other / "g").write_bytes(b"")  # its session stored: one left once the writer's expired
    names = [f"f{i:02d}" for i in range(12)]
    block = mmap.mmap(-1, 4096)
    block.write(b"B" * 4096)
    fds = []
    for name in names:
        (writer / name).write_bytes(b"a" * 100)
        fds.append(os.open(writer / name, os.O_WRONLY | os.O_DIRECT))
        assert os.pwrite(fds[-1], block, 4096) == 4096
    os.kill(pid, signal.SIGKILL)
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    with cluster.client() as client:
        wait_for("the dead writer's session to be closed",
                 lambda: client.cluster_stat()["mounts"]["sessions"] == 1, timeout=60, pause=0.01)
    for name in reversed(names):  # the reaper's last first
        fd = os.open(other / name, os.O_RDWR)
        try:
            os.pwrite(fd, b"Z" * 10, 2 * MiB)
        finally:
            os.close(fd)
    shown = [name for name in names if (other / name).read_bytes() != b"a" * 100 + bytes(2 * MiB - 100) + b"Z" * 10]
    assert not shown, f"a dead writer's bytes shown past the old size in {shown}"


def test_a_truncate_that_grows_a_trimmed_file_waits_until_its_last_chunk_is_zeroed(make_cluster, mount) -> None:
    """A trim commits first, then zeroes the last chunk past the size on its chunk servers.  When the
    zeroing could not be done (too few of them answering: a new master's not registered yet, in CI),
    a truncate that grew the file went ahead, and the retry zeroed past the grown size: the dead
    writer's bytes showed in between.  The truncate now waits for the zeroing at the trim's size."""
    cluster, (_, other), pid, [fd] = _writer_past_the_end(make_cluster, mount, "writer", "other")
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.close(fd)
    for number in (1, 2):  # the zeroing needs two replicas (min_replicas)
        cluster.kill("cs", number)
    wait_for("the dead writer's chunk past the size to be dropped", lambda: chunk_count(cluster) == 1, timeout=60)
    grown: list[BaseException | None] = []

    def grow() -> None:
        try:
            os.truncate(other / "f", 2 * MiB)
            grown.append(None)
        except OSError as exc:
            grown.append(exc)

    truncate = threading.Thread(target=grow)
    truncate.start()
    try:
        truncate.join(3)
        assert not grown, "the truncate went ahead of the zeroing"
    finally:
        for number in (1, 2):
            cluster.start("cs", number)
        truncate.join(60)
    assert grown == [None]
    data = (other / "f").read_bytes()
    assert len(data) == 2 * MiB and data[:100] == b"a" * 100
    assert data[100:].count(0) == 2 * MiB - 100, "a dead writer's bytes shown past the old size"


def test_a_mount_silent_past_its_session_timeout_is_told_its_writes_past_the_size_were_cut(make_cluster,
                                                                                         mount) -> None:
    """The cut above must not make a writer that was only stopped believe its writes are there: its
    fsync after the cut fails (EIO), as a lost writeback does on a local disk, instead of succeeding
    over zeros."""
    cluster, (writer,), pid, [fd] = _writer_past_the_end(make_cluster, mount, "writer")
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for("the stopped writer's chunk past the size to be dropped", lambda: chunk_count(cluster) == 1,
                     timeout=60)
        finally:
            os.kill(pid, signal.SIGCONT)
        with pytest.raises(OSError) as lost:
            os.fsync(fd)
        assert lost.value.errno == errno.EIO
        os.fsync(fd)  # said once
    finally:
        os.close(fd)
    assert os.stat(writer / "f").st_size == 100
    assert (writer / "f").read_bytes() == b"a" * 100


def test_sqlite_default_journal_with_temporary_tables(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    db = sqlite3.connect(mnt / "app.db")
    try:
        db.execute("PRAGMA temp_store = FILE")  # temporary tables in unlinked temporary files
        db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        db.execute("CREATE TEMP TABLE scratch (v TEXT)")
        for i in range(20):
            with db:
                db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
                db.execute("INSERT INTO scratch VALUES (?)", ("x" * 5000,))
        with db:
            db.execute("UPDATE t SET v = v || '!'")
        assert db.execute("SELECT COUNT(*) FROM scratch").fetchone()[0] == 20
    finally:
        db.close()
    done = run("sqlite3", mnt / "app.db", "PRAGMA integrity_check; SELECT COUNT(*), MIN(v) FROM t;")
    assert done.stdout.split() == ["ok", "20|row", "0!"]
    assert not (mnt / "app.db-journal").exists()


def test_names_longer_than_255_bytes(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "ok").write_bytes(b"")
    (mnt / "d").mkdir()
    calls = {
        "create": lambda: open(mnt / LONG, "w"),
        "mkdir": lambda: os.mkdir(mnt / LONG),
        "stat": lambda: os.stat(mnt / LONG),
        "chmod": lambda: os.chmod(mnt / LONG, 0o600),
        "truncate": lambda: os.truncate(mnt / LONG, 0),
        "unlink": lambda: os.unlink(mnt / LONG),
        "rmdir": lambda: os.rmdir(mnt / LONG),
        "rename source": lambda: os.rename(mnt / LONG, mnt / "x"),
        "rename target": lambda: os.rename(mnt / "ok", mnt / LONG),
        "symlink": lambda: os.symlink("ok", mnt / LONG),
        "symlink in dir": lambda: os.symlink("ok", mnt / "d" / LONG),
    }
    for what, call in calls.items():
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.ENAMETOOLONG, what
    assert sorted(os.listdir(mnt)) == ["d", "ok"]
    (mnt / ("m" * 255)).write_bytes(b"longest")
    assert (mnt / ("m" * 255)).read_bytes() == b"longest"


def test_symbolic_links(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "file").write_bytes(b"through the link")
    os.symlink("dir/file", mnt / "rel")
    os.symlink("dir", mnt / "dirlink")
    os.symlink("/nowhere/at/all", mnt / "dangling")
    assert os.readlink(mnt / "rel") == "dir/file"
    assert (mnt / "rel").read_bytes() == b"through the link"
    assert (mnt / "dirlink" / "file").read_bytes() == b"through the link"
    st = os.lstat(mnt / "rel")
    assert st.st_size == len("dir/file") and (st.st_mode & 0o170000) == 0o120000
    assert not (mnt / "dangling").exists() and (mnt / "dangling").is_symlink()
    with pytest.raises(FileExistsError):
        os.symlink("x", mnt / "rel")
    os.rename(mnt / "rel", mnt / "dir" / "moved")
    assert os.readlink(mnt / "dir" / "moved") == "dir/file"  # a link keeps its text when it moves
    os.unlink(mnt / "dirlink")
    assert (mnt / "dir" / "file").exists()
    assert sorted(os.listdir(mnt)) == ["dangling", "dir"]
    done = run("ls", "-l", mnt)
    assert "dangling -> /nowhere/at/all" in done.stdout
    # The CLI shows link targets too.
    done = chunkfs("-c", cluster.name, "ls", "-l", "/")
    assert done.returncode == 0, done.stderr
    assert "dangling -> /nowhere/at/all" in done.stdout


def _tree(root: Path) -> None:
    """A tree with links of every kind, paths over 300 bytes and names of 255 bytes."""
    deep = root / ("d" * 200) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / ("f" * 255)).write_bytes(os.urandom(70_000))
    (root / "plain").write_bytes(b"plain\n")
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "exec", 0o755)
    os.symlink("plain", root / "to-plain")
    os.symlink(os.path.relpath(deep, root), root / "to-deep")
    os.symlink("../../plain", deep / "up")
    os.symlink("/absolute/dangling", root / "dangling")
    (root / "empty").mkdir()


def test_tar_and_cp_a_round_trip_with_links_and_long_paths(make_cluster, mount, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    archive = tmp_path / "tree.tar"
    run("tar", "-cf", archive, "-C", src, ".")
    (mnt / "untar").mkdir()
    run("tar", "-xf", archive, "-C", mnt / "untar")
    run("tar", "-d", "-f", archive, "-C", mnt / "untar")  # contents, links, modes and times compared
    run("cp", "-a", src, mnt / "copy")
    run("diff", "-r", "--no-dereference", src, mnt / "copy")
    back = tmp_path / "back"
    run("cp", "-a", mnt / "copy", back)
    run("diff", "-r", "--no-dereference", src, back)
    assert os.readlink(back / "dangling") == "/absolute/dangling"


def test_directory_link_counts(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)

    def nlink(p: Path) -> int:
        return os.stat(p).st_nlink

    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    root = nlink(mnt)
    assert nlink(mnt / "a") == 2
    (mnt / "a" / "x").mkdir()
    (mnt / "a" / "y").mkdir()
    (mnt / "a" / "file").write_bytes(b"")
    assert nlink(mnt / "a") == 4  # files do not count
    assert nlink(mnt / "a" / "file") == 1
    os.rename(mnt / "a" / "x", mnt / "b" / "x")
    assert (nlink(mnt / "a"), nlink(mnt / "b")) == (3, 3)
    os.rmdir(mnt / "a" / "y")
    assert nlink(mnt / "a") == 2
    os.rename(mnt / "b", mnt / "a" / "b")
    assert (nlink(mnt), nlink(mnt / "a")) == (root - 1, 3)
    done = run("find", mnt, "-type", "d")
    assert sorted(done.stdout.split()) == sorted(str(p) for p in (mnt, mnt / "a", mnt / "a" / "b",
                                                                  mnt / "a" / "b" / "x"))


def test_a_removed_directory_held_open_has_no_links(make_cluster, mount) -> None:
    """`fstat` of a directory removed (rmdir, or renamed over) while held open shows st_nlink 0, as on a
    local disk: removed here after the mount learned its attributes from a change inside it, and removed
    by another mount (a probe saw 2: the mount's shortcut for directories it changed, and no notice of
    the removed directory itself to the other mount)."""
    cluster = make_cluster(n_cs=3)
    one, two = mount(cluster, "one"), mount(cluster, "two")

    def held_then(remove, where: Path, name: str) -> int:
        (where / name).mkdir()
        (where / "spare").mkdir(exist_ok=True)
        fd = os.open(where / name, os.O_RDONLY | os.O_DIRECTORY)
        try:
            (where / name / "x").write_bytes(b"")  # a change inside it: the mount learns its attributes
            os.unlink(where / name / "x")
            remove(name)
            return os.fstat(fd).st_nlink
        finally:
            os.close(fd)

    assert held_then(lambda name: os.rmdir(one / name), one, "a") == 0
    assert held_then(lambda name: os.rename(one / "spare", one / name), one, "b") == 0

    def removed_by_the_other(name: str) -> None:
        os.rmdir(two / name)
        wait_for("the other mount's rmdir seen", lambda: not (one / name).exists(), timeout=10)

    assert held_then(removed_by_the_other, one, "c") == 0


def test_time_stamps_follow_posix(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    f = mnt / "d1" / "f"
    f.write_bytes(b"data")

    def times(p: Path) -> tuple[int, int, int]:
        st = os.stat(p, follow_symlinks=False)
        return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns

    def later() -> None:
        time.sleep(0.02)

    _, m0, c0 = times(f)
    later()
    os.chmod(f, 0o600)
    _, m1, c1 = times(f)
    assert m1 == m0 and c1 > c0  # chmod: ctime only
    later()
    with open(f, "r+b") as fh:
        fh.write(b"D")
    _, m2, c2 = times(f)
    assert m2 > m1 and c2 >= m2
    later()
    os.truncate(f, 1)
    _, m3, c3 = times(f)
    assert m3 > m2 and c3 > c2
    # utimensat: explicit times, UTIME_OMIT for one of them, UTIME_NOW; ctime moves each time.
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    a4, m4, c4 = times(f)
    assert (a4, m4) == (1_000_000_000, 2_000_000_000) and c4 >= c3
    run("touch", "-m", "-d", "@5", f)  # mtime only (atime UTIME_OMIT)
    a5, m5, _ = times(f)
    assert (a5, m5) == (1_000_000_000, 5_000_000_000)
    before = time.time_ns()
    later()
    os.utime(f)  # both UTIME_NOW
    a6, m6, c6 = times(f)
    assert a6 > before and m6 > before and c6 >= c4
    assert (a6, m6) == (c6, c6)  # one instant, as on a local disk
    later()
    run("touch", "-a", f)  # atime only, UTIME_NOW (mtime UTIME_OMIT): ctime is the same instant
    a7, m7, c7 = times(f)
    assert m7 == m6 and a7 > a6 and a7 == c7
    # rename: ctime of the file, mtime and ctime of both parents.
    _, pm1, pc1 = times(mnt / "d1")
    _, pm2, pc2 = times(mnt / "d2")
    later()
    os.rename(f, mnt / "d2" / "g")
    _, _, fc = times(mnt / "d2" / "g")
    _, qm1, qc1 = times(mnt / "d1")
    _, qm2, qc2 = times(mnt / "d2")
    assert fc > c6 and qm1 > pm1 and qc1 > pc1 and qm2 > pm2 and qc2 > pc2
    # A touch right after a write, and a write right after a touch, never move mtime back, and the
    # touch's ctime is its mtime: the mount, the master and the kernel stamp with one clock (a
    # conformance probe: 35 of 50 touches right after a write went 1-4 ms back with precise stamps).
    g, wrong = mnt / "d2" / "g", []
    for i in range(60):
        with open(g, "r+b") as fh:
            fh.write(b"w")
        _, written, _ = times(g)
        os.utime(g)  # UTIME_NOW
        _, touched, ctime = times(g)
        with open(g, "r+b") as fh:
            fh.write(b"v")
            rewritten = os.fstat(fh.fileno()).st_mtime_ns
        _, closed, _ = times(g)
        if not written <= touched == ctime <= rewritten <= closed:
            wrong.append((i, written, touched, ctime, rewritten, closed))
    assert not wrong, wrong
    # Times set on a file written and open here (kept until its commit): ctime never goes back, whether
    # the time set is a moment ahead (an atime, then a write) or some ms behind the write (a probe of
    # the change above: 295 of 300 and 20 of 20 went back).
    for i in range(20):
        time.sleep(0.06)  # the file's committed ctime further back than the time set below
        fd = os.open(g, os.O_RDWR)
        try:
            os.write(fd, b"x")
            written = os.fstat(fd).st_ctime_ns
            futimens(fd, time.time_ns() + 5_000_000, None)
            ahead = os.fstat(fd).st_ctime_ns
            os.write(fd, b"y")
            after_write = os.fstat(fd).st_ctime_ns
            futimens(fd, time.time_ns() - 50_000_000, time.time_ns() - 50_000_000)
            after_back = os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
        if not written <= ahead <= after_write <= after_back <= os.stat(g).st_ctime_ns:
            wrong.append((i, written, ahead, after_write, after_back))
    assert not wrong, wrong


def test_time_stamps_beyond_the_range_kept_are_clamped_and_the_mount_stays_connected(make_cluster, mount) -> None:
    """As ext4 clamps to 1901-2446, the mount clamps to signed 64-bit nanoseconds (1677-2262) and succeeds.

    Before, `touch -d 2500-01-01` failed with EPROTO (and 2^64 ns with EIO), and the master closed the
    mount's connection for the malformed value: the kernel forgot every name it had cached, at each call.
    """
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    f = mnt / "f"
    f.write_bytes(b"x")
    top, bottom = 2**63 - 1, -(2**63)
    for asked, kept in (((2**34) * 10**9, top), (2**64, top), (-(2**34) * 10**9, bottom), (top, top)):
        os.utime(f, ns=(asked, asked))
        st = os.stat(f)
        assert (st.st_atime_ns, st.st_mtime_ns) == (kept, kept)
    run("touch", "-d", "2500-01-01", f)
    assert os.stat(f).st_mtime_ns == top
    with open(f, "r+b") as fh:  # an open file's times (kept by the mount until its close) too
        os.utime(fh.fileno(), ns=(2**64, 2**64))
        assert os.fstat(fh.fileno()).st_mtime_ns == top
    assert os.stat(f).st_mtime_ns == top
    files = list(Path(cluster.dir).rglob("daemon.log"))
    assert files
    logs = "".join(p.read_text(errors="replace") for p in files)
    assert "out of range" not in logs and "closing connection from mount" not in logs


def _renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, bytes(old), at_fdcwd, bytes(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_noreplace_and_exchange(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "a").write_bytes(b"a")
    (mnt / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        _renameat2(mnt / "a", mnt / "b", 1)  # RENAME_NOREPLACE
    with pytest.raises(OSError) as exc:
        _renameat2(mnt / "a", mnt / "b", 2)  # RENAME_EXCHANGE: not offered
    assert exc.value.errno == errno.EINVAL
    assert ((mnt / "a").read_bytes(), (mnt / "b").read_bytes()) == (b"a", b"b")
    _renameat2(mnt / "a", mnt / "c", 1)
    assert sorted(os.listdir(mnt)) == ["b", "c"]


def test_opens_racing_this_mounts_saves_removals_and_new_files_never_fail_with_estale(make_cluster, mount) -> None:
    """One thread saves a file (write a temporary, rename it over), removes it, makes it anew, over and
    over; another opens it meanwhile.  A local disk answers each open with the file or "no such file".

    The open of a file reached by a name looked up just before this mount's unlink, or rename over it,
    came back refused (ESTALE) before the mount had taken the change's own answer; the kernel looked the
    name up once more, and a second race gave the program ESTALE (a namespace probe: 42-50 of 700-760).
    """
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    stop = time.monotonic() + 5
    results: dict[str, int] = {}

    def churn() -> None:
        step = 0
        while time.monotonic() < stop:
            try:
                if step % 3 == 0:
                    (mnt / "tmp").write_bytes(b"saved")
                    os.rename(mnt / "tmp", mnt / "n")
                elif step % 3 == 1:
                    os.unlink(mnt / "n")
                else:
                    (mnt / "n").write_bytes(b"made")
            except FileNotFoundError:
                pass
            step += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        while time.monotonic() < stop:
            try:
                os.close(os.open(mnt / "n", os.O_WRONLY | os.O_APPEND))
                key = "ok"
            except OSError as exc:
                key = errno.errorcode[exc.errno]
            results[key] = results.get(key, 0) + 1
    finally:
        churner.join()
    assert results.get("ok", 0) > 10
    assert set(results) <= {"ok", "ENOENT"}, results

"""Namespace and attributes through the mount: listings, renames, truncation, sparse files, statfs."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from chunkfs.client.fuse_ops import STATFS_CACHE_S

from .conftest import MiB, chunkfs, is_mounted


def test_umount_names_a_copy_of_the_mount_in_another_mount_namespace(make_cluster, mount) -> None:
    """A mount namespace made while the mount is up holds a copy of it that outlives `chunkfs umount`.

    The mount process serves that copy until it goes, so the unmount cannot
    wait for the process: it says why, and the way it names ends it.
    """
    from chunkfs.client.fuse_session import state_dir, unmount
    from chunkfs.common.daemon import pid_alive, read_pid
    from chunkfs.common.errors import Unavailable

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux)")
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    pid = read_pid(state_dir(mnt))
    assert pid is not None
    ours = os.readlink("/proc/self/ns/mnt")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "120"])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{holder.pid}/ns/mnt") == ours and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.readlink(f"/proc/{holder.pid}/ns/mnt") != ours, "unshare made no mount namespace"
        with pytest.raises(Unavailable, match="another mount namespace") as raised:
            unmount(mnt, timeout=2)
        assert not is_mounted(mnt)
        assert pid_alive(pid)
        abort = str(raised.value).rsplit("echo 1 > ", 1)[1]
        with open(abort, "w") as f:
            f.write("1\n")
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "the mount process outlived the abort its unmount named"
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_listing_survives_changes_between_readdir_calls(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    d = mnt / "many"
    d.mkdir()
    names = {f"n{i:04}" for i in range(300)}
    for name in names:
        (d / name).write_bytes(b"")
    assert set(os.listdir(d)) == names
    # Entries removed while a listing is in progress: nothing listed twice, every survivor listed.
    seen = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i == 10:
                for gone in sorted(names)[100:150]:
                    (d / gone).unlink()
    assert len(seen) == len(set(seen))
    assert set(sorted(names)[150:]) <= set(seen)


def test_rename_truncate_append_sparse_statfs(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mnt = mount(cluster)
    (mnt / "a").mkdir()
    (mnt / "a" / "f").write_bytes(b"x" * 5000)
    os.rename(mnt / "a" / "f", mnt / "g")
    assert not (mnt / "a" / "f").exists() and (mnt / "g").read_bytes() == b"x" * 5000
    os.truncate(mnt / "g", 100)
    assert (mnt / "g").read_bytes() == b"x" * 100
    with open(mnt / "g", "ab") as f:
        f.write(b"yz")
    assert (mnt / "g").read_bytes() == b"x" * 100 + b"yz"
    os.truncate(mnt / "g", 3 * MiB)
    with open(mnt / "g", "rb") as f:
        assert f.read(102) == b"x" * 100 + b"yz"
        f.seek(3 * MiB - 10)
        assert f.read() == bytes(10)
    # Sparse: one byte far out, zeros before it.
    with open(mnt / "sparse", "wb") as f:
        f.seek(20 * MiB)
        f.write(b"!")
    with open(mnt / "sparse", "rb") as f:
        f.seek(10 * MiB)
        assert f.read(MiB) == bytes(MiB)
    assert os.stat(mnt / "sparse").st_size == 20 * MiB + 1
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt)  # busy mount point, not ours to answer
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "nonexistent")
    assert exc.value.errno == errno.ENOENT
    (mnt / "a" / "h").write_bytes(b"1")
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "a")
    assert exc.value.errno == errno.ENOTEMPTY
    st = os.statvfs(mnt)
    assert st.f_blocks > 0 and 0 < st.f_bavail <= st.f_blocks


def test_statfs_counts_the_inodes_in_use(make_cluster, mount) -> None:
    """`df -i` shows the files the cluster holds, not a fixed half of its inodes in use."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)

    def used() -> int:
        st = os.statvfs(mnt)
        assert 0 < st.f_ffree == st.f_favail < st.f_files
        return st.f_files - st.f_ffree

    def settles_at(expected: int) -> None:
        """The mount asks the master at most every STATFS_CACHE_S, and an unlinked file just closed is
        freed once the master has its release: a few seconds at most."""
        deadline = time.monotonic() + 20
        while (seen := used()) != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        assert seen == expected

    settles_at(1)  # the root
    (mnt / "d").mkdir()
    for i in range(5):
        (mnt / "d" / f"f{i}").write_bytes(b"")
    settles_at(7)
    for i in range(3):
        (mnt / "d" / f"f{i}").unlink()
    settles_at(4)
    time.sleep(STATFS_CACHE_S + 0.5)
    assert used() == 4  # and stays there


def test_umount_command_and_errors(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    done = chunkfs("-c", cluster.name, "mount", str(mnt))
    assert done.returncode == 1 and "already a mount point" in done.stderr
    done = chunkfs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mnt)
    done = chunkfs("umount", str(mnt))
    assert done.returncode == 1 and "not mounted" in done.stderr

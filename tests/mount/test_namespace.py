"""Namespace and attributes through the mount: listings, renames, truncation, sparse files, statfs."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs.client.fuse_ops import STATFS_CACHE_S

from .conftest import MiB, chunkfs, is_mounted
from .libc_calls import libc, opendir, raise_errno, readdir

#: getdents64(2) by number (Python has no wrapper), on the machines the tests run on.
SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(platform.machine())


def getdents64(fd: int, size: int = 1024) -> list[tuple[bytes, int]]:
    """One getdents64(2) call: (name, d_off) of the entries it returned; [] at the end."""
    assert SYS_GETDENTS64 is not None
    buf = ctypes.create_string_buffer(size)
    n = libc.syscall(SYS_GETDENTS64, fd, buf, size)
    if n < 0:
        raise_errno()
    out, pos = [], 0
    while pos < n:
        _ino, off, reclen, _type = struct.unpack_from("QqHB", buf.raw, pos)
        out.append((buf.raw[pos + 19:pos + reclen].split(b"\0", 1)[0], off))
        pos += reclen
    return out


def getdents64_all(fd: int, limit: int = 10_000) -> list[tuple[bytes, int]]:
    """getdents64(2) from the current position to the end."""
    out: list[tuple[bytes, int]] = []
    for _ in range(limit):
        got = getdents64(fd)
        if not got:
            return out
        out += got
    raise AssertionError(f"no end of the directory after {limit} getdents64 calls")


def readdir3(dirp: int) -> bytes | None:
    """readdir(3): the next name, None at the end."""
    ent = readdir(dirp)
    return None if ent is None else bytes(ent.d_name)


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


@pytest.mark.skipif(SYS_GETDENTS64 is None, reason="getdents64's number on this machine is not known here")
def test_a_position_handed_out_stays_valid_after_a_rewind_and_a_reread(make_cluster, mount) -> None:
    """A d_off getdents64 gave names the same place for as long as the directory is open (as on ext4).

    It used to fail with EINVAL once the directory was rewound (or sought back) and read again: the mount
    forgot every position beyond the part read again. A rewind still shows the directory as it is now.
    """
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    d = mnt / "many"
    d.mkdir()
    for i in range(300):
        (d / f"f{i:04}").write_bytes(b"")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ents = getdents64_all(fd)
        names = [name for name, _ in ents]
        assert names == [b".", b".."] + [f"f{i:04}".encode() for i in range(300)]
        assert len({off for _, off in ents}) == len(ents)
        for i in (252, 150, len(ents) - 1, 1, 0):  # the probe's, a middle one, the last, "..", "."
            os.lseek(fd, 0, os.SEEK_SET)  # rewind, and read a little again
            assert getdents64(fd)[0][0] == b"."
            os.lseek(fd, ents[i][1], os.SEEK_SET)
            assert [name for name, _ in getdents64(fd)[:1]] == names[i + 1:i + 2], f"after {names[i]!r}"
        # Sought back (not to the start) and read again: positions beyond stay valid too.
        os.lseek(fd, ents[10][1], os.SEEK_SET)
        assert getdents64(fd)[0][0] == names[11]
        os.lseek(fd, ents[280][1], os.SEEK_SET)
        assert getdents64(fd)[0][0] == names[281]
        # The directory changes; a rewind shows it as it is now, and old positions still work: after the
        # entry they named, or at the next entry still there when that one is gone.
        (d / "f0200a").write_bytes(b"")
        (d / "f0201").unlink()
        (d / "f0202").unlink()
        os.lseek(fd, 0, os.SEEK_SET)
        now = getdents64_all(fd)
        assert [name for name, _ in now] == [b".", b".."] + sorted(
            [f"f{i:04}".encode() for i in range(300) if i not in (201, 202)] + [b"f0200a"])
        at = {name: off for name, off in ents}
        os.lseek(fd, at[b"f0200"], os.SEEK_SET)
        assert getdents64(fd)[0][0] == b"f0200a"
        os.lseek(fd, at[b"f0201"], os.SEEK_SET)
        assert getdents64(fd)[0][0] == b"f0203"
        os.lseek(fd, at[b"f0299"], os.SEEK_SET)
        assert getdents64(fd) == []
        with pytest.raises(OSError) as exc:  # never handed out: refused
            os.lseek(fd, max(off for _, off in now) + 1000, os.SEEK_SET)
            getdents64(fd)
        assert exc.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_seekdir_to_a_telldir_position_after_rewinddir(make_cluster, mount) -> None:
    """readdir(3) after seekdir(telldir()) continues after the entry told, also after a rewinddir.

    The probe: 6,000 entries, rewinddir, one readdir, seekdir to the position after entry 5,999 (told
    before the rewind), and readdir answered NULL with EINVAL. readdir(3) reads up to 1 MiB at a time,
    and so does the kernel of FUSE: 3,000 names of 255 bytes (over 400 bytes each with their attributes)
    put the last ones beyond what the readdir after the rewind reads.
    """
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    d = mnt / "big"
    d.mkdir()
    expected = [f"g{i:05}".encode().ljust(255, b"x") for i in range(3000)]

    def create(name: bytes) -> None:
        os.close(os.open(os.path.join(os.fsencode(d), name), os.O_WRONLY | os.O_CREAT, 0o644))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, expected))
    dirp = opendir(d)
    try:
        names: list[bytes] = []
        told: list[int] = []  # told[k]: the position after names[k]
        for _ in range(len(expected) + 3):
            name = readdir3(dirp)
            if name is None:
                break
            names.append(name)
            told.append(libc.telldir(dirp))
        assert names == [b".", b".."] + expected
        for k in (len(names) - 2, 2800, 900, 2):
            libc.rewinddir(dirp)
            assert readdir3(dirp) == b"."
            libc.seekdir(dirp, told[k])
            assert readdir3(dirp) == names[k + 1], f"after {names[k]!r}"
        libc.seekdir(dirp, told[-1])
        assert readdir3(dirp) is None
    finally:
        libc.closedir(dirp)


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

"""Everyday tools on the mount: dd O_DIRECT, fio verify, sqlite3, qemu-img, tar + diff."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from .conftest import MiB, random_file, run


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/install.sh installs it)")
    return path


def test_dd_with_o_direct_and_fsync(make_cluster, mount, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    src = random_file(tmp_path / "src.bin", 16 * MiB + 4096)
    run("dd", f"if={src}", f"of={mnt / 'dd.bin'}", "bs=1M", "oflag=direct", "conv=fsync", "status=none")
    assert os.stat(mnt / "dd.bin").st_size == 16 * MiB + 4096
    run("dd", f"if={mnt / 'dd.bin'}", f"of={tmp_path / 'back.bin'}", "bs=1M", "iflag=direct", "status=none")
    run("cmp", src, tmp_path / "back.bin")


def test_fio_random_4k_writes_verify_crc32c(make_cluster, mount) -> None:
    fio = need("fio")
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    common = ["--filename=" + str(mnt / "fio.dat"), "--size=16M", "--bs=4k", "--rw=randwrite",
              "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
              "--output-format=terse"]
    # O_DIRECT with 16 requests in flight, then buffered writes through the page cache.
    run(fio, "--name=direct", "--ioengine=libaio", "--iodepth=16", "--direct=1", *common, timeout=240)
    run(fio, "--name=buffered", "--ioengine=psync", "--direct=0", "--end_fsync=1", *common, timeout=240)


def test_sqlite_database_passes_integrity_check(make_cluster, mount) -> None:
    sqlite3 = need("sqlite3")
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    script = "\n".join([
        "PRAGMA journal_mode=DELETE;",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB);",
        "CREATE INDEX t_name ON t(name);",
        *(f"BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) "
          f"INSERT INTO t (name, blob) SELECT 'row-{k}-' || i, randomblob(300) FROM n; COMMIT;" for k in range(20)),
        "DELETE FROM t WHERE id % 3 = 0;",
        "VACUUM;",
    ])
    run(sqlite3, mnt / "db.sqlite", script, timeout=240)
    out = run(sqlite3, mnt / "db.sqlite", "PRAGMA integrity_check; SELECT count(*) FROM t;").stdout.split()
    assert out == ["ok", str(20 * 500 - (20 * 500) // 3)]


def test_qemu_img_create_convert_check(make_cluster, mount, tmp_path) -> None:
    qemu_img = need("qemu-img")
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    run(qemu_img, "create", "-f", "qcow2", mnt / "empty.qcow2", "1G")
    run(qemu_img, "check", mnt / "empty.qcow2")
    # A raw image with data and holes, converted onto the mount with cache=none (O_DIRECT).
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
        for offset in (0, 5 * MiB + 4096, 33 * MiB, 63 * MiB):
            f.seek(offset)
            f.write(os.urandom(MiB // 2))
    run(qemu_img, "convert", "-f", "raw", "-O", "qcow2", "-t", "none", raw, mnt / "disk.qcow2", timeout=240)
    run(qemu_img, "check", mnt / "disk.qcow2")
    run(qemu_img, "compare", "-f", "raw", "-F", "qcow2", raw, mnt / "disk.qcow2")


def test_tar_of_thousands_of_small_files_then_diff(make_cluster, mount, tmp_path) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    src = tmp_path / "tree"
    for d in range(20):
        sub = src / f"dir{d:02}" / "inner"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub.parent if i % 2 else sub).joinpath(f"file{i:03}.txt").write_bytes(os.urandom(i * 37 % 3000))
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="tree")
    run("tar", "-xf", archive, "-C", mnt, timeout=240)
    run("diff", "-r", src, mnt / "tree", timeout=240)
    assert sum(len(files) for _, _, files in os.walk(mnt / "tree")) == 2000


def _mount_timings(mnt) -> dict:
    """The mount's step timings, as `kill -USR1` makes it write them (bounded wait)."""
    import json
    import signal as sig
    import time as t

    from chunkfs.client.fuse_session import TIMINGS_FILE, state_dir
    from chunkfs.common.daemon import read_pid

    pid = read_pid(state_dir(mnt))
    assert pid is not None
    path = state_dir(mnt) / TIMINGS_FILE
    path.unlink(missing_ok=True)
    os.kill(pid, sig.SIGUSR1)
    deadline = t.monotonic() + 10
    while not path.exists() and t.monotonic() < deadline:
        t.sleep(0.05)
    return json.loads(path.read_text())


def test_sigusr1_writes_where_the_mount_spent_its_time(mount, make_cluster) -> None:
    """`kill -USR1` on a mount: each FUSE request and each master request it made, counted and timed."""
    mnt = mount(make_cluster())
    for i in range(5):
        (mnt / f"f{i}").write_bytes(b"x")
    steps = _mount_timings(mnt)
    assert steps["fuse.create"]["count"] >= 5
    assert steps["mds.CREATE"]["count"] >= 5
    assert steps["fuse.write"]["count"] >= 5
    assert all(s["total_s"] >= s["max_s"] > 0 for s in steps.values())


def test_a_directory_changed_here_is_not_asked_of_the_master_again(mount, make_cluster) -> None:
    """The kernel re-reads a directory's attributes after each change in it: the change's reply has them."""
    mnt = mount(make_cluster())
    d = mnt / "d"
    d.mkdir()
    before = _mount_timings(mnt)
    for i in range(20):
        os.close(os.open(d / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    for i in range(20):
        os.unlink(d / f"f{i}")
    os.mkdir(d / "sub")
    after = _mount_timings(mnt)

    def count(step: str) -> int:
        return after.get(step, {}).get("count", 0) - before.get(step, {}).get("count", 0)

    assert count("fuse.getattr") >= 30  # the kernel did ask, after each change...
    assert count("mds.GETATTR") <= 5  # ...and the mount answered from the change's reply
    st = os.stat(d)
    assert st.st_nlink == 3  # what the answers say is right: 2 + the new subdirectory
    assert st.st_mtime_ns >= os.stat(d / "sub").st_mtime_ns


def test_fdatasync_inside_a_file_commits_no_metadata_and_close_commits_mtime(mount, make_cluster) -> None:
    """fdatasync of writes inside a file syncs only the replicas (a VM's flush, a database's page
    writes); one that grew the file commits its size, fsync commits the mtime, and close does too."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    path = mnt / "disk.img"
    image = bytearray(os.urandom(256 * 1024))
    path.write_bytes(image)

    def extends() -> int:
        return int(_mount_timings(mnt).get("mds.EXTEND", {}).get("count", 0))

    fd = os.open(path, os.O_RDWR)
    try:
        first = extends()
        for i in range(5):
            os.pwrite(fd, b"y" * 4096, i * 8192)
            image[i * 8192:i * 8192 + 4096] = b"y" * 4096
            os.fdatasync(fd)
        assert extends() == first  # inside the file: nothing for the master
        os.pwrite(fd, b"z" * 4096, len(image))
        image += b"z" * 4096
        os.fdatasync(fd)
        assert extends() == first + 1  # it grew: the size is committed with the data
        os.pwrite(fd, b"w" * 10, 0)
        image[0:10] = b"w" * 10
        os.fsync(fd)
        assert extends() == first + 2  # fsync commits the mtime as well
        os.pwrite(fd, b"v" * 10, 100)
        image[100:110] = b"v" * 10
        os.fdatasync(fd)
        written = os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
    other = mount(cluster, "other")
    assert (other / "disk.img").read_bytes() == bytes(image)
    assert os.stat(other / "disk.img").st_mtime_ns == written  # the last write's mtime, committed at close


def test_times_set_on_an_open_file_go_with_its_next_commit(mount, make_cluster) -> None:
    """tar's order: write, then futimens, fchown, fchmod on the open file, then close.  Times, and an
    owner or mode set to what they are, are kept by the mount until the next commit, which carries
    the size written too: one commit for all of it.  A real mode change commits at once, with them."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    other = mount(cluster, "other")
    old = 1_500_000_000_123_456_789

    def commits() -> tuple[int, int]:
        steps = _mount_timings(mnt)
        return tuple(int(steps.get(f"mds.{m}", {}).get("count", 0)) for m in ("EXTEND", "SETATTR"))  # type: ignore[return-value]

    def since(before: tuple[int, int]) -> tuple[int, ...]:
        return tuple(a - b for a, b in zip(commits(), before, strict=True))

    (mnt / "warm").write_bytes(b"")  # the mount watches its master from its first request on
    for name, mode, changed in (("same", 0o644, False), ("changed", 0o640, True)):
        before = commits()
        fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"data" * 1000)
            os.utime(fd, ns=(old, old))
            os.fchown(fd, os.getuid(), os.getgid())
            st = os.fstat(fd)
            assert (st.st_size, st.st_mtime_ns) == (4000, old) and st.st_ctime_ns > old
            assert since(before) == (0, 0)  # nothing sent yet
            os.fchmod(fd, mode)
            assert since(before) == (0, 1 if changed else 0)  # a real change commits at once, with the rest
            ctime = os.fstat(fd).st_ctime_ns
        finally:
            os.close(fd)
        assert since(before) == (0, 1)  # one commit in all, at the fchmod or at close
        st = os.stat(other / name)
        assert (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (4000, old, mode)
        assert st.st_ctime_ns == ctime or changed  # the ctime the mount showed is the one committed
        assert (other / name).read_bytes() == b"data" * 1000
    # A write after the times were set moves mtime to its own time, as on a local disk.
    fd = os.open(mnt / "same", os.O_WRONLY)
    try:
        os.utime(fd, ns=(old, old))
        os.write(fd, b"x")
        assert os.fstat(fd).st_mtime_ns > old
    finally:
        os.close(fd)
    assert os.stat(other / "same").st_mtime_ns > old


def test_read_ahead_is_raised_once_the_mount_is_up(mount, make_cluster) -> None:
    """The kernel's read-ahead for the mount is the `readahead_kb` option, not the 128 KiB INIT leaves.

    It was set before the kernel's INIT was answered, which set it back: every sequential read came
    as 128 KiB requests, one at a time, at half the speed.
    """
    if os.geteuid() != 0:
        pytest.skip("setting a mount's read-ahead needs root")
    from chunkfs.client.fuse_session import _mount_dev

    cluster = make_cluster()
    mnt, small = mount(cluster), mount(cluster, "small", "readahead_kb=512")
    for path, kib in ((mnt, 4096), (small, 512)):
        dev = _mount_dev(path)
        assert dev is not None
        assert int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text()) == kib
    random_file(mnt / "seq", 8 * MiB)
    before = _mount_timings(mnt).get("fuse.read", {"count": 0})["count"]
    with open(mnt / "seq", "rb") as f:  # a new open: the mount keeps no page cache across opens
        while f.read(MiB):
            pass
    reads = _mount_timings(mnt)["fuse.read"]["count"] - before
    assert reads <= 24, f"8 MiB read in {reads} requests: read-ahead of 128 KiB would take 64"


def test_requests_in_flight_are_raised_once_the_mount_is_up(mount, make_cluster) -> None:
    """The kernel's 12 background requests (a VM's queued direct I/O is one) become `max_background`."""
    from chunkfs.client.fuse_session import FUSECTL, _mount_dev, fusectl_dir

    if os.geteuid() != 0 or not os.path.ismount(FUSECTL):
        pytest.skip(f"needs root and fusectl mounted on {FUSECTL} (scripts/install.sh mounts it)")
    cluster = make_cluster()
    for path, want in ((mount(cluster), 64), (mount(cluster, "few", "max_background=20"), 20)):
        dev = _mount_dev(path)
        assert dev is not None
        conn = fusectl_dir(dev)
        assert int((conn / "max_background").read_text()) == want
        assert int((conn / "congestion_threshold").read_text()) == want * 3 // 4

"""A mount whose process was killed leaves a dead mount ("Transport endpoint is not connected"):
`chunkfs mount` and `local up --mount` clear it and mount again; a live mount is still refused."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from chunkfs.client.fuse_session import state_dir
from chunkfs.common.daemon import is_chunkfs_process, pid_alive, read_pid

from .conftest import chunkfs, is_mounted, local_up_mounted


def _kill_mount_process(mnt: Path) -> int:
    """SIGKILL the mount process of `mnt` (found by its PID file, checked in /proc); wait until it is gone."""
    pid = read_pid(state_dir(mnt))
    assert pid is not None and is_chunkfs_process(pid, mnt), pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert is_mounted(mnt)
    # The leader exits first; a lookup in flight while its last thread goes gets ECONNABORTED, and every
    # one after that ENOTCONN.  (A stat of `mnt` itself may come from the kernel's cache.)
    while time.monotonic() < deadline:
        with pytest.raises(OSError) as info:
            os.stat(mnt / "nothing-by-this-name")
        if info.value.errno != errno.ECONNABORTED:
            break
        time.sleep(0.05)
    assert info.value.errno == errno.ENOTCONN, info.value
    return pid


def test_mount_clears_a_dead_mount_and_refuses_a_live_one(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "before").write_bytes(b"written before the kill\n")
    old = _kill_mount_process(mnt)

    done = chunkfs("-c", cluster.name, "mount", str(mnt), "--background", timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"cleared a dead mount on {mnt}" in done.stdout, done.stdout
    pid = read_pid(state_dir(mnt))
    assert pid is not None and pid != old
    assert (mnt / "before").read_bytes() == b"written before the kill\n"
    (mnt / "after").write_bytes(b"and after\n")
    assert chunkfs("-c", cluster.name, "get", "/after", "-").stdout == "and after\n"

    # A live mount is not touched: mounting over it fails with one line, and it keeps serving.
    for args in (["--background"], []):
        done = chunkfs("-c", cluster.name, "mount", str(mnt), *args, timeout=60)
        assert done.returncode == 1
        assert done.stderr.startswith("chunkfs: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "already a mount point" in done.stderr
    assert read_pid(state_dir(mnt)) == pid
    assert (mnt / "after").read_bytes() == b"and after\n"


def test_local_up_mount_clears_a_dead_mount(tmp_path: Path, conf_dir: Path) -> None:
    with local_up_mounted(tmp_path, "dm") as (d, mnt):
        (mnt / "hello").write_bytes(b"hello\n")
        _kill_mount_process(mnt)

        done = chunkfs("local", "up", "--dir", str(d), "--mount", str(mnt), timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"cleared a dead mount on {mnt}" in done.stdout, done.stdout
        assert (mnt / "hello").read_bytes() == b"hello\n"
        assert json.loads(chunkfs("local", "status", "--dir", str(d), "--json").stdout)["mounts"] == [str(mnt)]

        # `local down` also unmounts a mount that died.
        _kill_mount_process(mnt)
        done = chunkfs("local", "down", "--dir", str(d), timeout=120)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        assert "stopped 3 process(es)" in done.stdout, done.stdout


def test_a_lazy_umount_with_a_file_open_says_the_process_serves_it_and_succeeds(make_cluster, mount) -> None:
    """`umount --lazy` is for files still open: it waited 30 s, failed, and said to `kill` the process
    that serves them (a docs probe).  Now it says so, and succeeds; the process goes once they are closed."""
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "f").write_bytes(b"open")
    pid = read_pid(state_dir(mnt))
    assert pid is not None
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        done = chunkfs("umount", "--lazy", str(mnt))
        assert done.returncode == 0, done.stderr
        assert f"its mount process {pid} serves the files still open until they are closed" in done.stdout
        assert not is_mounted(mnt) and pid_alive(pid)
        assert os.pread(fd, 4, 0) == b"open"  # still served
    finally:
        os.close(fd)
    # And it ends once they are: after a read served detached, it waited for good 4 times in 10 (the
    # kernel's end of the session went unseen by the event loop: a POSIX probe; client/fuse_wait.py).
    deadline = time.monotonic() + 60
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid), "the mount process stayed after the last file was closed"

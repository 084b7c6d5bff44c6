"""A mount whose process was killed leaves a dead mount ("Transport endpoint is not connected"):
`chunkfs mount` and `local up --mount` clear it and mount again; a live mount is still refused.  And one
killed while a thread of it waited in the kernel does not leave the programs using it hanging."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkfs.client.fuse_session import FUSECTL, fusectl_dir, state_dir
from chunkfs.common.daemon import LOG_FILE, is_chunkfs_process, pid_alive, read_pid
from chunkfs.testing.cluster import wait_for

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


#: Part of a page the kernel has not cached: it keeps that page locked until the mount answers the write.
_PARTIAL_WRITE = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
try:
    os.pwrite(fd, b"y" * 100, 8202)
    print("written")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


def _thread_states(pid: int) -> list[str]:
    states = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return states


def test_a_mount_killed_while_its_thread_waits_in_the_kernel_fails_the_programs_waiting_on_it(
        make_cluster, mount) -> None:
    """The mount's thread that has the kernel drop a file's cached pages waits, uninterruptibly, for a page a
    program's write holds locked until the mount answers it.  A `kill -9` then left that thread, and with it
    the FUSE connection: the program hung in D state for good, unkillable (a power-cut probe, 30 minutes).
    Now the mount's guard aborts the connection (client/dead_mount_guard.py) and the program gets an error."""
    if not FUSECTL.is_dir():
        pytest.skip(f"{FUSECTL} is not mounted")
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    with cluster.client() as c:  # written around the mount: no page of it in the kernel's cache
        f = c.open("/f", create=True)
        c.run(f.write(0, os.urandom(1 << 20)))
        c.run(f.fsync())
    pid = read_pid(state_dir(mnt))
    assert pid is not None
    (dev,) = [line.split(" ")[2] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split(" ")[4] == str(mnt)]
    abort = fusectl_dir(dev) / "abort"
    writer = None
    for n in (1, 2, 3):  # the write cannot be answered while the replicas' servers are stopped
        cluster.kill("cs", n, signal.SIGSTOP)
    try:
        writer = subprocess.Popen([sys.executable, "-c", _PARTIAL_WRITE, str(mnt / "f")],
                                  stdout=subprocess.PIPE, text=True)
        wait_for("the write to wait for the mount", lambda: Path(f"/proc/{writer.pid}/wchan").read_text()
                 == "request_wait_answer", timeout=30)
        # The master gone, the mount has the kernel drop every page it may hold of the files it knows.
        cluster.kill("mds", 1)
        wait_for("a thread of the mount to wait on the locked page", lambda: "D" in _thread_states(pid), timeout=30)
        os.kill(pid, signal.SIGKILL)
        out, _ = writer.communicate(timeout=30)  # before: stuck in the kernel for good
        assert out.strip() == "ECONNABORTED", out
        wait_for("the mount process to be gone", lambda: not pid_alive(pid), timeout=30)
        log = (state_dir(mnt) / LOG_FILE).read_text(errors="replace")
        assert "its FUSE connection was aborted" in log, log[-2000:]
    finally:
        if writer is not None and writer.poll() is None:  # (the code before the guard: freed by hand)
            with contextlib.suppress(OSError):
                abort.write_text("1\n")
            writer.kill()
            writer.wait(timeout=30)
        for n in (1, 2, 3):
            cluster.kill("cs", n, signal.SIGCONT)

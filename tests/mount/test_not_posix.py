"""What ChunkFS does not do fails clearly and changes nothing: hard links, special files, ACLs, xattrs, fallocate."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest


def _state(mnt):
    return sorted((p.name, p.stat().st_size, p.read_bytes()) for p in mnt.iterdir())


def test_hard_link_special_files_acls_fail_and_change_nothing(make_cluster, mount) -> None:
    cluster = make_cluster(n_cs=3)
    mnt = mount(cluster)
    (mnt / "file").write_bytes(b"contents\n")
    before = _state(mnt)

    done = subprocess.run(["ln", str(mnt / "file"), str(mnt / "hard")], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    done = subprocess.run(["mknod", str(mnt / "fifo"), "p"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    with pytest.raises(PermissionError):
        os.mknod(mnt / "dev", 0o600 | 0o060000, os.makedev(1, 3))  # a block device
    if shutil.which("setfacl"):
        done = subprocess.run(["setfacl", "-m", "u:nobody:r", str(mnt / "file")], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode != 0 and "not supported" in done.stderr
    else:
        # setfacl (Debian package acl) is not installed: set an access ACL the way it would.
        acl = bytes.fromhex("02000000" "01000600ffffffff" "04000400ffffffff" "20000400ffffffff")
        with pytest.raises(OSError) as exc:
            os.setxattr(mnt / "file", "system.posix_acl_access", acl)
        assert exc.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as exc:
        os.setxattr(mnt / "file", "user.note", b"x")
    assert exc.value.errno == errno.ENOTSUP
    assert os.listxattr(mnt / "file") == []  # none, as on a local file system without them: not an error
    with pytest.raises(PermissionError):
        os.chown(mnt / "file", 12345, 12345)
    # fallocate (allocation, and hole punching through the chunk servers) is not served: a clear
    # "not supported" from util-linux's fallocate, and the file keeps its size and bytes.
    for argv in (["-l", "8MiB"], ["-o", "0", "-l", "8MiB"], ["--punch-hole", "-o", "0", "-l", "4"],
                 ["--zero-range", "-o", "0", "-l", "4"]):
        done = subprocess.run(["fallocate", *argv, str(mnt / "file")], capture_output=True, text=True, timeout=30)
        assert done.returncode != 0 and "supported" in done.stderr, (argv, done.stderr)  # not supported, unsupported
    assert _state(mnt) == before

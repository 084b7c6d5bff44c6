"""Set-user-ID and set-group-ID bits as a local disk keeps them, against a caller that is not root.

A conformance probe found them kept where ext4 clears them (a write through
an ``O_APPEND`` or ``O_DIRECT`` handle, an ``O_TRUNC`` open), and a set-ID
file created by another user kept its bits under the mount's owner (root):
with ``-o suid``, a program that user wrote ran with euid 0.
client/setid.py has the rules; the expected modes below are ext4's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

NOBODY = 65534


def as_nobody(mnt: Path, script: str) -> None:
    """Run `script` with sh as uid and gid 65534, no other groups, in the mount (its path above is root's)."""
    done = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sh", "-c", script],
        cwd=mnt, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


@pytest.mark.parametrize(("how", "script"), [
    ("O_APPEND", "echo more >> f"),
    ("O_TRUNC", ": > f"),
    ("O_DIRECT", "dd if=/dev/zero of=f bs=4096 count=1 oflag=direct conv=notrunc status=none"),
    ("buffered", "dd if=/dev/zero of=f bs=4096 count=1 conv=notrunc status=none"),
])
def test_a_write_by_another_user_clears_set_id_bits(make_cluster, mount, how: str, script: str) -> None:
    mnt = mount(make_cluster(n_cs=3))
    # Set-group-ID without group execute goes too (the caller is not in the file's group), except
    # where the kernel's FUSE clears the bits itself (a buffered write): it keeps that one (README).
    kept = 0o2000 if how == "buffered" else 0
    for before, after in ((0o6757, 0o0757), (0o6747, 0o0747 | kept), (0o6766, 0o0766 | kept)):
        f = mnt / "f"
        f.write_bytes(b"x" * 8192)
        f.chmod(before)
        as_nobody(mnt, script)
        assert mode(f) == after, (how, oct(before), oct(mode(f)))
        f.unlink()


def test_root_keeps_set_id_bits_and_reading_clears_nothing(make_cluster, mount) -> None:
    mnt = mount(make_cluster(n_cs=3))
    f = mnt / "f"
    f.write_bytes(b"x")
    f.chmod(0o6757)
    as_nobody(mnt, "cat f > /dev/null")
    with open(f, "ab") as out:  # root (CAP_FSETID)
        out.write(b"y")
    assert mode(f) == 0o6757


def test_a_file_another_user_creates_keeps_no_set_id_bit(make_cluster, mount) -> None:
    mnt = mount(make_cluster(n_cs=3))
    (mnt / "d").mkdir()
    (mnt / "d").chmod(0o777)
    as_nobody(mnt / "d", "python3 -c \"import os; os.close(os.open('prog', os.O_CREAT | os.O_WRONLY, 0o6755))\"")
    # Every file shows the mount's owner (root): a set-ID bit would make the user's program root's.
    assert mode(mnt / "d" / "prog") == 0o0755
    assert os.stat(mnt / "d" / "prog").st_uid == os.getuid()
    (mnt / "mine").touch()
    os.chmod(mnt / "mine", 0o4755)  # the owner may
    assert mode(mnt / "mine") == 0o4755

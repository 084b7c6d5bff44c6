"""A power cut for one folder: an ext4 file system on a loop device, shut down as a machine losing power.

Killing a process keeps what it wrote in the kernel's page cache, so `kill -9`
tests cannot show a write that was answered before it reached the disk.  Here
the folder is a small ext4 file system of its own (a sparse image file on a
loop device, its default ordered journal), and `cut()` shuts it down with
``EXT4_IOC_SHUTDOWN`` and ``EXT4_GOING_FLAGS_NOLOGFLUSH``, as xfstests'
``godown`` does: from that instant nothing more reaches the image, so every
page the file system had not been asked to flush is lost, as at a power cut.
It is then unmounted and mounted again (the journal replayed), and holds what
a machine would find after the cut.

Needs root, ``losetup`` and ``mkfs.ext4``; `available()` says why not
otherwise, for the tests to skip with that reason.  `close()` unmounts and
detaches everything made.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

#: _IOR('X', 125, __u32), from linux/ext4.h, and its flag that drops the journal's unwritten part too.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
#: Bound on each system command (losetup, mkfs, mount).
COMMAND_TIMEOUT = 60.0


def available() -> str:
    """Empty if a loop-backed ext4 can be made here, else why not (a reason to skip)."""
    if os.geteuid() != 0:
        return "a power cut needs root (a loop device and a mount)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    if not os.path.exists("/dev/loop-control"):
        return "no loop devices here (/dev/loop-control is missing)"
    return ""


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


class PowerCutDisk:
    """`mountpoint`, an ext4 file system of `size` bytes kept in `image`, that `cut()` can take the power from."""

    def __init__(self, image: Path, mountpoint: Path, size: int = 256 << 20) -> None:
        self.image, self.mountpoint = image, mountpoint
        with open(image, "wb") as f:
            f.truncate(size)
        _run("mkfs.ext4", "-q", "-F", str(image))
        self.device = _run("losetup", "--find", "--show", str(image))
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mounted = False
        try:
            self._mount()
        except BaseException:
            self.close()
            raise

    def _mount(self) -> None:
        _run("mount", "-t", "ext4", self.device, str(self.mountpoint))
        self.mounted = True

    def cut(self) -> None:
        """Lose every page not yet on the image, then mount the file system again as a rebooted machine would."""
        fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        _run("umount", str(self.mountpoint))
        self.mounted = False
        self._mount()

    def close(self) -> None:
        if self.mounted:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run("umount", str(self.mountpoint))
            self.mounted = False
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _run("losetup", "--detach", self.device)
        self.image.unlink(missing_ok=True)

"""Start writing a file's range to disk now, without waiting for it: ``sync_file_range(2)``.

Why: a large write lands in the page cache, and the kernel starts writing it
back only past its background threshold (10 % of memory) or after 30 s.  A
1 GiB `dd ... conv=fsync` through the mount thus had the disk idle while the
data crossed the mount and the chunk servers, then waited at the end for the
whole gigabyte to be written: the transfer and the disk one after the other
instead of side by side.  Asking for writeback as each large piece lands
keeps the disk busy meanwhile; the later fsync finds little left to do.
Nothing here promises durability: that stays with fsync.

Python's `os` has no sync_file_range, hence ctypes (it releases the GIL for
the call); where libc lacks it, this does nothing.
"""

from __future__ import annotations

import ctypes

#: From <fcntl.h>: start writeback of the range's dirty pages; do not wait for it.
SYNC_FILE_RANGE_WRITE = 2

try:
    # By name: `ctypes.util.find_library` runs `ldconfig -p` in a child process, in every process that
    # imports this (each daemon, mount and command: 13 per cluster test).
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _sync_file_range = _libc.sync_file_range
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
except (OSError, AttributeError):  # not Linux, or a libc without it
    _sync_file_range = None


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Have the kernel start writing `length` bytes at `offset` of `fd` to disk; False if it could not."""
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0

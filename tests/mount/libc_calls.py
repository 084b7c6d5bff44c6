"""libc calls the os module does not offer, or offers without their errno, for the mount tests.

Shared by the tests that hold ChunkFS's answers against a local disk's
(``test_conformance_differential.py``) and those that check one behaviour
(``test_namespace.py``): one ctypes binding per call, each failure raised as
the ``OSError`` its errno names.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)


class Dirent(ctypes.Structure):  # glibc's struct dirent on 64-bit Linux (== dirent64)
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64), ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte), ("d_name", ctypes.c_char * 256)]


libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.fdopendir.restype = ctypes.c_void_p
libc.fdopendir.argtypes = [ctypes.c_int]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.restype = None
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.rewinddir.restype = None
libc.rewinddir.argtypes = [ctypes.c_void_p]
libc.closedir.argtypes = [ctypes.c_void_p]


def raise_errno() -> None:
    """Raise the OSError of the errno the last libc call left."""
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def opendir(where: str | bytes | int) -> int:
    """opendir(3) of a path, or fdopendir(3) of a copy of an open directory's descriptor."""
    dirp = libc.fdopendir(os.dup(where)) if isinstance(where, int) else libc.opendir(os.fsencode(where))
    if not dirp:
        raise_errno()
    return dirp


def readdir(dirp: int) -> Dirent | None:
    """readdir(3): the next entry, None at the end; a failure raises (readdir answers NULL for both)."""
    ctypes.set_errno(0)
    ent = libc.readdir(dirp)
    if not ent:
        if ctypes.get_errno():
            raise_errno()
        return None
    return ent.contents


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


#: utimensat(2)'s "leave this time as it is" (os.utime cannot leave one of the two alone).
UTIME_OMIT = (1 << 30) - 2


def futimens(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """futimens(3); None leaves that time as it is (UTIME_OMIT)."""
    times = (Timespec * 2)(*(Timespec(0, UTIME_OMIT) if t is None else Timespec(t // 10**9, t % 10**9)
                             for t in (atime_ns, mtime_ns)))
    if libc.futimens(fd, times) != 0:
        raise_errno()

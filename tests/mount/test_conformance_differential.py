"""Differential POSIX conformance: the same system calls on a local disk and on the mount, compared.

Each scenario is a script of system calls run in a fresh directory on the
local disk (``tmp_path``) and in a fresh directory on ChunkFS mounts: the
default mount, and one without the kernel's attribute and entry cache
(``attr_timeout=0``), which shows what the master itself holds.
Every call's outcome is recorded — its return value or its errno — and so is
what `stat` shows afterwards: file type, permission bits, size, ``st_nlink``
and how atime/mtime/ctime moved across the call (``<``, ``=``, ``>``: never
absolute wall-clock times), directory listings and file contents.  Explicitly
set time stamps (``utimensat`` with given values) are compared exactly: they
are data, not clock readings.

Any difference fails the test with the scenario, the call, the local outcome
and the mount outcome — unless it is one of the documented exceptions of
ChunkFS (README "The mount", DESIGN.md "Not POSIX"), listed in `ALLOWED`
with the reason.  This is how an independent suite (pjdfstest, xfstests'
generic tests, LTP syscalls) would look at the mount.

Only a few clusters are started: each test function runs many scenarios on
one cluster.  Every loop is bounded; nothing here measures durations; a short
sleep before a timed call only lets the local disk's coarse clock tick, so
that a time stamp that should move can be seen to move.  Set
``CONFORMANCE_DUMP=DIR`` to get every side's outcomes as JSON, one file per
scenario.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import mmap
import os
import socket
import stat as statmod
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import MiB
from .libc_calls import libc, opendir, raise_errno, readdir

GiB = 1 << 30

# -- libc calls that the os module does not offer (or offers without their errno) ----------------

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
#: Long enough for the local disk's coarse clock (jiffies) to tick between two calls.
TICK = 0.025


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int]
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
libc.access.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.fchmodat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int]


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int], follow: bool = True) -> None:
    """utimensat(2) with (seconds, nanoseconds) pairs; nanoseconds may be UTIME_NOW or UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0 if follow else AT_SYMLINK_NOFOLLOW) != 0:
        raise_errno()


def renameat2(old: str, new: str, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        raise_errno()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if libc.fallocate(fd, mode, offset, length) != 0:
        raise_errno()


def lchmod(path: str, mode: int) -> None:
    """fchmodat(AT_SYMLINK_NOFOLLOW): what Linux answers for a link itself (Python refuses to ask)."""
    if libc.fchmodat(AT_FDCWD, os.fsencode(path), mode, AT_SYMLINK_NOFOLLOW) != 0:
        raise_errno()


def access(path: str | bytes, mode: int) -> None:
    """access(2) with its errno (os.access only says True or False)."""
    if libc.access(os.fsencode(path), mode) != 0:
        raise_errno()


def raw_readdir(where: str | bytes | int, limit: int = 10_000) -> list[tuple[bytes, int, int]]:
    """(name, d_type, d_ino) of every entry readdir(3) returns, "." and ".." included."""
    dirp = opendir(where)
    try:
        out = []
        for _ in range(limit):
            ent = readdir(dirp)
            if ent is None:
                return out
            out.append((ent.d_name, ent.d_type, ent.d_ino))
        raise AssertionError(f"more than {limit} directory entries")
    finally:
        libc.closedir(dirp)


# -- recording one run of a scenario --------------------------------------------------------------

_KINDS = {statmod.S_IFREG: "file", statmod.S_IFDIR: "dir", statmod.S_IFLNK: "symlink", statmod.S_IFIFO: "fifo",
          statmod.S_IFSOCK: "socket", statmod.S_IFCHR: "chardev", statmod.S_IFBLK: "blockdev"}
_DTYPES = {0: "unknown", 1: "fifo", 2: "chardev", 4: "dir", 6: "blockdev", 8: "file", 10: "symlink", 12: "socket"}


def rel(a: int, b: int) -> str:
    return "<" if a < b else "=" if a == b else ">"


def err_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


@dataclass
class Run:
    """One scenario on one side: every outcome under a label, in the order made."""

    base: Path
    side: str
    out: dict[str, Any] = field(default_factory=dict)
    fds: set[int] = field(default_factory=set)
    maps: list[mmap.mmap] = field(default_factory=list)

    # paths ------------------------------------------------------------------

    def p(self, name: str | bytes) -> str | bytes:
        if isinstance(name, bytes):
            return os.fsencode(self.base) + b"/" + name
        return f"{self.base}/{name}"

    def norm(self, value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            if len(data) <= 48:
                return data.replace(os.fsencode(self.base), b"<BASE>")
            return f"<{len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()[:16]}>"
        if isinstance(value, str):
            return value.replace(str(self.base), "<BASE>")
        if isinstance(value, list | tuple):
            return [self.norm(v) for v in value]
        if isinstance(value, os.stat_result):
            return self.summary(value)
        return value

    def put(self, key: str, value: Any) -> None:
        assert key not in self.out, f"label used twice in a scenario: {key}"
        self.out[key] = value

    # calls ------------------------------------------------------------------

    def call(self, label: str, fn: Callable[..., Any], *args: Any, keep: bool = True, **kwargs: Any) -> Any:
        """Run one call; record ("ok", its normalized result) or ("err", errno name)."""
        try:
            value = fn(*args, **kwargs)
        except OSError as exc:
            self.put(label, ("err", err_name(exc)))
            return None
        self.put(label, ("ok", self.norm(value) if keep else None))
        return value

    def open(self, label: str, name: str | bytes, flags: int, mode: int = 0o644,
             dir_fd: int | None = None) -> int | None:
        path = name if dir_fd is not None else self.p(name)
        fd = self.call(label, os.open, path, flags, mode, dir_fd=dir_fd, keep=False)
        if fd is not None:
            self.fds.add(fd)
        return fd

    def close(self, label: str, fd: int | None) -> None:
        if fd is None:
            self.put(label, ("skipped", "no fd"))
            return
        self.fds.discard(fd)
        self.call(label, os.close, fd)

    def summary(self, st: os.stat_result, times: bool = False) -> dict[str, Any]:
        """Type, permission bits, link count, size (files and links).

        With `times`, also how mtime and ctime compare: meaningful only when
        the calls that set them were a clock tick apart (see `timed`).
        """
        kind = statmod.S_IFMT(st.st_mode)
        out: dict[str, Any] = {"type": _KINDS.get(kind, oct(kind)), "perm": oct(statmod.S_IMODE(st.st_mode)),
                               "nlink": st.st_nlink}
        if kind in (statmod.S_IFREG, statmod.S_IFLNK):
            out["size"] = st.st_size
        if times:
            out["mtime?ctime"] = rel(st.st_mtime_ns, st.st_ctime_ns)
        return out

    def _stat(self, label: str, fn: Callable[[], os.stat_result], times: bool = False) -> os.stat_result | None:
        try:
            st = fn()
        except OSError as exc:
            self.put(label, ("err", err_name(exc)))
            return None
        self.put(label, ("ok",))
        for key, value in self.summary(st, times).items():
            self.put(f"{label} ::{key}", value)
        return st

    def stat(self, label: str, name: str | bytes) -> os.stat_result | None:
        return self._stat(label, lambda: os.stat(self.p(name)))

    def lstat(self, label: str, name: str | bytes, times: bool = False) -> os.stat_result | None:
        return self._stat(label, lambda: os.lstat(self.p(name)), times)

    def fstat(self, label: str, fd: int | None) -> os.stat_result | None:
        if fd is None:
            self.put(label, ("skipped", "no fd"))
            return None
        return self._stat(label, lambda: os.fstat(fd))

    def exact_times(self, label: str, name: str, follow: bool = False) -> None:
        """Time stamps that were *set* to given values: compared exactly (they are data, not the clock)."""
        self.call(label, lambda: (lambda st: (st.st_atime_ns, st.st_mtime_ns))(
            os.stat(self.p(name), follow_symlinks=follow)))

    def read_file(self, label: str, name: str | bytes) -> None:
        def read() -> bytes:
            fd = os.open(self.p(name), os.O_RDONLY)
            try:
                chunks = []
                for _ in range(4096):
                    data = os.read(fd, MiB)
                    if not data:
                        return b"".join(chunks)
                    chunks.append(data)
                raise AssertionError("file larger than 4 GiB")
            finally:
                os.close(fd)
        self.call(label, read)

    def listdir(self, label: str, name: str | bytes) -> None:
        self.call(label, lambda: sorted(os.listdir(self.p(name))))

    def rawdir(self, label: str, name: str) -> None:
        """readdir(3) in full: names with "." and "..", d_type, and whether d_ino is the entry's st_ino."""
        path = self.p(name)

        def entries() -> list[tuple[str, str, bool]]:
            out = []
            for entry, dtype, ino in raw_readdir(path):
                st_ino = os.lstat(os.path.join(os.fsencode(path), entry)).st_ino
                out.append((entry.decode(errors="backslashreplace"), _DTYPES.get(dtype, str(dtype)), ino == st_ino))
            return sorted(out)
        self.call(label, entries)

    def timed(self, label: str, watch: dict[str, str | int], fn: Callable[..., Any], *args: Any,
              keep: bool = True, **kwargs: Any) -> Any:
        """Run a call; record how each watched object's atime/mtime/ctime moved across it.

        `watch` names paths (lstat) or open file descriptors (fstat).
        """
        def st(what: str | int) -> os.stat_result | None:
            try:
                return os.fstat(what) if isinstance(what, int) else os.lstat(self.p(what))
            except OSError:
                return None

        before = {k: st(v) for k, v in watch.items()}
        time.sleep(TICK)
        result = self.call(label, fn, *args, keep=keep, **kwargs)
        for k, v in watch.items():
            after = st(v)
            b = before[k]
            if b is None or after is None:
                self.put(f"{label} ::{k} times", "missing before" if b is None else "missing after")
                continue
            self.put(f"{label} ::{k} atime", rel(after.st_atime_ns, b.st_atime_ns))
            self.put(f"{label} ::{k} mtime", rel(after.st_mtime_ns, b.st_mtime_ns))
            self.put(f"{label} ::{k} ctime", rel(after.st_ctime_ns, b.st_ctime_ns))
            self.put(f"{label} ::{k} mtime?ctime after", rel(after.st_mtime_ns, after.st_ctime_ns))
        return result

    def cleanup(self) -> None:
        for m in self.maps:
            with contextlib.suppress(Exception):
                m.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


# -- the allow-list: documented differences -------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    what: str
    reason: str
    applies: Callable[[str, Any, Any], bool]


def _call_refused(prefixes: tuple[str, ...], errnos: tuple[str, ...]) -> Callable[[str, Any, Any], bool]:
    def applies(key: str, local: Any, mount: Any) -> bool:
        return key.startswith(prefixes) and "::" not in key and isinstance(mount, tuple) and \
            mount[:1] == ("err",) and mount[1] in errnos
    return applies


def _no_xattrs_listed(key: str, local: Any, mount: Any) -> bool:
    """The mount keeps no extended attributes: it lists none, where the local disk lists those set on it."""
    return key == "listxattr" and mount == ("ok", []) and isinstance(local, tuple) and local[:1] == ("ok",)


_ORDER = {"<": 0, "=": 1, ">": 2}


def _noatime(key: str, local: Any, mount: Any) -> bool:
    """The mount is noatime: reads leave atime alone where the local disk (relatime) moves it forward."""
    if not key.endswith(" atime") or not isinstance(local, str) or not isinstance(mount, str):
        return False
    return local in _ORDER and mount in _ORDER and _ORDER[local] > _ORDER[mount]


ALLOWED = [
    Allowed("hard links", "DESIGN.md 'Not POSIX': no hard links; the mount answers EPERM",
            _call_refused(("link ",), ("EPERM",))),
    Allowed("special files", "DESIGN.md 'Not POSIX': no device files, FIFOs or sockets; mknod answers EPERM",
            _call_refused(("mknod ", "mkfifo", "bind AF_UNIX "), ("EPERM",))),
    Allowed("xattrs and ACLs", "DESIGN.md 'Not POSIX': no ACLs; no extended attributes (ENOTSUP)",
            _call_refused(("setxattr", "getxattr", "removexattr"), ("EOPNOTSUPP", "ENOTSUP"))),
    Allowed("no xattrs listed", "README 'Not POSIX': none kept, so none listed (as a local disk without them)",
            _no_xattrs_listed),
    Allowed("chown to another owner", "README 'Who may use a mount': ChunkFS keeps no owners; EPERM",
            _call_refused(("chown to another owner",), ("EPERM",))),
    Allowed("fallocate", "fuse_ops.py: pyfuse3 3.5 has no fallocate handler; the kernel answers EOPNOTSUPP",
            _call_refused(("fallocate ",), ("EOPNOTSUPP", "ENOTSUP"))),
    Allowed("RENAME_EXCHANGE", "fuse_ops.py: not offered by the master; EINVAL as for file systems without it",
            _call_refused(("renameat2 RENAME_EXCHANGE",), ("EINVAL",))),
    Allowed("noatime", "fuse_session.py mounts with noatime: reads do not move atime", _noatime),
    Allowed("O_TMPFILE", "README 'What ChunkFS is not': pyfuse3 3.5 has no tmpfile handler; EOPNOTSUPP",
            _call_refused(("O_TMPFILE",), ("EOPNOTSUPP", "ENOTSUP"))),
    Allowed("holes not reported", "README 'What ChunkFS is not': pyfuse3 3.5 has no lseek handler, so "
            "SEEK_DATA/SEEK_HOLE see one extent, and st_blocks counts whole chunks, the size while writes wait "
            "for their commit (the data stays sparse)",
            lambda key, local, mount: key.startswith(("SEEK_HOLE", "SEEK_DATA", "sparse: st_blocks"))),
]


# -- running and comparing ------------------------------------------------------------------------

Scenario = Callable[[Run], None]


def compare(scenario: str, local: dict[str, Any], mount: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Mismatches (not allowed) and allowed differences, one line each."""
    bad: list[str] = []
    allowed: list[str] = []
    keys = list(local) + [k for k in mount if k not in local]
    for key in keys:
        lv, mv = local.get(key, "<not reached>"), mount.get(key, "<not reached>")
        if lv == mv:
            continue
        if "<not reached>" in (lv, mv) or any(isinstance(v, tuple) and v[:1] == ("skipped",) for v in (lv, mv)):
            continue  # a step taken on one side only, after an earlier difference (reported itself)
        parent = key.split(" ::", 1)[0]
        if parent != key and local.get(parent) != mount.get(parent):
            continue  # the call itself already differs: its details would only repeat it
        line = f"{scenario}: {key}: local={lv!r} mount={mv!r}"
        why = next((a for a in ALLOWED if a.applies(key, lv, mv)), None)
        if why is None:
            bad.append(line)
        else:
            allowed.append(f"{line}  [allowed: {why.what}]")
    return bad, allowed


def run_scenarios(local_root: Path, mounts: dict[str, Path], scenarios: Iterable[Scenario]) -> None:
    """Run each scenario on the local disk and on every mount; compare every mount with the local disk."""
    mismatches: list[str] = []
    allowed: list[str] = []
    for scenario in scenarios:
        name = scenario.__name__.removeprefix("sc_")
        outs: dict[str, dict[str, Any]] = {}
        for i, (side, root) in enumerate((("local", local_root), *mounts.items())):
            base = root / f"{name}.{i}"  # mounts of one cluster share a namespace: a directory each
            base.mkdir()
            run = Run(base, side)
            old_umask = os.umask(0o022)
            try:
                scenario(run)
            except Exception as exc:  # a scenario bug or an unexpected non-OSError: compared like any outcome
                run.out["<scenario raised>"] = f"{type(exc).__name__}: {run.norm(str(exc))}"
            finally:
                os.umask(old_umask)
                run.cleanup()
            outs[side] = run.out
        if os.environ.get("CONFORMANCE_DUMP"):  # every side's outcomes, for reading them side by side
            dump = Path(os.environ["CONFORMANCE_DUMP"]) / f"{name}.json"
            dump.write_text(json.dumps(outs, indent=1, default=repr))
        for side in mounts:
            bad, ok = compare(f"{name} [{side}]", outs["local"], outs[side])
            mismatches += bad
            allowed += ok
    for line in allowed:
        print(line)
    assert not mismatches, f"{len(mismatches)} difference(s) between the local disk and the mount:\n" + \
        "\n".join(mismatches)


@pytest.fixture
def sides(make_cluster, mount, tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """A local directory, and two mounts of one cluster (1 MiB chunks, so scenarios cross chunk boundaries).

    The default mount is what programs get; the second has no kernel attribute or entry cache, so
    every stat shows what the master holds (what another mount, or this one a second later, sees).
    """
    cluster = make_cluster(n_cs=3, chunk_size=1 * MiB)
    mounts = {"mount": mount(cluster),
              "mount attr_timeout=0": mount(cluster, "mnt-uncached", "attr_timeout=0", "entry_timeout=0")}
    local = tmp_path / "local"
    local.mkdir()
    return local, mounts


# -- scenarios: opening and creating --------------------------------------------------------------

RDONLY, WRONLY, RDWR, CREAT, EXCL, TRUNC, APPEND = (
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_EXCL, os.O_TRUNC, os.O_APPEND)


def sc_open_flags(r: Run) -> None:
    p = r.p
    fd = r.open("create f", "f", CREAT | WRONLY, 0o644)
    r.call("write f", os.write, fd, b"hello world")
    r.close("close f", fd)
    r.open("O_CREAT|O_EXCL on existing file", "f", CREAT | EXCL | WRONLY)
    r.call("symlink dangling", os.symlink, "made-through-link", p("dl"))
    r.open("O_CREAT|O_EXCL on dangling symlink", "dl", CREAT | EXCL | WRONLY)
    r.lstat("dangling symlink still a link", "dl")
    fd = r.open("O_CREAT through dangling symlink", "dl", CREAT | WRONLY, 0o600)
    r.close("close created through link", fd)
    r.lstat("file created at link target", "made-through-link")
    r.call("symlink to f", os.symlink, "f", p("lf"))
    r.open("O_NOFOLLOW on symlink", "lf", RDONLY | os.O_NOFOLLOW)
    fd = r.open("open through symlink", "lf", RDONLY)
    r.call("read through symlink", os.read, fd, 100)
    r.close("close through symlink", fd)
    r.open("O_DIRECTORY on a file", "f", RDONLY | os.O_DIRECTORY)
    r.open("trailing slash on a file", "f/", RDONLY)
    r.open("O_CREAT, parent is a file", "f/x", CREAT | WRONLY)
    r.open("O_CREAT, parent missing", "missing/x", CREAT | WRONLY)
    r.open("O_CREAT, new name with trailing slash", "newname/", CREAT | WRONLY)
    r.call("open empty path", os.open, "", RDONLY)
    r.call("mkdir d", os.mkdir, p("d"))
    r.open("O_WRONLY on a directory", "d", WRONLY)
    r.open("O_RDWR on a directory", "d", RDWR)
    r.open("O_CREAT on a directory", "d", CREAT | WRONLY)
    r.open("O_CREAT|O_EXCL on a directory", "d", CREAT | EXCL | RDONLY)
    r.open("O_CREAT on '.'", ".", CREAT | WRONLY)
    fd = r.open("O_DIRECTORY on a directory", "d", RDONLY | os.O_DIRECTORY)
    r.close("close directory", fd)
    # O_TRUNC with O_RDONLY: Linux truncates.
    fd = r.open("O_RDONLY|O_TRUNC", "f", RDONLY | TRUNC)
    r.fstat("fstat after O_RDONLY|O_TRUNC", fd)
    r.call("read after O_RDONLY|O_TRUNC", os.read, fd, 100)
    r.close("close O_RDONLY|O_TRUNC", fd)
    r.stat("stat after O_RDONLY|O_TRUNC", "f")
    # Root writes through mode 0444.
    r.call("chmod 0444", os.chmod, p("made-through-link"), 0o444)
    fd = r.open("O_WRONLY|O_TRUNC on mode 0444 (root)", "made-through-link", WRONLY | TRUNC)
    r.call("write to 0444 file (root)", os.write, fd, b"root")
    r.close("close 0444 file", fd)
    r.read_file("content of 0444 file", "made-through-link")
    # Reading a write-only descriptor, writing a read-only one.
    fd = r.open("open O_RDONLY", "f", RDONLY)
    r.call("write on O_RDONLY fd", os.write, fd, b"x")
    r.close("close O_RDONLY", fd)
    fd = r.open("open O_WRONLY", "f", WRONLY)
    r.call("read on O_WRONLY fd", os.read, fd, 1)
    r.close("close O_WRONLY", fd)
    r.call("close a closed fd", os.close, fd if fd is not None else -1)
    # O_APPEND: every write at the end, pwrite too (Linux), two appenders interleave.
    fd = r.open("create with O_APPEND", "app", CREAT | WRONLY | APPEND)
    r.call("append ab", os.write, fd, b"ab")
    r.call("lseek 0 on O_APPEND fd", os.lseek, fd, 0, os.SEEK_SET)
    r.call("append cd after lseek 0", os.write, fd, b"cd")
    r.call("pwrite at 0 on O_APPEND fd", os.pwrite, fd, b"zz", 0)
    r.call("position after appends", os.lseek, fd, 0, os.SEEK_CUR)
    fd2 = r.open("second appender", "app", WRONLY | APPEND)
    r.call("append 1 (fd1)", os.write, fd, b"1")
    r.call("append 2 (fd2)", os.write, fd2, b"2")
    r.call("append 3 (fd1)", os.write, fd, b"3")
    r.close("close appender 1", fd)
    r.close("close appender 2", fd2)
    r.read_file("appended content", "app")
    r.stat("appended stat", "app")
    # Create modes (umask 022).
    fd = r.open("create mode 0666", "m666", CREAT | WRONLY, 0o666)
    r.close("close m666", fd)
    r.stat("mode of m666", "m666")
    # O_TMPFILE: an unnamed file in a directory.
    fd = r.open("O_TMPFILE in d", "d", O_TMPFILE | RDWR, 0o600)
    if fd is not None:
        r.call("write O_TMPFILE", os.write, fd, b"tmp")
        r.fstat("fstat O_TMPFILE", fd)
        r.close("close O_TMPFILE", fd)
    r.listdir("d after O_TMPFILE", "d")
    r.listdir("final listing", "")


def sc_names(r: Run) -> None:
    p = r.p
    n255, n256 = "a" * 255, "b" * 256
    fd = r.open("create 255-byte name", n255, CREAT | WRONLY)
    r.close("close 255", fd)
    r.stat("stat 255-byte name", n255)
    r.call("rename to another 255-byte name", os.rename, p(n255), p("c" * 255))
    r.call("mkdir 255-byte name", os.mkdir, p("d" * 255))
    r.call("symlink 255-byte name", os.symlink, "target", p("s" * 255))
    r.call("readlink 255-byte name", os.readlink, p("s" * 255))
    r.open("create 256-byte name", n256, CREAT | WRONLY)
    r.stat("stat 256-byte name", n256)
    r.lstat("lstat 256-byte name", n256)
    r.call("mkdir 256-byte name", os.mkdir, p(n256))
    r.call("rmdir 256-byte name", os.rmdir, p(n256))
    r.call("unlink 256-byte name", os.unlink, p(n256))
    r.call("rename to 256-byte name", os.rename, p("c" * 255), p(n256))
    r.call("symlink at 256-byte name", os.symlink, "x", p(n256))
    r.call("access 256-byte name", access, p(n256), os.F_OK)
    r.call("chmod 256-byte name", os.chmod, p(n256), 0o600)
    r.call("truncate 256-byte name", os.truncate, p(n256), 0)
    r.stat("stat 256-byte name as a parent", n256 + "/x")
    r.stat("stat 256-byte name under a missing dir", "missing/" + n256)
    utf8_255 = "é" * 127 + "a"  # 255 bytes of UTF-8
    fd = r.open("create 255-byte UTF-8 name", utf8_255, CREAT | WRONLY)
    r.close("close UTF-8 255", fd)
    r.open("create 256-byte UTF-8 name", "é" * 128, CREAT | WRONLY)
    # "." and ".." and empty names.
    r.call("mkdir d", os.mkdir, p("d"))
    r.call("mkdir '.'", os.mkdir, p("."))
    r.call("mkdir '..'", os.mkdir, p("d/.."))
    r.call("mkdir 'd/.'", os.mkdir, p("d/."))
    r.call("rmdir '.'", os.rmdir, p("."))
    r.call("rmdir 'd/.'", os.rmdir, p("d/."))
    r.call("rmdir 'd/..'", os.rmdir, p("d/.."))
    r.call("unlink '.'", os.unlink, p("."))
    r.call("unlink 'd/..'", os.unlink, p("d/.."))
    r.call("rename 'd/.'", os.rename, p("d/."), p("x"))
    r.call("rename 'd/..'", os.rename, p("d/.."), p("x"))
    r.call("rename onto 'd/.'", os.rename, p("c" * 255), p("d/."))
    r.call("symlink at '.'", os.symlink, "x", p("d/."))
    r.call("mkdir empty name", os.mkdir, "")
    r.call("stat empty name", os.stat, "")
    r.call("unlink empty name", os.unlink, "")
    r.call("rename from empty name", os.rename, "", p("x"))
    r.call("rename to empty name", os.rename, p("c" * 255), "")
    r.call("symlink with empty target", os.symlink, "", p("empty-target"))
    # Names with odd but legal bytes.
    odd = ["with space", "new\nline", "tab\tname", "back\\slash", "-dash", "...", "ünïcødé", "日本語", " lead",
           "trail "]
    for i, name in enumerate(odd):
        fd = r.open(f"create odd name {i}", name, CREAT | WRONLY)
        r.call(f"write odd name {i}", os.write, fd, name.encode())
        r.close(f"close odd name {i}", fd)
        r.read_file(f"read odd name {i}", name)
    # Names that are not UTF-8: legal on Linux (any bytes but "/" and NUL).
    for i, name in enumerate([b"\xff\xfe-latin", b"caf\xe9", b"\xc3(", b"\xed\xa0\x80surrogate"]):
        fd = r.open(f"create non-UTF-8 name {i}", name, CREAT | WRONLY)
        r.close(f"close non-UTF-8 name {i}", fd)
        r.lstat(f"lstat non-UTF-8 name {i}", name)
        r.stat(f"stat missing non-UTF-8 name {i}", name + b"-missing")
    r.call("mkdir non-UTF-8 name", os.mkdir, p(b"dir\xff"))
    r.call("rename to non-UTF-8 name", os.rename, p("-dash"), p(b"\xe9t\xe9"))
    r.call("symlink non-UTF-8 name and target", os.symlink, b"t\xff", p(b"\xfflink"))
    r.call("readlink non-UTF-8", os.readlink, p(b"\xfflink"))
    r.call("symlink with non-UTF-8 target", os.symlink, b"caf\xe9/\xff", p("to-latin1"))
    r.call("readlink non-UTF-8 target", os.readlink, p(b"to-latin1"))
    r.lstat("lstat link to non-UTF-8 target", "to-latin1")
    r.call("listdir (bytes)", lambda: sorted(os.listdir(os.fsencode(r.base))))
    r.call("unlink non-UTF-8 name", os.unlink, p(b"caf\xe9"))
    r.call("listdir (bytes) after unlink", lambda: sorted(os.listdir(os.fsencode(r.base))))


def sc_symlinks(r: Run) -> None:
    p = r.p
    fd = r.open("create f", "f", CREAT | WRONLY)
    r.call("write f", os.write, fd, b"file data")
    r.close("close f", fd)
    r.call("mkdir d", os.mkdir, p("d"))
    r.call("symlink l1 -> f", os.symlink, "f", p("l1"))
    r.call("readlink l1", os.readlink, p("l1"))
    r.lstat("lstat l1", "l1")
    r.stat("stat l1", "l1")
    r.call("symlink over existing", os.symlink, "x", p("l1"))
    r.call("symlink at name with trailing slash", os.symlink, "f", p("newl/"))
    r.call("symlink in missing dir", os.symlink, "f", p("missing/l"))
    r.call("symlink with a file as parent", os.symlink, "f", p("f/l"))
    # Targets up to PATH_MAX - 1 bytes.
    for n in (1, 255, 256, 1024, 4095):
        target = ("t/" * (n // 2) + "t" * (n % 2))[:n]
        r.call(f"symlink target of {n} bytes", os.symlink, target, p(f"long{n}"))
        r.call(f"readlink target of {n} bytes", lambda n=n: len(os.readlink(p(f"long{n}"))))
        r.lstat(f"lstat target of {n} bytes", f"long{n}")
    r.call("symlink target of 4096 bytes", os.symlink, "t" * 4096, p("long4096"))
    r.call("absolute symlink", os.symlink, str(r.base / "f"), p("abs"))
    r.call("readlink absolute", os.readlink, p("abs"))
    r.read_file("read through absolute symlink", "abs")
    # Dangling links and loops.
    r.call("symlink dangling", os.symlink, "nowhere", p("dangling"))
    r.stat("stat dangling", "dangling")
    r.lstat("lstat dangling", "dangling")
    r.call("access dangling", access, p("dangling"), os.F_OK)
    r.call("readlink dangling", os.readlink, p("dangling"))
    r.call("symlink loop a->b", os.symlink, "loop-b", p("loop-a"))
    r.call("symlink loop b->a", os.symlink, "loop-a", p("loop-b"))
    r.call("symlink self", os.symlink, "self", p("self"))
    r.stat("stat loop", "loop-a")
    r.stat("stat self loop", "self")
    r.open("open loop", "loop-a", RDONLY)
    r.open("O_CREAT on loop", "loop-a", CREAT | WRONLY)
    r.stat("stat through loop as dir", "loop-a/x")
    r.lstat("lstat loop", "loop-a")
    r.call("mkdir under loop", os.mkdir, p("self/x"))
    for n in (39, 40, 41):  # chains of links: Linux follows at most 40
        r.call(f"chain {n} start", os.symlink, "f", p(f"chain{n}-0"))
        for i in range(1, n):
            os.symlink(f"chain{n}-{i - 1}", p(f"chain{n}-{i}"))
        r.stat(f"stat through chain of {n}", f"chain{n}-{n - 1}")
    # Paths through links to directories.
    r.call("symlink ld -> d", os.symlink, "d", p("ld"))
    fd = r.open("create through dir link", "ld/inner", CREAT | WRONLY)
    r.close("close inner", fd)
    r.stat("stat inner by real path", "d/inner")
    r.listdir("listdir through dir link", "ld")
    r.call("rmdir a dir link", os.rmdir, p("ld"))
    r.call("rmdir a dir link with slash", os.rmdir, p("ld/"))
    r.call("unlink a dir link with slash", os.unlink, p("ld/"))
    r.call("mkdir over dir link", os.mkdir, p("ld"))
    r.call("mkdir over dangling link", os.mkdir, p("dangling"))
    r.call("chdir-free .. through link", lambda: os.stat(p("ld/..")).st_ino == os.stat(r.base).st_ino)
    # A link moves with its text.
    r.call("rename symlink", os.rename, p("l1"), p("d/l1moved"))
    r.call("readlink moved", os.readlink, p("d/l1moved"))
    r.stat("stat moved relative link (now dangling)", "d/l1moved")
    r.call("unlink symlink", os.unlink, p("abs"))
    r.stat("target survives unlink of link", "f")
    # Times and modes of links themselves.
    r.call("lutimes on link", os.utime, p("dangling"), ns=(1_000_000_000, 2_000_000_000), follow_symlinks=False)
    r.exact_times("exact times of link", "dangling")
    r.call("utime through link", os.utime, p("chain39-38"), ns=(3_000_000_000, 4_000_000_000))
    r.exact_times("target times after utime through link", "f")
    r.call("chmod link nofollow", lchmod, p("dangling"), 0o600)
    r.lstat("lstat after chmod nofollow", "dangling")
    r.call("chmod through link", os.chmod, p("chain39-38"), 0o640)
    r.stat("target mode after chmod through link", "f")
    r.lstat("link mode after chmod through it", "chain39-38")
    r.call("truncate through link", os.truncate, p("chain39-38"), 4)
    r.read_file("read after truncate through link", "f")
    r.listdir("final listing", "d")


# -- scenarios: namespace -------------------------------------------------------------------------


def sc_rename_rmdir_unlink(r: Run) -> None:
    p = r.p

    def nlinks(label: str, *dirs: str) -> None:
        r.call(label, lambda: [os.stat(p(d)).st_nlink for d in dirs])

    for d in ("a", "b", "a/sub", "a/sub2", "a/sub2/deep", "empty", "full", "full/x"):
        r.call(f"mkdir {d}", os.mkdir, p(d))
    for name, data in (("a/f", b"A"), ("b/g", b"B"), ("h", b"H")):
        fd = r.open(f"create {name}", name, CREAT | WRONLY)
        r.call(f"write {name}", os.write, fd, data)
        r.close(f"close {name}", fd)
    nlinks("nlink a b base", "a", "b", "")
    r.call("rename file across dirs", os.rename, p("a/f"), p("b/f"))
    r.listdir("listdir a", "a")
    r.listdir("listdir b", "b")
    nlinks("nlink after file move", "a", "b", "")
    r.call("rename file over file", os.rename, p("b/f"), p("b/g"))
    r.read_file("content of replaced target", "b/g")
    r.listdir("listdir b after replace", "b")
    r.call("rename file over empty dir", os.rename, p("b/g"), p("empty"))
    r.call("rename file over non-empty dir", os.rename, p("b/g"), p("full"))
    r.call("rename dir over file", os.rename, p("a/sub"), p("b/g"))
    r.call("rename dir over empty dir", os.rename, p("a/sub"), p("empty"))
    r.listdir("listdir base after dir over empty dir", "")
    nlinks("nlink after dir over empty dir", "a", "empty", "")
    r.call("rename dir over non-empty dir", os.rename, p("a/sub2"), p("full"))
    r.call("rename dir into its own subdir", os.rename, p("a"), p("a/sub2/deep/a"))
    r.call("rename dir onto its own subdir", os.rename, p("a"), p("a/sub2"))
    r.call("rename subdir onto its ancestor", os.rename, p("a/sub2/deep"), p("a"))
    r.call("rename file to itself", os.rename, p("b/g"), p("b/g"))
    r.call("rename dir to itself", os.rename, p("a"), p("a"))
    r.call("rename dir to itself with slash", os.rename, p("a"), p("a/"))
    r.call("rename file to name with slash", os.rename, p("b/g"), p("b/g2/"))
    r.call("rename file with slash", os.rename, p("b/g/"), p("b/g2"))
    r.call("rename dir to new name with slash", os.rename, p("a/sub2"), p("a/sub3/"))
    r.call("rename missing", os.rename, p("missing"), p("x"))
    r.call("rename into missing dir", os.rename, p("h"), p("missing/h"))
    r.call("rename under a file", os.rename, p("h"), p("b/g/h"))
    r.call("rename missing under a file", os.rename, p("b/g/x"), p("x"))
    r.call("symlink lb -> b", os.symlink, "b", p("lb"))
    r.call("rename symlink to dir", os.rename, p("lb"), p("lb2"))
    r.lstat("lstat renamed link", "lb2")
    r.call("readlink renamed link", os.readlink, p("lb2"))
    r.call("rename dir over symlink", os.rename, p("full"), p("lb2"))
    r.call("rename file over symlink", os.rename, p("h"), p("lb2"))
    r.lstat("lstat after file over symlink", "lb2")
    r.stat("dir still there after link replaced", "b")
    # Moving directories between parents: link counts of both.
    for d in ("p1", "p2", "p1/m", "p1/e", "p2/m2"):
        r.call(f"mkdir {d}", os.mkdir, p(d))
    nlinks("nlink p1 p2 before", "p1", "p2")
    r.call("move dir across parents", os.rename, p("p1/m"), p("p2/m"))
    nlinks("nlink after move", "p1", "p2", "p2/m")
    r.call("move dir back over empty dir", os.rename, p("p2/m"), p("p1/e"))
    nlinks("nlink after move over empty", "p1", "p2", "p1/e")
    r.call("move dir over empty dir, same parent", os.rename, p("p2/m2"), p("p2/m3"))
    r.call("mkdir p2/m4", os.mkdir, p("p2/m4"))
    r.call("dir over sibling empty dir", os.rename, p("p2/m3"), p("p2/m4"))
    nlinks("nlink after sibling replace", "p2")
    r.stat("stat .. of moved dir", "p1/e/..")
    r.call("renameat2 RENAME_NOREPLACE onto existing", renameat2, p("b/g"), p("p1/e"), RENAME_NOREPLACE)
    r.call("renameat2 RENAME_NOREPLACE to new name", renameat2, p("b/g"), p("b/g-moved"), RENAME_NOREPLACE)
    # unlink / rmdir edge cases.
    r.call("unlink a directory", os.unlink, p("a"))
    r.call("rmdir a file", os.rmdir, p("b/g-moved"))
    r.call("rmdir non-empty", os.rmdir, p("a"))
    r.call("rmdir missing", os.rmdir, p("missing"))
    r.call("rmdir under a file", os.rmdir, p("b/g-moved/x"))
    r.call("unlink missing", os.unlink, p("missing"))
    r.call("unlink under a file", os.unlink, p("b/g-moved/x"))
    r.call("unlink a file with slash", os.unlink, p("b/g-moved/"))
    r.call("rmdir with slash", os.rmdir, p("p1/e/"))
    nlinks("nlink after rmdir", "p1")
    r.call("mkdir existing", os.mkdir, p("a"))
    r.call("mkdir existing file", os.mkdir, p("b/g-moved"))
    r.call("mkdir missing parent", os.mkdir, p("missing/x"))
    r.call("mkdir under a file", os.mkdir, p("b/g-moved/x"))
    r.call("mkdir with slash", os.mkdir, p("nd/"))
    r.stat("stat mkdir with slash", "nd")
    r.call("rmdir dir with children gone", lambda: [os.rmdir(p(d)) for d in ("a/sub3/deep", "a/sub3", "a")])
    nlinks("final nlink", "")
    r.listdir("final listing", "")


def sc_readdir(r: Run) -> None:
    p = r.p
    r.rawdir("empty dir", "")
    for i in range(40):
        fd = r.open(f"create f{i:02}", f"f{i:02}", CREAT | WRONLY)
        r.close(f"close f{i:02}", fd)
    for i in range(5):
        r.call(f"mkdir d{i}", os.mkdir, p(f"d{i}"))
    for i in range(3):
        r.call(f"symlink l{i}", os.symlink, f"f{i:02}", p(f"l{i}"))
    r.listdir("after creates", "")
    for i in range(15):
        r.call(f"unlink f{i:02}", os.unlink, p(f"f{i:02}"))
    r.call("rmdir d0", os.rmdir, p("d0"))
    r.call("rename f20", os.rename, p("f20"), p("renamed"))
    r.listdir("after deletes", "")
    r.rawdir("raw after deletes", "")
    r.rawdir("raw of subdir", "d1")
    r.call("scandir kinds", lambda: sorted(
        (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False), e.is_symlink(),
         e.is_dir(), e.is_file()) for e in os.scandir(r.base)))
    r.call("listdir of a file", os.listdir, p("f30"))
    r.call("listdir of missing", os.listdir, p("missing"))
    r.call("symlink ld -> d1", os.symlink, "d1", p("ld"))
    r.call("listdir through link", lambda: sorted(os.listdir(p("ld/"))))
    # More entries than one page of the mount's READDIR (64), with removals between listings.
    r.call("mkdir many", os.mkdir, p("many"))
    for i in range(300):
        os.close(os.open(p(f"many/n{i:03}"), CREAT | WRONLY, 0o644))
    r.call("count many", lambda: len(os.listdir(p("many"))))
    for i in range(0, 300, 3):
        os.unlink(p(f"many/n{i:03}"))
    r.listdir("many after removing every third", "many")
    r.call("raw count many", lambda: len(raw_readdir(p("many"))))
    # Removing entries in the middle of a listing: nothing twice, every survivor listed.
    def remove_while_listing() -> tuple[int, bool, bool]:
        seen: list[str] = []
        with os.scandir(p("many")) as it:
            for i, entry in enumerate(it):
                seen.append(entry.name)
                if i == 5:
                    for j in range(100, 160):
                        if j % 3:
                            os.unlink(p(f"many/n{j:03}"))
        survivors = set(os.listdir(p("many")))
        return len(seen) - len(set(seen)), survivors <= set(seen), len(survivors)
    r.call("remove while listing (duplicates, survivors listed, count)", remove_while_listing)


def sc_modes_and_access(r: Run) -> None:
    p = r.p
    for um in (0o022, 0o077, 0o002, 0o000):
        os.umask(um)
        r.call(f"mkdir 0777 umask {um:03o}", os.mkdir, p(f"d{um:03o}"), 0o777)
        r.stat(f"mode of mkdir 0777 umask {um:03o}", f"d{um:03o}")
        r.call(f"mkdir 01777 umask {um:03o}", os.mkdir, p(f"sticky{um:03o}"), 0o1777)
        r.stat(f"mode of mkdir 01777 umask {um:03o}", f"sticky{um:03o}")
        r.call(f"mkdir 02777 umask {um:03o}", os.mkdir, p(f"sgid{um:03o}"), 0o2777)
        r.stat(f"mode of mkdir 02777 umask {um:03o}", f"sgid{um:03o}")
        fd = r.open(f"create 0666 umask {um:03o}", f"f{um:03o}", CREAT | WRONLY, 0o666)
        r.close(f"close 0666 umask {um:03o}", fd)
        r.stat(f"mode of create 0666 umask {um:03o}", f"f{um:03o}")
        fd = r.open(f"create 04777 umask {um:03o}", f"suid{um:03o}", CREAT | WRONLY, 0o4777)
        r.close(f"close 04777 umask {um:03o}", fd)
        r.stat(f"mode of create 04777 umask {um:03o}", f"suid{um:03o}")
        r.call(f"mknod regular umask {um:03o}", os.mknod, p(f"node{um:03o}"), statmod.S_IFREG | 0o666)
        r.stat(f"mode of mknod regular umask {um:03o}", f"node{um:03o}")
        r.call(f"symlink umask {um:03o}", os.symlink, "x", p(f"link{um:03o}"))
        r.lstat(f"mode of symlink umask {um:03o}", f"link{um:03o}")
    os.umask(0o022)
    for mode in (0o7777, 0o0, 0o4755, 0o2711, 0o1604):
        r.call(f"chmod {mode:04o}", os.chmod, p("f022"), mode)
        r.stat(f"after chmod {mode:04o}", "f022")
    r.call("chmod dir g+s", os.chmod, p("d022"), 0o2755)
    r.call("mkdir in setgid dir", os.mkdir, p("d022/child"))
    r.stat("mode of dir made in setgid dir", "d022/child")
    fd = r.open("create in setgid dir", "d022/file", CREAT | WRONLY, 0o755)
    r.close("close in setgid dir", fd)
    r.stat("mode of file made in setgid dir", "d022/file")
    # access(2) as root: R/W always, X only with some x bit (files), always for directories.
    for mode in (0o644, 0o000, 0o755, 0o100, 0o010):
        name = f"acc{mode:03o}"
        os.close(os.open(p(name), CREAT | WRONLY, 0o600))
        os.chmod(p(name), mode)
        for what, bit in (("F_OK", os.F_OK), ("R_OK", os.R_OK), ("W_OK", os.W_OK), ("X_OK", os.X_OK)):
            r.call(f"access {what} file {mode:03o}", access, p(name), bit)
    r.call("chmod dir 000", os.chmod, p("d077"), 0o000)
    r.call("access X_OK dir 000", access, p("d077"), os.X_OK)
    r.call("access W_OK dir 000", access, p("d077"), os.W_OK)
    r.call("access missing", access, p("missing"), os.F_OK)
    r.call("access under a file", access, p("acc644/x"), os.F_OK)
    r.call("access with trailing slash on file", access, p("acc644/"), os.F_OK)


def sc_statvfs(r: Run) -> None:
    def fields(st: os.statvfs_result) -> dict[str, Any]:
        return {"f_namemax": st.f_namemax, "bavail<=bfree<=blocks": st.f_bavail <= st.f_bfree <= st.f_blocks,
                "favail<=ffree<=files": st.f_favail <= st.f_ffree <= st.f_files,
                "bsize>0": st.f_bsize > 0, "frsize>0": st.f_frsize > 0, "ro": bool(st.f_flag & os.ST_RDONLY)}
    r.call("statvfs", lambda: fields(os.statvfs(r.base)))
    fd = r.open("open dir", "", RDONLY | os.O_DIRECTORY)
    r.call("fstatvfs", lambda: fields(os.fstatvfs(fd)))
    r.close("close dir", fd)
    r.call("pathconf NAME_MAX", os.pathconf, r.base, "PC_NAME_MAX")
    r.call("pathconf PATH_MAX", os.pathconf, r.base, "PC_PATH_MAX")
    r.call("statvfs of a missing path", os.statvfs, r.p("missing"))


# -- scenarios: file data -------------------------------------------------------------------------

PATTERN = bytes(range(256)) * 64  # 16 KiB, deterministic


def sc_data_holes_truncate(r: Run) -> None:
    p = r.p
    fd = r.open("create f", "f", CREAT | RDWR)
    r.call("write abc", os.write, fd, b"abc")
    r.call("pwrite beyond EOF", os.pwrite, fd, b"xyz", 10_000)
    r.fstat("fstat after write beyond EOF", fd)
    r.call("read with hole", os.pread, fd, 20_000, 0)
    r.call("pwrite across chunk boundary", os.pwrite, fd, b"BOUNDARY", MiB - 4)
    r.call("pwrite 5 MiB out", os.pwrite, fd, b"far", 5 * MiB + 7)
    r.call("read in hole of whole chunks", os.pread, fd, 4096, 3 * MiB)
    r.call("read across chunk boundary", os.pread, fd, 16, MiB - 8)
    r.call("read end of file", os.pread, fd, 100, 5 * MiB)
    r.call("read at EOF", os.pread, fd, 10, 5 * MiB + 10)
    r.call("read beyond EOF", os.pread, fd, 10, 6 * MiB)
    r.call("lseek SEEK_END", os.lseek, fd, 0, os.SEEK_END)
    r.call("lseek SEEK_END -1", os.lseek, fd, -1, os.SEEK_END)
    r.call("lseek negative", os.lseek, fd, -1, os.SEEK_SET)
    r.call("lseek past EOF", os.lseek, fd, 7 * MiB, os.SEEK_SET)
    r.call("read after lseek past EOF", os.read, fd, 10)
    r.call("SEEK_DATA from 0", os.lseek, fd, 0, SEEK_DATA)
    r.call("SEEK_HOLE from 0", os.lseek, fd, 0, SEEK_HOLE)
    r.call("SEEK_DATA inside a hole", os.lseek, fd, 2 * MiB, SEEK_DATA)
    r.call("SEEK_HOLE inside a hole", os.lseek, fd, 2 * MiB, SEEK_HOLE)
    r.call("SEEK_HOLE in the last data", os.lseek, fd, 5 * MiB + 8, SEEK_HOLE)
    r.call("SEEK_DATA past EOF", os.lseek, fd, 6 * MiB, SEEK_DATA)
    r.call("SEEK_HOLE past EOF", os.lseek, fd, 6 * MiB, SEEK_HOLE)
    r.call("sparse: st_blocks*512 < st_size", lambda: os.fstat(fd).st_blocks * 512 < os.fstat(fd).st_size)
    r.call("ftruncate down to 2", os.ftruncate, fd, 2)
    r.call("read after ftruncate down", os.pread, fd, 100, 0)
    r.call("ftruncate up to 20", os.ftruncate, fd, 20)
    r.call("read after ftruncate up", os.pread, fd, 100, 0)
    r.call("ftruncate to same size", os.ftruncate, fd, 20)
    r.call("ftruncate negative", os.ftruncate, fd, -1)
    r.fstat("fstat after truncations", fd)
    # Cutting inside a later chunk, then growing: the cut bytes come back as zeros.
    r.call("pwrite in chunk 2", os.pwrite, fd, b"tail-data-tail-data", 2 * MiB + 100)
    r.call("ftruncate inside chunk 2", os.ftruncate, fd, 2 * MiB + 103)
    r.call("ftruncate up past chunk 3", os.ftruncate, fd, 3 * MiB + 5)
    r.call("read cut region", os.pread, fd, 32, 2 * MiB + 96)
    r.call("ftruncate to chunk boundary", os.ftruncate, fd, 2 * MiB)
    r.call("ftruncate up again", os.ftruncate, fd, 2 * MiB + 200)
    r.call("read after boundary cut", os.pread, fd, 300, 2 * MiB - 50)
    r.call("pwrite after cut, beyond EOF", os.pwrite, fd, b"Q", 2 * MiB + 300)
    r.call("read hole after cut", os.pread, fd, 301, 2 * MiB)
    r.close("close f", fd)
    r.stat("stat f", "f")
    fd = r.open("open O_RDONLY", "f", RDONLY)
    r.call("ftruncate on O_RDONLY fd", os.ftruncate, fd, 0)
    r.close("close O_RDONLY", fd)
    fd = r.open("open O_PATH", "f", os.O_PATH)
    r.call("ftruncate on O_PATH fd", os.ftruncate, fd, 0)
    r.close("close O_PATH", fd)
    r.call("mkdir d", os.mkdir, p("d"))
    r.call("truncate a directory", os.truncate, p("d"), 0)
    r.call("truncate missing", os.truncate, p("missing"), 0)
    r.call("truncate under a file", os.truncate, p("f/x"), 0)
    r.call("symlink to f", os.symlink, "f", p("lf"))
    r.call("truncate through symlink", os.truncate, p("lf"), 7)
    r.lstat("link after truncate through it", "lf")
    r.read_file("file after truncate through link", "f")
    # Far out: 16 GiB.
    fd = r.open("create far", "far", CREAT | RDWR)
    r.call("pwrite at 16 GiB", os.pwrite, fd, b"end", 16 * GiB)
    r.fstat("fstat far", fd)
    r.call("read before 16 GiB", os.pread, fd, 8, 16 * GiB - 5)
    r.call("SEEK_DATA far", os.lseek, fd, 0, SEEK_DATA)
    r.close("close far", fd)
    # A second descriptor sees writes before close; O_TRUNC under an open writer.
    fd = r.open("create shared", "shared", CREAT | RDWR)
    r.call("write 100 bytes", os.write, fd, PATTERN[:100])
    fd2 = r.open("open shared again", "shared", RDONLY)
    r.call("read through second fd", os.read, fd2, 200)
    r.fstat("fstat second fd", fd2)
    fd3 = r.open("O_TRUNC while open", "shared", WRONLY | TRUNC)
    r.fstat("fstat writer after O_TRUNC", fd)
    r.call("write at old position", os.write, fd, b"Z")
    r.call("read after write at old position", os.pread, fd, 200, 0)
    r.close("close shared 3", fd3)
    r.close("close shared 2", fd2)
    r.close("close shared 1", fd)
    r.read_file("shared content after closes", "shared")
    # copy_file_range, sendfile, posix_fallocate (glibc emulates it where fallocate is missing).
    fd = r.open("create src", "src", CREAT | RDWR)
    r.call("write src", os.write, fd, PATTERN * 8)
    out = r.open("create dst", "dst", CREAT | RDWR)
    r.call("copy_file_range", os.copy_file_range, fd, out, 100_000, 0, 0)
    r.call("sendfile", os.sendfile, out, fd, 1000, 5000)
    r.call("posix_fallocate", os.posix_fallocate, out, 0, 300_000)
    r.fstat("fstat dst", out)
    r.close("close src", fd)
    r.close("close dst", out)
    r.read_file("dst content", "dst")
    # Overwrites in place, vectored I/O, a reader opened before the writes.
    fd = r.open("create ow", "ow", CREAT | RDWR)
    r.call("write 2 MiB + 3", os.write, fd, (PATTERN * 129)[:2 * MiB + 3])
    r.close("close ow", fd)
    reader = r.open("reader before overwrite", "ow", RDONLY)
    r.call("reader caches the start", os.pread, reader, 4096, 0)
    fd = r.open("open ow for overwrite", "ow", RDWR)
    r.call("overwrite middle", os.pwrite, fd, b"MIDDLE", 1000)
    r.call("overwrite across boundary", os.pwrite, fd, b"ACROSS", MiB - 3)
    r.call("pwritev", os.pwritev, fd, [b"vec1-", b"vec2-", b"vec3"], 5000)
    r.call("preadv", lambda: (lambda bufs: (os.preadv(fd, bufs, 4998), [bytes(b) for b in bufs]))(
        [bytearray(4), bytearray(10)]))
    r.call("early reader sees overwrite", os.pread, reader, 16, 996)
    r.call("early reader sees boundary", os.pread, reader, 10, MiB - 5)
    r.close("close overwrite", fd)
    r.close("close early reader", reader)
    r.read_file("ow content", "ow")
    # O_DIRECT with aligned buffers.
    fd = r.open("O_DIRECT create", "direct", CREAT | RDWR | os.O_DIRECT)
    if fd is not None:
        wbuf = mmap.mmap(-1, 8192)
        rbuf = mmap.mmap(-1, 8192)
        r.maps += [wbuf, rbuf]
        wbuf.write(PATTERN[:8192])
        r.call("O_DIRECT pwritev", os.pwritev, fd, [wbuf], 4096)
        r.call("O_DIRECT preadv", os.preadv, fd, [rbuf], 4096)
        r.call("O_DIRECT read back", lambda: bytes(rbuf[:8192]) == PATTERN[:8192])
        r.fstat("O_DIRECT fstat", fd)
    r.close("O_DIRECT close", fd)
    r.read_file("O_DIRECT content", "direct")
    # Advisory locks (served by the kernel for both).
    fd = r.open("open for locks", "ow", RDWR)
    fd2 = r.open("open for locks 2", "ow", RDWR)
    r.call("flock LOCK_EX", fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    r.call("flock LOCK_EX second fd", fcntl.flock, fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    r.call("lockf F_TLOCK", fcntl.lockf, fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    r.call("posix_fadvise", os.posix_fadvise, fd, 0, 0, os.POSIX_FADV_DONTNEED)
    r.close("close locks 2", fd2)
    r.close("close locks", fd)
    # Zero-length writes and reads.
    fd = r.open("open for zero writes", "dst", RDWR)
    r.call("write 0 bytes", os.write, fd, b"")
    r.call("pwrite 0 bytes beyond EOF", os.pwrite, fd, b"", 10 * MiB)
    r.call("read 0 bytes", os.read, fd, 0)
    r.fstat("fstat after zero-length", fd)
    r.call("fsync", os.fsync, fd)
    r.call("fdatasync", os.fdatasync, fd)
    r.close("close zero writes", fd)
    fd = r.open("open dir for fsync", "d", RDONLY | os.O_DIRECTORY)
    r.call("fsync a directory", os.fsync, fd)
    r.call("read a directory fd", os.read, fd, 10)
    r.close("close dir", fd)


def sc_open_unlinked(r: Run) -> None:
    p = r.p
    fd = r.open("create f", "f", CREAT | RDWR)
    r.call("write data", os.write, fd, b"data")
    r.call("unlink while open", os.unlink, p("f"))
    r.fstat("fstat unlinked", fd)
    r.call("pwrite unlinked", os.pwrite, fd, b"MORE", 4)
    r.call("fsync unlinked", os.fsync, fd)
    r.call("fdatasync unlinked", os.fdatasync, fd)
    r.call("pread unlinked", os.pread, fd, 100, 0)
    r.call("fchmod unlinked", os.fchmod, fd, 0o600)
    r.call("futimens unlinked", os.utime, fd, ns=(5_000_000_000, 6_000_000_000))
    r.call("fstat unlinked exact times", lambda: (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns))
    r.call("ftruncate unlinked", os.ftruncate, fd, 6)
    r.fstat("fstat unlinked after changes", fd)
    r.stat("stat unlinked name", "f")
    r.listdir("listdir after unlink", "")
    fd2 = r.open("create same name again", "f", CREAT | EXCL | RDWR)
    r.call("write new file", os.write, fd2, b"new")
    r.close("close new file", fd2)
    r.read_file("read new by name", "f")
    r.call("pread old after new", os.pread, fd, 100, 0)
    r.close("close unlinked", fd)
    r.read_file("new survives old close", "f")
    # Replaced by rename while open, for reading and for writing.
    for name, data in (("old", b"old contents"), ("new", b"new contents"), ("w", b"writer")):
        fd = r.open(f"create {name}", name, CREAT | WRONLY)
        r.call(f"write {name}", os.write, fd, data)
        r.close(f"close {name}", fd)
    fd = r.open("open old", "old", RDONLY)
    fdw = r.open("open w for writing", "w", RDWR)
    r.call("rename new over old", os.rename, p("new"), p("old"))
    r.fstat("fstat replaced file", fd)
    r.call("read replaced file", os.read, fd, 100)
    r.read_file("read new name", "old")
    r.call("rename old over w", os.rename, p("old"), p("w"))
    r.fstat("fstat replaced writer", fdw)
    r.call("write to replaced writer", os.pwrite, fdw, b"WRITER", 0)
    r.call("fsync replaced writer", os.fsync, fdw)
    r.read_file("replacement unaffected", "w")
    r.call("read replaced writer", os.pread, fdw, 100, 0)
    r.close("close replaced reader", fd)
    r.close("close replaced writer", fdw)
    r.listdir("final listing", "")


def sc_removed_directory(r: Run) -> None:
    p = r.p
    r.call("mkdir d", os.mkdir, p("d"))
    dfd = r.open("open d", "d", RDONLY | os.O_DIRECTORY)
    r.call("rmdir d while open", os.rmdir, p("d"))
    r.fstat("fstat removed dir", dfd)
    r.call("listdir removed dir (fd)", lambda: sorted(os.listdir(dfd)) if dfd is not None else None)
    r.call("readdir removed dir (raw)", lambda: raw_readdir(dfd) if dfd is not None else None)
    r.call("stat '.' in removed dir", lambda: os.stat(".", dir_fd=dfd).st_nlink)
    r.call("fchmod removed dir", os.fchmod, dfd if dfd is not None else -1, 0o700)
    r.call("futimens removed dir", os.utime, dfd if dfd is not None else -1, ns=(1, 2))
    r.call("fsync removed dir", os.fsync, dfd if dfd is not None else -1)
    r.open("create in removed dir", "x", CREAT | WRONLY, dir_fd=dfd)
    r.call("mkdir in removed dir", os.mkdir, "y", dir_fd=dfd)
    r.call("symlink in removed dir", os.symlink, "t", "z", dir_fd=dfd)
    r.call("statvfs removed dir", lambda: os.fstatvfs(dfd).f_namemax if dfd is not None else None)
    r.close("close removed dir", dfd)
    # A directory stream opened before the rmdir.
    r.call("mkdir d2", os.mkdir, p("d2"))
    r.call("mkdir d2/sub", os.mkdir, p("d2/sub"))
    dfd = r.open("open d2/sub", "d2/sub", RDONLY | os.O_DIRECTORY)
    r.call("rmdir d2/sub", os.rmdir, p("d2/sub"))
    r.call("stat '..' of removed dir", lambda: os.stat("..", dir_fd=dfd).st_ino == os.stat(p("d2")).st_ino)
    r.call("rmdir d2", os.rmdir, p("d2"))
    r.close("close d2/sub", dfd)
    # An empty directory replaced by rename while open.
    r.call("mkdir victim", os.mkdir, p("victim"))
    r.call("mkdir mover", os.mkdir, p("mover"))
    dfd = r.open("open victim", "victim", RDONLY | os.O_DIRECTORY)
    r.call("rename mover over open victim", os.rename, p("mover"), p("victim"))
    r.fstat("fstat replaced dir", dfd)
    r.call("listdir replaced dir (fd)", lambda: sorted(os.listdir(dfd)) if dfd is not None else None)
    r.close("close replaced dir", dfd)
    # A process whose working directory is removed (a shell in a directory another one deletes).
    r.call("mkdir cwd", os.mkdir, p("cwd"))
    r.call("removed cwd (child process)", removed_cwd_probe, p("cwd"))
    r.listdir("final listing", "")


_CWD_PROBE = """
import errno, json, os
def outcome(fn):
    try:
        value = fn()
    except OSError as exc:
        return ["err", errno.errorcode.get(exc.errno, str(exc.errno))]
    return ["ok", value]
os.rmdir(os.getcwd())
print(json.dumps({
    "stat .": outcome(lambda: os.stat(".").st_nlink),
    "listdir .": outcome(lambda: os.listdir(".")),
    "getcwd": outcome(lambda: os.getcwd() and "a path"),
    "create in .": outcome(lambda: os.open("x", os.O_CREAT | os.O_WRONLY, 0o644) and "fd"),
    "stat ..": outcome(lambda: os.stat("..").st_nlink),
}))
"""


def removed_cwd_probe(path: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CWD_PROBE], cwd=path, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        return {"exit": done.returncode, "stderr": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout)


def sc_mmap(r: Run) -> None:
    fd = r.open("create f", "f", CREAT | RDWR)
    r.call("write pattern", os.write, fd, PATTERN[:12_288])
    r.close("close f", fd)
    fd = r.open("open f", "f", RDWR)
    if fd is None:
        return
    m = r.call("mmap shared", mmap.mmap, fd, 12_288, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, keep=False)
    if m is None:
        return
    r.maps.append(m)
    r.call("read through map", lambda: bytes(m[0:16]))
    r.timed("store through map + msync", {"f": "f"}, lambda: (m.__setitem__(slice(100, 105), b"HELLO"), m.flush()))
    r.call("read() sees the store", os.pread, fd, 10, 98)
    r.call("store without msync", m.__setitem__, slice(8000, 8004), b"LATE")
    r.call("read() sees the unsynced store", os.pread, fd, 6, 7999)
    r.close("close fd under map", fd)
    r.call("store after close", m.__setitem__, slice(12_000, 12_003), b"END")
    r.call("munmap", m.close)
    r.stat("stat after munmap", "f")
    r.read_file("content after munmap (fresh open)", "f")
    # MAP_PRIVATE stores stay private.
    fd = r.open("open for private map", "f", RDWR)
    m = r.call("mmap private", mmap.mmap, fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE, keep=False)
    if m is not None:
        r.maps.append(m)
        r.call("private store", m.__setitem__, slice(0, 4), b"PRIV")
        r.call("read() does not see private store", os.pread, fd, 4, 0)
        r.call("munmap private", m.close)
    r.close("close private", fd)
    # A sparse file mapped: holes read as zeros; a file grown by ftruncate then written through the map.
    fd = r.open("create sparse", "sparse", CREAT | RDWR)
    r.call("ftruncate sparse to 3 MiB", os.ftruncate, fd, 3 * MiB)
    m = r.call("mmap sparse", mmap.mmap, fd, 3 * MiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, keep=False)
    if m is not None:
        r.maps.append(m)
        r.call("read hole through map", lambda: bytes(m[MiB + 10:MiB + 20]))
        r.call("store across chunk boundary through map", m.__setitem__, slice(MiB - 2, MiB + 2), b"ABCD")
        r.call("msync sparse", m.flush)
        r.call("munmap sparse", m.close)
    r.close("close sparse", fd)
    fd = r.open("reopen sparse", "sparse", RDONLY)
    r.call("read boundary after reopen", os.pread, fd, 8, MiB - 4)
    r.close("close reopened sparse", fd)


# -- scenarios: time stamps -----------------------------------------------------------------------


def sc_times_data_and_attributes(r: Run) -> None:
    p = r.p
    r.call("mkdir d1", os.mkdir, p("d1"))
    r.timed("create d1/f", {"d1": "d1"}, lambda: os.close(os.open(p("d1/f"), CREAT | WRONLY, 0o644)))
    r.lstat("new file", "d1/f")

    def write_close(data: bytes, flags: int = WRONLY) -> None:
        fd = os.open(p("d1/f"), flags)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    r.timed("write+close", {"f": "d1/f", "d1": "d1"}, write_close, b"some data")
    r.lstat("after write", "d1/f")
    fd = r.open("open f rw", "d1/f", RDWR)
    r.timed("pwrite on open fd", {"f": "d1/f", "fd": fd or -1}, os.pwrite, fd, b"X", 0)
    r.timed("overwrite same size", {"fd": fd or -1}, os.pwrite, fd, b"Y", 0)
    r.timed("write 0 bytes", {"fd": fd or -1}, os.write, fd, b"")
    r.timed("close after writes", {"f": "d1/f"}, os.close, fd)
    if fd is not None:
        r.fds.discard(fd)
    def read_close() -> bytes:
        fd = os.open(p("d1/f"), RDONLY)
        try:
            return os.read(fd, 100)
        finally:
            os.close(fd)

    r.timed("read", {"f": "d1/f"}, read_close)
    r.timed("read+close", {"f": "d1/f"}, r.read_file, "read content", "d1/f")
    r.timed("chmod", {"f": "d1/f", "d1": "d1"}, os.chmod, p("d1/f"), 0o600)
    r.timed("chmod to same mode", {"f": "d1/f"}, os.chmod, p("d1/f"), 0o600)
    r.timed("truncate shrink", {"f": "d1/f"}, os.truncate, p("d1/f"), 4)
    r.timed("truncate same size", {"f": "d1/f"}, os.truncate, p("d1/f"), 4)
    r.timed("truncate grow", {"f": "d1/f"}, os.truncate, p("d1/f"), 100)
    fd = r.open("open for ftruncate", "d1/f", RDWR)
    r.timed("ftruncate same size", {"fd": fd or -1}, os.ftruncate, fd, 100)
    r.timed("ftruncate shrink", {"fd": fd or -1}, os.ftruncate, fd, 50)
    r.close("close after ftruncate", fd)
    r.timed("O_TRUNC open of non-empty file", {"f": "d1/f"}, write_close, b"", WRONLY | TRUNC)
    r.timed("O_TRUNC open of empty file", {"f": "d1/f"}, write_close, b"", WRONLY | TRUNC)
    r.timed("O_APPEND write", {"f": "d1/f"}, write_close, b"app", WRONLY | APPEND)
    r.timed("chown to the same owner", {"f": "d1/f"}, os.chown, p("d1/f"), os.getuid(), os.getgid())
    r.timed("chown -1 -1", {"f": "d1/f"}, os.chown, p("d1/f"), -1, -1)
    r.lstat("after attribute changes", "d1/f")


def sc_times_utimensat(r: Run) -> None:
    p = r.p
    os.close(os.open(p("f"), CREAT | WRONLY, 0o644))
    r.call("symlink l -> f", os.symlink, "f", p("l"))
    ns_exact = 1_500_000_000_123_456_789
    us_exact = 1_400_000_000_654_321_000
    r.timed("utime explicit ns", {"f": "f"}, os.utime, p("f"), ns=(us_exact, ns_exact))
    r.exact_times("times after explicit ns", "f")
    r.lstat("after explicit ns", "f")
    r.timed("utimensat OMIT atime, explicit mtime", {"f": "f"}, utimensat, p("f"), (0, UTIME_OMIT),
            (1_300_000_000, 5))
    r.exact_times("times after OMIT atime", "f")
    r.timed("utimensat NOW atime, OMIT mtime", {"f": "f"}, utimensat, p("f"), (0, UTIME_NOW), (0, UTIME_OMIT))
    r.call("mtime kept after NOW/OMIT", lambda: os.stat(p("f")).st_mtime_ns)
    r.timed("utimensat OMIT OMIT", {"f": "f"}, utimensat, p("f"), (0, UTIME_OMIT), (0, UTIME_OMIT))
    r.timed("utimensat NOW NOW", {"f": "f"}, utimensat, p("f"), (0, UTIME_NOW), (0, UTIME_NOW))
    r.timed("utime() with no times", {"f": "f"}, os.utime, p("f"))
    r.timed("utime explicit on link, nofollow", {"l": "l", "f": "f"}, os.utime, p("l"),
            ns=(1_000_000_001, 1_000_000_002), follow_symlinks=False)
    r.exact_times("link times after nofollow", "l")
    r.timed("utime explicit through link", {"l": "l", "f": "f"}, os.utime, p("l"), ns=(7_000_000_000, 8_000_000_000))
    r.exact_times("file times through link", "f")
    r.call("utime negative times", os.utime, p("f"), ns=(-1_000_000_001, -2_500_000_000))
    r.exact_times("negative times", "f")
    r.call("utime large times", os.utime, p("f"), ns=(2**33 * 10**9 + 1, 2**33 * 10**9 + 999_999_999))
    r.exact_times("large times", "f")
    r.call("utime invalid nsec", utimensat, p("f"), (0, 1_000_000_000), (0, 0))
    r.call("utimensat missing", utimensat, p("missing"), (0, UTIME_NOW), (0, UTIME_NOW))
    # A future mtime (a file from a machine with a fast clock, or `touch -d` tomorrow).
    future = 4_000_000_000 * 10**9
    r.timed("utime future", {"f": "f"}, os.utime, p("f"), ns=(future, future))
    r.lstat("after future mtime", "f", times=True)
    r.timed("chmod after future mtime", {"f": "f"}, os.chmod, p("f"), 0o640)
    r.timed("rename after future mtime", {"f": "f", "base": ""}, lambda: (os.rename(p("f"), p("g")),
                                                                         os.rename(p("g"), p("f"))))

    def write_close(data: bytes) -> None:
        fd = os.open(p("f"), WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    r.timed("write after future mtime", {"f": "f"}, write_close, b"now")
    r.lstat("after write following future mtime", "f", times=True)
    r.timed("utime past then write", {"f": "f"}, lambda: (os.utime(p("f"), ns=(10**9, 10**9)), write_close(b"x")))
    # Directory times.
    r.call("mkdir d", os.mkdir, p("d"))
    r.timed("utime dir explicit", {"d": "d"}, os.utime, p("d"), ns=(11 * 10**9, 12 * 10**9))
    r.exact_times("dir exact times", "d")
    r.timed("listdir", {"d": "d"}, os.listdir, p("d"))
    fd = r.open("open f for futimens", "f", RDWR)
    r.timed("futimens explicit", {"fd": fd or -1}, os.utime, fd, ns=(21 * 10**9, 22 * 10**9))
    r.call("fstat exact after futimens", lambda: (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns))
    r.timed("write after futimens", {"fd": fd or -1}, os.pwrite, fd, b"W", 0)
    r.timed("futimens explicit on dirty file", {"fd": fd or -1}, os.utime, fd, ns=(31 * 10**9, 32 * 10**9))
    r.call("fstat exact after futimens on dirty file", lambda: (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns))
    r.close("close after futimens", fd)
    r.exact_times("times after close", "f")


def sc_times_namespace(r: Run) -> None:
    p = r.p
    for d in ("d1", "d2", "d1/sub"):
        r.call(f"mkdir {d}", os.mkdir, p(d))
    os.close(os.open(p("d1/f"), CREAT | WRONLY, 0o644))
    os.close(os.open(p("d2/target"), CREAT | WRONLY, 0o644))
    fd = r.open("hold d1/f", "d1/f", RDONLY)
    tfd = r.open("hold d2/target", "d2/target", RDONLY)
    watch = {"d1": "d1", "d2": "d2", "file": fd or -1}
    r.timed("rename file across dirs", watch, os.rename, p("d1/f"), p("d2/f"))
    r.timed("rename within dir", {"d2": "d2", "file": fd or -1}, os.rename, p("d2/f"), p("d2/g"))
    r.timed("rename over existing", {"d2": "d2", "file": fd or -1, "replaced": tfd or -1}, os.rename,
            p("d2/g"), p("d2/target"))
    r.fstat("replaced file", tfd)
    dfd = r.open("hold d1/sub", "d1/sub", RDONLY | os.O_DIRECTORY)
    r.timed("rename dir across parents", {"d1": "d1", "d2": "d2", "dir": dfd or -1}, os.rename,
            p("d1/sub"), p("d2/sub"))
    r.timed("mkdir", {"d1": "d1"}, os.mkdir, p("d1/new"))
    r.timed("rmdir", {"d1": "d1"}, os.rmdir, p("d1/new"))
    r.timed("create", {"d1": "d1"}, lambda: os.close(os.open(p("d1/c"), CREAT | WRONLY, 0o644)))
    r.timed("open existing with O_CREAT", {"d1": "d1", "c": "d1/c"},
            lambda: os.close(os.open(p("d1/c"), CREAT | WRONLY, 0o644)))
    r.timed("symlink", {"d1": "d1"}, os.symlink, "c", p("d1/l"))
    r.timed("unlink symlink", {"d1": "d1"}, os.unlink, p("d1/l"))
    cfd = r.open("hold d1/c", "d1/c", RDONLY)
    r.timed("unlink open file", {"d1": "d1", "file": cfd or -1}, os.unlink, p("d1/c"))
    r.timed("failed rmdir (not empty)", {"d2": "d2"}, os.rmdir, p("d2"))
    r.timed("failed create (exists)", {"d2": "d2"}, os.open, p("d2/target"), CREAT | EXCL | WRONLY)
    r.timed("mknod regular", {"d1": "d1"}, os.mknod, p("d1/node"), statmod.S_IFREG | 0o644)
    r.timed("rename to itself", {"d1": "d1", "node": "d1/node"}, os.rename, p("d1/node"), p("d1/node"))
    r.lstat("d1 at end", "d1")
    r.lstat("d2 at end", "d2")


# -- scenario: what ChunkFS documents it does not do ----------------------------------------------


def sc_not_posix(r: Run) -> None:
    p = r.p
    fd = r.open("create f", "f", CREAT | RDWR)
    r.call("write f", os.write, fd, b"0123456789")
    r.call("link f h", os.link, p("f"), p("h"))
    r.call("mknod fifo", os.mknod, p("fifo"), statmod.S_IFIFO | 0o644)
    r.call("mkfifo", os.mkfifo, p("fifo2"))
    r.call("mknod chardev", os.mknod, p("null"), statmod.S_IFCHR | 0o644, os.makedev(1, 3))
    r.call("mknod blockdev", os.mknod, p("blk"), statmod.S_IFBLK | 0o644, os.makedev(7, 0))
    dfd = os.open(r.base, RDONLY | os.O_DIRECTORY)
    try:
        def bind() -> None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(f"/proc/self/fd/{dfd}/sock")
        r.call("bind AF_UNIX socket", bind)
    finally:
        os.close(dfd)
    r.call("setxattr user", os.setxattr, p("f"), "user.note", b"x")
    r.call("getxattr user", os.getxattr, p("f"), "user.missing")
    r.call("listxattr", os.listxattr, p("f"))
    r.call("removexattr", os.removexattr, p("f"), "user.missing")
    r.call("chown to another owner", os.chown, p("f"), 12345, 12345)
    r.call("fallocate mode 0", fallocate, fd, 0, 0, 4096)
    r.call("fallocate punch hole", fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4)
    r.close("close f", fd)
    os.close(os.open(p("g"), CREAT | WRONLY, 0o644))
    r.call("renameat2 RENAME_EXCHANGE", renameat2, p("f"), p("g"), RENAME_EXCHANGE)


# -- the tests ------------------------------------------------------------------------------------


def test_namespace_calls_match_local_disk(sides) -> None:
    local, mounts = sides
    run_scenarios(local, mounts, [sc_open_flags, sc_names, sc_symlinks, sc_rename_rmdir_unlink, sc_readdir,
                               sc_modes_and_access, sc_statvfs, sc_not_posix])


def test_file_data_calls_match_local_disk(sides) -> None:
    local, mounts = sides
    run_scenarios(local, mounts, [sc_data_holes_truncate, sc_open_unlinked, sc_removed_directory, sc_mmap])


def test_time_stamps_match_local_disk(sides) -> None:
    local, mounts = sides
    run_scenarios(local, mounts, [sc_times_data_and_attributes, sc_times_utimensat, sc_times_namespace])

"""The FUSE mount: kernel file-system requests answered with the client library.

Why pyfuse3, and why on asyncio: pyfuse3 is the maintained low-level libfuse 3
binding for Python; its handlers are coroutines, so a slow chunk server delays
one request, not the mount.  It runs on trio by default, but 3.5 ships
`pyfuse3.asyncio` (``enable()`` swaps in an asyncio shim), and ChunkFS's
`Client` — its pipelined connections, timeouts and locks — is asyncio.  Running
both on one event loop (uvloop when installed) means a FUSE request becomes
one RPC on an already-open connection with no thread hop, no cross-loop
future and no copy between loops; the measured cost of Python FUSE here is
per-request work (DESIGN.md), so that hop is what we cannot afford.

What the mount keeps, and for how long:

* the kernel caches attributes and directory entries for ``cache_timeout``
  seconds (60 s by default) while the master tells this mount of every other
  client's change, which the kernel then drops at once (`kernel_cache.py`);
  for ``attr_timeout`` / ``entry_timeout`` seconds (1 s) when it cannot;
  names that do not exist are kept by the mount for as long, and dropped
  by the notices themselves (rule 4 there): `stat` storms do not reach the master;
* an *open file* (`OpenFile`, one per inode however many handles) tracks the
  file's size locally: a write that grows the file costs no metadata round
  trip; the new size goes to the master (EXTEND) at ``flush`` (every
  ``close``), ``fsync`` and ``release`` — so close-to-open consistency holds
  between mounts, as with NFS; times set on the open file (``futimens``), and
  an owner or mode set to what it already is (ctime only), go with it, in one
  commit, while the master vouches for the file's attributes;
* ``fsync``/``fdatasync`` return only once every chunk written through this
  mount since the last fsync is on every replica's disk *and* the size is
  committed on the master.  A file synced after every single small write (a
  VM's disk in write-through mode, ``O_DSYNC``) has its small writes synced on
  every replica as they are made (*write-through*), and its fsync then has no
  replica left to ask: one round trip per synchronous write, not two.
* with ``-o exclusive``, a file opened for writing is leased to this mount
  (`chunkfs.mds.leases`) for as long as it is open, renewed every quarter of
  the lease time; another exclusive mount's open for writing gets ``EBUSY``
  (the log names the holder).  A mount that could not renew within one lease
  time fails further writes to the file with ``EIO``, and one that finds its
  lease taken (after a partition) stops writing to it until it is reopened.

``fallocate`` is not served: pyfuse3 3.5 has no handler for it, so libfuse
answers ``ENOSYS`` and the kernel turns that into ``EOPNOTSUPP`` for this and
every later call — the clear "not supported" the design asks for, never a
fake.  (glibc's ``posix_fallocate`` then falls back to writing a zero byte
per block, which is correct, merely not sparse.)

Open files outlive their names, as POSIX wants: every open registers the
inode with the master under this mount's *session* (`chunkfs.mds.open_files`),
and the last close releases it, so a file unlinked or renamed over while
open here keeps its data until then (``fstat`` shows ``st_nlink`` 0).  A
file this mount renames another over, while its kernel still has the old
one, is held too until the kernel forgets it: a process whose open of the
name raced the rename opens the old file, as on a local disk, not ``ESTALE``.  The
session is renewed every quarter of its lifetime; when the master does not
know it (a new master), the mount re-sends every inode it holds open.

``O_TRUNC`` arrives with the open (libfuse's atomic_o_trunc) and is done by
the master in the same request as the open.

What ChunkFS does not do fails clearly (DESIGN.md, "Not POSIX"): hard links
and special files get ``EPERM``; extended attributes and ACLs get
``ENOTSUP``; ownership changes to another user get ``EPERM`` (every file
shows the mount's owner, ``-o uid=,gid=``); ``RENAME_EXCHANGE`` gets
``EINVAL`` (what the kernel answers for file systems that do not offer it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import logging
import os
import stat as statmod
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from chunkfs.client.client import Client
from chunkfs.client.kernel_cache import WHOLE_NAMES_MAX, KernelCache
from chunkfs.client.setid import created_mode, to_clear
from chunkfs.common.change_time import change_ctime, not_before, stamp_ns
from chunkfs.common.errors import Busy, ChunkFSError, ConfigError, NotFound, ProtocolError, Unavailable, WritesLost
from chunkfs.common.failure_log import FailureLog
from chunkfs.common.names import check_name_length
from chunkfs.common.timings import TIMINGS
from chunkfs.protocol.mds_link import DEFAULT_RETRY_FOR
from chunkfs.protocol.messages import (
    FEATURE_CUTS,
    FEATURE_FAN,
    FEATURE_FIRST_WRITE,
    FEATURE_HOLD,
    FEATURE_LISTED,
    FEATURE_MAP_CUTS,
    FEATURE_NAMED,
    FEATURE_READ_HOLDS,
    FEATURE_WRITE_MAP_READS,
    INT64_MAX,
    INT64_MIN,
    INVALIDATE_MAX,
    LEASE_TTL,
    ROOT_INO,
    SESSION_OPEN_PAGE,
    SESSION_TTL,
    WATCH_LEASE,
    Msg,
    entry_list,
    int_list,
)
from chunkfs.protocol.rpc import Connection

logger = logging.getLogger(__name__)

assert pyfuse3.ROOT_INODE == ROOT_INO

#: Entries asked of the master per READDIR page, with their attributes (readdirplus):
#: a few kernel readdir buffers' worth, so a listing takes few requests.
READDIR_PAGE = 256
#: Positions of names gone from a directory that an open handle on it keeps beyond twice its entries
#: (`ChunkFSOperations._forget_gone`).
DIR_GONE_KEPT = 1024
#: `statfs` asks the master at most this often (its answer walks every chunk).
STATFS_CACHE_S = 2.0
#: Inodes `df -i` shows the cluster able to hold: a nominal figure (inode numbers are 64-bit; the real
#: bound is the metadata servers' disks), against which the master's count of inodes in use is free.
INODE_CAPACITY = 1 << 32
#: Directories whose attributes a mount keeps from its own changes, at most (then it starts over).
FRESH_DIRS_MAX = 4096
#: Files unlinked here that the kernel still has, remembered at most (`ChunkFSOperations._unlinked_here`).
UNLINKED_HERE_MAX = 4096
#: How long a new connection waits for the master to take its WATCH, seconds.
WATCH_TIMEOUT = 5.0
#: How long a mount that reconnects asks the master whether it kept its session (`_check_session`),
#: and how often: a new master answers once it has read its list of sessions (within a second or so).
SESSION_CHECK_FOR = 15.0
SESSION_CHECK_PAUSE = 0.2
#: A FUSE request that took this long (seconds) is logged as a warning when it ends.
SLOW_REQUEST_S = 5.0
#: Times a mount re-sends its open files to masters that keep changing while it does, per renewal.
SESSION_RESEND_TRIES = 3
#: renameat2's flag (linux/fs.h): fail rather than replace an existing target.
RENAME_NOREPLACE = 1
#: Write-through: after this many fsyncs in a row that each followed one write of at most
#: WRITE_THROUGH_MAX bytes, a file's writes of that size are synced on every replica as they are made
#: (so the next fsync has nothing left to sync); a second write before an fsync ends it.  A write with
#: a sync costs about what the fsync's round of replica syncs did, so it pays only when every write
#: is followed by one (measured in BENCHMARKS.md, "write-through").
WRITE_THROUGH_AFTER = 2
WRITE_THROUGH_MAX = 128 << 10
#: Files closed here are released on the master together, this long after the first of them
#: (seconds), or as soon as RELEASE_BATCH are waiting: a round trip to the master per small file
#: cost the mount and the master more CPU than the file's create did.  Only the freeing of an
#: unlinked file's space waits for it.
RELEASE_DELAY = 0.020
RELEASE_BATCH = 256
#: Reported I/O block size: what `cp` and friends size their buffers by; the
#: kernel sends writes of up to 1 MiB.
BLOCK_SIZE = 1 << 20

P = ParamSpec("P")
T = TypeVar("T")


#: A request a server refused as malformed: said once, then once a minute with a count.
_MALFORMED = FailureLog(logger, "a request of this mount, refused as malformed by the cluster (servers of an "
                        "earlier version refuse what they do not know: upgrade the metadata servers, then the "
                        "chunk servers, then the mounts),")


def fuse_errors(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn ChunkFS errors into the errno they carry, anything else into EIO.

    An exception escaping a handler would stop pyfuse3's main loop and leave a
    dead mount, so nothing but `FUSEError` may leave.
    """

    step = f"fuse.{fn.__name__}"

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ChunkFSError as exc:
            logger.debug("%s: %s (%s)", fn.__name__, exc, errno.errorcode.get(exc.errno, exc.errno))
            if isinstance(exc, ProtocolError):
                _MALFORMED.failed(exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except UnicodeError:
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        except Exception:
            logger.exception("unexpected error in %s; answering EIO", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            took = time.perf_counter() - started
            TIMINGS.record(step, took)
            if took >= SLOW_REQUEST_S:
                # A program waited this long, and an unmount waits for it too: say which request it was.
                logger.warning("a FUSE %s took %.1f s (the lines above say what it waited for)", fn.__name__, took)

    return wrapper


@dataclass(slots=True)
class MountOptions:
    #: Kernel cache of attributes and names, seconds, when the master does not vouch for them (see below).
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    #: ... and while the master tells this mount of every other client's change (kernel_cache.py); 0: never.
    cache_timeout: float = 60.0
    #: Every open file in direct-I/O mode (no page cache), not only O_DIRECT opens.
    direct_io: bool = False
    #: Kernel read-ahead for the mount, KiB (set through /sys/class/bdi; 0 keeps the kernel's).
    readahead_kb: int = 4096
    #: Requests served at once (pyfuse3 worker tasks).
    max_tasks: int = 64
    #: Requests the kernel keeps in flight without a process waiting for each (read-ahead, asynchronous
    #: direct I/O); the kernel's own is 12, below a VM's queue depth (set through fusectl; 0 keeps it).
    max_background: int = 64
    #: Files opened for writing are leased to this mount: no other exclusive mount may open them for writing.
    exclusive: bool = False
    #: Owner shown for every file (ChunkFS keeps none): the mounting user unless ``-o uid=,gid=``.
    uid: int | None = None
    gid: int | None = None
    #: Only the mounting user may use the mount, even when mounted by root (no allow_other).
    private: bool = False
    #: How long a request keeps trying to reach a master before it fails (EIO), seconds.
    master_wait: float = DEFAULT_RETRY_FOR
    #: Small reads of replicas on this machine made from their files, not asked of their server (local_reads.py).
    local_reads: bool = True
    #: Options passed to FUSE as they are (allow_other, ro, ...).
    fuse: set[str] = field(default_factory=set)


def parse_options(texts: list[str]) -> MountOptions:
    """``-o a,b=c`` options: ours by name, the rest passed to FUSE."""
    opts = MountOptions()
    for text in texts:
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            key, _, value = item.partition("=")
            try:
                if key == "attr_timeout":
                    opts.attr_timeout = float(value)
                elif key == "entry_timeout":
                    opts.entry_timeout = float(value)
                elif key == "cache_timeout":
                    opts.cache_timeout = float(value)
                elif key == "direct_io":
                    opts.direct_io = True
                elif key == "readahead_kb":
                    opts.readahead_kb = int(value)
                elif key == "exclusive":
                    opts.exclusive = True
                elif key == "max_tasks":
                    opts.max_tasks = int(value)
                elif key == "max_background":
                    opts.max_background = int(value)
                elif key == "uid":
                    opts.uid = _user_id(value)
                elif key == "gid":
                    opts.gid = _group_id(value)
                elif key == "private":
                    opts.private = True
                elif key == "master_wait":
                    opts.master_wait = float(value)
                elif key == "local_reads":
                    opts.local_reads = _on_off(value)
                else:
                    opts.fuse.add(item)
            except (ValueError, KeyError):
                raise ConfigError(f"mount option {key}: bad value {value!r}") from None
    for key, (low, high, unit) in OPTION_RANGES.items():
        value = getattr(opts, key)
        if not low <= value <= high or (key == "master_wait" and value == 0):  # (also NaN)
            raise ConfigError(f"mount option {key}={value:g} is out of range: {low:g} to {high:g} {unit}"
                              f"{' (above 0)' if key == 'master_wait' else ''}")
    return opts


#: The values our mount options take: (lowest, highest, unit).  A typo's value (a timeout of 1e999, a
#: read-ahead of 10^20 KiB, no worker at all) is refused at the mount, not met later by the kernel or a
#: mount that serves nothing.
OPTION_RANGES: dict[str, tuple[float, float, str]] = {
    "attr_timeout": (0, 86_400, "seconds"),
    "entry_timeout": (0, 86_400, "seconds"),
    "cache_timeout": (0, 86_400, "seconds"),
    "master_wait": (0, 86_400, "seconds"),
    "readahead_kb": (0, 1 << 20, "KiB"),
    "max_tasks": (1, 10_000, "requests"),
    "max_background": (0, 65_535, "requests"),
}


def _read_only(flags: int) -> bool:
    """Whether an open with `flags` can never write the file (told to the master: open_files.py)."""
    return flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC


def _on_off(value: str) -> bool:
    """A yes/no option's value: 1 or 0 (yes/no, on/off, true/false also do)."""
    return {"1": True, "yes": True, "on": True, "true": True,
            "0": False, "no": False, "off": False, "false": False}[value.lower()]


def _user_id(value: str) -> int:
    """A user by number or name (``uid=libvirt-qemu``)."""
    import pwd

    return int(value) if value.isdigit() else pwd.getpwnam(value).pw_uid


def _group_id(value: str) -> int:
    import grp

    return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid


def allocated_blocks(size: int, chunks: int | None, chunk_size: int) -> int:
    """`st_blocks` (512-byte units): the bytes of the chunks a file has, never more than its size.

    The chunk is what the cluster allocates, so a sparse VM image shows what was written to
    it at that grain (`du`, `qemu-img info`, `cp --sparse=auto`) instead of its full size.
    Without the master's count (`chunks` None: written here since it last answered) the
    size counts: fewer blocks than data would tell `tar --sparse` there are holes where data is.
    """
    held = size if chunks is None else min(size, chunks * chunk_size)
    return (held + 511) // 512


@dataclass(slots=True)
class OpenFile:
    """One inode open in this mount, shared by all its handles."""

    ino: int
    size: int
    mtime_ns: int
    #: The size the master last told or was told: an fdatasync that did not grow the file past it has
    #: no metadata to commit (mtime waits for the next fsync, flush or close).
    committed_size: int = 0
    refs: int = 0
    #: Opened here to write, and not told since that it is held only to read: a new master is told which it
    #: holds only to read (SESSION's `read_only`), and need not wait for their close to trim a dead writer's
    #: bytes.  False again once the last handle that could write is closed with nothing left to commit
    #: (RELEASE's `read_only`).
    may_write: bool = False
    #: Handles open here that can write the file.
    write_refs: int = 0
    #: The size (or mtime) changed here and the master does not know yet.
    dirty: bool = False
    #: The kernel was given `st_blocks` from the size while dirty (`allocated_blocks`): dropped once committed.
    blocks_from_size: bool = False
    #: Bumped by every write, so a commit knows whether writes raced it.
    gen: int = 0
    #: The end of the furthest write made here since the master last heard of this mount's writes: the
    #: size to commit.  Not `size`, which may be older than another mount's truncation: committing it
    #: would bring the cut bytes' size back.
    written_end: int = 0
    #: Appends sent and not answered yet: `size` includes the ranges they took.
    appends: int = 0
    commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: This mount holds the file's exclusive lease (``-o exclusive``), valid until `lease_until` (monotonic).
    leased: bool = False
    lease_until: float = 0.0
    #: Why the lease was lost (another mount holds it now); writes fail until the file is reopened.
    lease_lost: str = ""
    #: Writes made here were not committed when the master took this mount for dead (its session
    #: expired): they may have been cut.  The next commit sends the oldest cut there is (0), and the
    #: master refuses it if it trimmed the file since (EIO, and the file is trimmed at its release).
    lost: bool = False
    #: The file's attributes as the master last answered them; None when unknown, or when another
    #: client changed the file since (its notice said so).
    attr: dict[str, Any] | None = None
    #: Times set here on the open file and not committed yet ("mtime_ns", "atime_ns", "ctime_ns"): a
    #: `futimens`, or an owner or mode set to what it already is (ctime only).  They go to the master
    #: with the next commit (flush, fsync, close, or another attribute change), as a write's size does.
    pending: dict[str, int] = field(default_factory=dict)
    #: Writes since the last fsync, the largest of them, and fsyncs in a row that each followed one
    #: small write: what decides write-through (`WRITE_THROUGH_AFTER`).
    unsynced_writes: int = 0
    unsynced_largest: int = 0
    sync_streak: int = 0
    #: This mount's number (``oseq``) of the latest OPEN or CREATE that registered the file with the
    #: master: its release counts up to it, so it cannot undo a later open's registration.
    registered: int = 0
    #: The file's last cut (truncate, O_TRUNC; its attribute "cut") this mount knows of: sent with the
    #: size it commits, which the master ignores if the file was cut since (`FuseOps._learn_cut`).
    #: None: not known (a master of an earlier version; a mount that hears no notices of cuts, or
    #: whose watch ended): no cut is sent, and the size is committed as before.
    cut: int | None = None
    #: Writes that reached this mount and are not answered yet: (start, end, done when answered).
    #: A read of a range one of them covers waits for it (`FuseOps.read`).
    writing: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)

    def shown_ctime(self, ctime_ns: int) -> int:
        """The ctime this mount shows for the file whose ctime the master last gave as `ctime_ns`: a write
        made here and not committed yet moves it to the write's time, a time set here (`pending`) to its own."""
        return self.pending.get("ctime_ns", max(ctime_ns, self.mtime_ns) if self.dirty else ctime_ns)

    def last_change_ns(self) -> int:
        """The latest of the mtime and ctime this mount shows for the file (`FuseOps._entry`): a change
        stamped now is not put before it when it is the kernel's "now" a moment ahead (`not_before`)."""
        shown = [self.mtime_ns, *(self.pending[k] for k in ("mtime_ns", "ctime_ns") if k in self.pending)]
        if self.attr is not None:
            shown += (self.attr["mtime_ns"], self.attr["ctime_ns"])
        return max(shown)


@dataclass(slots=True)
class DirHandle:
    """An open directory: the positions (offsets) handed to the kernel, and where a listing is.

    A position stands for a name: "continue after this name" (READDIR pages go by name, in byte order),
    so one name keeps one position however often it is listed, and a position stays valid for as long as
    the directory is open (as ext4's hash positions do), also after a rewind or a seek back and a
    re-read: `seekdir` to a `telldir` value continues after the entry it named, or at the next one still
    there if that entry is gone. Position 0 is the start, read afresh each time (a `rewinddir` shows
    entries added since, as POSIX asks). Positions count up from 1, "." and ".." having theirs.
    """

    ino: int
    #: The position handed out for each name (its entry's d_off), and the name of each position.
    position: dict[bytes, int] = field(default_factory=dict)
    named: dict[int, bytes] = field(default_factory=dict)
    next_position: int = 1
    #: The name the next READDIR page continues after (b"": from the first).
    cursor: bytes = b""
    #: "." and ".." handed out in this listing (the first 0, 1 or 2 of them), when it is at the start.
    dots_out: int = 0
    #: Entries fetched but not yet handed out, and the position they continue from.
    pending: list[pyfuse3.EntryAttributes] = field(default_factory=list)
    pending_names: list[bytes] = field(default_factory=list)
    pending_at: int = 0
    more: bool = True
    #: Names handed out by a listing read from position 0 without a seek, None if none is (`_forget_gone`).
    whole: set[bytes] | None = None
    #: Every name listed since the listing began (at `since`, the kernel cache's seq), None if too many.
    listed: set[bytes] | None = None
    since: int = 0


def _in_time_range(ns: int) -> int:
    """A time stamp a program sets, clamped to what ChunkFS keeps (signed 64-bit nanoseconds: 1677-2262).

    As a local file system clamps to its own range (ext4: 1901-2446) and succeeds:
    `touch -d 2500-01-01` must not fail, and a value the master would refuse as
    malformed must never be sent (it closes the connection on one).
    """
    return min(max(ns, INT64_MIN), INT64_MAX)


class ChunkFSOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, client: Client, options: MountOptions) -> None:
        super().__init__()
        self.client = client
        self.opts = options
        self.uid = os.getuid() if options.uid is None else options.uid
        self.gid = os.getgid() if options.gid is None else options.gid
        #: Who holds this mount's open files on the master (open_files.py); unique per mount process.
        self.session = f"{client.creds.node}/{os.urandom(4).hex()}"
        self._session_keeper: asyncio.Task[None] | None = None
        #: Numbers for this mount's registrations of open files with the master (`OpenFile.registered`).
        self._oseq = itertools.count(1)
        #: Files closed here, to release on the master soon (RELEASE_DELAY): inode -> last registration.
        self._to_release: dict[int, int] = {}
        #: Files still open here whose last handle that could write was closed: to tell the master with the
        #: next batch that they are held only to read (RELEASE's `read_only`, FEATURE_READ_HOLDS).
        self._to_read: set[int] = set()
        #: Handles that can write their file (`OpenFile.write_refs`).
        self._write_handles: set[int] = set()
        #: The master takes RELEASE's `read_only` (FEATURE_READ_HOLDS; known once watching).
        self._read_holds = False
        self._release_timer: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        #: Files closed here whose release the master has not confirmed (retried by the session keeper).
        self._unreleased: dict[int, int] = {}
        self._fh = itertools.count(1)
        #: The master checks the name a file was reached by (FEATURE_NAMED; known once watching).
        self._names_checked = False
        #: The master holds a file a rename replaces when asked (FEATURE_HOLD; known once watching).
        self._holds_replaced = False
        #: The master says whether it listed this mount's session (FEATURE_LISTED; known once watching).
        self._asks_listed = False
        #: The master has known this mount's session: one it no longer lists expired (`_check_session`).
        self._established = False
        #: The master did not know the session, and has not had every file this mount holds yet.
        self._unsent = False
        self.files: dict[int, OpenFile] = {}  # by inode
        self.handles: dict[int, OpenFile] = {}  # by file handle
        #: Files this mount renamed another over while its kernel had them, held on the master until
        #: the kernel forgets them (RENAME's `hold`): inode -> the hold's registration number.
        self._replaced: dict[int, int] = {}
        #: Files this mount unlinked while the kernel still had them (until it forgets them; bounded): an
        #: open that reaches one came by a name looked up before the unlink, and gets ENOENT (`open`).
        self._unlinked_here: dict[int, None] = {}
        #: Files this mount is renaming another over, while the rename is on its way (`open`).
        self._replacing: set[int] = set()
        #: Handles opened with O_APPEND for writing only: each write goes to the end of the file as this
        #: mount knows it.
        self._appending: set[int] = set()
        #: Direct-I/O handles whose first write clears set-ID bits first (client/setid.py): handle -> bits.
        self._clear_on_write: dict[int, int] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._statfs: tuple[float, pyfuse3.StatvfsData] | None = None
        #: Who holds this mount's leases, as other mounts' errors name it.
        self.holder = client.creds.node
        self._renewer: asyncio.Task[None] | None = None
        #: Directory attributes from this mount's own namespace changes: inode -> (valid until, attr).
        #: The kernel drops a directory's cached attributes when a name in it changes, then asks for
        #: them before the next lookup there: answered from here once, within attr_timeout.
        self._fresh_dirs: dict[int, tuple[float, dict[str, Any]]] = {}
        client.on_dir_attrs = self._dirs_changed
        self.cache = KernelCache(
            long=options.cache_timeout, short_attr=options.attr_timeout, short_entry=options.entry_timeout,
            invalidate_entry=pyfuse3.invalidate_entry,
            invalidate_inode=pyfuse3.invalidate_inode)
        self._watch_tasks: set[asyncio.Task[None]] = set()
        #: The master refused WATCH's `features` (an earlier version): watch without them.
        self._watch_plain = False
        #: Called once the kernel's FUSE INIT is answered (see `init`).
        self.on_init: Callable[[], None] | None = None

    def init(self) -> None:
        """pyfuse3 calls this while it answers the kernel's INIT; `on_init` runs right after that answer.

        Whatever the kernel sets from the answer (such as the mount's read-ahead,
        which it lowers to what INIT agreed) is set by then.
        """
        if self.on_init is not None:
            asyncio.get_running_loop().call_soon(self.on_init)

    # -- the kernel's cache, kept true by the master's notices (kernel_cache.py) ---------

    def start_watching(self) -> None:
        """Once mounted: ask the master, on every connection from now on, to tell of others' changes.

        Also with the kernel's cache short or off (``cache_timeout=0``): the notices of other
        mounts' cuts keep the size this mount commits true (`_learn_cut`).
        """
        self.cache.start()
        self.client.mds.notice_handler = self._notice
        self.client.mds.on_connect = self._watch
        self.client.mds.close()  # the connection open now is not watched: the next request makes one that is
        # Made now, not at the first request: the master counts this mount from here (`stat`).
        task = asyncio.get_running_loop().create_task(self._connect())
        self._watch_tasks.add(task)
        task.add_done_callback(self._watch_tasks.discard)

    async def _connect(self) -> None:
        with contextlib.suppress(ChunkFSError):  # (a master unreachable now: the next request connects)
            await self.client.getattr(ROOT_INO)

    async def _watch(self, conn: Connection) -> None:
        # Known before this connection carries any request (a master of an earlier version has no features).
        self.client.io.first_writes = False
        self.client.io.drop_fans()
        header = {} if self._watch_plain else {"features": [FEATURE_CUTS, FEATURE_MAP_CUTS, FEATURE_WRITE_MAP_READS]}
        sent = time.monotonic()
        try:
            reply, _ = await conn.call(Msg.WATCH, header, timeout=WATCH_TIMEOUT)
        except ProtocolError:
            if header:  # a master of an earlier version refuses the field (and closes): watch again without it
                logger.info("the master takes no features in WATCH (an earlier version): watching without them")
                self._watch_plain = True
            raise
        self.client.io.first_writes = FEATURE_FIRST_WRITE in reply.get("features", [])
        self.client.io.fans = FEATURE_FAN in reply.get("features", [])
        self._names_checked = FEATURE_NAMED in reply.get("features", [])
        self._holds_replaced = FEATURE_HOLD in reply.get("features", [])
        self._asks_listed = FEATURE_LISTED in reply.get("features", [])
        self._read_holds = FEATURE_READ_HOLDS in reply.get("features", [])
        until = sent + WATCH_LEASE if reply.get("lease") else float("inf")
        self.cache.watching(conn, until)
        watches = [self._watch_ends(conn)]
        if reply.get("lease"):
            watches.append(self._keep_watch(conn, header, until))
        for watch in watches:
            task = asyncio.get_running_loop().create_task(watch)
            self._watch_tasks.add(task)
            task.add_done_callback(self._watch_tasks.discard)
        if self._asks_listed and self._established:
            try:
                await self._check_session(conn)
            except ChunkFSError as exc:  # the master's refusal of a size for writes it cut still tells
                logger.warning("could not ask the master whether this mount's session was kept: %s", exc)

    async def _watch_ends(self, conn: Connection) -> None:
        await conn.wait_closed()
        self.cache.lost(conn)
        for of in self.files.values():
            of.attr = None  # changes may have been missed: nothing is vouched for now
            of.cut = None  # and cuts: this mount's next commit of each file sends none (`_learn_cut`)

    async def _keep_watch(self, conn: Connection, header: dict[str, Any], until: float) -> None:
        """Renew `conn`'s watch lease every quarter of it; when it runs out unrenewed (a master frozen or
        cut off: one elected meanwhile takes changes unheard here), the kernel drops what it cached
        (kernel_cache.py, rule 6)."""
        loop = asyncio.get_running_loop()
        timer = loop.call_at(until, self._lapse, conn)
        try:
            while not conn.closed:
                await asyncio.sleep(WATCH_LEASE / 4)
                sent = time.monotonic()
                try:
                    reply, _ = await conn.call(Msg.WATCH, header, timeout=WATCH_TIMEOUT)
                except ChunkFSError as exc:
                    logger.debug("renewing the watch lease on %s: %s", conn.peer_name, exc)
                    continue
                if reply.get("lease"):
                    self.cache.renewed(conn, sent + WATCH_LEASE)
                    timer.cancel()
                    timer = loop.call_at(sent + WATCH_LEASE, self._lapse, conn)
        finally:
            timer.cancel()

    def _lapse(self, conn: Connection) -> None:
        if self.cache.lapse(conn):
            for of in self.files.values():
                of.attr = None  # nothing is vouched for now

    @property
    def _hears_cuts(self) -> bool:
        """Whether the master tells this mount of every other client's cut (`_learn_cut`) now."""
        return self.cache.watched and not self._watch_plain

    def _notice(self, conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        if msg != Msg.INVALIDATE:
            raise ProtocolError(f"{msg.name} is not a notice a mount takes")
        entries = entry_list(h["entries"], "INVALIDATE entries")
        inodes = int_list(h["inodes"], "INVALIDATE inodes", INVALIDATE_MAX)
        for ino in inodes:
            self._fresh_dirs.pop(ino, None)
            of = self.files.get(ino)
            if of is not None:
                of.attr = None  # changed by another client: answers need the master again
                of.committed_size = -1  # it may have cut the file: the next fdatasync commits the size
        # Taken here, before any request that came after the cut is served: this notice was sent
        # before the cut's own answer, and its bytes were here before such a request's.
        for ino, cut, size in h.get("cuts", []):
            of = self.files.get(ino)
            if of is not None and isinstance(cut, int) and isinstance(size, int):
                self._learn_cut(of, {"cut": cut, "size": size})
        self.cache.changed(entries, inodes)

    # -- attributes ------------------------------------------------------------

    def _entry(self, attr: dict[str, Any], since: int | None = None) -> pyfuse3.EntryAttributes:
        """The kernel's view of `attr`, answered to a request that began at `since` (the cache's seq)."""
        e = pyfuse3.EntryAttributes()
        ino = attr["ino"]
        size, mtime, ctime = attr["size"], attr["mtime_ns"], attr["ctime_ns"]
        atime = attr["atime_ns"]
        of = self.files.get(ino)
        if of is not None:
            if "mode" in attr:
                self._keep_attr(of, attr, self.cache.seq if since is None else since)
            self._learn_cut(of, attr)
            if of.dirty:
                # Written here since the master last heard: a write sets mtime and ctime to its
                # time, even when an earlier utime put them in the future.
                size, mtime = max(size, of.written_end), of.mtime_ns
                of.size = size if not of.appends else max(size, of.size)  # keep the ranges appends took
            else:
                of.size = of.committed_size = size  # another mount may have grown or cut it
            mtime = of.pending.get("mtime_ns", mtime)
            atime = of.pending.get("atime_ns", atime)
            ctime = of.shown_ctime(ctime)
        e.st_ino = ino
        e.generation = 0
        e.attr_timeout, e.entry_timeout = self.cache.timeouts(self.cache.seq if since is None else since)
        e.st_mode = attr["mode"]
        e.st_nlink = attr["nlink"]
        e.st_uid = self.uid
        e.st_gid = self.gid
        e.st_rdev = 0
        e.st_size = size
        e.st_blksize = BLOCK_SIZE
        # A file written here since the master last answered may have chunks it has not counted yet.
        from_size = of is not None and of.dirty
        if from_size:
            of.blocks_from_size = True
        e.st_blocks = allocated_blocks(size, None if from_size else attr.get("chunks"), self.client.chunk_size)
        e.st_atime_ns = atime
        e.st_mtime_ns = mtime
        e.st_ctime_ns = ctime
        self.cache.told(ino, size, mtime)
        return e

    def _keep_attr(self, of: OpenFile, attr: dict[str, Any], since: int) -> None:
        """Keep the master's answer for an open file, while the master vouches for it (kernel_cache.py)."""
        of.attr = attr if self.cache.watched and since == self.cache.seq else None

    def _dirs_changed(self, attrs: list[dict[str, Any]]) -> None:
        if not self.opts.attr_timeout:
            return
        until = time.monotonic() + self.opts.attr_timeout
        if len(self._fresh_dirs) >= FRESH_DIRS_MAX:
            self._fresh_dirs.clear()  # bounded; they are only a shortcut
        for attr in attrs:
            self._fresh_dirs[attr["ino"]] = (until, attr)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        fresh = self._fresh_dirs.pop(inode, None)
        if fresh is not None and time.monotonic() < fresh[0]:
            return self._entry(fresh[1])
        since = self.cache.seq
        kept = self._vouched(self.files.get(inode))
        if kept is not None:
            # Open here, and the master vouches for what it last said of it (no other client's change
            # since): a database's fstat after each write needs no round trip.
            return self._entry(kept, since)
        try:
            attr = await self.client.getattr(inode)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ESTALE) from None  # see `_gone`
        if self._gone(attr):
            raise pyfuse3.FUSEError(errno.ESTALE)
        return self._entry(attr, since)

    def _vouched(self, of: OpenFile | None) -> dict[str, Any] | None:
        """`of.attr` if it may answer for the open file: the master vouches for it (watched, no notice
        since), and it agrees with what this mount itself last learned of the size and mtime (an open's
        answer, a truncation, a commit), so an answer kept from before those cannot win over them."""
        attr = None if of is None else of.attr
        if attr is None or not self.cache.watched or attr["size"] != of.committed_size:
            return None
        return attr if of.dirty or attr["mtime_ns"] == of.mtime_ns else None

    def _gone(self, attr: dict[str, Any]) -> bool:
        """Whether the kernel reached an inode no name leads to any more through a name it kept.

        Another mount removed the name, or renamed a new file over it (how editors and package
        managers save), and the notice has not reached this mount yet.  Unlinked, the inode lives
        on while some mount has it open.  ESTALE makes the kernel look the name up again (as an
        NFS client's kernel does), so the program finds the new file, or ENOENT.  A file open in
        this mount is let through: its processes reach it through their open files (`fstat`,
        ``/proc/PID/fd``), and only a name kept in that same moment would still lead to it.
        """
        ino = attr["ino"]
        return attr.get("nlink", 1) == 0 and attr["type"] == "f" and ino not in self.files and ino not in self._replaced

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        check_name_length(name)
        # "No such name" is not left in the kernel: this mount keeps it, so that another mount's
        # create shows at once (kernel_cache.py, rule 4).  Searches along a path (compilers, shells)
        # still do not reach the master each time.
        if not self.cache.missing(parent_inode, name):
            since = self.cache.seq
            try:
                return self._named(await self.client.lookup(parent_inode, name), parent_inode, name, since)
            except NotFound:
                logger.debug("lookup of %r in inode %d: no such name", name, parent_inode)
                self.cache.no_such_name(parent_inode, name, since)
        raise pyfuse3.FUSEError(errno.ENOENT)

    def _named(self, attr: dict[str, Any], parent: int, name: bytes, since: int,
               listed: bool = False) -> pyfuse3.EntryAttributes:
        """An answer that gives the kernel a name: remembered, so it can be invalidated (`listed`:
        by a listing, see `KernelCache.remember`)."""
        self.cache.remember(attr["ino"], parent, name, listed)
        return self._entry(attr, since)

    async def forget(self, inode_list: Any) -> None:
        inodes = [ino for ino, _ in inode_list]
        self.cache.forget(inodes)
        for ino in inodes:
            self._unlinked_here.pop(ino, None)
            hold = self._replaced.pop(ino, None)
            if hold is not None and ino not in self.files:  # (else its last close releases it)
                self._release_soon(ino, hold)

    @fuse_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if (fields.update_uid and attr.st_uid != self.uid) or (fields.update_gid and attr.st_gid != self.gid):
            raise pyfuse3.FUSEError(errno.EPERM)  # no owners in ChunkFS
        changes: dict[str, Any] = {}
        if fields.update_size:
            changes["size"] = attr.st_size
        if fields.update_mode:
            changes["mode"] = statmod.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            changes["mtime_ns"] = _in_time_range(attr.st_mtime_ns)
        if fields.update_atime:
            changes["atime_ns"] = _in_time_range(attr.st_atime_ns)
        if "size" in changes:
            await self._release_ahead(inode)
        of = self.files.get(inode)
        self._fresh_dirs.pop(inode, None)
        since = self.cache.seq
        # No change asked (chown to the owner it has, chown -1 -1) still changes ctime, as on a local disk.
        kept = self._vouched(of)
        # Deferred only on a file written here and not committed: its close commits the times with
        # the size (close-to-open, as other mounts see the size).  On one only read here, other
        # mounts would not see a `utime` before its last close here (found by a namespace probe).
        if of is not None and of.dirty and kept is not None and "size" not in changes \
                and changes.get("mode", kept["mode"] & 0o7777) == kept["mode"] & 0o7777:
            self._defer_times(of, changes)
            return self._entry(kept, since)
        if of is not None:
            # A truncate by a name (not of a descriptor, which comes with its handle): the name must still
            # lead to the file, as for one not open here (a fault probe: `truncate` of a name another
            # mount had just renamed away cut the file under its new name).  Not for chmod or utime: the
            # kernel sends fchmod and futimens of a descriptor without its handle, and a file removed by
            # another mount while open here must still take them.
            at = self._name_of(inode) if fh is None and "size" in changes else None
            try:
                async with of.commit_lock:
                    new = await self._setattr_open(of, changes, at)
            except NotFound:
                raise pyfuse3.FUSEError(errno.ESTALE) from None
        else:
            try:
                # Not open here: the kernel came by a name, which must still lead to it (see `_gone`).
                new = await self.client.setattr(inode, linked=True, at=self._name_of(inode), **changes)
            except NotFound:
                raise pyfuse3.FUSEError(errno.ESTALE) from None
        if "size" in changes:
            self._truncated(inode, new)
        return self._entry(new, since)

    def _defer_times(self, of: OpenFile, changes: dict[str, Any]) -> None:
        """Times set on a file open here, nothing else changed: kept for its next commit (`OpenFile.pending`).

        Only while the master vouches for `of.attr` (watched, no other client's change since): the
        answer to the kernel is built from it.  The ctime follows the master's rule (`change_ctime`).
        """
        assert of.attr is not None
        of.pending.update({k: v for k, v in changes.items() if k in ("mtime_ns", "atime_ns")})
        set_now = changes.get("mtime_ns", changes.get("atime_ns"))
        of.pending["ctime_ns"] = change_ctime(set_now, stamp_ns(), of.shown_ctime(of.attr["ctime_ns"]))

    async def _setattr_open(
        self, of: OpenFile, changes: dict[str, Any], at: tuple[int, bytes] | None = None
    ) -> dict[str, Any]:
        """SETATTR of a file open here, under its commit lock, with what this mount has not sent yet.

        The size written goes first, in the same commit (a new mtime must not hide it); times set
        here and not committed go too, unless this change sets them anew (a truncation sets mtime).
        `at`: the name the change came by, which the master checks (NotFound: not that file's any more).
        """
        since, gen, size, mtime_ns, pending = self.cache.seq, of.gen, of.written_end, of.mtime_ns, dict(of.pending)
        if "ctime_ns" in pending and not changes:  # only committing what was set here: its own ctime
            changes["ctime_ns"] = pending["ctime_ns"]
        if of.dirty and "size" not in changes:
            cut = 0 if of.lost else of.cut  # (see `_commit`)
            changes["extend"] = [size, mtime_ns] if cut is None else [size, mtime_ns, cut]
        for key in ("mtime_ns", "atime_ns"):
            if key in pending and key not in changes and not (key == "mtime_ns" and "size" in changes):
                changes[key] = pending[key]
        new = await self.client.setattr(of.ino, linked=at is not None, at=at, **changes)
        self._keep_attr(of, new, since)
        if "extend" in changes:
            self._committed(of, new, gen)
        for key, value in pending.items():
            if of.pending.get(key) == value:
                del of.pending[key]
        return new

    def _truncated(self, inode: int, attr: dict[str, Any]) -> None:
        """This mount cut the file; `attr`: the master's answer."""
        size = attr["size"]
        chunks = -(-size // self.client.chunk_size)
        dirty = self.client.io.dirty.get(inode)
        if dirty:
            dirty.difference_update({i for i in dirty if i >= chunks})
        of = self.files.get(inode)
        if of is not None:
            of.size, of.committed_size, of.mtime_ns, of.dirty = size, size, attr["mtime_ns"], False
            of.written_end = 0
            of.gen += 1
            self._learn_cut(of, attr)
            of.attr = None  # the master's answer to the truncation is kept by its caller, if at all

    def _learn_cut(self, of: OpenFile, attr: dict[str, Any]) -> None:
        """The master's answer about an open file tells of a later cut than this mount knew of.

        Another client truncated the file, or opened it with O_TRUNC.  The writes made here
        before this mount heard of it come before it, as on a local disk where the truncate came
        last: their end is not a size to commit (the master would ignore it anyway), and the file
        ends where the cut left it, which is where an O_APPEND write goes next.  Writes in flight
        now complete without moving the size, unless they went through a map from after the cut
        (`write`).
        """
        cut = attr.get("cut")
        if cut is None or not self._hears_cuts:
            return  # a master that does not say, or no notices heard: sizes are committed as before, no cut sent
        if of.cut is None:
            of.cut = cut  # (again) heard of from here on: writes made from now are after it
            return
        if cut <= of.cut:
            return
        of.cut = cut
        of.written_end = 0
        of.size = of.committed_size = attr["size"]

    async def _learn_cut_now(self, of: OpenFile) -> None:
        """A write went through a map the master gave after a cut this mount has not heard of yet.

        The cut's notice is on its way, and would come after the write's end was counted: the end
        would then be taken for one made before the cut and not committed, although the chunk
        servers have the bytes after it (an `fsync` said they were in the file, and they were not).
        The master's attributes tell of the cut now; the write counts as after it (`write`).
        """
        try:
            self._learn_cut(of, await self.client.getattr(of.ino))
        except ChunkFSError as exc:  # the notice still comes: as before this check
            logger.debug("inode %d: asking for a cut a chunk map told of: %s", of.ino, exc)

    # -- namespace -------------------------------------------------------------

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        check_name_length(name)
        since = self.cache.seq
        attr = await self.client.mkdir_at(parent_inode, name, statmod.S_IMODE(mode))
        self.cache.whole(attr["ino"], (), since)  # new and empty: every name in it will be known here
        return self._named(attr, parent_inode, name, since)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if not statmod.S_ISREG(mode) and statmod.S_IFMT(mode):
            raise pyfuse3.FUSEError(errno.EPERM)
        check_name_length(name)
        truncate = bool(flags & os.O_TRUNC)
        since = self.cache.seq
        oseq = next(self._oseq)
        attr = await self.client.create_at(
            parent_inode, name, created_mode(statmod.S_IMODE(mode), ctx.uid, self.uid),
            exclusive=bool(flags & os.O_EXCL), session=self.session, truncate=truncate, oseq=oseq,
            read_only=self._read_holds and _read_only(flags),
        )
        if attr["type"] != "f":
            raise pyfuse3.FUSEError(errno.EISDIR)
        if truncate:
            self._truncated(attr["ino"], attr)
        lease = await self._lease(attr["ino"], flags)
        fi = self._open(attr, flags, oseq)
        self._leased(attr["ino"], lease)
        attr = await self._setid_on_open(attr, flags, fi, ctx)
        return fi, self._named(attr, parent_inode, name, since)

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if not statmod.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EPERM)  # no device files, FIFOs or sockets
        check_name_length(name)
        since = self.cache.seq
        return self._named(await self.client.create_at(
            parent_inode, name, created_mode(statmod.S_IMODE(mode), ctx.uid, self.uid), exclusive=True),
            parent_inode, name, since)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        check_name_length(name)
        # Noted before the request: an open refused because the master removed it may come back first.
        doomed = self.cache.ino_at(parent_inode, name)
        if doomed is not None:
            if len(self._unlinked_here) >= UNLINKED_HERE_MAX:
                del self._unlinked_here[next(iter(self._unlinked_here))]
            self._unlinked_here[doomed] = None
        try:
            async with self._changing_names():
                await self.client.unlink_at(parent_inode, name)
        except BaseException:
            if doomed is not None:
                self._unlinked_here.pop(doomed, None)
            raise
        removed = self.cache.removed(parent_inode, name)
        if removed is not None and removed not in self.files:
            self.client.io.gone(removed)  # (no hard links: its one name is gone)

    @contextlib.asynccontextmanager
    async def _changing_names(self) -> AsyncIterator[None]:
        """Around this mount's unlink or rename: open files' attributes kept from the master
        (`OpenFile.attr`, which answers `getattr`) lose their vouching, since the change moves the
        nlink and ctime of the file it removes, renames or replaces; so do answers begun meanwhile.

        Releases waiting for their batch go first: the change may remove a file closed here a moment
        ago (SQLite's journal in its default mode is closed, then unlinked, at every transaction), and
        the master frees a file no mount holds within the unlink's own commit, where one it still
        counts as held becomes an orphan whose freeing is a commit of its own."""
        await self._release_ahead()
        self.cache.own_change()
        try:
            yield
        finally:
            self.cache.own_change()
            for of in self.files.values():
                of.attr = None

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        check_name_length(name)
        await self.client.rmdir_at(parent_inode, name)
        removed = self.cache.removed(parent_inode, name)
        if removed is not None:
            self._fresh_dirs.pop(removed, None)  # its nlink is 0 now: a process holding it open sees that

    @fuse_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~RENAME_NOREPLACE:
            # RENAME_EXCHANGE (and RENAME_WHITEOUT) are not offered by the master: what the
            # kernel answers for file systems without them.
            raise pyfuse3.FUSEError(errno.EINVAL)
        check_name_length(name_old)
        check_name_length(name_new)
        # The kernel may still reach the file this replaces (an open of the name on its way, an O_PATH
        # descriptor): the master holds it for this mount until the kernel forgets it (`forget`).
        known = self.cache.ino_at(parent_inode_new, name_new)
        hold = next(self._oseq) if self._holds_replaced and known is not None and known not in self.files else 0
        if hold or (known is not None and known in self.files):
            self._replacing.add(known)  # held by the master (the hold, its open files) however it goes
        try:
            async with self._changing_names():
                held = await self.client.rename_at(parent_inode_old, name_old, parent_inode_new, name_new,
                                                   noreplace=bool(flags & RENAME_NOREPLACE),
                                                   session=self.session, hold=hold)
        finally:
            if known is not None:
                self._replacing.discard(known)
        if held:
            self._replaced[held] = hold
            self._start_session_keeper()
        replaced = self.cache.renamed(parent_inode_old, name_old, parent_inode_new, name_new)
        if replaced is not None and replaced in self.files:
            # Held by its open files already; their last close must not release it while the kernel
            # has it still (an O_PATH descriptor: a POSIX probe's reopen got ESTALE).
            self._replaced[replaced] = self.files[replaced].registered
        if replaced is not None:
            self._fresh_dirs.pop(replaced, None)  # a directory renamed over: its nlink is 0 now
            if replaced not in self.files:
                self.client.io.gone(replaced)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no hard links in ChunkFS

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        check_name_length(name)
        since = self.cache.seq
        return self._named(await self.client.symlink_at(parent_inode, name, target), parent_inode, name, since)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return await self.client.readlink(inode)
        except NotFound:
            # A link another mount replaced (`ln -sfn`), through a name the kernel kept: it looks
            # the name up again (see `_gone`).
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)  # no extended attributes, so no ACLs

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        # None, as a local file system without extended attributes lists (ENOTSUP made
        # `tar --xattrs` warn once per file, and `rsync -X` fail).
        return []

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # no credential checks (the kernel checks mode bits: default_permissions)

    # -- directories -----------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = next(self._fh)
        self.dirs[fh] = DirHandle(inode)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if start_id == 0:
            self._seek(d, start_id, b"")
            d.whole = set()
        elif start_id != d.pending_at:  # a seek: to a position handed out before, the only ones known
            name = d.named.get(start_id)
            if name is None:
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._seek(d, start_id, name)
            d.whole = None
        while True:
            if not d.pending:
                if d.more:
                    await self._fill(d)
                if not d.pending:
                    self._forget_gone(d)
                    return
            while d.pending:
                entry, name = d.pending[0], d.pending_names[0]
                at = d.position.get(name)
                if at is None:
                    at = d.position[name] = d.next_position
                    d.named[at] = name
                    d.next_position += 1
                if not pyfuse3.readdir_reply(token, name, entry, at):
                    return
                d.pending.pop(0)
                d.pending_names.pop(0)
                d.pending_at = at
                if name in (b".", b".."):
                    d.dots_out += 1
                else:
                    d.cursor = name
                if d.whole is not None:
                    d.whole.add(name)

    @staticmethod
    def _seek(d: DirHandle, at: int, name: bytes) -> None:
        """Start a listing afresh after `name` (b"": at the start), at position `at`."""
        dots = {b"": 0, b".": 1, b"..": 2}
        d.cursor = b"" if name in dots else name
        d.dots_out = dots.get(name, 2)
        d.pending, d.pending_names, d.pending_at, d.more = [], [], at, True

    @staticmethod
    def _forget_gone(d: DirHandle) -> None:
        """At the end of a listing read whole from the start: forget the positions of names no longer in
        the directory once they outnumber those still in it (plus DIR_GONE_KEPT), so that a handle kept
        open on a directory whose names keep changing holds memory for about twice its entries at most.
        A seek to a position forgotten fails with EINVAL, as one never handed out does."""
        if d.whole is None:
            return
        if len(d.position) > 2 * len(d.whole) + DIR_GONE_KEPT:
            for name in [n for n in d.position if n not in d.whole]:
                del d.named[d.position.pop(name)]
        d.whole = None

    async def _fill(self, d: DirHandle) -> None:
        after = d.cursor
        since = self.cache.seq
        if not after:
            d.listed, d.since = set(), since
        reply = await self.client.readdir_page(d.ino, after, READDIR_PAGE)
        entries = reply["entries"]
        d.more = bool(reply["more"]) and bool(entries)
        d.pending = [self._named(e[3], d.ino, e[0], since, listed=True) for e in entries]
        if d.listed is not None:
            d.listed.update(e[0] for e in entries)
            if not d.more:
                self.cache.whole(d.ino, d.listed, d.since)  # listed whole, no notice meanwhile: known here
                d.listed = None
            elif len(d.listed) > WHOLE_NAMES_MAX:
                d.listed = None
        d.pending_names = [e[0] for e in entries]
        if not after:
            # "." and ".." first, as ls -a expects (the kernel takes only their inode numbers).
            dots = ((b".", d.ino), (b"..", reply.get("parent", d.ino)))
            for name, ino in reversed(dots[d.dots_out:]):
                dot = pyfuse3.EntryAttributes()
                dot.st_ino, dot.st_mode = ino, statmod.S_IFDIR | 0o755
                d.pending.insert(0, dot)
                d.pending_names.insert(0, name)

    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # every acknowledged namespace change is already in the master's journal

    # -- files -----------------------------------------------------------------

    def _open(self, attr: dict[str, Any], flags: int, oseq: int) -> pyfuse3.FileInfo:
        """A handle for a file the master answered for; `oseq`: the registration it answered (0: none)."""
        ino = attr["ino"]
        of = self.files.get(ino)
        if of is None:
            of = self.files[ino] = OpenFile(ino, attr["size"], attr["mtime_ns"], attr["size"])
        self._learn_cut(of, attr)  # (a new one takes the file's cut as it is now)
        if not of.dirty:
            of.size, of.committed_size, of.mtime_ns = attr["size"], attr["size"], attr["mtime_ns"]
        of.refs += 1
        of.registered = max(of.registered, oseq)
        self._start_session_keeper()
        fh = next(self._fh)
        self.handles[fh] = of
        if not _read_only(flags):
            of.may_write = True
            of.write_refs += 1
            self._write_handles.add(fh)
            self._to_read.discard(ino)
        # O_DIRECT (qemu cache=none, databases) bypasses the page cache: every
        # request comes straight here and is on every replica when answered.
        direct = self.opts.direct_io or bool(flags & os.O_DIRECT)
        if flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY:
            # The kernel appends at the size it keeps, which another mount's close may have moved
            # past (it takes no new size before a write): the mount writes at the end it knows
            # instead, and with no page cache the kernel keeps no bytes at the offset it chose.
            # Not a handle for reading too (`a+`): a program may map it, and the kernel then
            # writes dirty pages back through it, each at its own offset, which must be kept.
            self._appending.add(fh)
            direct = True
        return pyfuse3.FileInfo(fh=fh, direct_io=direct, keep_cache=False)

    def _start_session_keeper(self) -> None:
        """Renew this mount's session from its first hold on (an open file, a replaced one)."""
        if self._session_keeper is None:
            self._session_keeper = asyncio.get_running_loop().create_task(self._keep_session())

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        of = self.files.get(inode)
        truncate = bool(flags & os.O_TRUNC)
        oseq = 0
        if of is not None and of.dirty and not truncate:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                await self._check_name(inode)
            attr = {"ino": inode, "size": of.size, "mtime_ns": of.mtime_ns}  # already held open by this mount
        else:
            await self._release_ahead(inode)
            oseq = next(self._oseq)
            # Close-to-open: a file opened here sees what other mounts closed.  The
            # master holds the file for this mount from now on (and truncates it for O_TRUNC).
            try:
                # The kernel came by a name, which must still lead to the file (see `_gone`), unless
                # this mount renamed another over it while the kernel had it (see `rename`).  Held open
                # here, the file may also be reached through that open file (/proc/PID/fd), by no name:
                # checked then only by the name this mount knows, and only for an open that may change
                # it (another mount's rename or unlink not heard of yet: O_TRUNC through the old name cut
                # the renamed file, a fault probe found).
                at = self._name_of(inode)
                if inode in self._replaced or inode in self._replacing:
                    linked = False
                elif inode in self.files:
                    linked = at is not None and (truncate or flags & os.O_ACCMODE != os.O_RDONLY)
                else:
                    linked = True
                attr = await self.client.open_ino(inode, self.session, truncate, linked=linked, oseq=oseq,
                                                  at=at if linked else None,
                                                  read_only=self._read_holds and _read_only(flags))
            except NotFound:
                # ESTALE: the kernel looks the name up again, once.  Unlinked by this mount, the file was
                # reached by a lookup made before the unlink: the open raced it, and "no such file" is
                # an answer a local disk may give too.  ESTALE made the kernel look again, and a second
                # race (a file saved, removed and made again every millisecond) gave the program ESTALE
                # (a namespace probe: 42-50 of 700-760 opens).
                raise pyfuse3.FUSEError(errno.ENOENT if inode in self._unlinked_here else errno.ESTALE) from None
            if attr["type"] == "d":
                raise pyfuse3.FUSEError(errno.EISDIR)
            if truncate:
                self._truncated(inode, attr)
            await self.cache.settle(inode)
            self._drop_stale_attr(inode, attr)
        lease = await self._lease(inode, flags)
        fi = self._open(attr, flags, oseq)
        self._leased(inode, lease)
        await self._setid_on_open(attr, flags, fi, ctx)
        return fi

    async def _setid_on_open(
        self, attr: dict[str, Any], flags: int, fi: pyfuse3.FileInfo, ctx: pyfuse3.RequestContext
    ) -> dict[str, Any]:
        """Set-ID bits an unprivileged caller's open clears (client/setid.py); the file's attributes after.

        An ``O_TRUNC`` open clears them at once; a direct-I/O handle for writing, at its first
        write (the kernel clears them before a buffered write itself).
        """
        if ctx.uid == 0 or flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
            return attr
        mode = attr.get("mode")
        if mode is None:  # a file this mount holds open and wrote: the master's word on its mode
            mode = (await self.client.getattr(attr["ino"]))["mode"]
        bits = to_clear(mode, ctx.uid, ctx.gid, ctx.pid, self.gid)
        if not bits:
            return attr
        if flags & os.O_TRUNC:
            return await self._clear_setid(attr["ino"], bits)
        if fi.direct_io:
            self._clear_on_write[fi.fh] = bits
        return attr

    async def _clear_setid(self, ino: int, bits: int) -> dict[str, Any]:
        """Clear `bits` of the file's mode on the master, from its mode now; the kernel asks for it again."""
        attr = await self.client.getattr(ino)
        if not attr["mode"] & bits:
            return attr
        of = self.files.get(ino)
        if of is not None:
            async with of.commit_lock:
                attr = await self._setattr_open(of, {"mode": attr["mode"] & 0o7777 & ~bits})
        else:
            attr = await self.client.setattr(ino, mode=attr["mode"] & 0o7777 & ~bits)
        self.cache.drop_attributes_now(ino, attr["size"], attr["mtime_ns"])
        return attr

    async def _check_name(self, ino: int) -> None:
        """ESTALE unless the name the kernel reached `ino` by still leads to it (an open of a file written here).

        Such an open is answered from what this mount holds, without the master's check `open_ino`
        makes: another mount's rename or unlink not heard of yet let an open for writing by the old
        name write into the renamed or removed file.  ESTALE has the kernel look the name up again.
        """
        if ino in self._replaced or ino in self._replacing:
            return
        at = self._name_of(ino)
        if at is None:
            return
        try:
            found = (await self.client.lookup(*at))["ino"]
        except NotFound:
            found = None
        if found != ino:
            raise pyfuse3.FUSEError(errno.ESTALE)

    def _name_of(self, ino: int) -> tuple[int, bytes] | None:
        """The name the kernel reached `ino` by, for the master to check (it may have been renamed away).

        None for a file this mount unlinked: no name reaches it, and what comes for it (a change
        through a descriptor still open: fchmod and futimens come without their handle) is not checked.
        """
        if not self._names_checked or ino in self._unlinked_here:
            return None
        return self.cache.name_of(ino)

    def _drop_stale_attr(self, ino: int, attr: dict[str, Any]) -> None:
        """Close-to-open: the kernel forgets attributes older than the master's, before the open returns.

        Another mount's close reaches the kernel here by the master's notice, which may still be on
        its way: meanwhile the kernel would read up to, and append at, the size it kept.
        """
        of = self.files.get(ino)
        mtime = of.pending.get("mtime_ns", attr["mtime_ns"]) if of is not None else attr["mtime_ns"]
        if self.cache.stale(ino, attr["size"], mtime):
            self.cache.drop_attributes_now(ino, attr["size"], mtime)

    # -- exclusive leases (-o exclusive) ---------------------------------------

    async def _lease(self, ino: int, flags: int) -> float | None:
        """Take the file's lease for a write open on an exclusive mount; the time it is valid until."""
        if not self.opts.exclusive or flags & os.O_ACCMODE == os.O_RDONLY:
            return None
        of = self.files.get(ino)
        if of is not None and of.leased and not of.lease_lost:
            return of.lease_until
        sent = time.monotonic()
        try:
            ttl = await self.client.file_lease(ino, self.holder, "acquire")
        except Busy as exc:
            logger.warning("exclusive open of inode %d refused (EBUSY): %s", ino, exc)
            raise pyfuse3.FUSEError(errno.EBUSY) from None
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())
        return sent + ttl

    def _leased(self, ino: int, until: float | None) -> None:
        if until is None:
            return
        of = self.files[ino]
        of.leased, of.lease_lost = True, ""
        of.lease_until = max(of.lease_until, until)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL / 4)
            held = [of for of in self.files.values() if of.leased and not of.lease_lost]
            try:
                await asyncio.gather(*(self._renew(of) for of in held))
            except Exception:  # a bug must not end renewals: every leased file would then fail its writes
                logger.exception("renewing exclusive leases failed; retrying")

    async def _renew(self, of: OpenFile) -> None:
        sent = time.monotonic()
        try:
            ttl = await self.client.file_lease(of.ino, self.holder, "renew")
        except Busy as exc:
            of.lease_lost, of.lease_until = str(exc), 0.0
            logger.error("lost the exclusive lease on inode %d: %s; writes to it fail until it is reopened",
                         of.ino, exc)
        except ChunkFSError as exc:
            logger.warning("could not renew the exclusive lease on inode %d (%s); retrying", of.ino, exc)
        else:
            of.lease_until = sent + ttl

    async def _release_lease(self, of: OpenFile) -> None:
        if not of.leased:
            return
        of.leased = False
        try:
            await self.client.file_lease(of.ino, self.holder, "release")
        except ChunkFSError as exc:
            logger.info("could not release the lease on inode %d (%s): it expires by itself", of.ino, exc)

    def _check_lease(self, of: OpenFile) -> None:
        if not of.leased:
            return
        if of.lease_lost:
            logger.error("write to inode %d refused: the exclusive lease was lost (%s)", of.ino, of.lease_lost)
            raise pyfuse3.FUSEError(errno.EIO)
        if time.monotonic() >= of.lease_until:
            logger.error("write to inode %d refused: the exclusive lease could not be renewed in time", of.ino)
            raise pyfuse3.FUSEError(errno.EIO)

    # -- the session that holds open files ------------------------------------

    async def _check_session(self, conn: Connection | None) -> None:
        """Was this mount taken for dead meanwhile?  Asked on a new connection (`conn`) before any commit
        goes on it, and by the session keeper before each renewal (which would list the session again).

        A mount silent for longer than ``session-timeout`` (stopped, cut off) finds its session
        expired, and the master may have cut what it had written past the sizes it had committed
        (mds/open_files.py).  Each file with writes not committed is then marked `lost`: its next
        commit carries the oldest cut there is, and fails (EIO, as a lost writeback does on a local
        disk) if the master cut the file: an fsync must not say the bytes are there.  On a new
        connection, a master that cannot say within `SESSION_CHECK_FOR` counts as a yes.
        """
        header = {"session": self.session, "open": [], "ask_listed": True}
        reply: dict[str, Any] | None = None
        deadline = time.monotonic() + SESSION_CHECK_FOR
        while reply is None:
            try:
                if conn is None:
                    reply = await self.client.mds.call(Msg.SESSION, header)
                else:
                    reply, _ = await conn.call(Msg.SESSION, header, timeout=WATCH_TIMEOUT)
            except ChunkFSError as exc:  # a new master still reading its list of sessions, a slow answer
                if conn is None or conn.closed:
                    raise  # the keeper asks again at its next turn; a new connection asks again
                if time.monotonic() >= deadline:
                    why = f"the master did not say whether it kept this mount's session ({exc})"
                    break
                await asyncio.sleep(SESSION_CHECK_PAUSE)
        else:
            if reply["known"]:
                return
            self._unsent = True  # the session keeper re-sends the open files
            if reply.get("listed", True):
                return  # a new master, which had heard of the session: nothing was cut
            why = "the master took this mount for dead (silent for longer than session-timeout)"
        # Unsure is taken as expired: the master then decides by what it did to each file.
        lost = [of for of in self.files.values() if (of.dirty or of.writing) and not of.lost]
        for of in lost:
            of.lost = True
        if lost:  # (the keeper and a new connection may both ask: said once)
            logger.error("%s: writes to %d open file(s) that were not committed may have been cut; their next "
                         "fsync, flush or close fails with EIO", why, len(lost))

    async def _keep_session(self) -> None:
        """Renew this mount's session; re-send what it holds open when the master does not know it."""
        # Retried every SESSION_TTL / 4: while the master is away, a WARNING a minute, not every 2.5 s.
        renewals = FailureLog(logger, f"renewing mount session {self.session}")
        while True:
            try:
                if self._asks_listed and self._established:
                    await self._check_session(None)  # before the renewal lists the session again
                if self._unsent or not await self.client.renew_session(self.session, []):
                    self._unsent = True
                    await self._resend_open_files()
                    self._unsent = False
                self._established = True
                renewals.succeeded()
            except ChunkFSError as exc:
                renewals.failed(exc)
            except Exception:  # a bug must not end renewals: the master would free this mount's unlinked open files
                logger.exception("renewing mount session %s failed; retrying", self.session)
            try:
                if self._unreleased:
                    retry, self._unreleased = self._unreleased, {}
                    await self._release_now(retry)
            except Exception:
                logger.exception("releasing closed files of session %s failed; retrying", self.session)
            await asyncio.sleep(SESSION_TTL / 4)

    async def _resend_open_files(self) -> None:
        """Send the master every file this mount holds (open, or replaced: `rename`), the last page marked complete.

        A page the master answers as from an unknown session means a new master since the first
        one: it may lack the pages before, so all of them go again (a bounded number of times).
        """
        for _ in range(SESSION_RESEND_TRIES):
            held = sorted(self.files.keys() | self._replaced.keys())
            pages = [held[start:start + SESSION_OPEN_PAGE] for start in range(0, len(held), SESSION_OPEN_PAGE)]
            pages = pages or [[]]
            for number, page in enumerate(pages, 1):
                oseqs = [self.files[ino].registered if ino in self.files else self._replaced.get(ino, 0)
                         for ino in page]
                read_only = [ino for ino in page if ino in self.files and not self.files[ino].may_write] \
                    if self._read_holds else []
                if not await self.client.renew_session(self.session, page, complete=number == len(pages), oseqs=oseqs,
                                                       read_only=read_only):
                    break
            else:
                if self._established:  # (else the session's first renewal: a new one is news to the master)
                    logger.info("master did not know session %s: re-registered %d open file(s)", self.session,
                                len(held))
                return
        raise Unavailable(f"the master changed {SESSION_RESEND_TRIES} times while this mount re-sent its open files")

    async def close(self) -> None:
        """Stop renewing and hand back every lease, stop invalidating (at unmount, before FUSE closes)."""
        self.client.mds.on_connect = None
        self.cache.stop()
        if self._session_keeper is not None:
            self._session_keeper.cancel()
        if self._renewer is not None:
            self._renewer.cancel()
        if self._release_timer is not None:
            self._release_timer.cancel()  # ending the session releases everything
        held = [self._release_lease(of) for of in list(self.files.values())]
        if self.client.io.cut_short:
            # A write to every replica was cut short: the session is left to expire, and the master
            # compares those replicas when this mount's connection closes (mds/fanned_mender.py).
            logger.warning("a write to every replica of a chunk was cut short: the master compares them")
        else:
            held.append(self.client.end_session(self.session))
        # Bounded: with the master unreachable, the leases simply expire, and the session with them.
        with contextlib.suppress(TimeoutError, ChunkFSError):
            await asyncio.wait_for(asyncio.gather(*held), LEASE_TTL / 2)

    def _handle(self, fh: int) -> OpenFile:
        of = self.handles.get(fh)
        if of is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return of

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """Read what the file holds, after the writes that reached this mount before the read.

        The kernel may have sent such a write before this read although the read's page missed its
        bytes: a buffered write copies them into the page cache first, and a `stat` of the file by
        another process in that moment makes the kernel drop the file's pages (a new mtime).  Read
        at once, the page would be filled from the chunk servers without the write's bytes, and kept:
        a log follower then read zeros at the end of the file, and an overwrite's old bytes.
        """
        of = self._handle(fh)
        ahead = [done for start, end, done in of.writing if start < off + size and end > off]
        if ahead:
            await asyncio.wait(ahead)
        length = min(size, of.size - off)
        if length <= 0:
            return b""
        data = await self.client.io.read_buffer(of.ino, off, length)
        if not self.cache.watched and not self.opts.direct_io:
            # No notice would have the kernel drop the pages this read fills: dropped once filled, as
            # for a notice (kernel_cache.py, rule 6).
            self.cache.changed((), (of.ino,))
        return data  # type: ignore[return-value]

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        of = self._handle(fh)
        self._check_lease(of)
        if fh in self._clear_on_write:
            await self._clear_setid(of.ino, self._clear_on_write[fh])  # before the bytes, as the kernel does
            del self._clear_on_write[fh]
        appending = fh in self._appending
        if appending:
            # The range is taken before the write is sent: appends in flight at once (asynchronous
            # direct I/O) go one after the other, not all to one offset.
            off = of.size
            of.size = off + len(buf)
            of.appends += 1
        through = of.sync_streak >= WRITE_THROUGH_AFTER and len(buf) <= WRITE_THROUGH_MAX
        cut = of.cut
        writing = (off, off + len(buf), asyncio.get_running_loop().create_future())
        of.writing.append(writing)
        of.unsynced_writes += 1
        of.unsynced_largest = max(of.unsynced_largest, len(buf))
        if of.unsynced_writes > 1:
            of.sync_streak = 0  # more than one write per fsync: plain writes again
        try:
            after = await self.client.io.write(of.ino, off, buf, sync=through)
            if after is not None and of.cut is not None and after > of.cut:
                await self._learn_cut_now(of)
        except BaseException:
            if appending and of.size == off + len(buf):
                of.size = off  # nothing was appended after it: give the range back
            raise
        finally:
            if appending:
                of.appends -= 1
            of.writing.remove(writing)
            writing[2].set_result(None)  # reads that waited go on once the size below is set
        if cut is not None and of.cut is not None and of.cut > cut and (after is None or after < of.cut):
            # Another client cut the file meanwhile, and this write went through maps from before the
            # cut: it came before it (`_learn_cut`).  Through a map from after it (`after`), the write
            # came after it, although the notice of the cut reached this mount after the write began
            # (one the event loop served first, or a notice slower than the request that followed it).
            return len(buf)
        end = off + len(buf)
        if end > of.size:
            of.size = end
        if end > of.written_end:
            of.written_end = end
        of.mtime_ns = not_before(stamp_ns(), of.last_change_ns())
        of.dirty = True
        of.gen += 1
        # A write after times were set here moves mtime and ctime to its own time, as on a local disk;
        # an atime set before it is still to commit, with the write's time as its ctime (not the commit's).
        of.pending.pop("mtime_ns", None)
        if "atime_ns" in of.pending:
            of.pending["ctime_ns"] = of.mtime_ns
        else:
            of.pending.pop("ctime_ns", None)
        return len(buf)

    async def _commit(self, of: OpenFile) -> None:
        """Make the master know the size and mtime this mount wrote (EXTEND), and times set here."""
        async with of.commit_lock:
            of.lost = of.lost and of.dirty
            if of.pending and not of.lost:  # (lost writes go by EXTEND below, which carries their cut)
                await self._setattr_open(of, {})
                return
            if not of.dirty:
                return
            since, gen, end, mtime_ns = self.cache.seq, of.gen, of.written_end, of.mtime_ns
            try:
                # Asked as the request goes out, after a new connection's session check (`_check_session`):
                # writes made before the session expired carry the oldest cut there is, and the master,
                # which knows whether it cut the file since, refuses their size (`WritesLost`).
                attr = await self.client.extend(of.ino, end, mtime_ns, lambda: 0 if of.lost else of.cut)
                if of.lost and attr["size"] < end:
                    # Not trimmed, but cut by a truncate some time: the size was left alone, and the writes
                    # are not in the file.  Not a success to report.
                    raise WritesLost(f"inode {of.ino}: writes made before this mount's session expired are not in "
                                     "the file (it was cut meanwhile); write them again")
            except WritesLost as exc:
                # Said once, as a local disk says a lost writeback once: the file is as the master has it.
                logger.error("%s", exc)
                of.dirty, of.lost, of.written_end, of.cut = False, False, 0, None
                of.size = of.committed_size
                raise
            of.lost = False
            self._keep_attr(of, attr, since)
            self._committed(of, attr, gen)

    def _committed(self, of: OpenFile, attr: dict[str, Any], gen: int) -> None:
        """The master has this mount's writes up to `gen`; `attr` is the file as it answered."""
        self._learn_cut(of, attr)
        size = of.committed_size = attr["size"]
        if of.gen == gen:
            of.dirty = False
            of.size, of.written_end = size, 0
            if of.blocks_from_size:  # the kernel holds st_blocks counted from the size: the master's count now
                of.blocks_from_size = False
                self.cache.drop_attributes_now(of.ino, size, of.pending.get("mtime_ns", attr["mtime_ns"]))
        else:  # written meanwhile: those writes' ends are still to commit
            of.size = max(size, of.written_end)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self._commit(self._handle(fh))

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        of = self._handle(fh)
        if of.unsynced_writes == 1 and of.unsynced_largest <= WRITE_THROUGH_MAX:
            of.sync_streak += 1
        elif of.unsynced_writes:
            of.sync_streak = 0
        of.unsynced_writes = of.unsynced_largest = 0
        if datasync and of.written_end <= of.committed_size:
            # fdatasync of writes inside the file (a VM's disk, a database's pages): the data is all
            # that must be durable; the new mtime is committed by the next fsync, flush or close.
            await self.client.fsync(of.ino)
            return
        # The replicas' syncs and the master's commit of size and mtime at once: fsync answers
        # when both are durable.  A crash before that may leave the size committed without
        # the data (zeros there, as on a local disk): nothing had been promised yet.
        await asyncio.gather(self.client.fsync(of.ino), self._commit(of))

    @fuse_errors
    async def release(self, fh: int) -> None:
        of = self.handles.pop(fh, None)
        self._appending.discard(fh)
        self._clear_on_write.pop(fh, None)
        if of is None:
            return
        of.refs -= 1
        wrote = fh in self._write_handles
        if wrote:
            self._write_handles.discard(fh)
            of.write_refs -= 1
        try:
            await self._commit(of)
        finally:
            if of.refs <= 0 and self.files.get(of.ino) is of and not of.dirty and not of.pending:
                del self.files[of.ino]
                await self._release_lease(of)
                if of.ino in self._replaced:  # still held for the kernel: released when it forgets it
                    self._replaced[of.ino] = of.registered
                else:
                    self._release_soon(of.ino, of.registered)
            elif wrote and of.write_refs == 0 and of.may_write and not of.dirty and not of.pending \
                    and self._read_holds and self.files.get(of.ino) is of:
                # Held on only to read, all committed: the master need not keep a dead writer's trim for
                # this hold (a probe: a reader that had opened the file to write once kept it off).
                of.may_write = False
                self._to_read.add(of.ino)
                self._release_soon()

    def _release_soon(self, ino: int | None = None, upto: int = 0) -> None:
        """Release a file closed here on the master with the others closed about now (RELEASE_DELAY); no
        `ino`: send the batch then for what waits in it (`_to_read`)."""
        if ino is not None:
            self._to_release[ino] = max(self._to_release.get(ino, 0), upto)
            self._to_read.discard(ino)
        if len(self._to_release) + len(self._to_read) >= RELEASE_BATCH:
            self._send_releases()
        elif self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(RELEASE_DELAY, self._send_releases)

    def _send_releases(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        batch, self._to_release = self._to_release, {}
        # Held only to read up to the latest registration: any since could only read (one that may write
        # takes the file off `_to_read`), and one the master has and this mount not yet keeps it a writer.
        read_only = sorted(ino for ino in self._to_read if ino in self.files and ino not in batch)
        self._to_read = set()
        batch.update((ino, self.files[ino].registered) for ino in read_only)
        if batch:
            task = asyncio.get_running_loop().create_task(self._release_now(batch, read_only))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_ahead(self, ino: int | None = None) -> None:
        """Releases waiting for their batch (`RELEASE_DELAY`) go ahead of the request that follows, on the
        same connection, so the master has them first; `ino`: only if that file's is among them.

        An unlink or rename may remove a file closed here a moment ago (`_changing_names`).  An open
        or a size change of a file closed here a moment ago must not find it still held by this mount:
        the master trims a dead writer's file before such a request only if no mount holds it to write
        (`OrphanReaper.trim_first`), and trims a held one at its last release, at the size it has
        then; a reopen and `ftruncate`, or a `truncate`, right after the close grew the file first,
        and the dead writer's bytes showed in between (fault probes).
        """
        if (self._to_release or self._to_read) and (ino is None or ino in self._to_release or ino in self._to_read):
            self._send_releases()
            await asyncio.sleep(0)  # the release's task writes its frame ahead of this request's

    async def _release_now(self, batch: dict[int, int], read_only: list[int] | None = None) -> None:
        try:
            await self.client.release_inos(self.session, batch, read_only)
        except Exception as exc:
            # Until released, an unlinked file keeps its space: the session keeper tries again.  A hold
            # said to be only to read is not said again: the master keeps it as one that may write
            # (its trims wait), and a new master hears it with the open files re-sent.
            for ino, upto in batch.items():
                if ino not in (read_only or ()):
                    self._unreleased[ino] = max(self._unreleased.get(ino, 0), upto)
            if isinstance(exc, ChunkFSError):
                logger.info("could not release %d closed file(s) on the master (%s); retrying", len(batch), exc)
            else:
                logger.exception("releasing closed files of session %s failed; retrying", self.session)

    # -- the file system -------------------------------------------------------

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        now = time.monotonic()
        if self._statfs is not None and now - self._statfs[0] < STATFS_CACHE_S:
            return self._statfs[1]
        stat = await self.client.cluster_stat()
        space = stat["space"]
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLOCK_SIZE
        s.f_frsize = 4096
        s.f_blocks = space["total"] // s.f_frsize
        s.f_bfree = space["free"] // s.f_frsize
        s.f_bavail = s.f_bfree
        used = stat.get("inodes", 0)  # (a master of an older version does not count them)
        s.f_files = max(INODE_CAPACITY, 2 * used)
        s.f_ffree = s.f_files - used
        s.f_favail = s.f_ffree
        s.f_namemax = 255
        self._statfs = (now, s)
        return s

"""A mount process killed while one of its threads waits in the kernel is cut off, not left hanging.

The kernel ends a FUSE connection, failing every request in flight with
ENOTCONN, when the last open descriptor of its ``/dev/fuse`` closes.  But the
thread that has the kernel drop its cached pages of a file (kernel_cache.py)
waits there, uninterruptibly, for a page that another request holds until this
mount answers it: a program's write in flight, or the writeback of a mapped
file.  A ``kill -9`` (an operator, the OOM killer) then ends every thread but
that one, whose descriptor keeps the connection alive, and every program with a
request in flight hangs in D state for good, unkillable, until someone writes
to the connection's ``abort`` file (a power-cut probe: 30 minutes, the first
round of each of three probes; the stacks showed the mount's own thread in
``fuse_reverse_inval_inode``).

So a mount starts this guard, a process of its own that waits until the thread
that started it (the mount's event loop) dies (``PR_SET_PDEATHSIG``).  If the
mount's process is then gone within `GRACE` seconds, it did not hang, and the
guard leaves the connection to the kernel (programs get ENOTCONN as before);
if a thread of it is still there, the guard aborts the connection through
fusectl, which fails those requests (ECONNABORTED) and frees the thread.

Run by the mount as ``python -m chunkfs.client.dead_mount_guard PID ABORT_FILE``;
it imports little beyond the standard library, so it starts on little.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from chunkfs.common.daemon import pid_alive

logger = logging.getLogger(__name__)

#: Seconds the guard gives a dead mount's threads to go before it calls one stuck.
GRACE = 2.0
_POLL = 0.1
_PR_SET_PDEATHSIG = 1


def start(abort_file: Path) -> subprocess.Popen[bytes] | None:
    """Start the guard of this process's mount, whose FUSE connection `abort_file` aborts; None if it cannot be.

    Call it from the thread whose death means the mount's (the event loop's): the kernel signals the
    guard when that thread ends.
    """
    if not abort_file.exists():
        logger.info("no %s (fusectl not mounted): a mount killed while the kernel waits on it may leave "
                    "programs hanging until its connection is aborted by hand", abort_file)
        return None
    return subprocess.Popen(  # noqa: S603 - this interpreter, this module
        [sys.executable, "-m", __name__, str(os.getpid()), str(abort_file)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)


def _threads_left(pid: int) -> list[int]:
    """The threads of `pid` other than its leader that have not exited (the leader of a dead process is a zombie)."""
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _gone(pid: int) -> bool:
    return not pid_alive(pid) and not _threads_left(pid)


def guard(pid: int, abort_file: Path) -> int:
    """Wait for the death of the thread that started this process, then abort `abort_file`'s connection
    if `pid` does not finish dying within GRACE seconds."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return 1
    if os.getppid() == pid:  # (not already orphaned between the fork and the prctl)
        signal.sigwait({signal.SIGTERM})
    for _ in range(round(GRACE / _POLL) + 1):
        if _gone(pid):
            return 0  # it died whole: the kernel ended its connection
        time.sleep(_POLL)
    try:
        abort_file.write_text("1\n")
    except OSError:
        return 1  # unmounted meanwhile: nothing left to abort
    print(f"chunkfs mount (pid {pid}): its event loop died while a thread of it still waited in the kernel; "
          f"its FUSE connection was aborted ({abort_file}) so that programs waiting on it get an error",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1]), Path(sys.argv[2])))

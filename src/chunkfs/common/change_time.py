"""A change's time stamp and the ctime of an attribute change: one rule each, for the master and for a mount."""

from __future__ import annotations

import time

#: Linux's CLOCK_REALTIME_COARSE (Python 3.11's `time` does not name it).
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)

#: How far the kernel's "now" may run ahead of `stamp_ns`: a tick of the coarse clock (4 ms at
#: HZ=250; 10 ms covers HZ=100).  Linux 6.13 and later hand fine-grained times to the file systems
#: that ask for them (ext4, tmpfs) and never a coarse "now" before one handed out, so the "now" a
#: ``touch`` sends can be up to a tick past the coarse clock a process reads (seen: 2.3 ms, about
#: 1 ``touch`` in 200 here).  A constant, not the machine's tick: the metadata servers apply it alike.
KERNEL_AHEAD_NS = 10_000_000

#: A new mtime this much before the change's own time, or less, is taken as that time (utimensat's
#: UTIME_NOW: the kernel reads its clock before the request reaches the master, under load a while).
SAME_INSTANT_BEFORE_NS = 250_000_000


def stamp_ns() -> int:
    """Now, for a write's, a namespace change's or an attribute change's time stamp: the kernel's coarse clock.

    The kernel sends ``touch``'s, ``futimens(fd, NULL)``'s and ``UTIME_NOW``'s "now" as an explicit
    time read from that clock (a tick, 4 ms here, behind the precise one), as it stamps a local
    file.  Stamps from the precise clock made a ``touch`` right after a write set an mtime before
    the write's (a conformance probe: 35 of 50; ``make`` then takes a target touched after its
    input for older) and left ctime apart from mtime.  One clock for both, as on a local disk.
    """
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


def not_before(now_ns: int, last_ns: int) -> int:
    """A change's stamp made at `now_ns` on a file whose time is `last_ns`: not before it when `last_ns` is
    the kernel's "now" a little ahead of this clock (`KERNEL_AHEAD_NS`), so a write right after a
    ``touch`` does not move mtime back.  A time further ahead was set on purpose: the change's own."""
    return last_ns if now_ns < last_ns <= now_ns + KERNEL_AHEAD_NS else now_ns


def change_ctime(mtime_ns: int | None, now_ns: int, ctime_ns: int) -> int:
    """The ctime of a change made at `now_ns` that may set mtime to `mtime_ns` (file's ctime: `ctime_ns`).

    Callers pass the new atime as `mtime_ns` when the change sets atime alone (``touch -a``).
    ``touch`` sets mtime to "now" as read by the setter's clock, which is not the clock the
    change is stamped with: a new mtime a moment before now (or at most `KERNEL_AHEAD_NS` after
    it), and not before the file's ctime, is taken as the change's instant, so mtime equals ctime
    as on a local disk.  The moment is short: a time set on purpose near now (`utime` to a second
    ago, or ahead) leaves ctime at the change's own time (a POSIX probe: ctime followed such an
    mtime up to a second either way, and the next change then moved it backwards).  A setter's
    clock further ahead of the master's costs only ctime's equality with mtime after a ``touch``.
    """
    if mtime_ns is not None and now_ns - SAME_INSTANT_BEFORE_NS <= mtime_ns <= now_ns + KERNEL_AHEAD_NS \
            and mtime_ns >= ctime_ns:
        return mtime_ns
    return not_before(now_ns, ctime_ns)

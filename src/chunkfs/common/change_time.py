"""The ctime of an attribute change: one rule, for the master and for a mount that keeps a change a while."""

from __future__ import annotations

#: A new mtime this much before the change's own time, or less, is taken as that time (utimensat's
#: UTIME_NOW: the kernel reads its clock before the request reaches the master, under load a while).
SAME_INSTANT_BEFORE_NS = 250_000_000


def change_ctime(mtime_ns: int | None, now_ns: int, ctime_ns: int) -> int:
    """The ctime of a change made at `now_ns` that may set mtime to `mtime_ns` (file's ctime: `ctime_ns`).

    Callers pass the new atime as `mtime_ns` when the change sets atime alone (``touch -a``).
    ``touch`` sets mtime to "now" as read by the setter's clock, which is not the clock the
    change is stamped with: a new mtime a moment before now, and not before the file's ctime,
    is taken as the change's instant, so mtime equals ctime as on a local disk.  The moment is
    short, and never ahead of now: a time set on purpose near now (`utime` to a second ago, or
    ahead) leaves ctime at the change's own time (a POSIX probe: ctime followed such an mtime
    up to a second either way, and the next change then moved it backwards).  A setter's clock
    ahead of the master's costs only ctime's equality with mtime after a ``touch``.
    """
    if mtime_ns is not None and now_ns - SAME_INSTANT_BEFORE_NS <= mtime_ns <= now_ns and mtime_ns >= ctime_ns:
        return mtime_ns
    return now_ns

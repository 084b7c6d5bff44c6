"""The ctime of an attribute change: one rule, for the master and for a mount that keeps a change a while."""

from __future__ import annotations

#: A new mtime this close to the change's own time is taken as that time (utimensat's UTIME_NOW).
SAME_INSTANT_NS = 1_000_000_000


def change_ctime(mtime_ns: int | None, now_ns: int, ctime_ns: int) -> int:
    """The ctime of a change made at `now_ns` that may set mtime to `mtime_ns` (file's ctime: `ctime_ns`).

    ``touch`` sets mtime to "now" as read by the setter's clock, which is not the clock the
    change is stamped with: a new mtime within a second of now, and not before the file's
    ctime, is taken as the change's instant, so mtime equals ctime as on a local disk.
    """
    if mtime_ns is not None and abs(mtime_ns - now_ns) < SAME_INSTANT_NS and mtime_ns >= ctime_ns:
        return mtime_ns
    return now_ns

"""The clock changes are stamped with, and the rules that keep a file's times from going back."""

from __future__ import annotations

import os
import time
from pathlib import Path

from chunkfs.common.change_time import KERNEL_AHEAD_NS, change_ctime, not_before, stamp_ns


def test_stamps_come_from_the_clock_the_kernel_stamps_a_touch_with(tmp_path: Path) -> None:
    """A local file touched after a stamp is never before it (the kernel's "now" is never behind the
    coarse clock), while the precise clock runs ahead of both."""
    f = tmp_path / "f"
    f.write_bytes(b"")
    behind = 0
    for _ in range(200):
        stamp = stamp_ns()
        os.utime(f)
        behind += os.stat(f).st_mtime_ns < stamp
        assert stamp <= time.time_ns()
    assert behind == 0


def test_a_time_a_moment_ahead_is_the_changes_instant_and_one_further_ahead_is_not() -> None:
    now = 10**18
    assert not_before(now, now - 1) == now
    assert not_before(now, now + 1) == now + 1
    assert not_before(now, now + KERNEL_AHEAD_NS) == now + KERNEL_AHEAD_NS
    assert not_before(now, now + KERNEL_AHEAD_NS + 1) == now
    # A touch's "now" a moment ahead of the master's clock: ctime is that instant, not the master's.
    assert change_ctime(now + 2_300_000, now, now - 5) == now + 2_300_000
    assert change_ctime(now - 1_000, now, now - 10_000) == now - 1_000  # read by the kernel a moment before
    # Set on purpose further ahead, or before the file's ctime: the change's own time.
    assert change_ctime(now + KERNEL_AHEAD_NS + 1, now, now - 5) == now
    assert change_ctime(now - 1_000, now, now - 500) == now
    # No time set (chmod): now, or the file's ctime when that is the kernel's instant a moment ahead.
    assert change_ctime(None, now, now - 5) == now
    assert change_ctime(None, now, now + 1_000) == now + 1_000

"""The mount's bookkeeping of the kernel's cache (kernel_cache.py): its timeouts and its invalidations."""

from __future__ import annotations

import asyncio
import errno
import threading
import time

import pytest

from chunkfs.client import kernel_cache
from chunkfs.client.kernel_cache import KernelCache


class Kernel:
    """Stands in for pyfuse3's invalidate calls: records them; names in `unknown` raise ENOENT."""

    def __init__(self) -> None:
        self.dropped: list[object] = []
        #: Inodes whose cached data was dropped too (`attr_only` False), in order.
        self.data_dropped: list[int] = []
        self.unknown: set[object] = set()
        self.seen = threading.Event()

    def entry(self, parent: int, name: bytes) -> None:
        self._drop((parent, name))

    def inode(self, ino: int, attr_only: bool) -> None:
        self._drop(ino)
        if not attr_only:
            self.data_dropped.append(ino)

    def _drop(self, item: object) -> None:
        self.seen.set()
        if item in self.unknown:
            raise OSError(errno.ENOENT, "not cached")
        self.dropped.append(item)


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


@pytest.fixture
def cache(kernel: Kernel):
    c = KernelCache(long=60.0, short_attr=1.0, short_entry=2.0, invalidate_entry=kernel.entry,
                    invalidate_inode=kernel.inode)
    c.start()
    yield c
    c.stop()


def settle(cache: KernelCache, kernel: Kernel, count: int) -> list[object]:
    """What the thread invalidated, once it did `count` (bounded wait)."""
    deadline = time.monotonic() + 5
    while cache.invalidated < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return kernel.dropped


def test_long_timeouts_only_while_watched_and_no_notice_came_meanwhile(cache: KernelCache) -> None:
    conn = object()
    since = cache.seq
    assert cache.timeouts(since) == (1.0, 2.0)  # not watched: the short ones
    cache.watching(conn)
    assert cache.timeouts(since) == (1.0, 2.0)  # the request began before the watch
    since = cache.seq
    assert cache.timeouts(since) == (60.0, 60.0)
    cache.changed([(1, b"x")], [])
    assert cache.timeouts(since) == (1.0, 2.0)  # a notice arrived during the request
    assert cache.timeouts(cache.seq) == (60.0, 60.0)
    cache.lost(object())  # another connection: the watch goes on
    assert cache.timeouts(cache.seq) == (60.0, 60.0)
    cache.lost(conn)
    assert cache.timeouts(cache.seq) == (1.0, 2.0)


def test_no_caching_asked_stays_no_caching(kernel: Kernel) -> None:
    c = KernelCache(long=60.0, short_attr=0.0, short_entry=0.0, invalidate_entry=kernel.entry,
                    invalidate_inode=kernel.inode)
    c.watching(object())
    assert c.timeouts(c.seq) == (0.0, 0.0)


def test_notices_are_carried_out_on_the_thread_and_unknown_names_are_skipped(
        cache: KernelCache, kernel: Kernel) -> None:
    kernel.unknown.add((1, b"gone"))
    cache.changed([(1, b"gone"), (1, b"a")], [7])
    assert settle(cache, kernel, 2) == [(1, b"a"), 7]


def test_a_notice_drops_an_inodes_cached_data_and_the_loops_own_drop_only_its_attributes(
        cache: KernelCache, kernel: Kernel) -> None:
    """Another client's change may have rewritten a file with its size and mtime as they were: the
    notice drops the kernel's pages too (on the thread).  What the event loop drops itself, when an
    open finds other attributes, is attributes only: pages take locks the kernel may hold."""
    cache.drop_attributes_now(5, 10, 20)
    assert kernel.dropped == [5] and kernel.data_dropped == []
    cache.changed([], [7])
    assert settle(cache, kernel, 2) == [5, 7]
    assert kernel.data_dropped == [7]


def test_a_lost_watch_invalidates_every_name_and_inode_the_kernel_holds(cache: KernelCache, kernel: Kernel) -> None:
    conn = object()
    cache.watching(conn)
    cache.remember(10, 1, b"a")
    cache.remember(11, 1, b"b")
    cache.remember(12, 10, b"c")
    cache.renamed(1, b"b", 10, b"b2")  # this mount's own rename
    cache.removed(10, b"c")  # ... and unlink: the inode may still be open, its name is gone
    cache.forget([10])  # the kernel forgot inode 10
    cache.lost(conn)
    dropped = settle(cache, kernel, 3)
    assert sorted(map(str, dropped)) == sorted(map(str, [(10, b"b2"), 11, 12]))


def test_past_the_watch_lease_nothing_is_trusted_until_the_master_answers_again(
        cache: KernelCache, kernel: Kernel) -> None:
    """Rule 6: a master frozen or cut off sends no notice while another takes changes."""
    conn = object()
    cache.watching(conn, until=time.monotonic() + 60)
    cache.remember(10, 1, b"a")
    cache.whole(1, [b"a"], cache.seq)
    assert cache.watched and cache.missing(1, b"b")
    assert not cache.lapse(conn)  # within the lease: nothing happens
    cache.watching(conn, until=time.monotonic() - 0.001)  # its last renewal's lease ran out
    seq = cache.seq
    assert not cache.watched and cache.timeouts(seq) == (1.0, 2.0)
    assert cache.lapse(conn) and not cache.lapse(conn)  # once per lapse
    assert not cache.missing(1, b"b")  # the directory is not known whole any more
    assert sorted(map(str, settle(cache, kernel, 2))) == sorted(map(str, [(1, b"a"), 10]))
    assert kernel.data_dropped == [10]  # its pages too
    cache.changed((), (10,))  # a read answered meanwhile (fuse_ops.py): its pages go once filled
    settle(cache, kernel, 3)
    assert kernel.data_dropped == [10, 10]
    cache.renewed(object(), time.monotonic() + 60)  # another connection's answer vouches for nothing
    assert not cache.watched
    cache.renewed(conn, time.monotonic() + 60)
    assert cache.watched and cache.seq > seq and cache.timeouts(cache.seq) == (60.0, 60.0)
    cache.lost(conn)
    assert not cache.watched


def test_past_its_bound_the_queue_becomes_everything_known(
        monkeypatch: pytest.MonkeyPatch, kernel: Kernel) -> None:
    monkeypatch.setattr(kernel_cache, "QUEUE_MAX", 3)
    c = KernelCache(long=60.0, short_attr=1.0, short_entry=1.0, invalidate_entry=kernel.entry,
                    invalidate_inode=kernel.inode)  # not started: the queue only grows
    c.remember(5, 1, b"known")
    c.changed([(1, b"x"), (1, b"y")], [])
    c.changed([(1, b"z"), (1, b"w")], [])
    c.start()
    try:
        assert sorted(map(str, settle(c, kernel, 2))) == sorted(map(str, [(1, b"known"), 5]))
    finally:
        c.stop()


def test_an_open_takes_its_inode_off_the_queue_and_leaves_the_rest_in_order(kernel: Kernel) -> None:
    c = KernelCache(long=60.0, short_attr=1.0, short_entry=1.0, invalidate_entry=kernel.entry,
                    invalidate_inode=kernel.inode)  # not started: the queue only grows
    c.changed([(1, b"x")], [5, 6])
    c.changed([], [5, 7])
    asyncio.run(c.settle(5))
    asyncio.run(c.settle(8))  # not queued: nothing changes
    c.changed([], [5])  # queued again after the open: invalidated
    c.start()
    try:
        assert settle(c, kernel, 4) == [(1, b"x"), 6, 7, 5]
        asyncio.run(c.settle(5))  # the thread took it: nothing left to take
        assert not c._queued
    finally:
        c.stop()


def test_a_directory_known_whole_answers_missing_names_until_a_notice_names_it(cache: KernelCache) -> None:
    conn = object()
    since = cache.seq
    cache.whole(5, [b"a"], since)
    assert not cache.missing(5, b"x")  # not watched: nothing is known whole
    cache.watching(conn)
    cache.whole(5, [b"a"], since)
    assert not cache.missing(5, b"x")  # listed before the watch began
    cache.whole(5, [b"a"], cache.seq)
    assert cache.missing(5, b"x") and not cache.missing(5, b"a") and not cache.missing(6, b"x")
    cache.remember(50, 5, b"x")  # this mount made it
    assert not cache.missing(5, b"x")
    cache.renamed(5, b"x", 5, b"y")
    assert cache.missing(5, b"x") and not cache.missing(5, b"y")
    cache.removed(5, b"a")
    assert cache.missing(5, b"a")
    cache.changed([(5, b"z")], [])  # another client changed a name in it
    assert not cache.missing(5, b"a")
    cache.whole(5, [], cache.seq)
    cache.renamed(9, b"q", 5, b"q")  # a name moved in under an inode not known here: whole no more
    assert not cache.missing(5, b"r")
    cache.whole(7, [], cache.seq)
    cache.lost(conn)
    cache.watching(conn)
    assert not cache.missing(7, b"r")


def test_removing_a_directory_forgets_its_names_and_the_names_kept_are_bounded(
        cache: KernelCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_cache, "WHOLE_NAMES_MAX", 3)
    cache.watching(object())
    cache.whole(1, [b"d"], cache.seq)
    cache.remember(2, 1, b"d")
    cache.whole(2, [b"a", b"b"], cache.seq)
    cache.whole(3, [b"c"], cache.seq)  # would pass the bound: not known whole
    assert not cache.missing(3, b"x")
    cache.remember(10, 2, b"e")  # at the bound: directory 2 is no longer known whole rather than wrong
    assert not cache.missing(2, b"x") and cache.missing(1, b"x")
    cache.whole(2, [b"a"], cache.seq)
    cache.removed(1, b"d")
    assert not cache.missing(2, b"x")


def test_a_name_the_master_said_is_absent_is_kept_until_a_notice_names_it() -> None:
    """Rule 4: "no such name" is kept by the mount (never the kernel) and dropped by the notice at once."""
    cache = KernelCache(long=60.0, short_attr=1.0, short_entry=1.0,
                        invalidate_entry=lambda *a: None, invalidate_inode=lambda *a: None)
    cache.watching(object())
    since = cache.seq
    cache.no_such_name(1, b"new", since)
    assert cache.missing(1, b"new") and not cache.missing(1, b"other")
    cache.changed([(1, b"new")], [])  # another mount made it
    assert not cache.missing(1, b"new")
    since = cache.seq
    cache.changed([(1, b"unrelated")], [])
    cache.no_such_name(1, b"new", since)  # an answer a notice raced: not kept
    assert not cache.missing(1, b"new")
    cache.no_such_name(1, b"mine", cache.seq)
    cache.remember(5, 1, b"mine")  # this mount made it
    assert not cache.missing(1, b"mine")

"""Keeping the kernel's cache of names and attributes true to the master.

The kernel keeps what the mount answers (a name's inode, an inode's
attributes) for the timeouts given with each answer, and asks nothing while
they last: a `stat` from the cache costs microseconds, one from the master a
round trip.  Long timeouts are only honest if the mount hears of every change
another client makes, so the mount WATCHes its connection to the master,
which then sends an INVALIDATE notice naming the entries and inodes each such
change touched (`chunkfs.mds.watchers`), and the mount has the kernel drop
them.  The rules that keep another client's change visible at once:

1. Long timeouts (``cache_timeout``) only while the connection to the master
   is watched.  Otherwise answers get the short ones (``attr_timeout``,
   ``entry_timeout``): what the mount gives when nobody vouches.
2. When the watch ends (the connection is lost, or the master changes),
   every name and inode the kernel may hold from this mount is invalidated:
   notices may have been missed meanwhile.
3. An answer to a request during which a notice arrived, or the watch
   changed, or this mount removed or renamed a name, gets the short
   timeouts: the change may have been carried out before the kernel got the
   (older) answer it was meant to correct.
4. Negative entries ("no such name") are not left in the kernel at all:
   only the invalidating thread could drop them, milliseconds after the
   notice, and an open right after another mount's create (or rename into
   place) failed with ENOENT meanwhile (a probe: 1 in 4).  The mount keeps
   them itself (`absent`), under the same timeouts, and a notice naming the
   entry drops its copy on the event loop as it arrives: the master sends it
   before the change's own answer, so before the program that made the
   change can tell anyone.
6. The notices are trusted only within the watch's lease (WATCH_LEASE from
   the sending of the last WATCH the master answered; the mount renews it
   every quarter of that): a master frozen or cut off sends none, and a new
   one may meanwhile take changes this mount does not hear of.  When the
   lease runs out, the kernel drops everything as in rule 2, answers get the
   short timeouts, and each page a read fills is dropped again once filled,
   until the master answers.  A new master serves clients' changes only a
   lease after it was elected (mds/server.py `_after_watch_leases`).
7. Invalidations run on a thread of their own: the kernel may hold a
   directory's lock while it waits for a request that this mount's event
   loop must answer, so calling it from the loop could deadlock the mount.

What the kernel holds is tracked from the answers given (inode -> the name
it was last answered under, and the size and mtime it was last told) and
trimmed by the kernel's FORGETs, so it is bounded by the kernel's own cache.

Close-to-open does not wait for a notice: a file opened here after another
mount closed it shows what that mount wrote, because the open asks the
master, and when the size or mtime it answers is not what the kernel was
last told, the mount drops the kernel's attributes right there, before the
open returns (`stale`).  Dropping attributes only, unlike names, takes no
lock the kernel may hold, so the event loop may do it itself.

The same notices let the mount know *every* name of some directories: one
it made itself, or listed whole while watched, with no notice about it since.
A lookup there of a name it does not hold is answered "no such name" without
asking the master: the lookup the kernel sends before each create.  This
mount's own changes there keep the set up to date; any notice naming an
entry in the directory, or the end of the watch, makes it unknown again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from chunkfs.protocol.messages import WATCH_LEASE

logger = logging.getLogger(__name__)

#: Invalidations waiting for the thread beyond which it invalidates everything known instead.
QUEUE_MAX = 100_000
#: How long (tries, seconds between) an open waits for the thread to finish invalidating its inode (`settle`).
SETTLE_TRIES = 200
SETTLE_PAUSE = 0.001
#: How long stopping waits for the thread, seconds.
STOP_WAIT = 2.0
#: Names kept for directories known whole, at most (about 100 bytes each); past it, no more are added.
WHOLE_NAMES_MAX = 200_000
#: Names known not to exist kept at most (rule 4); past it, they are all forgotten.
ABSENT_MAX = 100_000

Entry = tuple[int, bytes]


class KernelCache:
    """What the kernel caches from this mount, how long it may keep it, and its invalidation."""

    def __init__(
        self, *, long: float, short_attr: float, short_entry: float,
        invalidate_entry: Callable[[int, bytes], Any], invalidate_inode: Callable[[int, bool], Any],
    ) -> None:
        self.long = long
        self.short_attr = short_attr
        self.short_entry = short_entry
        self._invalidate_entry = invalidate_entry
        self._invalidate_inode = invalidate_inode
        #: Bumped by every notice, every change of watch and this mount's removals and renames
        #: (`own_change`): answers check it (rule 3).
        self.seq = 0
        #: The connection the master tells of changes, while it is open.
        self._watch: object | None = None
        #: Until when (monotonic) the watch's notices are trusted: its lease (rule 6); infinite from a
        #: master that grants none (an earlier version).
        self._until = 0.0
        #: The lease ran out and has not been renewed: said once per lapse.
        self._lapsed = False
        self._names: dict[int, Entry] = {}  # inode -> (parent, name) it was last answered under
        self._told: dict[int, tuple[int, int]] = {}  # inode -> (size, mtime_ns) the kernel was last told
        self._inodes: dict[Entry, int] = {}
        #: Directories whose every name this mount knows, and those names.
        self._whole: dict[int, set[bytes]] = {}
        self._whole_names = 0
        #: Names the master answered "no such name" for (rule 4): entry -> until when (monotonic).
        self._absent: dict[Entry, float] = {}
        self._todo: deque[Entry | int] = deque()
        #: How many times each inode is in `_todo`: `settle` looks an inode up at every open, and the
        #: queue may hold 100,000 items under a flood of notices.
        self._queued: Counter[int] = Counter()
        #: The item the thread is invalidating now (None: none), under `_cond` (`settle`).
        self._current: Entry | int | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.invalidated = 0

    # -- how long an answer may be kept ---------------------------------------------

    @property
    def watched(self) -> bool:
        """Whether the master's notices are heard and trusted now: watched, and within its lease."""
        return self._watch is not None and time.monotonic() < self._until

    def timeouts(self, since: int) -> tuple[float, float]:
        """(attribute, entry) timeouts for an answer to a request that began when `seq` was `since`."""
        if self.watched and since == self.seq:
            return (self.long if self.short_attr else 0.0), (self.long if self.short_entry else 0.0)
        return self.short_attr, self.short_entry

    # -- what the kernel holds ------------------------------------------------------

    def remember(self, ino: int, parent: int, name: bytes, listed: bool = False) -> None:
        """The kernel was given `name` in `parent`, inode `ino` (which exists: in a known directory, too).

        `listed`: by a directory listing.  A listing does not replace the name the inode is checked
        by (`name_of`): the kernel may still hold the name it came by before, renamed away by another
        mount, and an open through that name would pass the check of the new one (a POSIX probe:
        a listing beside an open of the old name wrote into the renamed file).  A lookup does
        replace it, and has the kernel drop the old name: ChunkFS has no hard links, so it is stale.
        """
        old = self._names.get(ino)
        if old != (parent, name) and not (listed and old is not None):
            if old is not None:
                self._drop_in_kernel(old)
                if self._inodes.get(old) == ino:
                    del self._inodes[old]
            self._names[ino] = (parent, name)
        self._absent.pop((parent, name), None)
        self._inodes[(parent, name)] = ino
        self._whole_add(parent, name)

    def _drop_in_kernel(self, entry: Entry) -> None:
        with self._cond:
            self._todo.append(entry)
            self._cond.notify()

    def _whole_add(self, parent: int, name: bytes) -> None:
        names = self._whole.get(parent)
        if names is not None and name not in names:
            if self._whole_names >= WHOLE_NAMES_MAX:
                self._unknown(parent)
            else:
                names.add(name)
                self._whole_names += 1

    def name_of(self, ino: int) -> Entry | None:
        """The (parent, name) the kernel was last given `ino` under: the name it reaches the inode by
        (ChunkFS has no hard links), until another client's change has it look the name up again."""
        return self._names.get(ino)

    def ino_at(self, parent: int, name: bytes) -> int | None:
        """The inode the kernel was last given for `name` in `parent`, if it still has it."""
        return self._inodes.get((parent, name))

    def removed(self, parent: int, name: bytes) -> int | None:
        """This mount removed the name (the kernel dropped it itself); the inode it led to, if known here."""
        ino = self._inodes.pop((parent, name), None)
        if ino is not None:
            self._unknown(ino)  # a directory removed: nothing to know of it
        names = self._whole.get(parent)
        if names is not None and name in names:
            names.discard(name)
            self._whole_names -= 1
        return ino

    def own_change(self) -> None:
        """This mount is removing or renaming a name (called before and after): answers begun
        meanwhile may predate it (an open file's nlink and ctime, for one), so rule 3 holds them."""
        self.seq += 1

    def renamed(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> int | None:
        """This mount moved a name; the inode it replaced, if known here."""
        self._absent.pop((new_parent, new_name), None)
        replaced = self._inodes.get((new_parent, new_name))
        ino = self._inodes.pop((parent, name), None)
        names = self._whole.get(parent)
        if names is not None and name in names:
            names.discard(name)
            self._whole_names -= 1
        if ino is not None:
            self.remember(ino, new_parent, new_name)
        else:
            self._unknown(new_parent)  # the name is there now, under an inode not known here
        return replaced if replaced != ino else None

    # -- directories known whole --------------------------------------------------------

    def whole(self, ino: int, names: Iterable[bytes], since: int) -> None:
        """`names` are every name in directory `ino`, as answered to a request (or requests) begun at `since`."""
        if not self.watched or since != self.seq or ino in self._whole:
            return
        known = set(names)
        if self._whole_names + len(known) > WHOLE_NAMES_MAX:
            return
        self._whole[ino] = known
        self._whole_names += len(known)

    def missing(self, parent: int, name: bytes) -> bool:
        """Whether `name` is known not to be in `parent` (answered without asking the master): the
        directory is known whole, or the master said so a moment ago (rule 4)."""
        names = self._whole.get(parent)
        if names is not None and self.watched and name not in names:
            return True
        until = self._absent.get((parent, name))
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._absent[(parent, name)]
        return False

    def no_such_name(self, parent: int, name: bytes, since: int) -> None:
        """The master answered that `name` is not in `parent`, to a request begun at `since` (rule 4)."""
        if self.watched and since != self.seq:
            return  # a notice came meanwhile: the answer may be older than the change it told of
        _, keep = self.timeouts(since)
        if keep:
            if len(self._absent) >= ABSENT_MAX:
                self._absent.clear()
            self._absent[(parent, name)] = time.monotonic() + keep

    def _unknown(self, ino: int) -> None:
        names = self._whole.pop(ino, None)
        if names is not None:
            self._whole_names -= len(names)

    def told(self, ino: int, size: int, mtime_ns: int) -> None:
        """The kernel was given these attributes of `ino`."""
        self._told[ino] = (size, mtime_ns)

    def stale(self, ino: int, size: int, mtime_ns: int) -> bool:
        """Whether the kernel may hold other attributes of `ino` than these (the master's, just answered)."""
        return self._told.get(ino, (size, mtime_ns)) != (size, mtime_ns)

    def drop_attributes_now(self, ino: int, size: int, mtime_ns: int) -> None:
        """Have the kernel drop its attributes of `ino` before returning (on the event loop: attributes take no lock).

        The kernel will ask for them again; nothing older than `size` and `mtime_ns` is held any more.
        """
        try:
            self._invalidate_inode(ino, True)  # attributes only
            self.invalidated += 1
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                logger.debug("dropping the kernel's attributes of inode %d: %s", ino, exc)
        self._told[ino] = (size, mtime_ns)

    async def settle(self, ino: int) -> None:
        """Before an open of `ino` returns: no invalidation of it queued or running on the thread.

        An invalidation makes the kernel throw away the answer to any request for the inode's
        attributes it has in flight: one the thread made while the kernel asked for them right
        after this open (its first read past the size it kept, `lseek(SEEK_END)`) left the kernel
        with the size from before another mount's close (a fault probe: 3-9 of 150 reads right
        after it were short, and a write at the end it gave overwrote bytes).  The open's own
        `drop_attributes_now`, and the page cache it does not keep, do what those queued would.
        """
        with self._cond:
            if self._queued.pop(ino, 0):
                self._todo = deque(item for item in self._todo if item != ino)
        for _ in range(SETTLE_TRIES):  # the thread is invalidating it now: only for as long as that takes
            with self._cond:
                if self._current != ino:
                    return
            await asyncio.sleep(SETTLE_PAUSE)
        logger.debug("inode %d: the kernel cache's thread is still invalidating it", ino)

    def forget(self, inodes: Iterable[int]) -> None:
        """The kernel forgot these inodes."""
        for ino in inodes:
            self._told.pop(ino, None)
            entry = self._names.pop(ino, None)
            if entry is not None and self._inodes.get(entry) == ino:
                del self._inodes[entry]

    # -- the watch ---------------------------------------------------------------

    def watching(self, conn: object, until: float = float("inf")) -> None:
        """The master tells `conn` of other clients' changes from now on, trusted `until` (rule 6)."""
        self._watch = conn
        self._until = until
        self._lapsed = False
        self.seq += 1

    def renewed(self, conn: object, until: float) -> None:
        """The master answered a renewal of `conn`'s watch lease: its notices are trusted `until`."""
        if conn is not self._watch:
            return
        if self._lapsed:
            logger.info("the master answers again: its change notices are trusted again")
            self._lapsed = False
            self.seq += 1
        self._until = max(self._until, until)

    def lapse(self, conn: object) -> bool:
        """Rule 6: if `conn`'s lease ran out unrenewed, drop everything the kernel holds; whether it did."""
        if conn is not self._watch or self._lapsed or time.monotonic() < self._until:
            return False
        self._lapsed = True
        self._forget_all()
        logger.warning("no word from the master for %g s: another master may be changing files unheard; the "
                       "kernel drops the %d name(s) and the pages it cached from this mount, short cache "
                       "timeouts until the master answers", WATCH_LEASE, len(self._names))
        return True

    def lost(self, conn: object) -> None:
        """`conn` is closed: if it was the watched one, everything the kernel holds may be stale (rule 2)."""
        if conn is not self._watch:
            return
        self._watch = None
        if self._lapsed:
            return  # (dropped already)
        self._forget_all()
        logger.info("lost the master's change notices: the kernel forgets %d cached name(s); "
                    "short cache timeouts until they are back", len(self._names))

    def _forget_all(self) -> None:
        """Notices may be missed from now on: answers begun before are not kept long, nothing is known
        whole or absent, and the kernel drops every name, attribute and page it holds from this mount."""
        self.seq += 1
        self._whole.clear()
        self._whole_names = 0
        self._absent.clear()
        self._queue_everything()

    def changed(self, entries: Iterable[Entry], inodes: Iterable[int]) -> None:
        """Another client changed these names and inodes (an INVALIDATE notice)."""
        self.seq += 1
        entries = list(entries)
        for parent, name in entries:
            self._unknown(parent)
            self._absent.pop((parent, name), None)
        with self._cond:
            self._todo.extend(entries)
            inodes = list(inodes)
            self._todo.extend(inodes)
            self._queued.update(inodes)
            if len(self._todo) > QUEUE_MAX:
                self._queue_everything_locked()
            self._cond.notify()

    def _queue_everything(self) -> None:
        with self._cond:
            self._queue_everything_locked()
            self._cond.notify()

    def _queue_everything_locked(self) -> None:
        self._todo.clear()
        self._todo.extend(self._names)  # inodes first: their pages are what a reader may read stale
        self._todo.extend(self._inodes)
        self._queued = Counter(self._names.keys())  # each known inode once

    # -- the invalidating thread -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kernel-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (before the FUSE session closes: it calls into it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(STOP_WAIT)
            self._thread = None

    def _unqueued(self, ino: int) -> None:
        """One `ino` left the queue (under `_cond`)."""
        left = self._queued[ino] - 1
        if left > 0:
            self._queued[ino] = left
        else:
            del self._queued[ino]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._todo and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item = self._current = self._todo.popleft()
                if isinstance(item, int):
                    self._unqueued(item)
            try:
                if isinstance(item, int):
                    # Attributes and cached data: another client may have rewritten the file with its
                    # size and mtime as they were (`cp -p`), which the kernel's own check (size or mtime
                    # changed) does not see, and a process holding it open or mapping it would go on
                    # reading the old bytes.  Dropping pages may wait for the kernel's page locks: here,
                    # on this thread, never on the event loop (rule 7).
                    self._invalidate_inode(item, False)
                else:
                    self._invalidate_entry(*item)
                self.invalidated += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # ENOENT: the kernel did not hold it, nothing to drop
                    logger.debug("invalidating %r in the kernel's cache: %s", item, exc)
            finally:
                with self._cond:
                    self._current = None

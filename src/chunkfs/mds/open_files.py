"""Files held open by mounts, and the orphans they keep alive (POSIX: a file lives until its last close).

Which mount has which file open is *soft state* of the master, like the
exclusive leases (`leases.py`): an open and a close are not worth a Raft
commit each.  What must survive a master change is replicated: an unlinked
file that may still be open becomes an *orphan* in the store (no name,
``nlink`` 0, chunks kept), and only a ``free_orphans`` command frees it; and
the *sessions* themselves, one per running mount (``open_session``, once per
mount; ``close_sessions`` at unmount or expiry), so that a new master knows
whom to wait for.

So the rules are:

* a mount registers every inode it opens (OPEN, or CREATE with its session)
  and releases it after its last close (RELEASE, several files at a time); it
  numbers its registrations (``oseq``) and a release says up to which one it
  counts: an open the master registered later, sent before the release but
  answered after it, keeps the file held whatever order the two arrive in;
  it renews its session every
  quarter of `SESSION_TTL`, and re-sends all its open inodes when the master
  answers that it does not know the session (a new master, or an expiry),
  the last page marked ``complete``; at unmount it ends the session;
* unlink and rename free a file at once only when no session holds it;
  otherwise they leave an orphan;
* a session is taken for dead only after ``session-timeout`` (minutes) of
  silence, measured on the master's awake clock: a mount that was stopped or
  cut off for a while keeps what it holds open, as it would on a local disk;
* `OrphanReaper` frees orphans that nobody holds: at their last release, when
  a session expires or ends, and in a sweep once a new master's grace period
  is over.  During the grace period every inode counts as held: the new
  master cannot know yet.  It ends when every session the store lists has
  re-sent its open files, or after ``session-timeout`` for those that never
  come back (they are closed then);
* the reaper also trims the files an expired session held and no other
  may write: a mount that died writing leaves the bytes it wrote past the
  size it had committed, and a truncate or a write that grows the file later
  must show zeros there, not them.  Only at expiry: a mount cut off for a
  while comes back and reports its size, and its bytes are then the file's.
  A file another mount holds open to write waits for that hold's end (what
  that mount wrote past the size is not committed yet either, and looks the
  same); one it holds only to read does not (its OPEN, or the files it
  re-sends to a new master, said ``read_only``; one that does not say may write);
* a new master does not know which files a session held that never comes
  back (a mount lost with the last master): the chunk servers tell it how
  far writes made before its election reached into each chunk
  (cs/recent_writes.py), and once such a session is given up, the files
  written past their size are trimmed the same way.

An inode being freed is in `OpenFileTable.freeing` from the moment the
decision is made until the command is applied: an OPEN that arrives in
between answers "not found" instead of registering a file about to vanish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from chunkfs.common.errors import ChunkFSError, InvalidArgument, NotFound, Unavailable
from chunkfs.common.settings import SETTINGS
from chunkfs.mds.store import MAX_SESSIONS
from chunkfs.protocol.messages import SESSION_TTL

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

logger = logging.getLogger(__name__)

#: Open inodes per session the table keeps at most (a bound on soft state; sessions: `MAX_SESSIONS`).
MAX_OPEN_PER_SESSION = 1_000_000
#: How long a silent session is kept by default, seconds (the cluster setting ``session-timeout``).
SESSION_TIMEOUT = SETTINGS["session-timeout"].default
#: How often the reaper looks for orphans nobody holds, besides being told (seconds).
SWEEP_EVERY = SESSION_TTL
#: Orphans freed by one command, and looked at by one sweep.
ORPHAN_BATCH = 1000
#: Passes that try to trim a dead session's file before giving up on it (`OrphanReaper._trim_left`).
TRIM_TRIES = 10
#: A removed directory is kept this long (seconds, by the master's clock) for processes still in
#: it: a working directory is not an open file, so no mount registers it.
REMOVED_DIR_KEEP = 600.0


class OpenFileTable:
    """Sessions and the inodes they hold open; no I/O, a clock to inject for tests."""

    def __init__(self, ttl: float = SESSION_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        #: Silence after which a session expires (``session-timeout``), seconds on `clock`.
        self.ttl = ttl
        self.clock = clock
        #: session -> when it was last heard from, on `clock` (so a changed `ttl` applies at once)
        self.sessions: dict[str, float] = {}
        self.opens: dict[str, set[int]] = {}
        #: inode -> sessions that hold it
        self.holders: dict[int, set[str]] = {}
        #: inode -> sessions whose hold may write it (an open not said to be read-only), until it ends
        self.writers: dict[int, set[str]] = {}
        self.freeing: set[int] = set()
        #: Sessions that renewed with this master (SESSION): an OPEN alone does not make one known,
        #: or a mount whose first request to a new master is an open would never re-send the others.
        self.known: set[str] = set()
        #: Sessions that have sent this master every file they hold open.
        self.complete: set[str] = set()
        #: Sessions the store lists (committed with ``open_session``), as far as this master knows.
        self.stored: set[str] = set()
        #: Whether `stored` has everything committed before this master's term (`listed`).
        self.is_listed = False
        #: Sessions listed then that have not sent this master their open files yet: fixed at the
        #: listing (a session this master opens later tells it everything from the start), so the
        #: grace period, once over, stays over, and `held` costs a set lookup on every unlink.
        self.awaited: set[str] = set()
        #: Sessions expired or ended, to be closed in the store.
        self.ended: set[str] = set()
        #: Files an expired session held that no other holds: its writes past their size may be there
        #: (`OrphanReaper` trims them).
        self.left_by_dead: set[int] = set()
        #: Files to trim once no mount holds them to write: a dead session's that another mount held so, and
        #: those whose writer was told its writes were cut (it may have written past the size since).
        self.trim_later: set[int] = set()
        #: Files the chunk servers say were written past their size before this master's election
        #: (`OrphanReaper.written_past_size`): a dead session's, if any did not come back.
        self.past_size_before: set[int] = set()
        #: Whether a session the store listed did not come back to this master: a mount lost with the last.
        self.gave_up = False
        self.grace_until = 0.0

    def start_grace(self) -> None:
        """This server has just become master: forget everything; wait for the store's sessions (`listed`)."""
        for table in (self.sessions, self.opens, self.holders, self.writers, self.known, self.complete, self.stored,
                      self.ended, self.awaited, self.left_by_dead, self.trim_later, self.past_size_before):
            table.clear()
        self.freeing.clear()
        self.is_listed = False
        self.gave_up = False
        self.grace_until = self.clock() + self.ttl

    def listed(self, stored: Iterable[str]) -> None:
        """The store's sessions, read once everything committed before this master's term is applied."""
        self.stored.update(stored)
        self.awaited = self.stored - self.complete - self.ended
        self.is_listed = True

    def in_grace(self) -> bool:
        """Whether a session may still hold files this master has not heard of."""
        if self.is_listed and not self.awaited:
            return False
        if self.clock() < self.grace_until:
            return True
        if self.awaited:
            logger.warning("%d mount session(s) did not come back within %.0f s of this master's start: "
                           "the unlinked files they held open are freed", len(self.awaited), self.ttl)
            self.ended |= self.awaited
            self.awaited.clear()
            self.gave_up = True
        self.is_listed = True
        return False

    def held(self, ino: int) -> bool:
        """Whether some mount may hold `ino` open (always, while a new master cannot know)."""
        return ino in self.holders or self.in_grace()

    def may_be_written(self, ino: int) -> bool:
        """Whether some mount may hold `ino` open to write (always, while a new master cannot know)."""
        return ino in self.writers or self.in_grace()

    def renew(self, session: str, complete: bool = False) -> bool:
        """Extend `session`; False if this master did not know it (the mount must re-send its opens).

        `complete`: the mount has now sent every file it holds (taken from a known session only:
        an unknown one has not re-sent anything yet).
        """
        known = session in self.known
        self._touch(session)
        self.known.add(session)
        if known and complete:
            self.complete.add(session)
            self.awaited.discard(session)
        return known

    def _touch(self, session: str) -> None:
        _check_session(session)
        if session not in self.sessions and len(self.sessions) >= MAX_SESSIONS:
            self.expire()
            if len(self.sessions) >= MAX_SESSIONS:
                raise Unavailable(f"too many mount sessions ({MAX_SESSIONS}); retry later")
        self.sessions[session] = self.clock()
        self.opens.setdefault(session, {})

    def open(self, session: str, ino: int, seq: int = 0, read_only: bool = False) -> None:
        """Hold `ino` for `session`, by the mount's registration number `seq` (see `release`); `read_only`: the
        open cannot write (a hold that may write once stays so until it ends)."""
        if ino in self.freeing:
            raise NotFound(f"inode {ino} does not exist")
        self._touch(session)
        held = self.opens[session]
        if ino not in held and len(held) >= MAX_OPEN_PER_SESSION:
            raise Unavailable(f"session {session} holds {MAX_OPEN_PER_SESSION} open files; close some")
        held[ino] = max(held.get(ino, 0), seq)
        self.holders.setdefault(ino, set()).add(session)
        if not read_only:
            self.writers.setdefault(ino, set()).add(session)

    def release(self, session: str, ino: int, upto: int | None = None) -> bool:
        """Drop one session's hold, unless registered after `upto`; True if nobody holds `ino` any more.

        `upto`: the mount's number of the last registration its closed file counted (None: all).
        A later one is an open of the same file that the release must not undo.
        """
        held = self.opens.get(session, {})
        if upto is not None and held.get(ino, 0) > upto:
            return False
        held.pop(ino, None)
        _drop(self.holders, ino, session)
        self._no_writer(ino, session)
        return ino not in self.holders

    def to_read(self, session: str, ino: int, upto: int) -> None:
        """`session` holds `ino` only to read from now on (its last open that could write it was closed, all
        committed), unless it registered the file again after `upto` (a probe: a reader that had opened the
        file to write once, even before the writer died, kept the trim off until its last close, at a size
        grown meanwhile)."""
        held = self.opens.get(session, {})
        if ino in held and held[ino] <= upto:
            self._no_writer(ino, session)

    def _no_writer(self, ino: int, session: str) -> None:
        """`session`'s hold of `ino` cannot write it any more: a file waiting for its trim is trimmed once no
        hold that may write it is left (`trim_later`)."""
        _drop(self.writers, ino, session)
        if ino in self.trim_later and ino not in self.writers:
            self.trim_later.discard(ino)
            self.left_by_dead.add(ino)

    def end(self, session: str) -> list[int]:
        """The mount is gone (unmounted, or expired): drop its session; the inodes nobody holds any more."""
        self.sessions.pop(session, None)
        self.known.discard(session)
        self.complete.discard(session)
        self.awaited.discard(session)
        self.ended.add(session)
        return [ino for ino in self.opens.pop(session, {}) if self.release(session, ino)]

    def expire(self) -> list[int]:
        """End sessions not renewed in time; return the inodes nobody holds any more."""
        now = self.clock()
        freed: list[int] = []
        for session in [s for s, heard in self.sessions.items() if heard + self.ttl <= now]:
            logger.warning("mount session %s expired (silent for %.0f s): its open files are released",
                           session, self.ttl)
            held = set(self.opens.get(session, {}))
            freed.extend(self.end(session))
            for ino in held:  # another mount may write those it holds: trimmed at its hold's end
                (self.trim_later if ino in self.writers else self.left_by_dead).add(ino)
        return freed

    def silent(self, stored: Iterable[str], after: float) -> list[str]:
        """Of the `stored` sessions, those this master has not heard from in the last `after` seconds."""
        since = self.clock() - after
        return [name for name in stored if self.sessions.get(name, float("-inf")) < since]

    def closed(self, sessions: Iterable[str]) -> None:
        """These sessions were closed in the store."""
        self.stored.difference_update(sessions)
        self.ended.difference_update(sessions)


def _drop(table: dict[int, set[str]], ino: int, session: str) -> None:
    """Take `session` off `ino`'s entry of `table` (holders, writers), and the entry once empty."""
    sessions = table.get(ino)
    if sessions is not None:
        sessions.discard(session)
        if not sessions:
            del table[ino]


def _check_session(session: str) -> None:
    if not session or len(session) > 256:
        raise InvalidArgument("a mount session is a non-empty name of at most 256 characters")


class OrphanReaper:
    """Frees orphaned files nobody holds open, in batches, off the request path (master only)."""

    def __init__(self, mds: MetadataServer) -> None:
        self.mds = mds
        self.table = mds.open_files
        self._pending: set[int] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Files freed after their last release, having been unlinked while held open (a metric).
        self.freed = 0
        #: Files being trimmed or zeroed (`_under_way`): an open or a size change waits for it (`settled`).
        self._trimming: dict[int, asyncio.Event] = {}
        #: Files whose trim failed -> tries so far.
        self._trim_tries: dict[int, int] = {}
        #: Whether this master has taken up the trims an earlier one committed and did not finish.
        self._unfinished_taken = False
        #: Files the chunk servers named as written past their size before this master (each judged once).
        self._reported: set[int] = set()
        #: Files waiting for a trim that the store has noted (`_note_trims`) under this master.
        self._noted: set[int] = set()

    def start(self) -> None:
        """On becoming master."""
        self._pending.clear()
        self._unfinished_taken = False
        self._reported.clear()
        self._noted.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = self.mds.spawn(self._run())

    def consider(self, ino: int) -> None:
        """`ino` was orphaned or released: free it soon if it is an orphan nobody holds."""
        self._pending.add(ino)
        self._wake.set()

    async def _run(self) -> None:
        sweep_at = 0.0  # at once when the grace period is over
        while self.mds.raft.is_leader():
            self._wake.clear()
            try:
                self.table.ttl = self.mds.healing.settings()["session-timeout"]
                now = self.table.clock()
                for ino in self.table.expire():
                    self._pending.add(ino)
                if not self.table.in_grace() and now >= sweep_at:
                    self._pending.update(self.mds.store.orphans(ORPHAN_BATCH, time.time() - REMOVED_DIR_KEEP))
                    sweep_at = now + SWEEP_EVERY
                await self._close_ended()
                await self._free_pending()
                if not self.table.ended:  # a trim only once its session is off the store's list (`listed`)
                    await self._trim_left()
            except Exception:  # noqa: BLE001 - one bad pass must not end the reaping (sessions, space) for good
                logger.exception("a pass of the orphan reaper failed; the next starts afresh (orphans are found "
                                 "again by the store's sweep)")
                self._pending.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), SESSION_TTL / 4)
            except TimeoutError:
                pass

    async def settled(self, ino: int, size: int | None = None) -> None:
        """Before an open registers `ino`, or before `size` is set on it: a trim it waits for made first
        (`trim_first`), and one under way waited for (its writes must not meet the trim's cut).

        A trim committed and not zeroed yet is zeroed first, or the caller fails (Unavailable: a
        mount retries for a while): a write after it would be zeroed by a later zeroing at the
        trim's size.  Every open: the master does not know which may write.
        """
        await self.trim_first(ino, size)
        trim = self._trimming.get(ino)
        if trim is not None:
            await trim.wait()
        if self.mds.store.unzeroed_size(ino) is not None:
            await self._zero(ino)

    async def trim_first(self, ino: int, size: int | None = None) -> None:
        """Before an open registers `ino`, or before `size` is set on it: a file a dead writer may have
        written past, that no mount holds to write, is trimmed at the size it has first, not left to the reaper's
        pass.  An open for writing that came between the writer's expiry and that pass held the file, the
        trim waited for its release, and was then made at the size the new writer had grown the file to:
        the dead writer's bytes in between showed (a fault probe: 7-10 files of 20 opened within ms of
        the expiry).  A truncate right after the last close did the same.  A size that does not grow the file
        needs nothing (its own cut removes them).

        A file some mount holds open to write is not trimmed: what that mount wrote past the size is not
        committed yet, and is indistinguishable from the dead writer's bytes; nor while a new master
        cannot know who holds what (its grace period).  A read-only hold does not count.
        """
        table = self.table
        if ino in self._trimming or table.may_be_written(ino):
            return
        pending = ino in table.left_by_dead or (table.gave_up and ino in table.past_size_before) \
            or (not self._unfinished_taken and self.mds.store.noted_for_trim(ino))  # (after: all in memory)
        if not pending:
            return
        attr = self.mds.store.getattr(ino)
        if attr["type"] != "f" or attr["nlink"] == 0 or (size is not None and size <= attr["size"]):
            return
        with self._under_way(ino):  # (no await since `held`)
            await self.mds.trim_past_size(ino, attr["size"])
        self._done(ino)

    async def _zero(self, ino: int) -> None:
        """Zero a trimmed file's last chunk (`MetadataServer.zero_trimmed`), once for all who wait for it."""
        for _ in range(TRIM_TRIES):
            trim = self._trimming.get(ino)
            if trim is None:
                break
            await trim.wait()  # another's zeroing, or its trim: done, or failed (then this one tries)
        else:
            raise Unavailable(f"inode {ino} is being trimmed of what a dead mount wrote past its size: retry")
        if self.mds.store.unzeroed_size(ino) is None:
            return
        with self._under_way(ino):
            await self.mds.zero_trimmed(ino)
        self._done(ino)

    @contextlib.contextmanager
    def _under_way(self, ino: int) -> Iterator[None]:
        """`ino` is being trimmed or zeroed: `settled` and `_zero` wait, and wake when it is over, done or not."""
        over = self._trimming[ino] = asyncio.Event()
        try:
            yield
        finally:
            del self._trimming[ino]
            over.set()

    def _done(self, ino: int) -> None:
        """`ino`'s trim is made: not again at the file's size now (a size set since is a live mount's, which a
        trim would tell, at its next size, that its writes were cut)."""
        for waiting in (self.table.left_by_dead, self.table.past_size_before, self._noted):
            waiting.discard(ino)
        self._trim_tries.pop(ino, None)

    def wake(self) -> None:
        """Look at what waits (files to trim, released) now."""
        self._wake.set()

    async def written_past_size(self, ends: list[tuple[int, int]], where: str) -> None:
        """(chunk id, how far writes reached into it) a chunk server reports of writes made before this
        master's election (fanned_mender.py).  A file written past its size then was a live writer's, which
        commits its size before it closes the file, or a dead one's: if a session the store listed does not
        come back, such files are trimmed as a dead session's (`_trim_left`), each once no mount holds it to write."""
        await self.mds.log.read_barrier()  # the sizes committed before this term
        store, chunk_size = self.mds.store, self.mds.node.cluster.chunk_size
        found = set()
        for chunk_id, end in ends:
            chunk = store.chunk(chunk_id)
            if chunk is None:
                continue  # removed since
            try:
                attr = store.getattr(chunk.ino)
            except NotFound:
                continue
            if attr["type"] == "f" and attr["nlink"] > 0 and chunk.index * chunk_size + end > attr["size"]:
                found.add(chunk.ino)
        found -= self._reported
        self._reported |= found
        if found:
            logger.info("%s: %d file(s) written past their size under the last master: trimmed once no mount holds "
                        "them to write, if a mount's session does not come back (it may have died with that master)",
                        where, len(found))
            self.table.past_size_before |= found
            self.wake()

    async def _trim_left(self) -> None:
        """Cut what dead sessions may have written past the size of the files they held (one at a time)."""
        table = self.table
        if table.in_grace():
            return
        if not self._unfinished_taken:
            # Trims committed whose zeroing an earlier master did not live to finish, and files an earlier
            # master noted for a trim and did not trim (it died first, or another mount held them).
            noted, unzeroed = self.mds.store.to_trim(), self.mds.store.unzeroed()
            table.left_by_dead.update(unzeroed, noted)
            # A trim not zeroed yet needs no note: its row brings it back to a next master, and its zeroing
            # takes no note off (a probe: a note left behind trimmed the file again, grown since, under
            # the next master that gave a session up).
            self._noted.update(noted, unzeroed)
            self._unfinished_taken = True
        try:
            await self._note_trims()
        except ChunkFSError as exc:
            logger.warning("could not note %d file(s) to trim yet (%s); retrying", len(table.left_by_dead), exc)
            return
        for ino in sorted(table.left_by_dead):
            if ino not in table.left_by_dead or ino in self._trimming:
                continue  # trimmed meanwhile, or being trimmed (`trim_first`): not again at a new size
            table.left_by_dead.discard(ino)
            if not self.mds.raft.is_leader():
                return  # the next master's to judge
            if self.mds.store.unzeroed_size(ino) is not None:
                # Trimmed, its last chunk not zeroed yet: at the trim's size, whoever holds it (every open
                # and size change since waited for the zeroing: `settled`).
                await self._tried(ino, self._zero(ino))
                continue
            if table.may_be_written(ino):
                table.trim_later.add(ino)  # a mount may write past the size: trimmed at its hold's end
                continue
            try:
                attr = self.mds.store.getattr(ino)
            except NotFound:
                continue
            if attr["type"] != "f" or attr["nlink"] == 0:
                continue  # an orphan: freed, not trimmed
            with self._under_way(ino):  # (no await since `held`: no open got in between)
                done = await self._tried(ino, self.mds.trim_past_size(ino, attr["size"]))
            if done:
                self._done(ino)  # (off the store's list with the trim)

    async def _tried(self, ino: int, trim: Awaitable[None]) -> bool:
        """Await a trim (or its zeroing) of `ino`; on failure, leave it to a later pass, `TRIM_TRIES` in all."""
        try:
            await trim
        except ChunkFSError as exc:
            tries = self._trim_tries.get(ino, 0) + 1
            if tries < TRIM_TRIES:
                self._trim_tries[ino] = tries
                self.table.left_by_dead.add(ino)  # the next pass tries again
                logger.info("inode %d: what a dead mount may have written past its size is not cut yet (%s); "
                            "trying again", ino, exc)
            else:
                self._trim_tries.pop(ino, None)
                if self.mds.store.unzeroed_size(ino) is not None:
                    logger.warning("inode %d: the last chunk of a dead mount's file was not zeroed past its size "
                                   "(%s): its next open or size change zeroes it first", ino, exc)
                else:
                    logger.warning("inode %d: what a dead mount may have written past its size was not cut "
                                   "(%s); a truncate that grows it may show those bytes", ino, exc)
            return False
        return True

    async def _note_trims(self) -> None:
        """Note in the store the files waiting for a trim, before the sessions that leave them are closed: a
        master that dies before it trims them (or before another mount's last release of one) takes only
        its memory along, and the next one trims them (a fault probe: 41 files of a dead writer never cut
        when the master that gave its session up was killed at once)."""
        table = self.table
        if table.gave_up:  # a mount lost with the last master: its files are among these
            table.left_by_dead |= table.past_size_before
            table.past_size_before.clear()
        new = sorted((table.left_by_dead | table.trim_later) - self._noted)
        for start in range(0, len(new), ORPHAN_BATCH):
            page = new[start:start + ORPHAN_BATCH]
            await self.mds.propose("note_trims", inos=page)
            self._noted.update(page)

    async def _close_ended(self) -> None:
        """Take sessions that expired or ended off the store's list (one commit for all of them)."""
        ended = sorted(self.table.ended)
        if not ended:
            return
        try:
            await self._note_trims()
            await self.mds.propose("close_sessions", sessions=ended)
        except ChunkFSError as exc:
            logger.warning("could not close %d ended mount session(s) yet (%s); retrying", len(ended), exc)
            return
        self.table.closed(ended)

    async def _free_pending(self) -> None:
        if self.table.in_grace():
            return
        ready = [ino for ino in self._pending if not self.table.held(ino)][:ORPHAN_BATCH]
        self._pending.difference_update(ready)
        orphans = set(self.mds.store.orphans_among(ready))
        if not orphans:
            return
        self.table.freeing |= orphans
        try:
            dropped = await self.mds.propose("free_orphans", inos=sorted(orphans))
        except ChunkFSError as exc:
            logger.warning("could not free %d unlinked file(s) yet (%s); retrying", len(orphans), exc)
            self._pending |= orphans
            return
        finally:
            self.table.freeing -= orphans
        self.freed += len(orphans)
        logger.debug("freed %d unlinked file(s) no mount holds open (%d chunk(s))", len(orphans), len(dropped))
        self.mds.chunks.delete_chunks(dropped)

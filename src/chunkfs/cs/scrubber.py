"""The scrubber: re-reads every replica at a bounded rate and verifies its checksums.

A pass walks the replicas in chunk-id order, verifying one whole replica at a
time (`ChunkStore.bad_blocks`, in a worker thread) and then pausing long enough
that the average stays under ``scrub-rate``; a new pass starts
``scrub-interval`` after the previous one began.  Both come from the cluster
settings in the master's heartbeat replies.  Bad blocks are reported to the
master, which has them repaired from the other replicas (one bad block must
not cost the chunk's good ones).  Only a replica whose header is corrupt is
moved aside whole (quarantined, never deleted) and replaced by a copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, NotFound
from chunkfs.common.replica_file import header_never_written
from chunkfs.protocol.messages import Msg

if TYPE_CHECKING:
    from chunkfs.cs.server import ChunkServer

logger = logging.getLogger(__name__)

#: Used until the master's first heartbeat reply says otherwise (the cluster defaults).
DEFAULT_RATE = 4 << 20
DEFAULT_INTERVAL = 7 * 86400.0
#: The scrubber looks at its settings at least this often while it waits.
POLL = 1.0
#: Reports that could not be sent yet (no master link), kept to retry; bounded.
MAX_PENDING_REPORTS = 1024


class Scrubber:
    def __init__(self, server: ChunkServer) -> None:
        self.server = server
        self.rate = float(DEFAULT_RATE)
        self.interval = DEFAULT_INTERVAL
        self.passes = 0
        self.verified = 0
        self.corrupt = 0
        #: chunk id -> what to tell the master of it.
        self._pending: dict[int, _Report] = {}
        self._task: asyncio.Task[None] | None = None
        #: Sending the reports of missing replicas found between scrub passes (`missing`).
        self._reporting: asyncio.Task[None] | None = None

    def update(self, settings: dict[str, Any]) -> None:
        """Settings from a heartbeat reply (values checked by the master; re-checked here)."""
        rate, interval = settings.get("scrub-rate"), settings.get("scrub-interval")
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            self.rate = float(rate) * (1 << 20)
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.interval = float(interval)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self.server.store.on_missing = lambda chunk_id: loop.call_soon_threadsafe(self.missing, chunk_id)

    def missing(self, chunk_id: int) -> None:
        """A replica's file was found missing from disk (chunk_store.py): the master drops it, and has it
        copied again from the others, as for a replica corrupt whole."""
        if chunk_id in self._pending or len(self._pending) >= MAX_PENDING_REPORTS:
            return
        logger.error("chunk %#x: the replica file is missing from %s; telling the master", chunk_id,
                     self.server.store.root)
        self._pending[chunk_id] = _Report("replica file missing from the chunk server's disk")
        if self._reporting is None or self._reporting.done():
            self._reporting = asyncio.get_running_loop().create_task(self._send_reports())

    def report_now(self, chunk_ids: list[int]) -> None:
        """Have the master check `chunk_ids` now, not at a pass's pace: the replicas a power cut left
        without a header (clean_stop.py), which it makes again before a reader meets them (a power-cut
        probe: nothing was mended until read, each read then stalled until it was).

        Left in place until the master's check moves them aside: moved aside here, a server stopped
        before its reports were all taken lost them, and the master listed replicas no longer there
        (a probe: 422 chunks offline for good).  At most FANNED_REPORT_MAX, past MAX_PENDING_REPORTS.
        """
        for chunk_id in chunk_ids:
            self._pending[chunk_id] = _Report(
                "replica header never written, found at this server's start after its machine went down",
                unsynced=True, check=True)

    def stop(self) -> None:
        for task in (self._task, self._reporting):
            if task is not None:
                task.cancel()

    async def _run(self) -> None:
        last_start = time.monotonic()
        # The first pass waits one interval too: a restart does not re-read the whole disk at once.
        while True:
            while time.monotonic() < last_start + self.interval:
                await self._send_reports()
                await asyncio.sleep(min(POLL, max(0.0, last_start + self.interval - time.monotonic())))
            last_start = time.monotonic()
            try:
                await self._pass()
            except ChunkFSError as exc:
                logger.warning("scrub pass stopped: %s", exc)

    async def _pass(self) -> None:
        store = self.server.store
        # Ids only (8 bytes each), sorted off the loop: at 10^6 replicas a list of pairs was ~100 MB kept
        # for the whole pass, and sorting it held the loop for a second.
        replicas = await asyncio.to_thread(store.replica_ids)
        logger.info("scrub pass %d over %d replica(s) at %.1f MiB/s", self.passes + 1, len(replicas),
                    self.rate / (1 << 20))
        bad = 0
        for chunk_id in replicas:
            started = time.monotonic()
            try:
                found = await self.check(chunk_id)
            except NotFound:
                continue  # deleted meanwhile
            self.verified += 1
            if not found["ok"]:
                bad += 1
                if len(self._pending) < MAX_PENDING_REPORTS:
                    self._pending[chunk_id] = _report(found)
                await self._send_reports()
            # Pace: one replica's worth of reading at `rate`, whatever the disk did.
            pause = store.chunk_size / self.rate - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)
            await self._send_reports()
        self.passes += 1
        logger.info("scrub pass %d done: %d replica(s) verified, %d with bad blocks", self.passes, len(replicas), bad)

    async def check(self, chunk_id: int) -> dict[str, Any]:
        """Verify one replica: {ok, bad: [blocks], whole}; a corrupt header quarantines it whole.

        Also what the master asks (CS_VERIFY_CHUNK) when a reader reported the replica.
        """
        store = self.server.store
        try:
            bad = await asyncio.to_thread(store.bad_blocks, chunk_id)
        except NotFound:
            never_synced = store.moved_aside(chunk_id)
            if never_synced is None:
                raise
            # Moved aside by an earlier check whose answer the master did not get (its link dropped): the same.
            return _moved_whole(never_synced)
        except ChecksumMismatch as exc:
            path = await asyncio.to_thread(store.quarantine, chunk_id)
            self.corrupt += 1
            never_synced = await asyncio.to_thread(header_never_written, path)
            store.note_moved(chunk_id, never_synced)
            if never_synced:
                logger.warning("chunk %#x: the replica's header never reached the disk (made, and never synced "
                               "before this server stopped: nothing in it was promised); moved to %s", chunk_id, path)
                return _moved_whole(True)
            logger.error("chunk %#x: %s; the replica is moved to %s", chunk_id, exc, path)
            return _moved_whole(False)
        if bad:
            self.corrupt += 1
            logger.error("chunk %#x: %d block(s) fail their checksum (%s); asking the master for a repair",
                         chunk_id, len(bad), ", ".join(map(str, bad[:8])))
        return {"ok": not bad, "bad": bad, "whole": False}

    async def _send_reports(self) -> None:
        link = self.server.link
        conn = link.conn
        if not self._pending or conn is None or conn.closed or not link.registered.is_set():
            return
        for chunk_id, report in list(self._pending.items()):
            header: dict[str, Any] = {"chunk_id": chunk_id, "cs_id": link.cs_id, "reason": report.reason}
            if report.blocks:
                header["blocks"] = list(report.blocks)
            if report.unsynced:
                header["unsynced"] = True
            if report.check:
                header["check"] = True
            try:
                await conn.call(Msg.REPORT_BAD_REPLICA, header, timeout=10.0)
            except ChunkFSError as exc:
                logger.info("could not report bad replica of chunk %#x yet: %s", chunk_id, exc)
                return
            self._pending.pop(chunk_id, None)


class _Report(NamedTuple):
    """A report waiting for the master: why; the bad blocks (none when the replica was moved aside whole);
    whether its header never reached the disk; whether the master is to check it (left in place here)."""

    reason: str
    blocks: tuple[int, ...] = ()
    unsynced: bool = False
    check: bool = False


def _report(found: dict[str, Any]) -> _Report:
    """What to report of a replica `check` found bad."""
    unsynced = bool(found.get("unsynced"))
    reason = ("replica header never written, found by the scrubber; quarantined whole" if unsynced else
              "replica header corrupt, found by the scrubber; quarantined whole" if found["whole"] else
              f"{len(found['bad'])} block(s) failing their checksum, found by the scrubber")
    return _Report(reason, tuple(found["bad"]), unsynced)


def _moved_whole(never_synced: bool) -> dict[str, Any]:
    """`check`'s answer for a replica moved aside whole (its header corrupt, or never written)."""
    found: dict[str, Any] = {"ok": False, "bad": [], "whole": True}
    if never_synced:
        found["unsynced"] = True
    return found

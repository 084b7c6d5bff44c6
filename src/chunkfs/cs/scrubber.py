"""The scrubber: re-reads every replica at a bounded rate and verifies its checksums.

A pass walks the replicas in chunk-id order, verifying one whole replica at a
time (`ChunkStore.verify`, in a worker thread) and then pausing long enough
that the average stays under ``scrub-rate``; a new pass starts
``scrub-interval`` after the previous one began.  Both come from the cluster
settings in the master's heartbeat replies.  A corrupt replica is moved aside
(quarantined, never deleted) and reported to the master, which drops it from
the chunk and copies a good replica to replace it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from chunkfs.common.errors import ChunkFSError, NotFound
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
        self._pending: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    def update(self, settings: dict[str, Any]) -> None:
        """Settings from a heartbeat reply (values checked by the master; re-checked here)."""
        rate, interval = settings.get("scrub-rate"), settings.get("scrub-interval")
        if isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0:
            self.rate = float(rate) * (1 << 20)
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            self.interval = float(interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

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
        replicas = store.list_replicas()
        logger.info("scrub pass %d over %d replica(s) at %.1f MiB/s", self.passes + 1, len(replicas),
                    self.rate / (1 << 20))
        bad = 0
        for chunk_id, _ in replicas:
            started = time.monotonic()
            try:
                ok = await asyncio.to_thread(store.verify, chunk_id)
            except NotFound:
                continue  # deleted meanwhile
            self.verified += 1
            if not ok:
                bad += 1
                await self._quarantine(chunk_id)
            # Pace: one replica's worth of reading at `rate`, whatever the disk did.
            pause = store.chunk_size / self.rate - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)
            await self._send_reports()
        self.passes += 1
        logger.info("scrub pass %d done: %d replica(s) verified, %d corrupt", self.passes, len(replicas), bad)

    async def _quarantine(self, chunk_id: int) -> None:
        store = self.server.store
        try:
            path = await asyncio.to_thread(store.quarantine, chunk_id)
        except NotFound:
            return
        self.corrupt += 1
        logger.error("scrub: chunk %#x is corrupt; moved to %s; reporting it to the master", chunk_id, path)
        if len(self._pending) < MAX_PENDING_REPORTS:
            self._pending[chunk_id] = f"checksum mismatch found by the scrubber; quarantined as {path.name}"
        await self._send_reports()

    async def verify_now(self, chunk_id: int) -> bool:
        """The master asks (a reader reported the replica bad): verify, and quarantine if corrupt."""
        ok = await asyncio.to_thread(self.server.store.verify, chunk_id)
        if not ok:
            path = await asyncio.to_thread(self.server.store.quarantine, chunk_id)
            self.corrupt += 1
            logger.error("chunk %#x reported bad by a reader is corrupt; moved to %s", chunk_id, path)
        return ok

    async def _send_reports(self) -> None:
        link = self.server.link
        conn = link.conn
        if not self._pending or conn is None or conn.closed or not link.registered.is_set():
            return
        for chunk_id, reason in list(self._pending.items()):
            try:
                await conn.call(Msg.REPORT_BAD_REPLICA, {"chunk_id": chunk_id, "cs_id": link.cs_id, "reason": reason},
                                timeout=10.0)
            except ChunkFSError as exc:
                logger.info("could not report bad replica of chunk %#x yet: %s", chunk_id, exc)
                return
            self._pending.pop(chunk_id, None)

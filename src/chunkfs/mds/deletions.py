"""Replicas of removed chunks, deleted in batches: one command per chunk server for many chunks.

`rm -rf` of a tree of small files deleted each file's chunk with one command
per replica: three messages, three worker-thread hops and three directory
syncs on the chunk servers per file, beside the file's own unlink commit and
on the same cores (BENCHMARKS.md, "Removed chunks deleted in batches").  The
master now collects what is to be deleted and sends each server one
``CS_DELETE_CHUNKS`` for all of it, DELETE_DELAY after the first one waited,
or at once when DELETE_BATCH are waiting for one server.

Only chunks of files no mount holds open come here (ReplicaSets.delete_chunks):
a mount holding a file may write through the chain it has for a chunk another
mount cut away, and that replica's absence is what sends it to the master
(test_two_mounts_cut_and_rewrite.py failed with a truncation's chunks batched).
For these, nothing depends on when a replica goes: the chunk is gone from the
metadata (the command that removed it is committed) and no mount writes to
it.  A replica a server never hears about (the master stepped down with a
batch waiting, the command failed, the server was offline) is named stale
when the server registers again: it reports it and no chunk lists it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chunkfs.common.errors import ChunkFSError
from chunkfs.protocol.messages import DELETE_BATCH, Msg

logger = logging.getLogger(__name__)

class CsCall(Protocol):
    """Send one command (and its payload, if any) to one chunk server; its reply (raises if offline or on error)."""

    def __call__(self, cs_id: int, msg: Msg, header: dict[str, Any], payload: bytes = b"") -> Awaitable[dict[str, Any]]:
        ...


#: Run a coroutine in the background (the master's task set, cancelled when it stops).
Spawn = Callable[[Any], object]

#: How long the first replica of a batch waits for others (seconds): a removal one file at a
#: time commits one every 2-4 ms here, so a batch gathers tens of them.
DELETE_DELAY = 0.2


class DeleteBatches:
    """Collects (server, chunk) deletions and sends each server one command for many chunks."""

    def __init__(self, call: CsCall, spawn: Spawn, delay: float = DELETE_DELAY) -> None:
        self._call = call
        self._spawn = spawn
        self._delay = delay
        self._waiting: dict[int, list[int]] = {}
        self._timer_set = False

    def add(self, cs_id: int, chunk_id: int) -> None:
        """Delete chunk `chunk_id`'s replica on `cs_id` soon (best effort, see the module's docstring)."""
        ids = self._waiting.setdefault(cs_id, [])
        ids.append(chunk_id)
        if len(ids) >= DELETE_BATCH:
            self._send(cs_id)
        elif not self._timer_set:
            self._timer_set = True
            self._spawn(self._after_delay())

    def waiting(self) -> int:
        """How many replicas wait for their batch to go."""
        return sum(len(ids) for ids in self._waiting.values())

    def flush(self) -> None:
        """Send every waiting batch now."""
        for cs_id in list(self._waiting):
            self._send(cs_id)

    async def _after_delay(self) -> None:
        try:
            await asyncio.sleep(self._delay)
        finally:
            self._timer_set = False
        self.flush()

    def _send(self, cs_id: int) -> None:
        ids = self._waiting.pop(cs_id)
        self._spawn(self.delete_now(cs_id, ids))

    async def delete_now(self, cs_id: int, ids: list[int]) -> bool:
        """Delete these replicas on `cs_id` now, DELETE_BATCH per command; whether every one went.  A failure
        is only logged."""
        done = True
        for start in range(0, len(ids), DELETE_BATCH):
            piece = ids[start:start + DELETE_BATCH]
            try:
                await self._call(cs_id, Msg.CS_DELETE_CHUNKS, {"chunk_ids": piece})
            except ChunkFSError as exc:
                done = False
                logger.info("deleting %d chunk replica(s) on CS#%d failed: %s (they go when it registers again)",
                            len(piece), cs_id, exc)
        return done

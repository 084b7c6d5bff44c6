"""A one-member replicated log: a durable local journal.

Records are appended to ``journal`` as ``[length u32][crc32c u32][msgpack]``;
proposals that arrive while a write is in progress are batched, so many
concurrent metadata changes share one fsync.  On start the journal is read
back, a torn tail (a crash during an append) is cut off, and every entry past
the store's applied index is applied again — the store records the applied
index in the same transaction as the change, so nothing is applied twice.

Each start is a new term (persisted in ``term``): chunk versions carry the
term, exactly as they will with Raft.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from pathlib import Path
from typing import Any

import msgpack

from chunkfs.common.checksum import crc32c
from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ChunkFSError
from chunkfs.mds.replicated_log import ApplyFn

logger = logging.getLogger(__name__)

_RECORD = struct.Struct("!II")
#: Proposals applied per fsync at most; bounds the batch a crash can lose.
MAX_BATCH = 512


class LocalLog:
    def __init__(self, directory: Path, addr: str, node_id: int) -> None:
        self.directory = directory
        self.addr = addr
        self.node_id = node_id
        self._term = 0
        self._index = 0
        self._apply: ApplyFn | None = None
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[Any]]] = asyncio.Queue(maxsize=4096)
        self._writer: asyncio.Task[None] | None = None
        self._fd = -1
        #: Where intact data in the journal ends.
        self._end = 0

    @property
    def term(self) -> int:
        return self._term

    @property
    def commit_index(self) -> int:
        return self._index

    def is_leader(self) -> bool:
        return True

    def leader_hint(self) -> str | None:
        return self.addr

    def members(self) -> list[dict[str, Any]]:
        return [
            {"id": self.node_id, "addr": self.addr, "role": "master", "term": self._term,
             "commit": self._index, "applied": self._index}
        ]

    async def start(self, apply: ApplyFn, applied_index: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        term_file = self.directory / "term"
        old_term = int(term_file.read_text()) if term_file.exists() else 0
        self._term = old_term + 1
        write_file_durably(term_file, str(self._term).encode())
        self._apply = apply
        path = self.directory / "journal"
        entries, good_end = _read_journal(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if good_end < os.fstat(self._fd).st_size:
            logger.warning("journal: cutting a torn tail at byte %d (crash during an append)", good_end)
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        os.lseek(self._fd, good_end, os.SEEK_SET)
        self._end = good_end
        replayed = 0
        for index, term, data in entries:
            self._index = index
            if index > applied_index:
                replayed += 1
                try:
                    apply(index, term, data)
                except ChunkFSError:
                    pass  # it failed the first time too: errors are deterministic results

        logger.info("journal: term %d, %d entries, %d re-applied after restart", self._term, self._index, replayed)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def propose(self, command: bytes) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((command, fut))
        return await fut

    async def read_barrier(self) -> None:
        return None

    async def _write_loop(self) -> None:
        assert self._apply is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            records = []
            first = self._index + 1
            for offset, (command, _) in enumerate(batch):
                body = msgpack.packb((first + offset, self._term, command), use_bin_type=True)
                records.append(_RECORD.pack(len(body), crc32c(body)) + body)
            data = b"".join(records)
            try:
                await asyncio.to_thread(_append, self._fd, data)
                self._end += len(data)
            except OSError as exc:
                # Cut what part of the batch reached the file, or the next batch would
                # be written after a torn record and be lost at the next start.
                logger.error("journal: append failed: %s; refusing the batch", exc)
                try:
                    os.ftruncate(self._fd, self._end)
                    os.lseek(self._fd, self._end, os.SEEK_SET)
                except OSError as cut_exc:
                    logger.critical("journal: cannot cut the failed append (%s); stopping the journal", cut_exc)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    raise
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for command, fut in batch:
                self._index += 1
                try:
                    result = self._apply(self._index, self._term, command)
                except Exception as exc:  # noqa: BLE001 - delivered to the proposer
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                if not fut.done():
                    fut.set_result(result)

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _append(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fdatasync(fd)


def _read_journal(path: Path) -> tuple[list[tuple[int, int, bytes]], int]:
    """All intact records, and the byte offset where intact data ends."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    pos = 0
    entries: list[tuple[int, int, bytes]] = []
    while pos + _RECORD.size <= len(data):
        length, crc = _RECORD.unpack_from(data, pos)
        body = data[pos + _RECORD.size: pos + _RECORD.size + length]
        if len(body) < length or crc32c(body) != crc:
            break
        index, term, command = msgpack.unpackb(body, raw=False)
        entries.append((index, term, command))
        pos += _RECORD.size + length
    return entries, pos

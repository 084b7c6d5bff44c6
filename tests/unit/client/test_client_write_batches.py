"""Small writes to a chunk with one on its way wait for it and go to the head as one request, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.client.write_batches import BATCHED_WRITE_MAX, WriteBatches
from chunkfs.common.errors import ChecksumMismatch, Unavailable
from chunkfs.protocol.messages import SMALL_WRITE_MAX, WRITE_PIECES_MAX, Msg


class Head:
    """A chunk server's connection whose answers the test gives, one request at a time."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], bytes]] = []
        self.answers: list[asyncio.Future[None]] = []

    async def call(self, msg: Msg, header: dict[str, Any], payload: Any = b"") -> tuple[dict[str, Any], bytes]:
        assert msg == Msg.CS_WRITE
        self.sent.append((header, bytes(payload)))
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        await answer
        return {}, b""

    def answer(self, i: int, exc: BaseException | None = None) -> None:
        if exc is None:
            self.answers[i].set_result(None)
        else:
            self.answers[i].set_exception(exc)


def header(offset: int, chunk_id: int = 5, version: int = 1) -> dict[str, Any]:
    return {"chunk_id": chunk_id, "version": version, "offset": offset, "chain": [[2, "b:1"], [3, "c:1"]],
            "sync": False}


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_write_alone_goes_at_once_as_it_is() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        w = asyncio.ensure_future(batches.write(head, header(4096), b"a" * 10))  # type: ignore[arg-type]
        await settle()
        assert head.sent == [(header(4096), b"a" * 10)]
        head.answer(0)
        await w
        assert batches._held == {}  # nothing kept once nothing is on its way

    asyncio.run(scenario())


def test_writes_behind_one_on_its_way_go_together_in_their_order_once_it_is_answered() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0), b"1" * 4))  # type: ignore[arg-type]
        await settle()
        behind = [asyncio.ensure_future(batches.write(head, header(off), data))  # type: ignore[arg-type]
                  for off, data in ((8192, b"22"), (100, b"333"), (8192, b"4"))]
        await settle()
        assert len(head.sent) == 1, "nothing more may leave before the first write is answered"
        head.answer(0)
        await first
        await settle()
        assert len(head.sent) == 2
        sent_header, payload = head.sent[1]
        assert sent_header["pieces"] == [[8192, 2], [100, 3], [8192, 1]]  # the order they were issued in
        assert sent_header["offset"] == 8192
        assert sent_header["chain"] == header(0)["chain"] and sent_header["sync"] is False
        assert payload == b"22" + b"333" + b"4"
        assert not any(w.done() for w in behind), "a held write returns only once its request is answered"
        head.answer(1)
        await asyncio.gather(*behind)
        assert batches._held == {}

    asyncio.run(scenario())


def test_a_batch_keeps_to_the_bounds_of_one_request_and_the_rest_follows_it() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0), b"x"))  # type: ignore[arg-type]
        await settle()
        n = WRITE_PIECES_MAX + 3
        behind = [asyncio.ensure_future(batches.write(head, header(i * 4096), b"y" * 4096))  # type: ignore[arg-type]
                  for i in range(n)]
        await settle()
        for answered in range(n + 1):  # bounded: one request per write at the very most
            if all(w.done() for w in behind):
                break
            assert len(head.sent) == answered + 1, "one request on its way at a time"
            head.answer(answered)
            await settle()
        await asyncio.gather(first, *behind)
        sent_offsets = []
        for h, payload in head.sent[1:]:
            pieces = h.get("pieces", [[h["offset"], len(payload)]])
            assert len(pieces) <= WRITE_PIECES_MAX and len(payload) <= SMALL_WRITE_MAX
            sent_offsets += [p[0] for p in pieces]
        assert sent_offsets == [i * 4096 for i in range(n)]
        assert len(head.sent) == 1 + 3  # 32 + 32 + 3 (128 KiB a request)


def test_when_the_write_on_its_way_fails_the_ones_behind_it_fail_with_it_unsent() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0), b"1"))  # type: ignore[arg-type]
        await settle()
        behind = asyncio.ensure_future(batches.write(head, header(4096), b"2"))  # type: ignore[arg-type]
        await settle()
        head.answer(0, Unavailable("CS#2 at b:1: gone", cs_id=2))
        for w in (first, behind):
            with pytest.raises(Unavailable) as caught:
                await w
            assert caught.value.context["cs_id"] == 2  # each asks the master for a new chain without it
        assert len(head.sent) == 1
        assert batches._held == {}

    asyncio.run(scenario())


def test_a_failed_batch_fails_each_of_its_writes_and_the_next_batch_waits_for_no_one() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0), b"1"))  # type: ignore[arg-type]
        await settle()
        behind = [asyncio.ensure_future(batches.write(head, header(o), b"2")) for o in (1, 2)]  # type: ignore[arg-type]
        await settle()
        head.answer(0)
        await first
        await settle()
        head.answer(1, Unavailable("CS#3 at c:1: gone", cs_id=3))
        results = await asyncio.gather(*behind, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert batches._held == {}
        later = asyncio.ensure_future(batches.write(head, header(9), b"3"))  # type: ignore[arg-type]
        await settle()
        assert "pieces" not in head.sent[-1][0] and head.sent[-1][1] == b"3"  # goes at once, alone
        head.answer(2)
        await later

    asyncio.run(scenario())


def test_other_chunks_and_other_versions_do_not_wait_for_each_other() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        writes = [asyncio.ensure_future(batches.write(head, header(0, chunk_id=c, version=v), b"z"))  # type: ignore[arg-type]
                  for c, v in ((5, 1), (6, 1), (5, 2))]
        await settle()
        assert len(head.sent) == 3
        for i in range(3):
            head.answer(i)
        await asyncio.gather(*writes)

    asyncio.run(scenario())


def test_a_cancelled_first_writer_does_not_strand_the_writes_behind_it() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0), b"1"))  # type: ignore[arg-type]
        await settle()
        behind = asyncio.ensure_future(batches.write(head, header(7), b"2"))  # type: ignore[arg-type]
        await settle()
        first.cancel()
        await settle()
        assert head.sent[-1] == (header(7), b"2")  # sent on its own now
        head.answer(1)
        await behind

    asyncio.run(scenario())


def test_a_larger_write_goes_at_once_beside_the_one_on_its_way() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        small = asyncio.ensure_future(batches.write(head, header(0), b"s"))  # type: ignore[arg-type]
        await settle()
        large = asyncio.ensure_future(  # 64 KiB random writes at depth 16 lost 18 % held behind one another
            batches.write(head, header(65536), b"L" * (BATCHED_WRITE_MAX + 1)))  # type: ignore[arg-type]
        await settle()
        assert len(head.sent) == 2 and "pieces" not in head.sent[1][0]
        head.answer(1)
        await large
        head.answer(0)
        await small

    asyncio.run(scenario())


def test_a_failure_of_that_one_write_alone_does_not_fail_the_writes_behind_it() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(1000), b"1"))  # type: ignore[arg-type]
        await settle()
        behind = asyncio.ensure_future(batches.write(head, header(1 << 20), b"2"))  # type: ignore[arg-type]
        await settle()
        head.answer(0, ChecksumMismatch("block 0 of the chunk is bad", chunk_id=5, block=0))
        with pytest.raises(ChecksumMismatch):
            await first
        await settle()
        assert head.sent[-1] == (header(1 << 20), b"2")  # its own block is fine: it goes on
        head.answer(1)
        await behind

    asyncio.run(scenario())

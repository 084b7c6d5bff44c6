"""Small writes to a head with one on its way wait for it and go to the head as one request, in order;
a small write to a chunk this mount alone writes goes to every replica at once, and nothing passes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.client.write_batches import AGAIN_MAX, BATCHED_WRITE_MAX, WriteBatches
from chunkfs.common.errors import ChecksumMismatch, StaleVersion, Unavailable
from chunkfs.protocol.messages import SMALL_WRITE_MAX, WRITE_PIECES_MAX, Msg


class Head:
    """A chunk server's connection whose answers the test gives, one request at a time."""

    def __init__(self, peer_name: str = "a:1") -> None:
        self.peer_name = peer_name  # the head's address: what the writes on their way are kept by
        self.sent: list[tuple[dict[str, Any], bytes]] = []
        self.msgs: list[Msg] = []
        self.answers: list[asyncio.Future[None]] = []

    async def call(self, msg: Msg, header: dict[str, Any], payload: Any = b"") -> tuple[dict[str, Any], bytes]:
        assert msg in (Msg.CS_WRITE, Msg.CS_WRITE_CHUNKS)
        self.msgs.append(msg)
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


def test_writes_to_other_chunks_of_the_head_go_together_as_one_request_with_a_part_per_chunk() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0, chunk_id=5), b"1"))  # type: ignore[arg-type]
        await settle()
        behind = [asyncio.ensure_future(batches.write(head, header(off, chunk_id=c), data))  # type: ignore[arg-type]
                  for c, off, data in ((6, 0, b"a"), (5, 100, b"bb"), (7, 9, b"ccc"), (6, 8, b"dddd"))]
        await settle()
        assert len(head.sent) == 1, "writes to other chunks with the same head wait too"
        head.answer(0)
        await first
        await settle()
        assert head.msgs[1] == Msg.CS_WRITE_CHUNKS
        sent_header, payload = head.sent[1]
        chain = header(0)["chain"]
        # One part per chunk, in the order each chunk first came; each chunk's writes in their order.
        assert sent_header == {"parts": [[6, 1, chain, [[0, 1], [8, 4]]], [5, 1, chain, [[100, 2]]],
                                         [7, 1, chain, [[9, 3]]]]}
        assert payload == b"a" + b"dddd" + b"bb" + b"ccc"
        head.answer(1)
        await asyncio.gather(*behind)
        assert batches._held == {}

    asyncio.run(scenario())


def test_other_heads_do_not_wait_for_each_other() -> None:
    async def scenario() -> None:
        heads, batches = [Head("a:1"), Head("b:1")], WriteBatches()
        writes = [asyncio.ensure_future(batches.write(h, header(0, chunk_id=c), b"z"))  # type: ignore[arg-type]
                  for h, c in ((heads[0], 5), (heads[1], 6))]
        await settle()
        assert [len(h.sent) for h in heads] == [1, 1]
        for h in heads:
            h.answer(0)
        await asyncio.gather(*writes)

    asyncio.run(scenario())


def test_a_chunk_at_two_versions_never_shares_a_request() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0, chunk_id=9), b"0"))  # type: ignore[arg-type]
        await settle()
        behind = [asyncio.ensure_future(batches.write(head, header(o, chunk_id=5, version=v), b"x"))  # type: ignore[arg-type]
                  for o, v in ((1, 1), (2, 2), (3, 1))]
        await settle()
        for i in range(4):  # bounded: the first write, then one request per write at the most
            head.answer(i)
            await settle()
            if all(w.done() for w in behind):
                break
        await asyncio.wait_for(asyncio.gather(first, *behind), 5)
        assert [(h["version"], h["offset"]) for h, _ in head.sent[1:]] == [(1, 1), (2, 2), (1, 3)]

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


async def batch_behind_one(head: Head, batches: WriteBatches, writes: list[tuple[int, int, bytes]]) -> list[Any]:
    """A write to chunk 9 on its way, `writes` ((chunk, offset, data)) issued behind it, then it is answered:
    they are on their way as the next request.  Their futures, in order."""
    first = asyncio.ensure_future(batches.write(head, header(0, chunk_id=9), b"0"))  # type: ignore[arg-type]
    await settle()
    behind = [asyncio.ensure_future(batches.write(head, header(off, chunk_id=c), data))  # type: ignore[arg-type]
              for c, off, data in writes]
    await settle()
    head.answer(0)
    await first
    await settle()
    return behind


def test_a_failure_of_one_chunks_replica_fails_that_chunks_writes_and_the_others_go_again() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        batched = dict(zip("abc", await batch_behind_one(head, batches, [(5, 10, b"a"), (6, 20, b"b"), (7, 30, b"c")]),
                           strict=True))
        assert head.msgs[1] == Msg.CS_WRITE_CHUNKS
        later = {name: asyncio.ensure_future(batches.write(head, header(off, chunk_id=c), name.encode()))  # type: ignore[arg-type]
                 for name, c, off in (("d", 6, 40), ("e", 5, 50))}
        await settle()
        # Chunk 6's replica on a server further down is at another version: that chunk's writes fail
        # (each asks the master for its new map), the rest of the request goes again, first.
        head.answer(1, StaleVersion("CS#3 at c:1: chunk 6: asked for version 1, replica is at 2", chunk_id=6, cs_id=3))
        for name in ("b", "d"):
            with pytest.raises(StaleVersion):
                await asyncio.wait_for((batched | later)[name], 5)
        await settle()
        assert head.sent[2] == ({"parts": [[5, 1, header(0)["chain"], [[10, 1], [50, 1]]],
                                           [7, 1, header(0)["chain"], [[30, 1]]]]}, b"aec")
        head.answer(2)
        await asyncio.wait_for(asyncio.gather(batched["a"], batched["c"], later["e"]), 5)
        assert batches._held == {}

    asyncio.run(scenario())


def test_a_failure_of_a_server_fails_every_write_of_the_request_and_every_one_behind_it() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        batched = await batch_behind_one(head, batches, [(5, 1, b"x"), (6, 1, b"x")])
        behind = asyncio.ensure_future(batches.write(head, header(2, chunk_id=7), b"y"))  # type: ignore[arg-type]
        await settle()
        head.answer(1, Unavailable("CS#2 at b:1: gone", cs_id=2))
        results = await asyncio.wait_for(asyncio.gather(*batched, behind, return_exceptions=True), 5)
        assert all(isinstance(r, Unavailable) for r in results)
        assert len(head.sent) == 2 and batches._held == {}

    asyncio.run(scenario())


def test_a_write_goes_again_a_bounded_number_of_times_for_other_chunks_failures() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        first = asyncio.ensure_future(batches.write(head, header(0, chunk_id=9), b"0"))  # type: ignore[arg-type]
        await settle()
        patient = asyncio.ensure_future(batches.write(head, header(1, chunk_id=5), b"p"))  # type: ignore[arg-type]
        bad = [asyncio.ensure_future(batches.write(head, header(2, chunk_id=100), b"b"))]  # type: ignore[arg-type]
        await settle()
        head.answer(0)
        await first
        await settle()
        for i in range(1, AGAIN_MAX + 3):  # bounded: each request has `patient` and a write to a bad block
            bad.append(asyncio.ensure_future(batches.write(head, header(2, chunk_id=100 + i), b"b")))  # type: ignore[arg-type]
            await settle()
            head.answer(i, ChecksumMismatch("block 0 is bad", chunk_id=100 + i - 1, block=0))
            await settle()
            if patient.done():
                break
        with pytest.raises(ChecksumMismatch):
            await asyncio.wait_for(patient, 5)
        assert sum(1 for h, _ in head.sent if "parts" in h and h["parts"][0][0] == 5) == AGAIN_MAX + 1
        batches.close()
        for w in bad:
            w.cancel()
        await asyncio.gather(*bad, return_exceptions=True)

    asyncio.run(scenario())


def test_closing_fails_nothing_later_and_leaves_nothing_held() -> None:
    async def scenario() -> None:
        head, batches = Head(), WriteBatches()
        in_batch = await batch_behind_one(head, batches, [(5, 1, b"x"), (6, 1, b"x")])
        waiting = asyncio.ensure_future(batches.write(head, header(2, chunk_id=7), b"y"))  # type: ignore[arg-type]
        await settle()
        errors: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(str(ctx.get("message"))))
        batches.close()
        results = await asyncio.wait_for(asyncio.gather(*in_batch, waiting, return_exceptions=True), 5)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        await settle()
        assert batches._held == {} and not batches._sending and errors == []

    asyncio.run(scenario())


# -- a small write to a chunk this mount alone writes goes to every replica at once ----------------
#
# The head orders a chunk's writes for every replica; a write sent straight to the replicas is not
# ordered by it, so no other write goes to that head while one is on its way.

class Fanned:
    """What `alone` does: the write to every replica at once, answered when the test says."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[None]] = []

    async def __call__(self) -> None:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls.append(answer)
        await answer


def synced(offset: int) -> dict[str, Any]:
    return {**header(offset), "sync": True}


def test_a_small_write_alone_goes_to_every_replica_not_through_the_head() -> None:
    async def scenario() -> None:
        head, batches, fan = Head(), WriteBatches(), Fanned()
        w = asyncio.ensure_future(batches.write(head, header(0), b"a" * 10, fan))  # type: ignore[arg-type]
        await settle()
        assert len(fan.calls) == 1 and head.sent == []
        fan.calls[0].set_result(None)
        await w
        assert batches._held == {} and batches._fanned == {}

    asyncio.run(scenario())


def test_writes_behind_a_fanned_one_wait_for_it_then_go_through_the_head() -> None:
    async def scenario() -> None:
        head, batches, fan = Head(), WriteBatches(), Fanned()
        first = asyncio.ensure_future(batches.write(head, header(0), b"a", fan))  # type: ignore[arg-type]
        await settle()
        small = asyncio.ensure_future(batches.write(head, header(10), b"b", fan))  # type: ignore[arg-type]
        big = asyncio.ensure_future(batches.write(head, header(20), b"c" * (BATCHED_WRITE_MAX + 1), fan))  # type: ignore[arg-type]
        synced_write = asyncio.ensure_future(batches.write(head, synced(30), b"d", fan))  # type: ignore[arg-type]
        await settle()
        assert head.sent == [] and len(fan.calls) == 1  # nothing passes the write on its way to every replica
        fan.calls[0].set_result(None)
        await first
        await settle()
        # Then the others, all through the head (one of them on its way: none goes around it).
        assert len(fan.calls) == 1
        assert sorted(h["offset"] for h, _ in head.sent) == [10, 20, 30]
        for i in range(len(head.sent)):
            head.answer(i)
        await asyncio.gather(small, big, synced_write)
        assert batches._held == {} and batches._at_once == {} and batches._fanned == {}

    asyncio.run(scenario())


def test_no_write_fans_out_while_one_through_the_head_is_on_its_way() -> None:
    async def scenario() -> None:
        head, batches, fan = Head(), WriteBatches(), Fanned()
        # A large write (above what goes to every replica at once) goes down the chain.
        big = asyncio.ensure_future(batches.write(head, header(0), b"c" * (BATCHED_WRITE_MAX + 1)))  # type: ignore[arg-type]
        await settle()
        small = asyncio.ensure_future(batches.write(head, header(10), b"b", fan))  # type: ignore[arg-type]
        synced_write = asyncio.ensure_future(batches.write(head, synced(30), b"d", fan))  # type: ignore[arg-type]
        await settle()
        assert fan.calls == [] and [h["offset"] for h, _ in head.sent] == [0, 10, 30]
        for i in range(3):
            head.answer(i)
        await asyncio.gather(big, small, synced_write)
        # Nothing on its way any more: the next small one goes to every replica again.
        last = asyncio.ensure_future(batches.write(head, header(40), b"e", fan))  # type: ignore[arg-type]
        await settle()
        assert len(fan.calls) == 1
        fan.calls[0].set_result(None)
        await last

    asyncio.run(scenario())


def test_a_fanned_write_that_fails_fails_the_ones_waiting_behind_it_as_a_head_would() -> None:
    async def scenario() -> None:
        head, batches, fan = Head(), WriteBatches(), Fanned()
        first = asyncio.ensure_future(batches.write(head, header(0), b"a", fan))  # type: ignore[arg-type]
        await settle()
        behind = asyncio.ensure_future(batches.write(head, header(10), b"b", fan))  # type: ignore[arg-type]
        await settle()
        fan.calls[0].set_exception(StaleVersion("moved on", chunk_id=5))
        for w in (first, behind):
            try:
                await w
                raise AssertionError("a write to a chunk that moved on succeeded")
            except StaleVersion:
                pass
        assert batches._held == {} and batches._fanned == {} and head.sent == []

    asyncio.run(scenario())


def test_a_new_connection_to_the_same_head_waits_for_the_write_on_its_way_to_every_replica() -> None:
    """The connection to a head lost and made again while a write to every replica is on its way: a
    write through the new one must not pass it (at a replica the head sends it on to)."""
    async def scenario() -> None:
        old, new, batches, fan = Head("a:1"), Head("a:1"), WriteBatches(), Fanned()
        first = asyncio.ensure_future(batches.write(old, header(0), b"a", fan))  # type: ignore[arg-type]
        await settle()
        later = asyncio.ensure_future(batches.write(new, header(10), b"b"))  # type: ignore[arg-type]
        await settle()
        assert new.sent == [] and old.sent == []
        fan.calls[0].set_result(None)
        await first
        await settle()
        # Then it goes (on the connection of the write it waited for: a lost one fails it, and its
        # writer sends it again on the new one).
        assert [h["offset"] for h, _ in old.sent] == [10]
        old.answer(0)
        await later

    asyncio.run(scenario())


def test_a_write_to_every_replica_cut_short_is_remembered() -> None:
    async def scenario() -> None:
        head, batches, fan = Head(), WriteBatches(), Fanned()
        w = asyncio.ensure_future(batches.write(head, header(0), b"a", fan))  # type: ignore[arg-type]
        await settle()
        assert not batches.cut_short
        w.cancel()
        await settle()
        assert batches.cut_short and batches._fanned == {}

    asyncio.run(scenario())

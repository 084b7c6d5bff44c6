"""The owner of chunk replica sets (mds/chunks.py): the five steps of a new replica set, in step.

A real store applies the commands (as the replicated log would); chunk servers are a fake that
records the commands and fails where told to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import InvalidArgument, IsADirectory, NotFound, StaleVersion, Unavailable
from chunkfs.mds import replica_leases
from chunkfs.mds.chunks import ReplicaSets
from chunkfs.mds.deletions import DELETE_DELAY
from chunkfs.mds.replica_leases import ReplicaLeases
from chunkfs.mds.store import Chunk, MetadataStore, encode_command
from chunkfs.protocol.messages import DELETE_BATCH, ROOT_INO, Msg
from chunkfs.testing.cluster import wait_for_async


class Cluster:
    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(path / "meta.db", 1 << 20)
        self.index = 0
        self.sent: list[tuple[int, Msg, dict[str, Any]]] = []
        self.payloads: list[bytes] = []  # each command's, in `sent`'s order
        self.failing: set[int] = set()
        #: What a server answers every command with instead (an error it raises).
        self.answers: dict[int, Exception] = {}
        self.live: dict[int, Any] = {cs: SimpleNamespace(replicas=set()) for cs in (1, 2, 3, 4)}
        self.touched: list[int] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.owner = ReplicaSets(self.live, self.propose, self.call, self.spawn)
        self.owner.on_change = self.touched.append

    async def propose(self, op: str, **args: Any) -> Any:
        self.index += 1
        return self.store.apply(self.index, 1, encode_command(op, **args))

    async def call(self, cs: int, msg: Msg, header: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        self.sent.append((cs, msg, header))
        self.payloads.append(payload)
        if cs in self.failing:
            raise Unavailable(f"CS#{cs} is offline")
        if cs in self.answers:
            raise self.answers[cs]
        return {}

    def spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def chunk_on(self, replicas: list[int]) -> Chunk:
        ino = (await self.propose("create", parent=ROOT_INO, name=f"f{self.index}", mode=0o644, time=1.0,
                                  exclusive=True))["attr"]["ino"]
        chunk, failed = await self.allocate(ino, replicas)
        assert not failed
        self.sent.clear()
        return chunk

    async def new_file(self, name: str) -> int:
        return int((await self.propose("create", parent=ROOT_INO, name=name, mode=0o644, time=1.0,
                                       exclusive=True))["attr"]["ino"])

    async def allocate(self, ino: int, replicas: list[int], index: int = 0) -> tuple[Chunk, dict[int, BaseException]]:
        first, _ = await self.propose("reserve_chunk_ids", count=1)
        return await self.owner.allocate_created(ino, index, replicas, first, 1 << 32)

    def to(self, msg: Msg) -> list[int]:
        return sorted(cs for cs, m, _ in self.sent if m == msg)


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    c = Cluster(tmp_path)
    yield c
    c.store.close()


async def test_a_first_write_goes_to_every_new_replica_and_not_after_a_failure(cluster: Cluster) -> None:
    """The replicas of a chunk allocated with its first write are each made with it; the server
    that failed is named, so the master leaves the write to the writer (mds/server.py `_allocate`)."""
    cluster.failing = {3}
    ino = await cluster.new_file("w")
    first, _ = await cluster.propose("reserve_chunk_ids", count=1)
    chunk, failed = await cluster.owner.allocate_created(ino, 0, [1, 2, 3], first, 1 << 32, (512, b"data"))
    assert set(failed) == {3} and list(chunk.replicas) == [1, 2, 3]
    creates = [(cs, h, p) for (cs, m, h), p in zip(cluster.sent, cluster.payloads, strict=True)
               if m == Msg.CS_CREATE_CHUNK]
    assert sorted(cs for cs, _, _ in creates) == [1, 2, 3]
    assert all(h == {"chunk_id": first, "version": 1 << 32, "offset": 512} and p == b"data" for _, h, p in creates)


async def test_created_replicas_are_held(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1, 2, 3])
    assert all(cluster.owner.holds(cs, chunk.chunk_id) for cs in (1, 2, 3))
    assert not cluster.owner.holds(4, chunk.chunk_id)
    assert chunk.chunk_id in cluster.touched


async def test_a_new_set_moves_survivors_gives_the_target_and_deletes_the_one_taken_away(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1, 2, 3])
    cluster.touched.clear()
    change = await cluster.owner.set_replicas(chunk, [1, 2, 4], delete=[3])
    assert change.chunk.replicas == (1, 2, 4) and change.chunk.version > chunk.version
    assert change.failed == frozenset()
    assert cluster.store.chunk(chunk.chunk_id) == change.chunk
    # The copy on CS#4 (made at the old version) and the survivors move; CS#3 is deleted, after.
    assert cluster.to(Msg.CS_SET_VERSION) == [1, 2, 4]
    assert cluster.to(Msg.CS_DELETE_CHUNKS) == [3]
    assert cluster.sent[-1][1] == Msg.CS_DELETE_CHUNKS
    header = next(h for _, m, h in cluster.sent if m == Msg.CS_SET_VERSION)
    assert (header["old_version"], header["new_version"]) == (chunk.version, change.chunk.version)
    assert cluster.owner.holds(4, chunk.chunk_id) and not cluster.owner.holds(3, chunk.chunk_id)
    assert chunk.chunk_id in cluster.touched
    assert cluster.store.replicas_on(3) == 0 and cluster.store.replicas_on(4) == 1


async def test_a_server_that_does_not_follow_is_no_longer_held(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1, 2, 3])
    cluster.failing = {2}
    change = await cluster.owner.set_replicas(chunk, [1, 2])
    assert change.failed == frozenset({2})
    assert not cluster.owner.holds(2, chunk.chunk_id) and cluster.owner.holds(1, chunk.chunk_id)
    assert cluster.to(Msg.CS_DELETE_CHUNKS) == []  # nothing deleted unless asked


async def test_compare_and_set_refuses_a_changed_chunk_and_does_nothing(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1, 2, 3])
    await cluster.owner.set_replicas(chunk, [1, 2])
    cluster.sent.clear()
    with pytest.raises(StaleVersion):
        await cluster.owner.set_replicas(chunk, [1, 3], delete=[2])  # built on the old list
    assert cluster.sent == []
    assert cluster.store.chunk(chunk.chunk_id).replicas == (1, 2)


async def test_only_the_servers_named_are_asked_to_move(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1, 2, 3])
    await cluster.owner.set_replicas(chunk, [1, 2, 3], move=[1, 3])
    assert cluster.to(Msg.CS_SET_VERSION) == [1, 3]
    # The one left out (silent) keeps its place but holds the old version now: once it speaks again
    # without registering anew (it was only slow), it must count as lost, not as a current replica.
    # Before, it stayed "held": a chunk shown healthy with one replica refusing every read (CI).
    assert not cluster.owner.holds(2, chunk.chunk_id)
    assert cluster.owner.holds(1, chunk.chunk_id) and cluster.owner.holds(3, chunk.chunk_id)


async def test_removed_chunks_are_deleted_in_one_command_per_server_in_the_background(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chunkfs.mds.deletions")
    first = await cluster.chunk_on([1, 2])
    second = await cluster.chunk_on([1, 3])
    cluster.failing = {2}
    cluster.owner.delete_chunks([first, second])
    assert not cluster.owner.holds(1, first.chunk_id)  # at once: no longer counted as held
    assert cluster.sent == [] and cluster.owner.deletions.waiting() == 4  # the batch waits for more
    await wait_for_async("the batch sent", lambda: cluster.owner.deletions.waiting() == 0, timeout=DELETE_DELAY + 5)
    await asyncio.gather(*cluster.tasks)
    assert cluster.to(Msg.CS_DELETE_CHUNKS) == [1, 2, 3]
    ids = {cs: h["chunk_ids"] for cs, m, h in cluster.sent if m == Msg.CS_DELETE_CHUNKS}
    assert ids == {1: [first.chunk_id, second.chunk_id], 2: [first.chunk_id], 3: [second.chunk_id]}
    # A failure is only logged: the server names the replica at its next registration, and it goes then.
    assert "deleting 1 chunk replica(s) on CS#2 failed" in caplog.text


async def test_chunks_a_truncation_cut_are_deleted_before_it_returns(cluster: Cluster) -> None:
    """A mount holding the file may write through its old chain; the replica's absence is what
    sends it to the master for the chunk as it is now, so it must be gone when the cut is answered."""
    chunk = await cluster.chunk_on([1, 2])
    other = await cluster.chunk_on([1, 3])
    await cluster.owner.delete_cut([chunk, other])
    assert cluster.tasks == [] and cluster.owner.deletions.waiting() == 0
    assert not cluster.owner.holds(1, chunk.chunk_id)
    # One command per server, naming all of its replicas (a cut of a large image drops many chunks).
    assert [(cs, h["chunk_ids"]) for cs, m, h in sorted(cluster.sent, key=lambda x: x[0])] == [
        (1, [chunk.chunk_id, other.chunk_id]), (2, [chunk.chunk_id]), (3, [other.chunk_id])]


async def test_a_full_batch_goes_at_once(cluster: Cluster) -> None:
    chunk = await cluster.chunk_on([1])
    many = [Chunk(chunk.chunk_id + n, chunk.ino, n, chunk.version, (1,)) for n in range(DELETE_BATCH + 1)]
    cluster.owner.delete_chunks(many)
    await asyncio.sleep(0)
    sent = [h["chunk_ids"] for cs, m, h in cluster.sent if m == Msg.CS_DELETE_CHUNKS]
    assert sent == [[c.chunk_id for c in many[:DELETE_BATCH]]]  # the last one waits for its own batch
    cluster.owner.deletions.flush()
    await asyncio.gather(*cluster.tasks)
    sent = [h["chunk_ids"] for cs, m, h in cluster.sent if m == Msg.CS_DELETE_CHUNKS]
    assert sent[1:] == [[many[-1].chunk_id]]


async def test_replicas_are_made_while_the_allocation_commits_and_a_failed_server_is_named(cluster: Cluster) -> None:
    ino = await cluster.new_file("a")
    cluster.failing.add(2)
    chunk, failed = await cluster.allocate(ino, [1, 2, 3])
    assert set(failed) == {2} and chunk.replicas == (1, 2, 3) and chunk.version == 1 << 32
    assert cluster.to(Msg.CS_CREATE_CHUNK) == [1, 2, 3]
    assert [cs for cs in (1, 2, 3) if cluster.owner.holds(cs, chunk.chunk_id)] == [1, 3]
    assert cluster.store.chunk_at(ino, 0) == chunk


async def test_replicas_made_for_an_allocation_that_did_not_happen_are_deleted(cluster: Cluster) -> None:
    ino = await cluster.new_file("b")
    existing, _ = await cluster.allocate(ino, [1, 2])
    cluster.sent.clear()
    # A retry: the chunk is there already, under another id.  The new replicas go.
    chunk, failed = await cluster.allocate(ino, [3, 4])
    await asyncio.gather(*cluster.tasks)
    assert chunk == existing and not failed
    assert cluster.to(Msg.CS_DELETE_CHUNKS) == [3, 4]
    assert not any(cluster.owner.holds(cs, chunk.chunk_id) for cs in (3, 4))
    # A failed commit (a directory has no chunks): the same.
    cluster.sent.clear()
    with pytest.raises(IsADirectory):
        await cluster.allocate(ROOT_INO, [1, 3])
    await asyncio.gather(*cluster.tasks)
    assert cluster.to(Msg.CS_CREATE_CHUNK) == [1, 3] and cluster.to(Msg.CS_DELETE_CHUNKS) == [1, 3]


async def test_only_ids_set_aside_and_unused_are_taken(cluster: Cluster) -> None:
    ino = await cluster.new_file("c")
    first, end = await cluster.propose("reserve_chunk_ids", count=4)
    assert end == first + 4
    with pytest.raises(InvalidArgument, match="set aside"):
        await cluster.propose("alloc_chunk", ino=ino, index=0, replicas=[1], chunk_id=end, version=1 << 32)
    await cluster.propose("alloc_chunk", ino=ino, index=0, replicas=[1], chunk_id=first, version=(1 << 32) | 7)
    with pytest.raises(InvalidArgument, match="taken"):
        await cluster.propose("alloc_chunk", ino=ino, index=1, replicas=[1], chunk_id=first, version=1 << 32)
    # Versions given later are above the one chosen.
    later = await cluster.propose("alloc_chunk", ino=ino, index=2, replicas=[1])
    assert later.version > (1 << 32) | 7
    assert cluster.store.last_chunk_id() >= end - 1


def leased(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, served_for: float) -> tuple[dict[int, float], list[int]]:
    """Leases as a master counts them (replica_leases.py): every server heard from now, a lease of
    `served_for` seconds; the servers whose link the owner drops, listed."""
    monkeypatch.setattr(replica_leases, "SERVED_FOR", served_for)
    heard = {cs: time.monotonic() for cs in (1, 2, 3, 4)}
    cluster.owner.leases = ReplicaLeases(time.monotonic, heard.get, lambda: 0.0)
    hung: list[int] = []
    cluster.owner.hang_up = hung.append
    return heard, hung


async def test_a_server_left_behind_unheard_serves_no_more_when_the_change_is_handed_on(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition probe: a reader on a host cut off from the rest read the bytes from before a write
    acknowledged elsewhere, from that host's replica, left behind at the old version.  A server not
    connected is not told: the change returns only once its lease (and a mount's local reads) ran out."""
    chunk = await cluster.chunk_on([1, 2, 3])
    heard, hung = leased(cluster, monkeypatch, 0.4)
    del cluster.live[3]  # cut off
    change = await cluster.owner.set_replicas(chunk, [1, 2])
    assert time.monotonic() >= heard[3] + 0.4  # (a lower bound: a slow machine only makes it later)
    assert change.chunk.replicas == (1, 2) and hung == []


async def test_a_connected_server_left_behind_is_told_or_loses_its_link(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connected server is told (its replica deleted) when the caller takes it away, and then nothing is
    waited for; when it cannot be told, its link is dropped (no master renews its lease before it registers
    again, which deletes its stale replicas first) and its lease is waited out."""
    chunk = await cluster.chunk_on([1, 2, 3])
    heard, hung = leased(cluster, monkeypatch, 30.0)
    change = await cluster.owner.set_replicas(chunk, [1, 2], delete=[3])
    assert cluster.to(Msg.CS_DELETE_CHUNKS) == [3] and hung == []
    assert time.monotonic() < heard[3] + 30.0  # not waited out: told
    monkeypatch.setattr(replica_leases, "SERVED_FOR", 0.4)
    cluster.failing = {2}  # neither moves nor is deleted
    await cluster.owner.set_replicas(change.chunk, [1], delete=[2])
    assert hung == [2] and time.monotonic() >= heard[2] + 0.4


async def test_a_server_known_to_hold_an_older_version_is_neither_waited_for_nor_cut_off(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier change left it behind and saw to it then."""
    chunk = await cluster.chunk_on([1, 2, 3])
    heard, hung = leased(cluster, monkeypatch, 30.0)
    cluster.live[3].replicas.discard(chunk.chunk_id)  # holds an older version, as this master knows
    await cluster.owner.set_replicas(chunk, [1, 2, 3], move=[1, 2])
    assert hung == [] and time.monotonic() < heard[3] + 30.0


async def test_a_cut_returns_only_once_a_server_that_missed_it_serves_no_more(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that does not answer the deletion (cut off) keeps the chunks cut away, and a reader whose
    map is older than the cut would read them: the cut is answered once that server's lease ran out."""
    chunk = await cluster.chunk_on([1, 2])
    heard, hung = leased(cluster, monkeypatch, 0.4)
    cluster.failing = {2}
    await cluster.owner.delete_cut([chunk])
    assert hung == [2] and time.monotonic() >= heard[2] + 0.4


async def test_a_connected_holder_whose_lease_ran_out_still_loses_its_link(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Silent past its lease but still connected, it serves nothing now; but its next heartbeat would
    renew the lease while it holds the old version (a reading of the code by a fault probe)."""
    chunk = await cluster.chunk_on([1, 2, 3])
    _, hung = leased(cluster, monkeypatch, 0.0)
    await cluster.owner.set_replicas(chunk, [1, 2])
    assert hung == [3]


@pytest.mark.parametrize("answer", ["no replica", "another version"])
async def test_a_server_that_answers_it_holds_no_replica_at_that_version_is_not_waited_for(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    """A truncation elsewhere deleted the replicas meanwhile: the servers said so, and were cut off and
    waited out anyway, 4 s each (a two-mount test: 7 appends in 6 s instead of hundreds)."""
    chunk = await cluster.chunk_on([1, 2, 3])
    heard, hung = leased(cluster, monkeypatch, 30.0)
    cluster.answers = {cs: NotFound("chunk: no replica on this server") if answer == "no replica" else
                       StaleVersion("chunk: asked for one version", current=chunk.version + 7) for cs in (1, 2, 3)}
    change = await cluster.owner.set_replicas(chunk, [1, 2, 3])
    assert change.failed == frozenset({1, 2, 3}) and hung == [] and time.monotonic() < heard[1] + 30.0


async def test_a_server_whose_link_was_replaced_since_the_change_is_not_cut_off_again(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power-cut probe: a command failed on a link dropped meanwhile, and the server's new link was
    hung up for it; each hang-up failed the commands in flight on that link, and the next ones: 87 in a
    round.  A link made since the change registered after it, and names the chunk's old replica stale."""
    chunk = await cluster.chunk_on([1, 2, 3])
    _, hung = leased(cluster, monkeypatch, 0.0)
    call = cluster.call

    async def replaced_meanwhile(cs: int, msg: Msg, header: dict[str, Any], payload: bytes = b"") -> Any:
        if cs == 3 and msg == Msg.CS_SET_VERSION:
            cluster.live[3] = SimpleNamespace(replicas=set())  # it registered again, on a new link
            raise Unavailable("connection to cs3 closed")
        return await call(cs, msg, header, payload)

    cluster.owner._call = replaced_meanwhile
    change = await cluster.owner.set_replicas(chunk, [1, 2, 3])
    assert change.failed == frozenset({3}) and hung == []
    cluster.owner._call = call
    other = await cluster.chunk_on([1, 2, 3])
    cluster.failing = {3}  # fails on the link it had when the change was made: cut off, as before
    await cluster.owner.set_replicas(other, [1, 2, 3])
    assert hung == [3]

"""What the master knows a chunk server holds: the same answers as a set of every replica, with no object per replica.

`HeldReplicas` keeps only the differences from the store's replica lists.  A model (a plain set,
what the master kept before) is driven alongside it through registration pages and the changes
that follow (new chunks created or not, copies, drops, failed commands, freed chunks), and every
chunk that lists the server must get the same answer from both.
"""

from __future__ import annotations

import asyncio
import random
import types
from pathlib import Path
from typing import Any

import pytest

from chunkfs.mds import held_replicas
from chunkfs.mds.held_replicas import HeldReplicas
from chunkfs.mds.server import COVER_SLICE, LiveServer, MetadataServer
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

CS = 1
OTHERS = [2, 3, 4]


class Master:
    """The store, the live servers, and the master's registration steps (no sockets, no Raft)."""

    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(path, 1 << 20)
        self.live: dict[int, LiveServer] = {}
        self.index = 0
        # Every replica behind its chunk's version here is stale, with a current one elsewhere: deleted
        # (keeping them when none is current: tests/cluster/test_master_died_while_moving_versions.py).
        self.behind = types.SimpleNamespace(keep=lambda cs_id, chunk_id, version: False)
        self.ino = self.apply("create", parent=ROOT_INO, name="f", mode=0o644, time=1.0, exclusive=True)["attr"]["ino"]
        self.next_index = 0

    def apply(self, op: str, **args: Any) -> Any:
        self.index += 1
        return self.store.apply(self.index, 1, encode_command(op, **args))

    def alloc(self, replicas: list[int]) -> Any:
        self.next_index += 1
        return self.apply("alloc_chunk", ino=self.ino, index=self.next_index, replicas=replicas)

    def server(self) -> LiveServer:
        server = LiveServer(CS, "a:1", "h", None, reporting=True,  # type: ignore[arg-type]
                            replicas=HeldReplicas(CS, self.store.listed_on, self.store.still_listed))
        self.live[CS] = server
        return server

    async def register(self, server: LiveServer, reported: list[tuple[int, int]], page: int) -> list[int]:
        """The master's side of a paged registration, as CS_REGISTER / CS_REPORT_REPLICAS run it."""
        reported = sorted(reported)
        pages = [reported[i:i + page] for i in range(0, len(reported), page)] or [[]]
        delete: list[int] = []
        for n, part in enumerate(pages, start=1):
            last = n == len(pages)
            stale, held, upto = MetadataServer._take_replicas(self, server, part, last)  # type: ignore[arg-type]
            await MetadataServer._covered(self, server, held, upto, last)  # type: ignore[arg-type]
            delete += stale
        return delete

    async def _registered(self, server: LiveServer) -> None:
        return None

    def listing(self) -> dict[int, int]:
        """chunk id -> version of every chunk that lists the server."""
        return {c.chunk_id: c.version for c in self.store.all_chunks() if CS in c.replicas}

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def master(tmp_path: Path) -> Any:
    m = Master(tmp_path / "meta.db")
    yield m
    m.close()


def check(master: Master, held: HeldReplicas, model: set[int]) -> None:
    for chunk_id in master.listing():
        assert (chunk_id in held) == (chunk_id in model), f"chunk {chunk_id}"


@pytest.mark.parametrize("seed", range(6))
async def test_same_answers_as_a_set_through_registration_and_changes(master: Master, seed: int,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held_replicas, "FOLD_AT", 16)
    monkeypatch.setattr(held_replicas, "PRUNE_AT", 8)
    rng = random.Random(seed)
    chunks = [master.alloc(rng.sample([CS, *OTHERS], rng.randint(1, 3))) for _ in range(300)]
    # What the server holds: most of its chunks at the current version, some at an old one, some lost,
    # and a few orphans (chunks that do not list it, and ids the store never had).
    on_disk: dict[int, int] = {}
    model: set[int] = set()
    for c in chunks:
        roll = rng.random()
        if CS in c.replicas and roll < 0.8:
            on_disk[c.chunk_id] = c.version
            model.add(c.chunk_id)
        elif CS in c.replicas and roll < 0.9:
            on_disk[c.chunk_id] = c.version - 1
        elif CS not in c.replicas and roll < 0.05:
            on_disk[c.chunk_id] = c.version
    on_disk[10_000 + seed] = 7
    server = master.server()
    delete = await master.register(server, list(on_disk.items()), page=rng.choice([1, 7, 32, 1000]))
    assert sorted(delete) == sorted(set(on_disk) - model)
    assert not server.reporting
    check(master, server.replicas, model)

    for _ in range(400):
        op = rng.random()
        mine = list(master.listing())
        if op < 0.3:  # a new chunk placed on the server: created there, or the create failed
            c = master.alloc([CS, *rng.sample(OTHERS, rng.randint(0, 2))])
            if rng.random() < 0.8:
                server.replicas.add(c.chunk_id)
                model.add(c.chunk_id)
        elif op < 0.45 and mine:  # a failed command or a bad replica: no longer held, still listed
            chunk_id = rng.choice(mine)
            server.replicas.discard(chunk_id)
            model.discard(chunk_id)
        elif op < 0.6 and mine:  # dropped from the chunk (discarded first, as the master does)
            chunk_id = rng.choice(mine)
            server.replicas.discard(chunk_id)
            model.discard(chunk_id)
            keep = [cs for cs in master.store.chunk(chunk_id).replicas if cs != CS]
            master.apply("set_chunk_replicas", chunk_id=chunk_id, replicas=keep or [2])
        elif op < 0.75:  # copied to the server: it holds it, then the chunk lists it
            elsewhere = [c.chunk_id for c in master.store.all_chunks() if CS not in c.replicas]
            if elsewhere:
                chunk_id = rng.choice(elsewhere)
                server.replicas.add(chunk_id)
                model.add(chunk_id)
                master.apply("set_chunk_replicas", chunk_id=chunk_id,
                             replicas=[*master.store.chunk(chunk_id).replicas, CS])
        elif op < 0.8 and mine:  # repaired: held again
            chunk_id = rng.choice(mine)
            server.replicas.add(chunk_id)
            model.add(chunk_id)
        check(master, server.replicas, model)


async def test_a_server_holding_everything_costs_no_object_per_replica(master: Master) -> None:
    chunks = [master.alloc([CS, 2]) for _ in range(3000)]
    server = master.server()
    delete = await master.register(server, [(c.chunk_id, c.version) for c in chunks], page=256)
    assert delete == []
    held = server.replicas
    assert all(c.chunk_id in held for c in chunks)
    assert held.missing == set() and held.added == set()
    # New chunks created there are remembered until folded into the covered range: bounded.
    for _ in range(2 * held_replicas.FOLD_AT + 10):
        held.add(master.alloc([CS]).chunk_id)
    assert len(held.added) < held_replicas.FOLD_AT and held.missing == set()


async def test_discarded_ids_are_forgotten_once_their_chunk_no_longer_lists_the_server(master: Master) -> None:
    chunks = [master.alloc([CS, 2]) for _ in range(held_replicas.PRUNE_AT + 50)]
    server = master.server()
    await master.register(server, [(c.chunk_id, c.version) for c in chunks], page=4096)
    for c in chunks:  # each one dropped from the server, as a drain does
        server.replicas.discard(c.chunk_id)
        master.apply("set_chunk_replicas", chunk_id=c.chunk_id, replicas=[2])
    # Only the ids not yet checked against the store are still kept.
    assert len(server.replicas.missing) < held_replicas.PRUNE_AT


async def test_a_server_that_lost_its_chunks_is_covered_in_slices_with_the_loop_turning(master: Master) -> None:
    chunks = [master.alloc([CS, 2]) for _ in range(3 * COVER_SLICE + 5)]
    server = master.server()
    seen: list[int] = []
    reads: list[int] = []
    listed_on = master.store.listed_on

    def counting(cs_id: int, after: int, upto: int, limit: int) -> list[int]:
        reads.append(limit)
        return listed_on(cs_id, after, upto, limit)

    server.replicas._listed = counting

    async def watch() -> None:
        for _ in range(100):  # bounded: every turn of the loop while the registration runs
            seen.append(server.replicas.upto)
            await asyncio.sleep(0)

    watcher = asyncio.get_running_loop().create_task(watch())
    await master.register(server, [], page=4096)  # one empty last page: it holds nothing it should
    await watcher
    assert all(limit <= COVER_SLICE for limit in reads) and len(reads) >= 3
    assert any(0 < upto < chunks[-1].chunk_id for upto in seen), "the loop never ran during the registration"
    assert not any(c.chunk_id in server.replicas for c in chunks)
    assert server.replicas.missing == {c.chunk_id for c in chunks}



async def test_ids_missing_at_registration_are_forgotten_once_their_chunks_drop_the_server(
        master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held_replicas, "PRUNE_AT", 8)
    lost = [master.alloc([CS, 2]) for _ in range(40)]
    kept = [master.alloc([CS, 2]) for _ in range(200)]
    server = master.server()
    await master.register(server, [(c.chunk_id, c.version) for c in kept], page=4096)
    assert server.replicas.missing == {c.chunk_id for c in lost}
    for c in lost:  # repaired elsewhere: the chunks no longer list it (no discard on this path)
        master.apply("set_chunk_replicas", chunk_id=c.chunk_id, replicas=[2, 3])
    for c in kept:  # later misses make the master look at the older ones again
        server.replicas.discard(c.chunk_id)
    assert len(server.replicas.missing & {c.chunk_id for c in lost}) < 8
    assert all(c.chunk_id not in server.replicas for c in kept)

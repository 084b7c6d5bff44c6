"""A new master's health index does not judge every chunk of every server while the servers register.

At 10^6 replicas per server, each pass over a server's chunks is seconds of the master's event loop,
and a new master used to make three per server: "not connected", "reporting", "active".  Servers
that come back within the reconnect grace cost a look at the chunks they do not hold, and nothing
is judged while one is still reporting; one that stays away is judged as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.mds.health import ACTIVE, INACTIVE, OFFLINE
from chunkfs.mds.health_index import ChunkHealthIndex, Verdict, hard_status
from chunkfs.mds.held_replicas import HeldReplicas
from chunkfs.mds.store import ChunkRow, MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

SERVERS = (1, 2, 3)
CHUNKS = 600
LOST = 5  # chunks server 1 does not hold when it comes back


class World:
    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(path, 1 << 20)
        self.index_no = 0
        ino = self.apply("create", parent=ROOT_INO, name="f", mode=0o644, time=1.0, exclusive=True)["attr"]["ino"]
        self.chunks = [self.apply("alloc_chunk", ino=ino, index=i, replicas=list(SERVERS)) for i in range(CHUNKS)]
        self.states: dict[int, str] = dict.fromkeys(SERVERS, INACTIVE)
        self.links: dict[int, Any] = {}
        self.judged = 0
        self.index = ChunkHealthIndex(self.store, self.judge, lambda: (dict(self.states), dict(self.links)))
        self.index.active = True

    def apply(self, op: str, **args: Any) -> Any:
        self.index_no += 1
        return self.store.apply(self.index_no, 1, encode_command(op, **args))

    def judge(self, row: ChunkRow, states: Mapping[int, str]) -> Verdict:
        """Good replicas: on a recorded-active, connected server that holds it (as the monitor judges)."""
        self.judged += 1
        good = [cs for cs in row.chunk.replicas if states.get(cs, ACTIVE) == ACTIVE and cs in self.links
                and not self.links[cs].reporting and row.chunk.chunk_id in self.links[cs].replicas]
        return Verdict(hard_status(len(good), row.want, row.minimum))

    def connect(self, cs: int, lost: int = 0) -> SimpleNamespace:
        held = HeldReplicas(cs, self.store.listed_on, self.store.still_listed)
        held.cover(self.store.last_chunk_id(), [c.chunk_id for c in self.chunks[lost:]], 10 * CHUNKS)
        link = SimpleNamespace(reporting=True, replicas=held)
        self.links[cs] = link
        return link

    def settle(self) -> int:
        before = self.judged
        self.index.settle_now()
        return self.judged - before


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = World(tmp_path / "meta.db")
    yield w
    w.store.close()


def test_servers_back_within_the_grace_cost_only_their_missing_chunks(world: World) -> None:
    assert world.settle() == 0  # none connected yet, in the grace: nothing judged, nothing recorded
    assert world.index.counts()["healthy"] == CHUNKS
    links = {cs: world.connect(cs, lost=LOST if cs == 1 else 0) for cs in SERVERS}
    assert world.settle() == 0  # still reporting their replicas
    for cs, link in links.items():
        link.reporting = False
        world.states[cs] = ACTIVE
    assert world.settle() == LOST  # only what server 1 does not hold
    counts = world.index.counts()
    assert counts["healthy"] == CHUNKS - LOST and counts["degraded"] == LOST


def test_a_chunk_judged_in_the_grace_is_judged_again_when_its_servers_are_back(world: World) -> None:
    world.settle()
    world.index.touch(world.chunks[7].chunk_id)  # e.g. a command changed it before the servers were back
    assert world.settle() == 1
    assert world.index.counts()["healthy"] == CHUNKS - 1  # judged with no server connected
    for cs in SERVERS:
        world.connect(cs).reporting = False
        world.states[cs] = ACTIVE
    world.settle()
    assert world.index.counts()["healthy"] == CHUNKS


def test_a_server_that_stays_away_past_the_grace_is_judged_as_before(world: World) -> None:
    world.index.unseen_grace = 0.0
    world.states[3] = OFFLINE
    for cs in (1, 2):
        world.connect(cs).reporting = False
        world.states[cs] = ACTIVE
    assert world.settle() >= CHUNKS  # a pass over the chunks of the server that is away
    counts = world.index.counts()
    assert counts["degraded"] == CHUNKS

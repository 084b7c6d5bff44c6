"""A new master serves clients' changes only once every mount's trust in an earlier master's notices
ran out (MetadataServer._after_watch_leases; client/kernel_cache.py, rule 6)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.mds import server as server_module
from chunkfs.mds.server import WATCH_LEASE_MARGIN, MetadataServer
from chunkfs.protocol.messages import WATCH_LEASE, Msg


def waits(monkeypatch: pytest.MonkeyPatch, term: int, elected_ago: float) -> list[float]:
    """The pauses `_after_watch_leases` makes for a master of `term` elected `elected_ago` seconds ago."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(server_module.asyncio, "sleep", sleep)
    mds = SimpleNamespace(raft=SimpleNamespace(term=term, leader_since=time.monotonic() - elected_ago))
    asyncio.run(MetadataServer._after_watch_leases(mds))  # type: ignore[arg-type]
    return slept


def test_a_new_master_waits_out_the_leases_an_earlier_one_may_have_granted(monkeypatch: pytest.MonkeyPatch) -> None:
    (pause,) = waits(monkeypatch, term=3, elected_ago=0.5)
    assert WATCH_LEASE + WATCH_LEASE_MARGIN - 0.5 - 0.2 < pause <= WATCH_LEASE + WATCH_LEASE_MARGIN - 0.5
    assert waits(monkeypatch, term=3, elected_ago=WATCH_LEASE + WATCH_LEASE_MARGIN + 0.1) == []
    assert waits(monkeypatch, term=1, elected_ago=0.0) == []  # the first master: no earlier one granted any


@pytest.mark.parametrize(("msg", "role", "held"), [
    (Msg.CREATE, "client", True), (Msg.SETATTR, "client", True), (Msg.CHUNK_WRITE, "client", True),
    (Msg.GETATTR, "client", False), (Msg.LOOKUP, "client", False), (Msg.WATCH, "client", False),
    (Msg.CS_HEARTBEAT, "cs", False),
])
def test_only_a_clients_changes_wait_for_the_leases(msg: Msg, role: str, held: bool) -> None:
    calls: list[str] = []

    async def gate() -> None:
        calls.append("gate")

    async def handler(*args: Any) -> dict[str, Any]:
        calls.append("served")
        return {}

    recorder = SimpleNamespace(record=lambda *args: None)
    mds = SimpleNamespace(
        raft=SimpleNamespace(is_leader=lambda: True), _after_watch_leases=gate,
        metrics=SimpleNamespace(requests={msg: recorder}), **{f"_on_{msg.name.lower()}": handler},
    )
    conn = SimpleNamespace(peer_role=role)
    asyncio.run(MetadataServer.handle(mds, conn, msg, {}, b""))  # type: ignore[arg-type]
    assert calls == (["gate", "served"] if held else ["served"])

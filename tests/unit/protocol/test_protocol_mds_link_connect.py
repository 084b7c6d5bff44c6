"""Connecting to the master's group: a metadata server that never completes a connection (frozen: it
accepts, then never answers) is raced by the next one listed, so a command does not wait out its
whole connection timeout first (a probe: `chunkfs stat` took 8 s while one of three was frozen)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chunkfs.common.errors import ProtocolError, Unavailable
from chunkfs.protocol import mds_link
from chunkfs.protocol.mds_link import MdsLink
from chunkfs.protocol.rpc import Credentials


class FakeConn:
    def __init__(self, addr: str) -> None:
        self.peer_name, self.closed = addr, False

    def close(self) -> None:
        self.closed = True

    def silent_for(self) -> float:
        return 0.0  # (for the link's watch on its master: never silent)


def _link(*addrs: str) -> MdsLink:
    return MdsLink(addrs, Credentials("c", bytes(32), "client", "t"))


def _fake_connect(behaviour: dict[str, str], made: list[FakeConn], cancelled: list[str]):
    async def connect(addr: str, creds: Any, **_: Any) -> FakeConn:
        what = behaviour[addr]
        try:
            if what == "frozen":
                await asyncio.sleep(3600)  # never answers (the real one would time out after seconds)
            if what == "refused":
                raise Unavailable(f"cannot connect to {addr}: refused")
            if what == "bad secret":
                raise ProtocolError(f"{addr} refused this node's secret")
            if what == "slow":
                await asyncio.sleep(0.8)
        except asyncio.CancelledError:
            cancelled.append(addr)
            raise
        conn = FakeConn(addr)
        made.append(conn)
        return conn
    return connect


def _run(monkeypatch: pytest.MonkeyPatch, behaviour: dict[str, str]) -> tuple[Any, list[FakeConn], list[str]]:
    made: list[FakeConn] = []
    cancelled: list[str] = []
    monkeypatch.setattr(mds_link, "connect", _fake_connect(behaviour, made, cancelled))
    monkeypatch.setattr(mds_link, "CONNECT_STAGGER", 0.05)

    async def main() -> Any:
        link = _link(*behaviour)
        async with asyncio.timeout(30):  # a frozen first server must not hold the link
            try:
                conn = await link._connection()
                return link.addrs[0], conn  # the working address goes first
            finally:
                await asyncio.sleep(0.01)  # let cancellations land
                link.close()
    return asyncio.run(main()), made, cancelled


def test_a_frozen_first_server_is_raced_by_the_next_and_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    (addr, conn), made, cancelled = _run(monkeypatch, {"a:1": "frozen", "b:1": "ok", "c:1": "ok"})
    assert addr == "b:1" and conn.peer_name == "b:1"
    assert cancelled == ["a:1"] and [c.peer_name for c in made] == ["b:1"]  # c never tried


def test_a_refusing_server_is_passed_at_once_and_an_earlier_slow_one_may_still_win(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (addr, _), made, _ = _run(monkeypatch, {"a:1": "refused", "b:1": "ok"})
    assert addr == "b:1"
    (addr, _), made, cancelled = _run(monkeypatch, {"a:1": "slow", "b:1": "frozen", "c:1": "frozen"})
    assert addr == "a:1" and sorted(cancelled) == ["b:1", "c:1"]


def test_none_reachable_names_every_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Unavailable, match="no metadata server reachable.*a:1.*b:1"):
        _run(monkeypatch, {"a:1": "refused", "b:1": "refused"})


def test_a_refusal_another_server_would_repeat_ends_the_race(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProtocolError, match="secret"):
        _run(monkeypatch, {"a:1": "bad secret", "b:1": "frozen"})

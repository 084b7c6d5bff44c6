"""How soon a chunk server asks again for the master after a round of tries found none."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable

import pytest

from chunkfs.common.errors import NotMaster, Unavailable
from chunkfs.cs import mds_link
from chunkfs.cs.mds_link import ELECTING_RETRY_PAUSE, MAX_RETRY_PAUSE, MdsLink


async def run_link(monkeypatch: pytest.MonkeyPatch, mds: tuple[str, ...],
                   session: Callable[[MdsLink, str], Awaitable[None]],
                   sleep: Callable[[float], Awaitable[None]]) -> None:
    """The link's loop with `session` standing for a registration, until `sleep` cancels it."""
    link = MdsLink.__new__(MdsLink)
    link.node = types.SimpleNamespace(mds=mds)
    link.conn = None
    link._next = None
    link.registered = asyncio.Event()
    monkeypatch.setattr(link, "_session", lambda addr: session(link, addr))
    monkeypatch.setattr(mds_link.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await link._run()


async def test_a_server_asks_again_within_a_second_while_the_group_elects_and_backs_off_while_it_is_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a master dies the others answer NotMaster until one is elected: the chunk server must
    not be left waiting 5 s after the election (it gets no new chunks until it registers)."""
    rounds = {"n": 0}
    pauses: list[float] = []

    async def session(link: MdsLink, addr: str) -> None:
        if rounds["n"] < 8:
            raise NotMaster("not the master", leader="")  # two MDSs up, electing
        raise Unavailable("connection refused")  # then every MDS down

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        rounds["n"] += 1
        if rounds["n"] >= 16:
            raise asyncio.CancelledError

    await run_link(monkeypatch, ("127.0.0.1:1", "127.0.0.1:2"), session, sleep)
    electing, down = pauses[:8], pauses[8:]
    assert electing[0] < max(electing) == ELECTING_RETRY_PAUSE <= 1.0
    assert down == sorted(down) and down[-1] == MAX_RETRY_PAUSE > 1.0


async def test_a_disk_error_while_registering_does_not_end_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, an OSError (a failing disk while listing or deleting replicas) ended the loop: a chunk
    server that never spoke to a master again, and was declared offline while it ran."""
    tried: list[str] = []

    async def session(link: MdsLink, addr: str) -> None:
        tried.append(addr)
        raise OSError(5, "Input/output error")

    async def sleep(seconds: float) -> None:
        if len(tried) >= 4:
            raise asyncio.CancelledError

    await run_link(monkeypatch, ("127.0.0.1:1",), session, sleep)
    assert len(tried) == 4


async def test_a_session_left_for_the_master_the_others_named_goes_there_next(monkeypatch: pytest.MonkeyPatch) -> None:
    """The master went silent and the other metadata servers named another (watch_for_silent_master):
    the next session is with that one at once, not with the next address in the list, nor after a pause."""
    tried: list[str] = []

    async def session(link: MdsLink, addr: str) -> None:
        tried.append(addr)
        if len(tried) == 1:
            link._follow("127.0.0.1:3")  # what the watchdog does before it closes the connection
            raise Unavailable("MDS 127.0.0.1:1 is silent and the others say the master is 127.0.0.1:3")
        raise NotMaster("not the master", leader="")

    async def sleep(seconds: float) -> None:
        raise asyncio.CancelledError

    await run_link(monkeypatch, ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"), session, sleep)
    assert tried[:2] == ["127.0.0.1:1", "127.0.0.1:3"]


"""Raft's messages go without answers: a connection to a peer that stopped answering is found by silence.

Each message to a peer is a notice (no acknowledgement comes back), so the
driver's sender for that peer cannot learn from a missing answer that the
connection is dead (the peer frozen, its host gone without a reset).  It
counts instead how long it has been sending since it last heard a message
from the peer: past SEND_TIMEOUT, the connection is closed and made again,
which is what an unanswered request used to do.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.protocol import rpc
from chunkfs.protocol.messages import Msg
from chunkfs.raft import driver
from chunkfs.raft.core import AppendRequest

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
SENDS = 30
#: Bound on the heartbeats sent while waiting for reconnections (20 s at 50 ms apart).
MAX_SENDS = 400


async def connections_made(monkeypatch: pytest.MonkeyPatch, heard: bool, until: int = 0) -> tuple[int, int, int]:
    """(connections the peer saw, heartbeats it got, heartbeats sent) while at least SENDS heartbeats go out,
    50 ms apart, and more (bounded) until the peer has seen `until` connections.

    Counted in connections, not in time: on a loaded machine each new connection's handshake takes
    longer, and a CI run saw two in the first 1.5 s."""
    monkeypatch.setattr(driver, "SEND_TIMEOUT", 0.3)
    seen: list[int] = []
    taken: list[dict[str, Any]] = []

    async def no_requests(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> rpc.Reply:
        return {"role": "mds", "node": "peer"}, b""

    def take(conn: rpc.Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        if id(conn) not in seen:
            seen.append(id(conn))
        taken.append(h["m"])

    server = rpc.RpcServer(rpc.Credentials("clu", SECRET, "mds", "peer"), no_requests, notice_handler=take)
    await server.listen("127.0.0.1:0")
    owner = SimpleNamespace(addrs={2: f"127.0.0.1:{server.port}"}, routes={},
                            creds=rpc.Credentials("clu", SECRET, "mds", "me"))
    peer = driver._Peer(owner, 2)  # type: ignore[arg-type]
    sent = 0
    try:
        while sent < SENDS or (len(seen) < until and sent < MAX_SENDS):
            peer.send(AppendRequest(src=1, dst=2, term=1, prev_index=0, prev_term=0, entries=(), commit=0, seq=sent))
            sent += 1
            if heard:
                peer.heard()  # what the driver does when a message from the peer arrives
            await asyncio.sleep(0.05)
    finally:
        peer.close()
        await server.close()
    return len(seen), len(taken), sent


async def test_a_peer_that_answers_keeps_its_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    connections, heartbeats, sent = await connections_made(monkeypatch, heard=True)
    assert (connections, heartbeats, sent) == (1, SENDS, SENDS)


async def test_a_silent_peer_is_reconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sending with a 0.3 s limit and nothing heard: the connection is made again, again and again.
    connections, heartbeats, sent = await connections_made(monkeypatch, heard=False, until=3)
    assert connections >= 3, (connections, sent)
    assert heartbeats >= sent - 3, (heartbeats, sent)  # messages still flow: only the connection is renewed

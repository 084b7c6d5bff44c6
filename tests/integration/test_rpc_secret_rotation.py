"""The secret handshake while the cluster secret is rotated: either secret is accepted, the next one preferred.

Real TCP on 127.0.0.1, one event loop, every wait bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common import secret_files
from chunkfs.common.config import SECRET_FILE, write_secret
from chunkfs.common.errors import AuthenticationFailed, Unavailable
from chunkfs.protocol import rpc
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, Reply, RpcServer, connect
from chunkfs.testing.cluster import wait_for_async

pytestmark = pytest.mark.timeout(30)

CLUSTER = "rot"
OLD, NEW, OTHER = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


async def handler(conn: Connection, msg: Msg, header: dict[str, Any], payload: bytes) -> Reply:
    return {"role": "mds", "node": "m"}, b""


async def ping(port: int, creds: Credentials) -> None:
    conn = await connect(f"127.0.0.1:{port}", creds, timeout=5)
    try:
        assert (await conn.call(Msg.PING, {}, timeout=5))[0] == {"role": "mds", "node": "m"}
    finally:
        conn.close()


def creds(secret: bytes, nxt: bytes | None = None, role: str = "client") -> Credentials:
    return Credentials(CLUSTER, secret, role, role, next_secret=nxt)


@pytest.mark.parametrize(
    ("server", "client"),
    [
        ((OLD, None), (OLD, NEW)),  # the client staged first
        ((OLD, NEW), (OLD, None)),  # the server staged first
        ((OLD, NEW), (OLD, NEW)),   # both staged: they use the next one
        ((OLD, NEW), (NEW, None)),  # the client finished first
        ((NEW, None), (OLD, NEW)),  # the server finished first
    ],
    ids=["client-staged", "server-staged", "both-staged", "client-finished", "server-finished"],
)
async def test_every_step_of_a_rotation_connects(server: tuple[bytes, bytes | None],
                                                 client: tuple[bytes, bytes | None]) -> None:
    srv = RpcServer(creds(*server, role="mds"), handler)
    await srv.listen("127.0.0.1:0")
    try:
        await ping(srv.port, creds(*client))
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("server", "client"),
    [((NEW, None), (OLD, None)), ((OLD, None), (NEW, None)), ((OLD, NEW), (OTHER, None))],
    ids=["old-client", "old-server", "stranger"],
)
async def test_a_peer_without_a_shared_secret_is_refused(server: tuple[bytes, bytes | None],
                                                         client: tuple[bytes, bytes | None]) -> None:
    srv = RpcServer(creds(*server, role="mds"), handler)
    await srv.listen("127.0.0.1:0")
    try:
        with pytest.raises(AuthenticationFailed) as info:
            await ping(srv.port, creds(*client))
        message = str(info.value)
        assert "\n" not in message and "secret" in message
        assert not srv.connections
    finally:
        await srv.close()


async def test_the_client_proves_the_next_secret_when_the_server_knows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections move to the next secret as soon as both ends hold it, before the rotation ends."""
    from chunkfs.protocol import rpc

    proved: list[bytes] = []
    real = rpc._proof

    def spy(secret: bytes, label: bytes, *rest: Any) -> bytes:
        if label == b"client":
            proved.append(secret)
        return real(secret, label, *rest)

    monkeypatch.setattr(rpc, "_proof", spy)
    srv = RpcServer(creds(OLD, NEW, role="mds"), handler)
    await srv.listen("127.0.0.1:0")
    try:
        await ping(srv.port, creds(OLD, NEW))
    finally:
        await srv.close()
    # The client's proof is the first one made (the server then tries its secrets against it).
    assert proved[0] == NEW


async def test_a_running_server_follows_its_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secret_files, "RELOAD_INTERVAL", 0.0)
    write_secret(tmp_path / SECRET_FILE, OLD)
    files = secret_files.SecretFiles(tmp_path, OLD)
    srv = RpcServer(Credentials(CLUSTER, OLD, "mds", "m", secret_files=files), handler)
    await srv.listen("127.0.0.1:0")
    try:
        kept = await connect(f"127.0.0.1:{srv.port}", creds(OLD), timeout=5)
        with pytest.raises(AuthenticationFailed):
            await ping(srv.port, creds(NEW))
        secret_files.stage(tmp_path, NEW)
        await ping(srv.port, creds(NEW))
        await ping(srv.port, creds(OLD))
        secret_files.promote(tmp_path)
        await ping(srv.port, creds(NEW))
        with pytest.raises(AuthenticationFailed):
            await ping(srv.port, creds(OLD))
        kept.close()
    finally:
        await srv.close()
    await asyncio.sleep(0)


async def test_the_end_of_a_rotation_shuts_out_connections_that_hold_only_the_old_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection opened before the rotation proves the new secret on the spot, or is closed."""
    monkeypatch.setattr(secret_files, "RELOAD_INTERVAL", 0.0)
    monkeypatch.setattr(rpc, "REAUTH_CHECK_INTERVAL", 0.02)
    write_secret(tmp_path / SECRET_FILE, OLD)
    srv = RpcServer(Credentials(CLUSTER, OLD, "mds", "m", secret_files=secret_files.SecretFiles(tmp_path, OLD)),
                    handler)
    await srv.listen("127.0.0.1:0")
    addr = f"127.0.0.1:{srv.port}"
    updated = creds(OLD)
    stale = await connect(addr, creds(OLD), timeout=5)
    moving = await connect(addr, updated, timeout=5)
    answered = 0

    async def keep_asking() -> None:
        nonlocal answered
        while not moving.closed:
            assert (await moving.call(Msg.PING, {}, timeout=5))[0]["role"] == "mds"
            answered += 1
            await asyncio.sleep(0.005)

    asker = asyncio.create_task(keep_asking())
    try:
        secret_files.stage(tmp_path, NEW)
        updated.next_secret = NEW  # the client's node staged it too
        await asyncio.sleep(0.2)  # staged only: the old secret is still held, nobody is asked again
        assert not stale.closed and not moving.closed
        assert {c.proven for c in srv.connections} == {OLD}
        secret_files.promote(tmp_path)
        await wait_for_async("the connection that holds only the old secret to be closed", lambda: stale.closed)
        await wait_for_async("the other one to prove the new secret",
                             lambda: {c.proven for c in srv.connections} == {NEW})
        before = answered
        await wait_for_async("requests on the connection that proved it", lambda: answered > before + 3)
        assert not asker.done(), asker  # no request failed through the change
        with pytest.raises(Unavailable):
            await stale.call(Msg.PING, {}, timeout=5)
        told = [r.getMessage() for r in caplog.records if "rotated out" in r.getMessage()]
        assert len(told) == 1 and "\n" not in told[0], told
    finally:
        asker.cancel()
        stale.close()
        moving.close()
        await srv.close()
    await asyncio.sleep(0)


async def test_a_reauth_sent_to_a_server_is_refused_and_changes_nothing() -> None:
    """Only the end that accepted a connection asks to prove again: a peer's REAUTH gets an error, no state."""
    srv = RpcServer(creds(OLD, role="mds"), handler)
    await srv.listen("127.0.0.1:0")
    conn = await connect(f"127.0.0.1:{srv.port}", creds(OLD), timeout=5)
    try:
        with pytest.raises(AuthenticationFailed, match="only the end that opened it"):
            await conn.call(Msg.REAUTH, {"nonce": b"\0" * 32, "proof": b"\0" * 32}, timeout=5)
        assert {c.proven for c in srv.connections} == {OLD}
        assert (await conn.call(Msg.PING, {}, timeout=5))[0]["role"] == "mds"
    finally:
        conn.close()
        await srv.close()
    await asyncio.sleep(0)

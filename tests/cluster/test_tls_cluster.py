"""A whole local cluster made with TLS: every connection is TLS, and a write and a read go through it.

Three metadata servers (Raft over TLS), three chunk servers (registration and
heartbeats to the master, writes forwarded down the replica chain over TLS)
and the client library.  Each daemon's port is then probed from outside: a
TLS 1.3 handshake with the client's certificate works, and a client that
knows the secret but speaks no TLS gets nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path

import pytest

from chunkfs.common.addr import parse_addr
from chunkfs.common.config import load_client_config
from chunkfs.common.errors import ChunkFSError
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Credentials, connect

MiB = 1 << 20


def tls_version(addr: str, ctx: ssl.SSLContext) -> str | None:
    host, port = parse_addr(addr)
    with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return tls.version()


def test_cluster_with_tls_writes_and_reads(make_cluster, conf_dir: Path) -> None:
    cluster = make_cluster(n_mds=3, n_cs=3, tls=True)
    data = os.urandom(5 * MiB + 12345)  # six 1 MiB chunks, the last one partial
    with cluster.client() as c:
        assert c.client.creds.tls is not None
        c.set_replicas("/", 3, 2)
        f = c.open("/file", create=True)
        c.run(f.write(0, data))
        c.run(f.fsync())
        assert c.run(f.read(0, len(data))) == data
        stat = c.cluster_stat()
        assert {m["role"] for m in stat["mds"]} == {"master", "follower"}
        assert len([s for s in stat["cs"] if s["status"] == "active"]) == 3
        # Three replicas of each chunk: the chain forwarded the data from chunk server to chunk server.
        attr = c.stat("/file")
        m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": attr["ino"], "index": 0}))
        assert len(m["replicas"]) == 3

    config = load_client_config(cluster.name)
    assert config.cluster.tls
    from chunkfs.protocol.tls import node_tls

    tls = node_tls(conf_dir / "clusters" / cluster.name, config.cluster)
    assert tls is not None
    plain = Credentials(cluster.name, config.secret, "client", "plain")

    async def plain_call(addr: str) -> None:
        conn = await connect(addr, plain, timeout=5)
        try:
            await conn.call(Msg.PING, {}, timeout=5)
        finally:
            conn.close()

    for proc in cluster.processes:
        # Each daemon speaks TLS 1.3 to a holder of a certificate of the cluster CA...
        assert tls_version(proc.addr, tls.client) == "TLSv1.3", proc
        # ...and nothing to a client that knows the secret but not TLS.
        with pytest.raises(ChunkFSError, match="closed the connection during the handshake; if the cluster runs TLS"):
            asyncio.run(asyncio.wait_for(plain_call(proc.addr), 20))
    for proc in cluster.processes:
        log = (Path(proc.dir) / "daemon.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{proc.role}{proc.id}: {log[-2000:]}"
        assert "returning true from eof_received" not in log

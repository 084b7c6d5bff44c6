"""Unauthenticated or hostile peers get an error and a closed connection; the cluster goes on."""

from __future__ import annotations

import dataclasses
import json
import socket
import struct

import msgpack
import pytest

from chunkfs.client.client import SyncClient
from chunkfs.common.addr import parse_addr
from chunkfs.common.config import load_client_config
from chunkfs.common.errors import AuthenticationFailed
from chunkfs.protocol.frame import MAGIC, PREFIX, PROTOCOL_VERSION, Kind
from chunkfs.protocol.messages import Msg

from .conftest import run_cli


def _exchange(addr: str, data: bytes) -> bytes:
    """Send raw bytes, then read until the server closes (bounded)."""
    host, port = parse_addr(addr)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while len(out) < 1 << 16:
            chunk = sock.recv(4096)
            if not chunk:
                break
            out += chunk
        return out


def _frame(mtype: int, header: dict, payload_len: int | None = None, header_len: int | None = None) -> bytes:
    body = msgpack.packb(header)
    return PREFIX.pack(
        MAGIC, PROTOCOL_VERSION, Kind.REQUEST, mtype, 1,
        len(body) if header_len is None else header_len, 0 if payload_len is None else payload_len,
    ) + body


def _error_code(reply: bytes) -> str | None:
    if len(reply) < PREFIX.size:
        return None
    _, _, kind, _, _, hlen, _ = PREFIX.unpack_from(reply)
    assert kind == Kind.ERROR
    return msgpack.unpackb(reply[PREFIX.size:PREFIX.size + hlen])["code"]


def test_wrong_secret_is_refused(make_cluster) -> None:
    cluster = make_cluster(n_cs=1)
    config = load_client_config(cluster.name)
    bad = dataclasses.replace(config, secret=b"\x01" * 32)
    with SyncClient(bad) as c:
        c.client.mds.retry_for = 0.5
        with pytest.raises(AuthenticationFailed):
            c.stat("/")
    # The chunk server refuses it too.
    cs_addr = cluster.find("cs", 1).addr
    with SyncClient(bad) as c:
        with pytest.raises(AuthenticationFailed):
            c.run(c.client.io.server(cs_addr))
    # A correct client is still served.
    with cluster.client() as c:
        assert c.stat("/")["type"] == "d"


@pytest.mark.parametrize("role", ["mds", "cs"])
def test_garbage_truncated_oversized_and_unauthenticated_frames(make_cluster, role) -> None:
    cluster = make_cluster(n_cs=2)
    addr = cluster.find(role, 1).addr
    hello = {"cluster": cluster.name, "nonce": b"n" * 32, "role": "client", "node": "evil"}

    assert _error_code(_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)) == "protocol"
    assert _exchange(addr, _frame(Msg.HELLO, hello)[:10]) == b""  # truncated: just closed
    assert _error_code(_exchange(addr, _frame(Msg.HELLO, hello, header_len=1 << 30))) == "protocol"
    assert _error_code(_exchange(addr, _frame(Msg.HELLO, hello, payload_len=1 << 31))) == "protocol"
    # A request before authenticating gets no service.
    assert _error_code(_exchange(addr, _frame(Msg.GETATTR, {"ino": 1}))) == "auth"
    assert _error_code(_exchange(addr, _frame(Msg.HELLO, {"cluster": 5}))) == "protocol"
    # Half a handshake, then garbage instead of the proof.
    reply = _exchange(addr, _frame(Msg.HELLO, hello) + struct.pack("!I", 7) + b"\xff" * 40)
    assert reply, "the server sent nothing"

    for proc in cluster.processes:
        assert cluster.running(proc), f"{proc.role}{proc.id} died"
    with cluster.client() as c:
        f = c.open("/still-works", create=True)
        c.run(f.write(0, b"ok"))
        assert c.read(f.ino, 0, 2) == b"ok"


def test_cli_with_another_clusters_id_gives_one_line_error(make_cluster, conf_dir) -> None:
    cluster = make_cluster(n_cs=1)
    path = conf_dir / "clusters" / cluster.name / "cluster.json"
    data = json.loads(path.read_text())
    right, data["uuid"] = data["uuid"], "00000000-0000-0000-0000-000000000000"
    path.write_text(json.dumps(data))
    result = run_cli("-c", cluster.name, "ls", "/")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("chunkfs: error:"), result.stderr
    assert right in result.stderr and "cluster.json" in result.stderr, result.stderr


def test_cli_with_wrong_secret_gives_one_line_error(make_cluster, conf_dir) -> None:
    cluster = make_cluster(n_cs=1)
    (conf_dir / "clusters" / cluster.name / "secret").write_text("ab" * 32 + "\n")
    result = run_cli("-c", cluster.name, "ls", "/")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("chunkfs: error:")
    assert "secret" in result.stderr

"""Helpers shared by the cluster tests: the CLI's JSON, /metrics samples, bounded waits, what replicas hold."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from chunkfs.client.client import SyncClient
from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for as _poll

from .conftest import run_cli


def cli_json(*args: str) -> Any:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def stat(name: str = "test") -> dict[str, Any]:
    return cli_json("-c", name, "stat", "--json")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` (bounded, 20 s by default) until it returns something true; return it."""
    return _poll(what, check, timeout=timeout, pause=0.3)


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {'name{labels}': value} (comments skipped)."""
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def replica_bytes(c: SyncClient, ino: int, index: int, length: int, but: int | None = None) -> dict[int, bytes]:
    """The first `length` bytes of each replica (but CS#`but`'s) of the file's chunk `index`, read from its server."""
    m = c.run(c.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": index}))
    held = {}
    for cs_id, addr in m["replicas"]:
        if cs_id != but:
            conn = c.run(c.client.io.server(addr))
            held[cs_id] = c.run(conn.call(Msg.CS_READ, {
                "chunk_id": m["chunk_id"], "version": m["version"], "offset": 0, "length": length}))[1]
    return held


def same_replicas(c: SyncClient, ino: int, index: int, length: int, replicas: int = 3) -> bytes:
    """The first `length` bytes of the file's chunk `index`, checked to be the same on each of its `replicas`."""
    held = replica_bytes(c, ino, index, length)
    assert len(held) == replicas, f"chunk {index} has {len(held)} replicas"
    first = held[min(held)]
    differ = {cs_id: sum(a != b for a, b in zip(data, first, strict=True)) for cs_id, data in held.items()}
    assert len({bytes(b) for b in held.values()}) == 1, \
        f"the replicas of chunk {index} differ (bytes unlike CS#{min(held)}'s, by server: {differ})"
    return bytes(first)

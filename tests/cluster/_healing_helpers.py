"""Helpers shared by the self-healing cluster tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chunkfs.protocol.messages import Msg

MiB = 1 << 20


def set_fast_timeouts(client: Any, inactive: float = 1, offline: float = 3, **more: str) -> None:
    """Seconds instead of minutes; no rebalancing (band 100 %) unless asked, so maps only change by healing."""
    values = {"cs-inactive-timeout": str(inactive), "cs-offline-timeout": str(offline), "rebalance-band": "100",
              **more}
    client.set_config(values)


def chunk_maps(client: Any, ino: int, size: int, chunk_size: int = MiB) -> list[dict[str, Any]]:
    return [client.run(client.client.mds.call(Msg.CHUNK_READ, {"ino": ino, "index": i}))
            for i in range(-(-size // chunk_size))]


def read_replica(client: Any, addr: str, chunk_id: int, version: int, offset: int, length: int) -> bytes:
    """Read straight from one chunk server (no fallback to another replica)."""
    conn = client.run(client.client.io.server(addr))
    _, data = client.run(conn.call(Msg.CS_READ, {
        "chunk_id": chunk_id, "version": version, "offset": offset, "length": length}))
    return bytes(data)


def check_every_replica(client: Any, ino: int, data: bytes, chunk_size: int = MiB) -> None:
    """Every replica of every chunk of a file holds exactly the file's bytes."""
    for index, m in enumerate(chunk_maps(client, ino, len(data), chunk_size)):
        want = data[index * chunk_size:(index + 1) * chunk_size]
        for cs, addr in m["replicas"]:
            got = read_replica(client, addr, m["chunk_id"], m["version"], 0, len(want))
            assert got == want, f"chunk {index} on CS#{cs} differs"


def replica_files(cluster: Any, chunk_id: int, version: int) -> list[Path]:
    """The files of a chunk's replicas on every chunk server of a local cluster."""
    return sorted(Path(cluster.dir).glob(f"cs*/data/chunks/*/{chunk_id:016x}_{version:016x}.chunk"))


def flip_bytes(path: Path, at: int, count: int = 16) -> None:
    """Flip `count` bytes of a replica file at `at` (from its end when negative), as a bad sector would."""
    with open(path, "r+b") as fh:
        fh.seek(at if at >= 0 else os.path.getsize(path) + at)
        original = fh.read(count)
        fh.seek(-count, os.SEEK_CUR)
        fh.write(bytes(b ^ 0xFF for b in original))

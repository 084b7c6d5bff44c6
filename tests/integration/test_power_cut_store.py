"""A chunk server's replicas across a power cut: what it answered for is on its disk.

`kill -9` keeps the page cache, so only a cut of the disk itself (testing/power_cut.py)
shows an answer given before the bytes were there.  A power-cut probe of whole
clusters found a truncation answered and then undone by the cut: the replica's
new length survived (the rename to its new version committed ext4's journal) but
not the zeros written into its partial block nor the checksums of the blocks
freed, so the file, grown again, read its old bytes at one place and EIO at another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkfs.cs.chunk_store import ChunkStore
from chunkfs.testing import power_cut

pytestmark = pytest.mark.skipif(bool(power_cut.available()), reason=power_cut.available() or "-")

MiB = 1 << 20
BS = 64 << 10
CID = 0x0102_0304_0506_0708


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[power_cut.PowerCutDisk]:
    d = power_cut.PowerCutDisk(tmp_path / "disk.img", tmp_path / "disk")
    try:
        yield d
    finally:
        d.close()


@pytest.mark.parametrize("new_version", [None, 8], ids=["same-version", "new-version"])
def test_a_truncation_answered_survives_a_power_cut(disk: power_cut.PowerCutDisk, new_version: int | None) -> None:
    old = b"\x1f" * (4 * BS)
    length = 2 * BS + 37_000  # inside the third block: its tail is zeroed, the fourth block freed
    store = ChunkStore(disk.mountpoint / "cs", chunk_size=MiB, block_size=BS)
    store.create(CID, 7)
    store.write(CID, 7, 0, old, sync=True)
    store.truncate(CID, 7, length, new_version)  # what the chunk server then answers the master
    store.close()
    disk.cut()
    with ChunkStore(disk.mountpoint / "cs", chunk_size=MiB, block_size=BS) as store:
        version = store.version_of(CID)
        assert version == (new_version or 7)
        assert store.read(CID, version, 0, 4 * BS) == old[:length] + bytes(4 * BS - length)
        assert store.bad_blocks(CID) == []

"""Bytes flipped inside replica files: found by the scrubber or by a read, and mended block by block.

A bad 64 KiB block is copied over from another replica; the replica itself is
kept (its bad bytes go to the server's quarantine folder).  A block bad on
every replica fails to read, and only that range: the rest of the chunk stays
readable and an event names the file, the bytes and the servers.  A replica
whose header is corrupt is moved aside whole and replaced by a copy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.config import BLOCK_SIZE
from chunkfs.common.errors import ChecksumMismatch, ChunkFSError, Unavailable
from chunkfs.common.replica_file import HEADER_SIZE
from chunkfs.cs import clean_stop
from chunkfs.protocol.messages import Msg
from chunkfs.testing.cluster import wait_for

from ._healing_helpers import MiB, check_every_replica, chunk_maps, flip_bytes, replica_files

SIZE = 2 * MiB


def _corrupt(path: Path, block: int, data_offset: int | None = None) -> None:
    """Flip 16 bytes in the middle of one block of a replica file (the data region is its last MiB)."""
    start = os.path.getsize(path) - MiB if data_offset is None else data_offset
    flip_bytes(path, start + block * BLOCK_SIZE + BLOCK_SIZE // 2)


def _server_dir(replica: Path) -> Path:
    return replica.parents[3]


def _quarantined(cs_dir: Path) -> list[str]:
    return sorted(p.name for p in (cs_dir / "data" / "quarantine").iterdir())


def _events(c) -> str:
    return " | ".join(e["message"] for e in c.events())


def _written(cluster, c, name: str, chunk: int) -> tuple[Any, bytes, dict[str, Any], list[Path]]:
    """A 2 MiB file of random bytes, fsynced: (file, its bytes, the map of chunk `chunk`, its replica files)."""
    data = os.urandom(SIZE)
    f = c.open(name, create=True)
    c.run(f.write(0, data))
    c.run(f.fsync())
    m = chunk_maps(c, f.ino, SIZE)[chunk]
    return f, data, m, replica_files(cluster, m["chunk_id"], m["version"])


def test_scrubber_finds_a_bad_block_and_it_is_mended_in_place(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/scrubbed", 1)
        replica = replicas[0]
        _corrupt(replica, 3)
        # Scrub every second, fast (the default is a pass a week at 4 MiB/s).
        c.set_config({"scrub-interval": "1", "scrub-rate": "100"})
        cs_dir = _server_dir(replica)
        wait_for("the scrubber to find the bad block and the master to have it repaired",
                 lambda: "repaired from the other replicas" in _events(c), timeout=90)
        # Mended in place: the same replica file (same version), its bad block kept aside, no copy made.
        assert replica.exists()
        assert _quarantined(cs_dir) == [f"{replica.name}.block3"]
        assert chunk_maps(c, f.ino, SIZE)[1]["version"] == m["version"]
        assert len(chunk_maps(c, f.ino, SIZE)[1]["replicas"]) == 3
        check_every_replica(c, f.ino, data)
        events = _events(c)
        assert "scrubber reports a bad replica" in events
        assert f"bytes {MiB + 3 * BLOCK_SIZE}-{MiB + 4 * BLOCK_SIZE - 1}" in events  # the file's bytes, named
        assert "file /scrubbed" in events


def test_a_read_meeting_a_bad_block_gets_good_bytes_and_the_block_is_mended(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/read", 0)
        replica = replicas[0]
        _corrupt(replica, 0)
        # The scrubber is idle (a pass a week): only reads can find it. A mount reads a chunk from the
        # same replica first each time; new mounts start at one replica or another.
        for _ in range(40):
            with cluster.client() as other:
                assert other.read(f.ino, 0, SIZE) == data
            if "reports a bad replica" in _events(c):
                break
        else:
            raise AssertionError("40 reads never met the bad block")
        wait_for("the bad block to be repaired", lambda: "repaired from the other replicas" in _events(c), timeout=60)
        assert replica.exists() and _quarantined(_server_dir(replica)) == [f"{replica.name}.block0"]
        check_every_replica(c, f.ino, data)


def test_different_bad_blocks_on_every_replica_are_all_mended(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/patchwork", 0)
        assert len(replicas) == 3
        for block, replica in enumerate(replicas, start=1):
            _corrupt(replica, block)
        # No replica is whole, but every block has a good copy somewhere: the file reads whole.
        assert c.read(f.ino, 0, SIZE) == data
        c.set_config({"scrub-interval": "1", "scrub-rate": "100"})
        wait_for("every replica's bad block to be repaired",
                 lambda: _events(c).count("repaired from the other replicas") >= 3, timeout=90)
        check_every_replica(c, f.ino, data)
        assert "bad on every replica" not in _events(c)


def test_a_block_bad_on_every_replica_fails_alone_and_is_named(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/lost", 0)
        for replica in replicas:
            _corrupt(replica, 1)
        with pytest.raises(ChecksumMismatch):
            c.read(f.ino, BLOCK_SIZE, 10)
        # The rest of the chunk (and of the file) reads fine.
        assert c.read(f.ino, 0, BLOCK_SIZE) == data[:BLOCK_SIZE]
        assert c.read(f.ino, 2 * BLOCK_SIZE, SIZE - 2 * BLOCK_SIZE) == data[2 * BLOCK_SIZE:]
        wait_for("an event naming the lost range", lambda: "bad on every replica" in _events(c), timeout=60)
        events = _events(c)
        assert f"file /lost: bytes {BLOCK_SIZE}-{2 * BLOCK_SIZE - 1} are bad on every replica" in events
        assert all(f"CS#{cs}" in events for cs, _ in m["replicas"])
        assert events.count("bad on every replica") == 1
        # Nothing was dropped, moved or overwritten: the replicas and their bad bytes are as they were.
        assert [p.exists() for p in replicas] == [True, True, True]
        assert chunk_maps(c, f.ino, SIZE)[0]["replicas"] == m["replicas"]
        assert all(not _quarantined(_server_dir(p)) for p in replicas)
        # A whole-block write over the lost range replaces it, on every replica.
        fresh = os.urandom(BLOCK_SIZE)
        c.run(f.write(BLOCK_SIZE, fresh))
        c.run(f.fsync())
        expected = data[:BLOCK_SIZE] + fresh + data[2 * BLOCK_SIZE:]
        c.client.io.forget(f.ino)
        assert c.read(f.ino, 0, SIZE) == expected
        check_every_replica(c, f.ino, expected)


def test_a_partial_write_into_a_bad_block_goes_through_and_leaves_it_bad_for_the_scrubber(make_cluster) -> None:
    """A write reads only the bytes it replaces and carries the block's CRC forward (`crc32c_replaced`): it
    does not vouch for the rest of the block, so the block stays bad, not laundered, until it is mended."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/rmw", 0)
        _corrupt(replicas[2], 4)
        patch = os.urandom(100)
        offset = 4 * BLOCK_SIZE + 7  # inside the bad block, before its flipped bytes
        c.run(f.write(offset, patch))
        c.run(f.fsync())
        expected = data[:offset] + patch + data[offset + len(patch):]
        after = chunk_maps(c, f.ino, SIZE)[0]
        assert after["replicas"] == m["replicas"]  # no replica was dropped for it
        assert "repaired from the other replicas" not in _events(c)
        c.set_config({"scrub-interval": "1", "scrub-rate": "100"})
        wait_for("the bad block to be found and repaired", lambda: "repaired from the other replicas" in _events(c),
                 timeout=60)
        assert _quarantined(_server_dir(replicas[2])) == [f"{replicas[2].name}.block4"]
        check_every_replica(c, f.ino, expected)


def test_a_replica_with_a_corrupt_header_is_moved_aside_and_replaced(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/header", 1)
        replica = replicas[0]
        with open(replica, "r+b") as fh:  # the magic at the very start of the header
            fh.write(b"XX")
        cs_dir = _server_dir(replica)
        c.set_config({"scrub-interval": "1", "scrub-rate": "100"})

        def replaced() -> bool:
            stat = c.cluster_stat()
            return bool(_quarantined(cs_dir)) and stat["chunks"]["healthy"] == SIZE // MiB and all(
                len(x["replicas"]) == 3 for x in chunk_maps(c, f.ino, SIZE))

        wait_for("the replica to be quarantined whole and a good copy to replace it", replaced, timeout=90)
        assert _quarantined(cs_dir) == [replica.name]
        check_every_replica(c, f.ino, data)
        assert c.read(f.ino, 0, SIZE) == data
        assert "is corrupt" in _events(c)


def test_a_bad_block_of_a_single_replica_file_is_named_lost(make_cluster) -> None:
    """replicas=1: no other copy to mend from; the range fails alone and the event says so."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        c.mkdir("/one")
        c.set_replicas("/one", 1, 1)
        f, data, m, replicas = _written(cluster, c, "/one/file", 0)
        assert len(m["replicas"]) == 1
        _corrupt(replicas[0], 2)
        with pytest.raises(ChecksumMismatch):
            c.read(f.ino, 2 * BLOCK_SIZE, 10)
        assert c.read(f.ino, 0, 2 * BLOCK_SIZE) == data[:2 * BLOCK_SIZE]
        wait_for("an event naming the lost range", lambda: "bad on every replica" in _events(c), timeout=60)
        assert f"file /one/file: bytes {2 * BLOCK_SIZE}-{3 * BLOCK_SIZE - 1} are bad on every replica" in _events(c)


def test_a_chunks_last_replica_reported_missing_is_kept_listed_and_serves_again_once_back(make_cluster) -> None:
    """A chunk's only replica reported missing (its file gone from under its server) stays listed: the
    chunk has nothing else, and a report made in error (a CI run: a replica reported missing while it
    was renamed to a new version) dropped a replica that was there, which its server then deleted as an
    orphan.  Put back, it is read again, not deleted."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        c.mkdir("/one")
        c.set_replicas("/one", 1, 1)
        f, data, m, replicas = _written(cluster, c, "/one/file", 0)
        ((cs_id, _),) = m["replicas"]
        kept = Path(cluster.dir) / "kept.chunk"
        shutil.copy2(replicas[0], kept)
        replicas[0].unlink()  # gone from under its server
        c.set_config({"scrub-interval": "1", "scrub-rate": "100"})
        wait_for("the replica reported missing", lambda: "is corrupt or missing" in _events(c), timeout=60)
        with pytest.raises(Unavailable, match="no replica online"):  # (not a map with no replica)
            chunk_maps(c, f.ino, SIZE)
        cluster.kill("cs", cluster.cs_number(cs_id))
        os.replace(kept, replicas[0])  # back (a disk mounted again, a file restored)
        cluster.start("cs", cluster.cs_number(cs_id))
        wait_for("the file read whole again", lambda: _reads(c, f.ino) == data, timeout=60)
        assert replicas[0].exists()
        assert "is the chunk's last: kept listed" in _events(c)


def test_never_synced_replicas_found_at_a_start_stay_in_place_until_the_master_checks_them(make_cluster) -> None:
    """A power-cut re-probe: chunk servers moved the never-synced replicas they found at their start aside
    at once, and one stopped before the master had taken its reports: they were lost with it, the master
    went on listing replicas no longer there, and 422 chunks stayed offline for good.  Left in place, a
    server stopped before any master took its reports still has them, and the chunk is made again."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/unreported", 1)
    for proc in cluster.processes:  # the power cut
        cluster.kill(proc.role, proc.id)
    for replica in replicas:
        with open(replica, "r+b") as fh:
            fh.write(bytes(HEADER_SIZE))
    for mark in Path(cluster.dir).glob(f"cs*/data/{clean_stop.RUNNING_MARK}"):
        mark.write_text("an earlier boot\n")
    servers = [p.id for p in cluster.processes if p.role == "cs"]
    for number in servers:  # no master up to take their reports
        cluster.start("cs", number)
    logs = [Path(cluster.dir) / f"cs{number}" / "daemon.log" for number in servers]
    wait_for("each server's look at what it wrote last", lambda: all(
        log.exists() and "never synced here" in log.read_text() for log in logs), timeout=60)
    for number in servers:
        cluster.kill("cs", number, signal.SIGTERM)  # a clean stop, the reports never taken
    assert all(replica.exists() for replica in replicas), "moved aside with no master told"
    cluster.start_all()
    cluster.wait_ready()
    with cluster.client() as c:
        wait_for("the chunk made again", lambda: _second_chunk_reads_zeros(c, f.ino), timeout=90)


def test_a_never_synced_chunk_whose_other_replica_is_gone_is_made_again(make_cluster) -> None:
    """A power-cut re-probe: two replicas of a never-synced chunk without a header were dropped on a
    reader's reports while the third, gone from its server (deleted as left behind at an old version),
    stayed listed: the chunk was listed on a server holding nothing, offline for good.  Made again where
    the last header-less replica was, the others taken off the list."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/third-gone", 1)
    for proc in cluster.processes:  # the power cut
        cluster.kill(proc.role, proc.id)
    for replica in replicas[:2]:
        with open(replica, "r+b") as fh:
            fh.write(bytes(HEADER_SIZE))
    replicas[2].unlink()
    cluster.start_all()
    cluster.wait_ready()
    with cluster.client() as c:
        wait_for("the chunk made again", lambda: _second_chunk_reads_zeros(c, f.ino), timeout=90)
        assert c.read(f.ino, 0, MiB) == data[:MiB]


def test_a_copy_that_fails_its_checksums_has_its_sources_replica_checked(make_cluster) -> None:
    """A power-cut probe: a copy from a replica whose header never reached the disk failed, and was tried
    again in a loop until a reader or the scrubber met that replica.  The source is now checked when a
    copy from it fails so: here a chunk never synced, one of its servers gone for good, the two left
    without a header; the chunk is made again, empty, with nothing reading it."""
    cluster = make_cluster(n_cs=4)
    with cluster.client() as c:
        c.set_config({"cs-inactive-timeout": "1", "cs-offline-timeout": "3"})  # (copies start at once)
        f, data, m, replicas = _written(cluster, c, "/copied", 1)
    holders = [cs for cs, _ in m["replicas"]]
    for cs in holders:  # the cut (each opens its replica again at its start: no descriptor kept from before)
        cluster.kill("cs", cluster.cs_number(cs))
    for replica in replicas:  # the header as the cut leaves it when it never reached the disk
        with open(replica, "r+b") as fh:
            fh.write(bytes(HEADER_SIZE))
    for cs in holders[:2]:  # the third stays down: its replicas are copied elsewhere, from these two
        cluster.start("cs", cluster.cs_number(cs))
    cluster.wait_ready()
    with cluster.client() as c:
        wait_for("the chunk made again, nothing reading it",
                 lambda: "made again there, empty" in _events(c), timeout=90)
        wait_for("three replicas again", lambda: len(chunk_maps(c, f.ino, SIZE)[1]["replicas"]) == 3, timeout=90)
        assert c.read(f.ino, 0, SIZE) == data[:MiB] + bytes(MiB)


def _second_chunk_reads_zeros(c, ino: int) -> bool:
    try:
        return c.read(ino, MiB, MiB) == bytes(MiB)
    except ChunkFSError:  # (a reader's: every replica failed, or none is left to read yet)
        return False


def _reads(c, ino: int) -> bytes | None:
    try:
        return c.read(ino, 0, SIZE)
    except ChunkFSError:
        return None


@pytest.mark.parametrize("found_by", ["scrubber", "reader", "every-replica-at-once", "the-start"])
def test_a_chunk_no_replica_of_which_reached_the_disk_reads_as_zeros(make_cluster, found_by: str) -> None:
    """After a power cut, a chunk made and never synced has no header on any replica (a power-cut probe:
    SQLite's `-shm` file, never synced, then kept its database from opening): nothing in it was promised,
    and the file reads zeros there, as a local disk shows what was not synced, not EIO for good."""
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        f, data, m, replicas = _written(cluster, c, "/unsynced", 1)
        assert len(replicas) == 3
    for proc in cluster.processes:  # the power cut: every process gone, and with it what was not on disk
        cluster.kill(proc.role, proc.id)
    for replica in replicas:  # the header as the cut leaves it when it never reached the disk
        with open(replica, "r+b") as fh:
            fh.write(bytes(HEADER_SIZE))
    if found_by == "the-start":  # the machines came back up from a cut: each server looks at once
        for mark in Path(cluster.dir).glob(f"cs*/data/{clean_stop.RUNNING_MARK}"):
            mark.write_text("an earlier boot\n")
    cluster.start_all()
    cluster.wait_ready()
    with cluster.client() as c:
        if found_by == "the-start":  # made again before anything reads it (a probe: only once read)
            wait_for("the chunk made again, no reader or scrubber asking",
                     lambda: "made again there, empty" in _events(c), timeout=90)
        elif found_by == "scrubber":
            c.set_config({"scrub-interval": "1", "scrub-rate": "100"})
        elif found_by == "every-replica-at-once":  # as a read that met each in turn reports them (a probe)
            m = chunk_maps(c, f.ino, SIZE)[1]

            async def report_all() -> None:
                await asyncio.gather(*(c.client.mds.call(Msg.REPORT_BAD_REPLICA, {
                    "chunk_id": m["chunk_id"], "cs_id": cs, "reason": "a read failed its checksum"})
                    for cs, _ in m["replicas"]))

            c.run(report_all())

        wait_for("the chunk made again empty on its last server", lambda: _second_chunk_reads_zeros(c, f.ino),
                 timeout=90)
        assert c.read(f.ino, 0, MiB) == data[:MiB]  # the other chunk as it was
        assert "nothing in it was promised" in _events(c)
        wait_for("the chunk copied back to three replicas", lambda: len(chunk_maps(c, f.ino, SIZE)[1]["replicas"]) == 3
                 and c.cluster_stat()["chunks"]["healthy"] == SIZE // MiB, timeout=90)
        assert c.read(f.ino, MiB, MiB) == bytes(MiB)

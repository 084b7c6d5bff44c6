"""A file cut short by one client while another writes to it: every replica of a chunk ends up the same.

The master cuts the chunk the new end falls in on each of its replicas
(CS_TRUNCATE_CHUNK) while the writer's head chunk server sends its writes
on to the others.  Cut at the same version, a write one replica took before
its cut and another after its own left them different for good, with every
block still matching its own checksum (a fault probe: 2-3 rounds in 9).  Each
replica is now cut and moved to a new version in one step: a write in flight
reaches a replica before its cut or is refused after it, and goes again at
the new version, after every cut.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from chunkfs.client.client import File

from ._ops_helpers import same_replicas

pytestmark = pytest.mark.timeout(300)

KiB, MiB = 1 << 10, 1 << 20
CHUNK = 1 * MiB
CHUNKS = 4
#: Seconds of writes and cuts at once, and a bound on the cuts in that time.
RACE_S = 6.0
MAX_CUTS = 2000


def test_replicas_stay_the_same_when_one_client_cuts_a_file_another_writes(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, chunk_size=CHUNK)
    size = CHUNK * CHUNKS
    with cluster.client() as writer, cluster.client() as cutter:
        writer.set_replicas("/", 3, 2)
        f = writer.open("/image", create=True)
        writer.run(f.write(0, bytes(size)))
        ino = writer.stat("/image")["ino"]
        g = cutter.open("/image")
        deadline = time.monotonic() + RACE_S

        def write(f: File, seed: int) -> int:
            rng = random.Random(seed)
            done = 0
            while time.monotonic() < deadline:
                batch = []
                for _ in range(32):
                    length = rng.choice([4 * KiB, 4 * KiB, 8 * KiB, 64 * KiB])
                    slot = rng.randrange(0, (CHUNK - length) // (4 * KiB))  # in the last chunk, the one cut
                    batch.append((size - CHUNK + slot * 4 * KiB, bytes([rng.randrange(1, 256)]) * length))

                async def at_once(batch: list[tuple[int, bytes]]) -> None:
                    await asyncio.gather(*(f.write(offset, data) for offset, data in batch))

                writer.run(at_once(batch))
                done += len(batch)
            return done

        def cut(g: File) -> int:
            rng = random.Random(99)
            cuts = 0
            while time.monotonic() < deadline and cuts < MAX_CUTS:
                cutter.run(g.truncate(size - rng.randrange(1, CHUNK)))  # within the last chunk: it is cut
                cutter.run(g.truncate(size))
                cuts += 1
            return cuts

        with ThreadPoolExecutor(2) as pool:
            writes, cuts = pool.submit(write, f, 1), pool.submit(cut, g)
            assert writes.result(timeout=120) > 0 and cuts.result(timeout=120) > 0
        writer.run(f.fsync())
        for index in range(CHUNKS):
            held = same_replicas(writer, ino, index, CHUNK)
            assert writer.read(ino, index * CHUNK, CHUNK) == held
            assert cutter.read(ino, index * CHUNK, CHUNK) == held

"""A simulated cluster of 1,000 chunk servers in 5 rows of 10 racks of 20, for the planner's tests and benchmark.

Each server is its own host with 2 TiB of disk and 1-1.25 TiB free (drawn
from `rng`, so a seed gives the same cluster every time).
"""

from __future__ import annotations

import random

from chunkfs.mds.domains import Place
from chunkfs.mds.planner import Server

ROWS, RACKS, PER_RACK = 5, 10, 20


def racked_servers(rng: random.Random) -> list[Server]:
    out = []
    for row in range(ROWS):
        for rack in range(RACKS):
            for k in range(PER_RACK):
                cs = 1 + (row * RACKS + rack) * PER_RACK + k
                out.append(Server(Place(cs, f"h{cs}", f"dc.row{row}.rack{rack}", 0,
                                        (1 << 40) + rng.randrange(1 << 38)), total=2 << 40))
    return out

"""Where new replicas go: pure logic, no I/O.

Replicas of one chunk go to distinct chunk servers, and to distinct hosts
while enough hosts have room — a failure domain of ``host``, the default.
Among the eligible servers the choice is random, weighted by free space, so
new data drifts toward emptier disks without herding every writer onto the
single emptiest one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Candidate:
    cs_id: int
    host: str
    free: int


def choose_servers(
    candidates: list[Candidate],
    count: int,
    *,
    exclude: frozenset[int] = frozenset(),
    avoid_hosts: frozenset[str] = frozenset(),
    min_free: int = 0,
    rng: random.Random | None = None,
) -> list[int]:
    """Pick up to `count` servers; fewer when fewer are eligible."""
    rng = rng or random.Random()  # noqa: S311 - placement, not security
    pool = [c for c in candidates if c.cs_id not in exclude and c.free > min_free]
    chosen: list[Candidate] = []
    used_hosts = set(avoid_hosts)
    # First pass: one server per host; second pass: fill up from any host.
    for distinct_hosts in (True, False):
        while len(chosen) < count:
            eligible = [c for c in pool if c not in chosen and (not distinct_hosts or c.host not in used_hosts)]
            if not eligible:
                break
            pick = rng.choices(eligible, weights=[max(c.free, 1) for c in eligible])[0]
            chosen.append(pick)
            used_hosts.add(pick.host)
    return [c.cs_id for c in chosen]

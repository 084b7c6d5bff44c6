"""Failure domains and tiers: where a chunk's replicas may go. Pure logic, no I/O.

A chunk server has a host name and a location ``ROOM.ROW.RACK`` (given to
``make-cs``); a file has ``failure-domain=disk|host|rack|row|room`` (default
host) and ``tier=0..3``.  Replicas of one chunk go to distinct domains at the
file's level while there are enough of them; when there are not, the next
smaller level decides (distinct hosts within a rack, ...), down to distinct
servers.  Placement stays within the file's tier.  Among the eligible
servers the choice is random, weighted by free space, so new data drifts
toward emptier disks without herding every writer onto the emptiest one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from chunkfs.common.placement import FAILURE_DOMAINS

_LOCATION_PARTS = {"rack": 3, "row": 2, "room": 1}


@dataclass(slots=True, frozen=True)
class Place:
    cs_id: int
    host: str
    location: str
    tier: int
    free: int


def domain_key(place: Place, level: str) -> str:
    if level == "disk":
        return f"cs{place.cs_id}"
    if level == "host":
        return place.host
    parts = place.location.split(".") if place.location else []
    return ".".join(parts[:_LOCATION_PARTS[level]])


def choose(
    candidates: list[Place], count: int, level: str, existing: Iterable[Place] = (),
    rng: random.Random | None = None,
) -> list[int]:
    """Pick up to `count` servers from `candidates` (already filtered: active, tier, room, not holding it)."""
    rng = rng or random.Random()  # noqa: S311 - placement, not security
    existing = list(existing)
    chosen: list[Place] = []
    for lvl in FAILURE_DOMAINS[FAILURE_DOMAINS.index(level)::-1]:  # e.g. rack, then host, then disk
        used = {domain_key(p, lvl) for p in (*existing, *chosen)}
        while len(chosen) < count:
            eligible = [c for c in candidates if c not in chosen and domain_key(c, lvl) not in used]
            if not eligible:
                break
            pick = rng.choices(eligible, weights=[max(c.free, 1) for c in eligible])[0]
            chosen.append(pick)
            used.add(domain_key(pick, lvl))
    return [c.cs_id for c in chosen]


def crowded(replicas: list[Place], level: str) -> list[Place]:
    """Replicas that share a domain at `level` with an earlier one (candidates to move)."""
    seen: set[str] = set()
    out = []
    for place in replicas:
        key = domain_key(place, level)
        if key in seen:
            out.append(place)
        seen.add(key)
    return out


def spread_possible(replicas: list[Place], servers: list[Place], level: str) -> bool:
    """Whether a server in a domain none of `replicas` uses exists (so sharing one is not forced)."""
    used = {domain_key(p, level) for p in replicas}
    return any(domain_key(s, level) not in used for s in servers)

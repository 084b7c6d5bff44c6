"""Which chunk servers a placement failure names as full (MetadataServer._full_servers).

A fault probe: with the only server of a tier full and another of that tier offline, the error
blamed the offline one alone and said "not out of space".  Now the full ones are named too.
"""

from __future__ import annotations

from types import SimpleNamespace

from chunkfs.mds.domains import Place
from chunkfs.mds.server import MetadataServer

MiB = 1 << 20


class Healing:
    """Stands in for the master's healing: every server active, each with its place."""

    def __init__(self, places: dict[int, Place]) -> None:
        self.places = places

    def is_active(self, cs_id: int) -> bool:
        return True

    def place_of(self, cs_id: int) -> Place | None:
        return self.places.get(cs_id)

    def candidates(self, attr: dict[str, int]) -> list[Place]:
        return [p for p in self.places.values() if p.free > MiB and p.tier == attr.get("tier", 0)]


def test_full_servers_are_those_of_the_tier_without_room() -> None:
    places = {1: Place(1, "a", "a", 0, 0), 2: Place(2, "b", "b", 0, 100 * MiB),
              3: Place(3, "c", "c", 1, 0), 4: Place(4, "d", "d", 1, 0)}
    mds = SimpleNamespace(live={cs: object() for cs in places}, healing=Healing(places))
    mds._tier_servers = lambda tier: MetadataServer._tier_servers(mds, tier)  # type: ignore[arg-type]
    assert MetadataServer._full_servers(mds, 0) == [1]
    assert MetadataServer._full_servers(mds, 1) == [3, 4]
    assert MetadataServer._full_servers(mds, 2) == []
    assert MetadataServer._tier_servers(mds, 1) == [3, 4]  # type: ignore[arg-type]

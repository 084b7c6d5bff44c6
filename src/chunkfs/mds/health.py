"""Chunk-server states and chunk health: pure logic, no I/O.

A chunk server is *active* while its heartbeats arrive; *inactive* after a
short silence or as soon as its connection drops (no new chunks go there, but
its replicas are expected back); *offline* after a longer silence (its
replicas are given up and re-created elsewhere).

A chunk's replicas are sorted into *good* (an active server that reported
the chunk at its current version), *waiting* (on an inactive server: may come
back) and *lost* (offline, or the server no longer has it).  Healing waits
for waiting replicas — a reboot must not start a storm of copies — unless the
good ones alone are below the file's minimum: then every second counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ACTIVE = "active"
INACTIVE = "inactive"
OFFLINE = "offline"

#: Chunk health buckets, each chunk in exactly one (worst first).
HEALTH_KEYS = ("offline", "blocked", "replicating", "urgent", "degraded", "healthy")


def cs_state(connected: bool, silent_for: float, inactive_after: float, offline_after: float) -> str:
    if silent_for >= offline_after:
        return OFFLINE
    if not connected or silent_for >= inactive_after:
        return INACTIVE
    return ACTIVE


@dataclass(slots=True, frozen=True)
class ChunkHealth:
    chunk_id: int
    want: int
    minimum: int
    good: tuple[int, ...]
    waiting: tuple[int, ...]
    lost: tuple[int, ...]

    @property
    def need(self) -> int:
        """Replicas to create now."""
        have = len(self.good)
        if have >= self.minimum:
            have += len(self.waiting)
        return max(0, self.want - have)

    @property
    def excess(self) -> int:
        """Good replicas beyond the goal (trimmed only when none is waiting to come back)."""
        if self.waiting:
            return 0
        return max(0, len(self.good) - self.want)

    @property
    def untidy(self) -> bool:
        """Lost replicas still listed though nothing is missing: drop them from the set."""
        return bool(self.lost) and self.need == 0 and not self.waiting

    @property
    def status(self) -> str:
        if not self.good:
            return "offline"
        if len(self.good) < self.minimum:
            return "urgent"
        if len(self.good) < self.want:
            return "degraded"
        return "healthy"


def classify(
    chunk_id: int, replicas: tuple[int, ...], want: int, minimum: int,
    states: Mapping[int, str], connected: set[int], holds: set[int],
) -> ChunkHealth:
    """Sort a chunk's listed replicas by the state of their servers.

    `connected`: servers with a link to the master now; `holds`: those (among
    `replicas`) that reported this chunk at its current version when they
    registered, or were given it since.
    """
    good, waiting, lost = [], [], []
    for cs in replicas:
        state = states.get(cs, OFFLINE)
        if state == ACTIVE and cs in holds:
            good.append(cs)
        elif state == INACTIVE and (cs in holds or cs not in connected):
            waiting.append(cs)  # silent or disconnected, not yet given up
        else:
            lost.append(cs)
    return ChunkHealth(chunk_id, want, minimum, tuple(good), tuple(waiting), tuple(lost))

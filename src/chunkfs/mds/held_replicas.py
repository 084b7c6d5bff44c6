"""Which chunks a connected chunk server holds — without a Python object per replica.

The master used to keep a ``set`` of chunk ids per connected chunk server: at
10^6 replicas that is some 60 MB per server (an int object and a hash slot
each), built one id at a time on the event loop while the server registers.
But the store already lists, for every chunk, the servers that should hold it
(the ``chunk_replicas`` table, indexed by server).  What the master must add
is only where a server *differs* from that list, and in a healthy cluster
that is almost nothing.  So `HeldReplicas` keeps:

- ``upto``: chunks with an id up to this one are *covered*: the server
  reported them when it registered (its pages come in chunk-id order), or
  the master swept them since (see `fold`).  A covered chunk that lists the
  server is held unless it is in ``missing``;
- ``missing``: covered chunks that list the server but that it does not hold
  (not reported, reported at an old version, failed a command, dropped);
- ``added``: chunks above ``upto`` that the server was given since (a new
  chunk created there, a copy made there).  Chunk ids only grow, so every
  chunk allocated after the registration is above ``upto`` and counts as
  held only once it was created there — as with the old set.

Answers are only meaningful for chunks that list the server (every caller
asks about ``chunk.replicas``): a covered chunk that does not list it also
answers "held".  That is safe because a server is put into a chunk's list
only once it holds the chunk (created or copied there, then `add`).

Memory is O(differences): ``added`` is folded into ``upto`` once it grows
past `FOLD_AT` (one index range of the store), and ids that `discard` put
into ``missing`` are checked against the store later (`PRUNE_AT` of them at
a time, oldest first) and forgotten once the chunk no longer lists the
server.  Every step is bounded: no call reads more than a page of the store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

#: Chunks given above the covered range before they are folded into it.
FOLD_AT = 4096
#: Missing ids kept before the oldest half is checked against the store (the bound doubles with the ids
#: still listed, so the checks cost O(1) per id missed).
PRUNE_AT = 4096
#: Most ids checked at once (a few indexed queries on the event loop).
PRUNE_SLICE = 8192

#: (cs_id, after, upto, limit) -> ids of chunks listing cs_id with after < id <= upto, ascending, at most limit.
Listed = Callable[[int, int, int, int], list[int]]
#: (cs_id, ids) -> those of ids whose chunk still lists cs_id.
StillListed = Callable[[int, list[int]], set[int]]


class HeldReplicas:
    """A set-like view (`in`, `add`, `discard`) of the chunks one chunk server holds, for chunks that list it."""

    __slots__ = ("cs_id", "upto", "missing", "added", "complete", "_suspects", "_prune_at", "_listed",
                 "_still_listed")

    @classmethod
    def unbacked(cls) -> HeldReplicas:
        """One with no store behind it (fakes in tests and benchmarks): no chunk lists the server."""
        return cls(0, lambda cs_id, after, upto, limit: [], lambda cs_id, ids: set())

    def __init__(self, cs_id: int, listed: Listed, still_listed: StillListed) -> None:
        self.cs_id = cs_id
        self.upto = 0
        self.missing: set[int] = set()
        self.added: set[int] = set()
        #: Set once the server has reported every replica: only then may `added` be folded (while it
        #: reports, a chunk above ``upto`` that it was not given may still come in a later page).
        self.complete = False
        #: Ids in `missing`, oldest first, to check now and then: the chunk may no longer list the server.
        self._suspects: deque[int] = deque()
        self._prune_at = PRUNE_AT
        self._listed = listed
        self._still_listed = still_listed

    def __contains__(self, chunk_id: object) -> bool:
        if not isinstance(chunk_id, int):
            return False
        if chunk_id <= self.upto:
            return chunk_id not in self.missing
        return chunk_id in self.added

    def add(self, chunk_id: int) -> None:
        """The server holds this chunk now (created or copied there)."""
        if chunk_id <= self.upto:
            self.missing.discard(chunk_id)
        else:
            self.added.add(chunk_id)
            if self.complete and len(self.added) >= FOLD_AT:
                self.fold(max(self.added))

    def discard(self, chunk_id: int) -> None:
        """The server no longer holds this chunk (or may not: a failed command, a bad replica)."""
        if chunk_id > self.upto:
            self.added.discard(chunk_id)
            return
        if chunk_id not in self.missing:
            self._miss(chunk_id)

    def cover(self, upto: int, held: Iterable[int], limit: int) -> bool:
        """Take the range (self.upto, upto]: of the chunks there that list the server, only `held` are held.

        Reads at most `limit` chunks of the store: if the range lists more, only
        its start is covered and False is returned — call again (after letting
        the loop run) until True.  Chunks of `held` at or below the range
        already covered (reported out of order) are held too.
        """
        if upto <= self.upto:
            self.take_range(self.upto, [], held)
            return True
        listed = self._listed(self.cs_id, self.upto, upto, limit)
        end = upto if len(listed) < limit else listed[-1]
        self.take_range(end, listed, held)
        return end == upto

    def take_range(self, end: int, listed: list[int], held: Iterable[int]) -> None:
        """Cover (self.upto, end], where the chunks listing the server are `listed` (read by the caller)."""
        start = self.upto
        have: set[int] = set()
        for chunk_id in held:
            if chunk_id <= start:
                self.missing.discard(chunk_id)
            elif chunk_id <= end:
                have.add(chunk_id)
        if end <= start:
            return
        have.update(c for c in self.added if c <= end)
        for chunk_id in listed:
            if chunk_id not in have:
                self._miss(chunk_id)
        self.added = {c for c in self.added if c > end}
        self.upto = end

    def fold(self, upto: int) -> None:
        """Cover up to `upto` from the master's own knowledge: chunks there it was not given are not held."""
        while not self.cover(upto, (), 4 * FOLD_AT):
            pass  # bounded by the number of chunks listing the server, 16,384 a step

    def _miss(self, chunk_id: int) -> None:
        self.missing.add(chunk_id)
        self._suspects.append(chunk_id)
        if len(self._suspects) >= self._prune_at:
            self._prune(min(len(self._suspects) // 2 + 1, PRUNE_SLICE))
            # Ids still listed go round again: check the next batch only once as many more came in.
            self._prune_at = max(PRUNE_AT, 2 * len(self._suspects))

    def _prune(self, count: int) -> None:
        """Check the oldest `count` ids of `missing`: forget those whose chunk no longer lists the server."""
        batch = [self._suspects.popleft() for _ in range(min(count, len(self._suspects)))]
        batch = [c for c in batch if c in self.missing]
        still = self._still_listed(self.cs_id, batch)
        for chunk_id in batch:
            if chunk_id in still:
                self._suspects.append(chunk_id)
            else:
                self.missing.discard(chunk_id)

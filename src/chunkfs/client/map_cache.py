"""A mount's chunk maps, kept by (inode, chunk index): bounded, the oldest going first; a file's all at once.

A plain dict keyed by (inode, index) made forgetting one file's maps a scan of
every key: on every create or open with O_TRUNC and every first open of a file,
with up to `limit` keys, it took half of a mount's CPU on creates once the mount
had written some 13,000 files (a scale probe: creates 2.5x slower, first opens
3x, than on a fresh mount).  So each file's kept indexes are indexed too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

M = TypeVar("M")
Key = tuple[int, int]


class MapCache(Generic[M]):
    """(inode, index) -> map, in the order kept (a dict keeps insertion order), at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._maps: dict[Key, M] = {}
        #: inode -> the indexes of its maps kept
        self._of: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self._maps)

    def __contains__(self, key: object) -> bool:
        return key in self._maps

    def __iter__(self) -> Iterator[Key]:
        return iter(self._maps)

    def __getitem__(self, key: Key) -> M:
        return self._maps[key]

    def get(self, key: Key) -> M | None:
        return self._maps.get(key)

    def __setitem__(self, key: Key, m: M) -> None:
        """Keep `m` as the newest; the oldest go past `limit`."""
        self.pop(key)
        self._maps[key] = m
        self._of.setdefault(key[0], set()).add(key[1])
        while len(self._maps) > self.limit:
            self.pop(next(iter(self._maps)))

    def replace(self, key: Key, m: M) -> None:
        """Put `m` in the place of the map kept for `key` (its age unchanged)."""
        if key in self._maps:
            self._maps[key] = m

    def pop(self, key: Key) -> M | None:
        m = self._maps.pop(key, None)
        if m is not None:
            indexes = self._of[key[0]]
            indexes.discard(key[1])
            if not indexes:
                del self._of[key[0]]
        return m

    def forget(self, ino: int) -> None:
        """Drop every map of file `ino`."""
        for index in self._of.pop(ino, ()):
            del self._maps[(ino, index)]

    def items(self) -> list[tuple[Key, M]]:
        """A copy: the caller may replace or drop maps meanwhile."""
        return list(self._maps.items())

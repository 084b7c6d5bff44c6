"""The mount's chunk-map cache: bounded, oldest first out, one file's maps dropped without a scan of all."""

from __future__ import annotations

from chunkfs.client.map_cache import MapCache


def test_the_oldest_go_past_the_limit_and_a_map_kept_again_is_the_newest() -> None:
    cache: MapCache[str] = MapCache(3)
    for key in [(1, 0), (1, 1), (2, 0)]:
        cache[key] = f"{key}"
    cache[(1, 0)] = "again"
    cache[(3, 0)] = "new"
    assert list(cache) == [(2, 0), (1, 0), (3, 0)] and len(cache) == 3
    assert cache.get((1, 1)) is None and cache[(1, 0)] == "again"
    cache.replace((2, 0), "replaced")  # in its place: still the oldest
    cache.replace((9, 9), "absent")  # nothing to replace: nothing kept
    assert cache[(2, 0)] == "replaced"
    cache[(4, 0)] = "newest"
    assert list(cache) == [(1, 0), (3, 0), (4, 0)] and (9, 9) not in cache


def test_a_files_maps_go_at_once_and_the_index_follows_every_removal() -> None:
    cache: MapCache[int] = MapCache(100)
    for index in range(5):
        cache[(7, index)] = index
        cache[(8, index)] = index
    assert cache.pop((7, 2)) == 2 and cache.pop((7, 2)) is None
    cache.forget(7)
    assert sorted(cache) == [(8, i) for i in range(5)]
    cache.forget(7)  # (again: nothing)
    for index in range(5):
        cache.pop((8, index))
    assert len(cache) == 0 and not cache._of  # no inode left behind in the index
    small: MapCache[int] = MapCache(2)
    for index in range(4):
        small[(9, index)] = index  # evictions keep the index right
    assert list(small) == [(9, 2), (9, 3)] and small._of == {9: {2, 3}}
    small.forget(9)
    assert len(small) == 0 and not small._of

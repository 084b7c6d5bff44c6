"""The order of a chunk's replicas in its map: one head per file, heads spread over files, always the same."""

from __future__ import annotations

import collections
import itertools

from chunkfs.mds.server import _rank


def _order(ino: int, replicas: list[int]) -> list[int]:
    return sorted(replicas, key=lambda cs: _rank(ino, cs))


def test_one_server_heads_every_chunk_of_a_file_it_holds() -> None:
    servers = list(range(1, 7))
    for ino in range(1, 200):
        top = _order(ino, servers)[0]
        # Every replica set of three out of six servers that holds the file's top server has it as head.
        for replicas in itertools.combinations(servers, 3):
            if top in replicas:
                assert _order(ino, list(replicas))[0] == top


def test_the_order_does_not_depend_on_how_the_replicas_are_listed() -> None:
    for ino in (1, 2, 77, 2**40 + 3):
        for perm in itertools.permutations([3, 9, 12]):
            assert _order(ino, list(perm)) == _order(ino, [3, 9, 12])


def test_files_spread_their_heads_over_the_servers() -> None:
    heads = collections.Counter(_order(ino, [1, 2, 3])[0] for ino in range(1, 3001))
    assert set(heads) == {1, 2, 3}
    assert min(heads.values()) > 800, heads  # about 1,000 each
    # Consecutive inodes (a folder of images made one after the other) do not all share a head.
    assert len({_order(ino, [1, 2, 3])[0] for ino in range(100, 106)}) > 1

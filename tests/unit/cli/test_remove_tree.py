"""`chunkfs rm -r` (cli/files.py `remove_tree`): a tree removed deepest first, however deep.

An operator probe's tree 1,000 folders deep ended in a RecursionError, nothing removed.
"""

from __future__ import annotations

import asyncio

from chunkfs.cli.files import remove_tree


class Tree:
    """The client's namespace calls over a tree in memory: inode -> {name: (inode, kind)}."""

    def __init__(self) -> None:
        self.dirs: dict[int, dict[str, tuple[int, str]]] = {1: {}}
        self.next_ino = 2

    def add(self, parent: int, name: str, kind: str) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.dirs[parent][name] = (ino, kind)
        if kind == "d":
            self.dirs[ino] = {}
        return ino

    async def readdir(self, ino: int) -> list[tuple[str, int, str]]:
        return [(name, child, kind) for name, (child, kind) in self.dirs[ino].items()]

    async def unlink_at(self, parent: int, name: str) -> None:
        assert self.dirs[parent].pop(name)[1] != "d"

    async def rmdir_at(self, parent: int, name: str) -> None:
        ino, kind = self.dirs[parent].pop(name)
        assert kind == "d" and not self.dirs.pop(ino), "a folder removed before what is in it"


def test_a_tree_deeper_than_the_interpreters_recursion_limit_is_removed() -> None:
    tree = Tree()
    top = ino = tree.add(1, "top", "d")
    for level in range(5000):
        tree.add(ino, f"file{level}", "f")
        ino = tree.add(ino, "y", "d")
    tree.add(1, "beside", "f")
    asyncio.run(remove_tree(tree, 1, "top", top))  # type: ignore[arg-type]
    assert tree.dirs == {1: {"beside": (tree.dirs[1]["beside"][0], "f")}}

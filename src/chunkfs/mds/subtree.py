"""A subtree in bounded pages, for recursive attribute changes (``set-replicas -R``, ``set-placement -R``).

A recursive change used to be one replicated command whose apply walked the
whole subtree: over 10^6 files that is one apply of many seconds on the
event loop of every MDS, and the master stops answering (and loses its
leadership).  Instead the master walks the subtree here, a page at a time,
and proposes one command per page naming the inodes to change, so:

- every MDS applies the same explicit list (deterministic, whatever the tree
  looks like on each of them when the entry is applied);
- one apply does bounded work: a page weighs at most `WALK_PAGE`, counting an
  inode as 1 plus the chunks it has (a file's new goal or placement is
  copied into each of its chunks' rows by the store's triggers);
- the loop serves other requests between pages (each is its own commit).

The walk is depth first, directories before what they hold, so a file
created meanwhile inside a directory already done inherits the new value.
Like ``chmod -R``, it is not atomic: what is renamed into the part already
walked while it runs keeps its old value.  The walk keeps only a cursor per
directory level (its inode and the last name taken), never the subtree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from chunkfs.common.knobs import lowered

#: Children read at most per store query.
READ_CHILDREN = 256
#: Most inodes-plus-chunks one page (one replicated command) changes.  About 20-40 ms of apply on this
#: kind of machine at 4096; CHUNKFS_WALK_PAGE lowers it so tests exercise many pages.
WALK_PAGE = lowered("CHUNKFS_WALK_PAGE", 4096)


class Tree(Protocol):
    """What the walk reads of the store."""

    chunk_size: int

    def children_after(self, parent: int, after: bytes, limit: int) -> list[tuple[bytes, int, str, int]]: ...


@dataclass(slots=True)
class _Level:
    ino: int
    after: bytes = b""


def subtree_pages(tree: Tree, root: int, root_type: str, budget: int = WALK_PAGE) -> Iterator[list[int]]:
    """Yield the inodes of the subtree at `root` (itself first) in pages weighing at most `budget`.

    Each step reads at most `READ_CHILDREN` entries a query and at most
    `budget` queries; the caller awaits between pages (a proposal) and the
    walk resumes from its cursors, so changes made meanwhile are seen.  A
    single file heavier than `budget` is a page of its own.
    """
    page, weight = [root], 1
    stack = [_Level(root)] if root_type == "d" else []
    while stack:
        level = stack[-1]
        rows = tree.children_after(level.ino, level.after, READ_CHILDREN)
        full = False
        for name, ino, kind, size in rows:
            cost = 1 + -(-size // tree.chunk_size)
            if page and weight + cost > budget:
                full = True  # yield, then read again from the cursor: the tree may change meanwhile
                break
            level.after = name
            page.append(ino)
            weight += cost
            if kind == "d":
                stack.append(_Level(ino))  # depth first: its contents next
                break
        else:
            if len(rows) < READ_CHILDREN:
                stack.pop()  # this directory is done
        if full:
            yield page
            page, weight = [], 0
    if page:
        yield page

"""Recursive set-replicas / set-placement as pages of explicit inodes: right answer and result across pages.

The master walks the subtree (subtree.py) and proposes one command per page; here every page is
applied through the store's own apply path, as the log would, and the outcome must equal what the
old single-apply walk gave: every inode below the root changed, counted once.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.errors import InvalidArgument
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.mds.subtree import READ_CHILDREN, subtree_pages
from chunkfs.protocol.messages import ROOT_INO

CHUNK = 1 << 20


class Store:
    def __init__(self, path: Path) -> None:
        self.store = MetadataStore(path, CHUNK)
        self.index = 0

    def apply(self, op: str, **args: Any) -> Any:
        self.index += 1
        return self.store.apply(self.index, 1, encode_command(op, **args))

    def mkdir(self, parent: int, name: str) -> int:
        return int(self.apply("mkdir", parent=parent, name=name, mode=0o755, time=1.0)["ino"])

    def create(self, parent: int, name: str, chunks: int = 0) -> int:
        ino = int(self.apply("create", parent=parent, name=name, mode=0o644, time=1.0, exclusive=True)["attr"]["ino"])
        for i in range(chunks):
            self.apply("alloc_chunk", ino=ino, index=i, replicas=[1, 2])
        if chunks:
            self.apply("extend", ino=ino, size=chunks * CHUNK, mtime=1, time=1.0)
        return ino

    def subtree(self, root: int) -> set[int]:
        out, todo = set(), [root]
        while todo:
            ino = todo.pop()
            out.add(ino)
            todo.extend(r[0] for r in self.store.db.execute("SELECT ino FROM dentries WHERE parent = ?", (ino,)))
        return out


@pytest.fixture
def s(tmp_path: Path) -> Any:
    store = Store(tmp_path / "meta.db")
    yield store
    store.store.close()


def build(s: Store, rng: random.Random) -> int:
    """A tree of nested directories, wide ones (more entries than one read), empty ones, files with chunks."""
    top = s.mkdir(ROOT_INO, "top")
    dirs = [top]
    for i in range(60):
        parent = rng.choice(dirs)
        if rng.random() < 0.3:
            dirs.append(s.mkdir(parent, f"d{i}"))
        else:
            s.create(parent, f"f{i}", chunks=rng.choice([0, 0, 1, 3, 9]))
    wide = s.mkdir(top, "wide")
    for i in range(READ_CHILDREN + 20):
        s.create(wide, f"w{i:04d}")
    s.mkdir(top, "empty")
    s.create(ROOT_INO, "outside")
    return top


def weight(s: Store, ino: int) -> int:
    return 1 + -(-s.store.getattr(ino)["size"] // CHUNK)


@pytest.mark.parametrize("budget", [1, 5, 64, 4096])
def test_pages_cover_the_subtree_once_parents_first_within_budget(s: Store, budget: int) -> None:
    top = build(s, random.Random(budget))
    seen: list[int] = []
    pages = list(subtree_pages(s.store, top, "d", budget))
    for page in pages:
        assert page
        # Within budget, except a single file heavier than the budget alone in its page.
        assert sum(weight(s, ino) for ino in page) <= budget or len(page) == 1 or \
            sum(weight(s, ino) for ino in page[:-1]) < budget
        seen += page
    assert seen[0] == top and len(seen) == len(set(seen))
    assert set(seen) == s.subtree(top)
    position = {ino: i for i, ino in enumerate(seen)}
    for ino in seen[1:]:
        assert position[s.store.parent_of(ino)] < position[ino], "a directory comes before what it holds"
    if budget == 5:
        assert len(pages) > 10


def test_set_replicas_in_pages_changes_every_inode_and_counts_each_once(s: Store) -> None:
    top = build(s, random.Random(7))
    changed = sum(s.apply("set_replicas", inos=page, replicas=4, min_replicas=2)
                  for page in subtree_pages(s.store, top, "d", 7))
    below = s.subtree(top)
    assert changed == len(below)
    for ino in below:
        attr = s.store.getattr(ino)
        assert (attr["replicas"], attr["min_replicas"]) == (4, 2)
    assert s.store.getattr(s.store.child_ino(ROOT_INO, "outside"))["replicas"] != 4  # outside: untouched
    # Every chunk's goal follows its file (the store's triggers), page by page.
    for chunk in s.store.all_chunks():
        if chunk.ino in below:
            (want,) = s.store.db.execute("SELECT want FROM chunks WHERE chunk_id = ?", (chunk.chunk_id,)).fetchone()
            assert want == 4


def test_set_placement_in_pages(s: Store) -> None:
    top = build(s, random.Random(8))
    changed = sum(s.apply("set_placement", inos=page, domain="rack", tier=None)
                  for page in subtree_pages(s.store, top, "d", 9))
    assert changed == len(s.subtree(top))
    assert all(s.store.getattr(ino)["failure_domain"] == "rack" for ino in s.subtree(top))
    changed = sum(s.apply("set_placement", inos=page, domain=None, tier=2)
                  for page in subtree_pages(s.store, top, "d", 9))
    assert all((s.store.getattr(ino)["failure_domain"], s.store.getattr(ino)["tier"]) == ("rack", 2)
               for ino in s.subtree(top))


def test_the_walk_sees_changes_made_between_pages(s: Store) -> None:
    top = s.mkdir(ROOT_INO, "top")
    a, z = s.mkdir(top, "a"), s.mkdir(top, "z")
    for i in range(10):
        s.create(a, f"f{i}")
    gone = s.create(z, "gone")
    walk = subtree_pages(s.store, top, "d", 3)
    changed = s.apply("set_replicas", inos=next(walk), replicas=5, min_replicas=1)
    late = s.create(z, "late")  # made in a directory not walked yet: included
    s.apply("unlink", parent=z, name="gone", time=1.0)  # removed before its page: not counted
    for page in walk:
        assert gone not in page
        changed += s.apply("set_replicas", inos=page, replicas=5, min_replicas=1)
    assert s.store.getattr(late)["replicas"] == 5
    assert changed == len(s.subtree(top))


def test_a_page_with_a_removed_inode_counts_what_exists_and_bad_values_change_nothing(s: Store) -> None:
    ino = s.create(ROOT_INO, "f")
    assert s.apply("set_replicas", inos=[ino, 999_999], replicas=2, min_replicas=1) == 1
    with pytest.raises(InvalidArgument):
        s.apply("set_replicas", inos=[ino], replicas=2, min_replicas=3)
    assert s.store.getattr(ino)["replicas"] == 2


def test_old_recursive_entries_still_apply_as_before(s: Store) -> None:
    """A log written by a master from before the pages replays to the same state."""
    top = build(s, random.Random(3))
    assert s.apply("set_replicas", ino=top, replicas=5, min_replicas=2, recursive=True) == len(s.subtree(top))
    assert s.apply("set_placement", ino=top, recursive=True, domain="row", tier=1) == len(s.subtree(top))
    assert all(s.store.getattr(i)["replicas"] == 5 and s.store.getattr(i)["failure_domain"] == "row"
               for i in s.subtree(top))

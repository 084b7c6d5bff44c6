"""Chunks whose small writes one mount may send to every replica at once, instead of down the chain.

A write down the chain goes through the chunk's head, which orders it: every
replica applies the chunk's writes in the order the head received them.  A
4 KiB write then costs two hops of Python (the mount to the head, the head to
the others and back), against one when the mount sends it to the three
replicas itself (BENCHMARKS.md, "A replica's write without a task": 388-451
against 533-583 µs per write, direct).  That is safe only while one writer
alone writes the chunk: two writers sending to the replicas each on its own
could reach them in different orders, and leave them different for good.

The rule is held by the chunk's *version*, which every replica checks on
every write:

* a chunk's first version, the one it is allocated at (``term <<
  VERSION_TERM_SHIFT``, nothing in the low bits), is the only one fanned out;
  the mount whose write allocated the chunk is its one writer, and only it
  has a write map at that version;
* any other writer asking for the chunk's map (another mount, the same mount
  on a new connection, any writer after a master change, which cannot know
  who the old master let fan out) first moves the chunk to a new version
  (`MetadataServer._one_writer`): the replicas refuse the fanned-out writes
  from then on, and their writer asks for the map again and writes down the
  chain like everyone else.  A write in flight lands before a replica's move
  or is refused after it, and is sent again, down the chain, after every move;
* every other change of the chunk (a replica dropped or added, a cut) is a
  new version as well, so fanning out ends with it.

What is kept here is soft state: the writer each first version was given to.
Lost (a new master, the table's bound), it only costs a version change the
next time someone asks.  Kept too, per writer, every chunk it was let fan
out to, until it ends its session: a writer that leaves without a word may
have died between its sends to the replicas, and those chunks' replicas are
then compared and mended (fanned_mender.py).
"""

from __future__ import annotations

from collections import OrderedDict

from chunkfs.mds.store import VERSION_TERM_SHIFT, Chunk

#: Grants kept at most; the oldest go first (a chunk whose grant is gone gets a new version when asked for).
MAX_GRANTS = 100_000
#: Chunks one writer may be let fan out to at most (each to be mended if it leaves without a word);
#: past that its new chunks' writes go down the chain.
MAX_PER_WRITER = 100_000
_LOW_BITS = (1 << VERSION_TERM_SHIFT) - 1


def first_version(chunk: Chunk) -> bool:
    """Whether `chunk` is still at the version it was allocated at: the only one that may be fanned out."""
    return chunk.version & _LOW_BITS == 0


class FanGrants:
    """Chunk id -> (the writer fanning it out, the version it may do so at)."""

    def __init__(self, max_grants: int = MAX_GRANTS, max_per_writer: int = MAX_PER_WRITER) -> None:
        self.max_grants = max_grants
        self.max_per_writer = max_per_writer
        self._grants: OrderedDict[int, tuple[object, int]] = OrderedDict()
        #: writer -> every chunk it was let fan out to (revoked ones too) since it started
        self._fanned: dict[object, set[int]] = {}

    def give(self, chunk: Chunk, writer: object) -> bool:
        """`writer` allocated `chunk`: it may fan out its writes while the chunk stays at this version."""
        if not first_version(chunk):
            return False
        fanned = self._fanned.setdefault(writer, set())
        if len(fanned) >= self.max_per_writer:
            return False
        fanned.add(chunk.chunk_id)
        self._grants[chunk.chunk_id] = (writer, chunk.version)
        self._grants.move_to_end(chunk.chunk_id)
        while len(self._grants) > self.max_grants:
            self._grants.popitem(last=False)
        return True

    def holds(self, chunk: Chunk, writer: object | None) -> bool:
        """Whether `writer` may fan out its writes to `chunk` as it is now."""
        grant = self._grants.get(chunk.chunk_id)
        return grant is not None and grant[0] is writer and grant[1] == chunk.version

    def must_move(self, chunk: Chunk, writer: object | None) -> bool:
        """Whether `chunk` needs a new version before `writer` gets a map to write it: someone else may be
        fanning out writes at its version (or did, under an earlier master)."""
        return first_version(chunk) and not self.holds(chunk, writer)

    def forget(self, chunk_id: int) -> None:
        """`chunk_id` moved on: no one fans out to it any more (its writer may still be sending a write again)."""
        self._grants.pop(chunk_id, None)

    def writer_done(self, writer: object) -> None:
        """`writer` ended its session: every write it sent was answered first, none is left half way."""
        self._fanned.pop(writer, None)

    def writer_gone(self, writer: object) -> set[int]:
        """`writer`'s connection closed without its session ending: the chunks it was let fan out to,
        whose replicas may hold a write it sent to some of them only."""
        return self._fanned.pop(writer, set())

    def clear(self) -> None:
        """A new master: grants of an earlier term say nothing (their chunks' first versions move when asked)."""
        self._grants.clear()
        self._fanned.clear()

    def __len__(self) -> int:
        return len(self._grants)

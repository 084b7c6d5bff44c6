"""Many chunks put in place without writing them, for registration tests and benchmarks at 10^5-10^6 replicas.

Writing 10^6 chunks through the client takes hours here.  With the whole
cluster stopped, instead:

- the chunks are applied to one metadata server's store through the state
  machine's own apply path (synthetic committed entries: a directory with
  ``replicas=`` the number of servers, files of `PER_FILE` chunks, every chunk
  on every given chunk server).  The store's applied index is then set back
  to what it was: the Raft log never saw these entries, and stays the
  authority for everything after them.  The same image is copied to every
  other MDS, so all of them agree: stop the cluster with its members in step
  (the same commit index), or a member whose log ends before what the copied
  store applied refuses to start (its log looks as if it lost entries);
- each chunk server's data directory gets one empty file per replica, named
  ``<chunk id>_<version>.chunk`` as the chunk store names them.  Its start-up
  scan reads names only (headers are checked on first open), so for
  registration these are real replicas.  Reading one would find it corrupt:
  keep the scrubber slow (``scrub-rate``) and read nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from chunkfs.common.replica_file import CHUNKS_DIR, replica_path
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

PER_FILE = 1000
#: The applying connection never checkpoints (the MDS does it every 2 s, store.py): here every
#: this many applies, or the write-ahead log grows by some 40 KB an apply.
CHECKPOINT_EVERY = 10_000
STORE_FILE = "metadata.sqlite"


def applied_index(path: Path, chunk_size: int) -> int:
    store = MetadataStore(path, chunk_size)
    try:
        return store.applied_index
    finally:
        store.close()


def load_chunks(path: Path, chunk_size: int, n: int, cs_ids: list[int], directory: str = "preloaded") -> int:
    """Apply `n` chunks on every server of `cs_ids` to the store at `path`; return the last chunk id before them."""
    store = MetadataStore(path, chunk_size)
    try:
        applied = store.applied_index
        first = store.last_chunk_id()
        index = applied

        def apply(op: str, **args: Any) -> Any:
            nonlocal index
            index += 1
            return store.apply(index, 1, encode_command(op, **args))

        top = apply("mkdir", parent=ROOT_INO, name=directory, mode=0o755, time=1.0)["ino"]
        apply("set_replicas", ino=top, replicas=len(cs_ids), min_replicas=1, recursive=False)
        ino = 0
        for i in range(n):
            if i % PER_FILE == 0:
                ino = apply("create", parent=top, name=f"f{i // PER_FILE}", mode=0o644, time=1.0,
                            exclusive=True)["attr"]["ino"]
            apply("alloc_chunk", ino=ino, index=i % PER_FILE, replicas=cs_ids)
            if i % CHECKPOINT_EVERY == 0:
                store.checkpoint()
        with store._tx():  # noqa: SLF001 - see the module docstring: the log stays the authority
            store._set_meta("applied_index", applied)  # noqa: SLF001
        store.checkpoint()
        return first
    finally:
        store.close()


def copy_store(source: Path, targets: Iterable[Path]) -> None:
    """The same store image in every other MDS directory (`source` closed and checkpointed)."""
    for target in targets:
        if target != source:
            for suffix in ("-wal", "-shm"):
                target.with_name(target.name + suffix).unlink(missing_ok=True)
            shutil.copyfile(source, target)


def replica_files(store_path: Path, chunk_size: int, after: int, data_dirs: list[Path]) -> int:
    """An empty replica file for every chunk above id `after`, in each chunk-store directory; how many per dir."""
    store = MetadataStore(store_path, chunk_size)
    made = 0
    try:
        last = after
        while True:
            rows = store.db.execute("SELECT chunk_id, version FROM chunks WHERE chunk_id > ? ORDER BY chunk_id "
                                    "LIMIT 10000", (last,)).fetchall()
            if not rows:
                return made
            for d in data_dirs:
                chunks = d / CHUNKS_DIR
                for chunk_id, version in rows:
                    os.mknod(replica_path(chunks, chunk_id, version), 0o600 | stat.S_IFREG)
            made += len(rows)
            last = rows[-1][0]
    finally:
        store.close()


def preload(mds_dirs: list[Path], cs_data_dirs: list[Path], chunk_size: int, n: int, cs_ids: list[int]) -> None:
    """All of it, for a stopped cluster: `n` chunks on every server of `cs_ids` (their data dirs in that order)."""
    stores = [d / STORE_FILE for d in mds_dirs]
    newest = max(stores, key=lambda s: applied_index(s, chunk_size))
    first = load_chunks(newest, chunk_size, n, cs_ids)
    copy_store(newest, stores)
    replica_files(newest, chunk_size, first, cs_data_dirs)

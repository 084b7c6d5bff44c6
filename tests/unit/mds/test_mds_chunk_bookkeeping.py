"""The store's chunk bookkeeping: replica rows by chunk server, per-server counts and the goal histogram.

They are kept by the store's own apply (triggers in the same transaction), so after any sequence of
commands they must equal a count made from scratch; an older store gains them by migration.
"""

from __future__ import annotations

import collections
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkfs.common.errors import ChunkFSError
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

CS = 1 << 20
NAMES = ["a", "b", "c"]


def recount(store: MetadataStore) -> dict[str, Any]:
    """The bookkeeping computed from the chunks table alone (a full scan: what the store avoids)."""
    per_cs: collections.Counter[int] = collections.Counter()
    goals: collections.Counter[tuple[int, int, int]] = collections.Counter()
    rows = set()
    for chunk in store.all_chunks():
        attr = store.getattr(chunk.ino)
        per_cs.update(chunk.replicas)
        goals[(len(chunk.replicas), attr["replicas"], attr["min_replicas"])] += 1
        rows.update((chunk.chunk_id, cs) for cs in chunk.replicas)
    return {"per_cs": dict(per_cs), "goals": dict(goals), "rows": rows}


def kept(store: MetadataStore) -> dict[str, Any]:
    return {
        "per_cs": store.replica_counts(),
        "goals": {(n, w, m): c for n, w, m, c in store.goal_histogram()},
        "rows": set(store.db.execute("SELECT chunk_id, cs_id FROM chunk_replicas").fetchall()),
    }


@st.composite
def chunk_commands(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    ino = st.integers(1, 8)
    name = st.sampled_from(NAMES)
    time = st.floats(1, 1e6, allow_nan=False)
    replicas = st.lists(st.integers(1, 5), max_size=4)
    one = st.one_of(
        st.builds(lambda p, n, t: ("mkdir", {"parent": p, "name": n, "mode": 0o755, "time": t}), ino, name, time),
        st.builds(lambda p, n, t: ("create", {"parent": p, "name": n, "mode": 0o644, "time": t,
                                              "exclusive": False}), ino, name, time),
        st.builds(lambda p, n, t, f: ("unlink", {"parent": p, "name": n, "time": t, "free_ino": f}),
                  ino, name, time, ino),
        st.builds(lambda p, n, q, m, t, f: ("rename", {"parent": p, "name": n, "new_parent": q, "new_name": m,
                                                       "time": t, "free_ino": f}), ino, name, ino, name, time, ino),
        st.builds(lambda i, s, t: ("setattr", {"ino": i, "size": s, "time": t}), ino, st.integers(0, 4 * CS), time),
        st.builds(lambda i, k, r: ("alloc_chunk", {"ino": i, "index": k, "replicas": r}),
                  ino, st.integers(0, 4), replicas),
        st.builds(lambda c, r: ("set_chunk_replicas", {"chunk_id": c, "replicas": r}), st.integers(1, 8), replicas),
        st.builds(lambda i, n, m, r: ("set_replicas", {"ino": i, "replicas": n, "min_replicas": min(m, n),
                                                       "recursive": r}),
                  ino, st.integers(1, 4), st.integers(1, 4), st.booleans()),
        st.builds(lambda i: ("free_orphans", {"inos": [i]}), ino),
        st.builds(lambda c: ("remove_cs", {"cs_id": c}), st.integers(1, 5)),
    )
    return draw(st.lists(one, max_size=40))


def apply_all(store: MetadataStore, cmds: list[tuple[str, dict[str, Any]]], first: int = 1) -> None:
    for i, (op, args) in enumerate(cmds, start=first):
        try:
            store.apply(i, 1, encode_command(op, **args))
        except ChunkFSError:
            pass


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_commands())
def test_bookkeeping_equals_a_recount(cmds: list[tuple[str, dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(Path(tmp) / "m.db", CS)
        try:
            apply_all(store, cmds)
            assert kept(store) == recount(store)
            assert store.chunk_count() == sum(1 for _ in store.all_chunks())
        finally:
            store.close()


def test_listener_names_the_chunks_a_command_changed(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.db", CS)
    heard: list[list[int]] = []
    store.chunk_listener = heard.append
    apply_all(store, [
        ("create", {"parent": ROOT_INO, "name": "f", "mode": 0o644, "time": 1.0, "exclusive": True}),
        ("alloc_chunk", {"ino": 2, "index": 0, "replicas": [1, 2]}),
        ("alloc_chunk", {"ino": 2, "index": 1, "replicas": [1, 2]}),
        ("set_chunk_replicas", {"chunk_id": 1, "replicas": [2, 3]}),
        ("set_replicas", {"ino": 2, "replicas": 2, "min_replicas": 1, "recursive": False}),
        ("set_placement", {"ino": 2, "recursive": False, "tier": 1}),
        ("setattr", {"ino": 2, "size": 0, "time": 2.0}),
        ("setattr", {"ino": 2, "size": 0, "time": 3.0}),
    ])
    assert heard == [[1], [2], [1], [1, 2], [1, 2], [1, 2]]
    assert store.chunk_rows_on(3, 0, 10) == []
    store.close()


def test_chunks_of_a_server_by_index(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "m.db", CS)
    cmds: list[tuple[str, dict[str, Any]]] = [
        ("create", {"parent": ROOT_INO, "name": "f", "mode": 0o644, "time": 1.0, "exclusive": True})]
    cmds += [("alloc_chunk", {"ino": 2, "index": i, "replicas": [1 + i % 3, 1 + (i + 1) % 3]}) for i in range(30)]
    apply_all(store, cmds)
    on_2 = []
    after = 0
    for _ in range(10):
        page = store.chunk_rows_on(2, after, 7)
        on_2 += [r.chunk.chunk_id for r in page]
        if len(page) < 7:
            break
        after = page[-1].chunk.chunk_id
    assert on_2 == [c.chunk_id for c in store.all_chunks() if 2 in c.replicas]
    assert store.replicas_on(2) == len(on_2) == 20
    row = store.chunk_rows([1])[0]
    assert (row.want, row.minimum, row.failure_domain, row.tier) == (3, 2, "host", 0)
    store.close()


def test_older_store_is_migrated(tmp_path: Path) -> None:
    """A store written before replica rows existed gains them, with counts, when opened."""
    path = tmp_path / "old.db"
    store = MetadataStore(path, CS)
    apply_all(store, [
        ("create", {"parent": ROOT_INO, "name": "f", "mode": 0o644, "time": 1.0, "exclusive": True}),
        ("set_replicas", {"ino": 2, "replicas": 2, "min_replicas": 1, "recursive": False}),
        *[("alloc_chunk", {"ino": 2, "index": i, "replicas": [1, 2, 3][: 1 + i % 3]}) for i in range(6)],
    ])
    want = recount(store)
    store.close()
    db = sqlite3.connect(path)
    for name in ("chunk_goals_insert", "chunk_goals_delete", "chunk_goals_update", "cs_replicas_insert",
                 "cs_replicas_delete", "chunk_goal_follows_file"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE chunk_replicas")
    db.execute("DROP TABLE cs_replicas")
    db.execute("DROP TABLE chunk_goals")
    for column in ("nrep", "want", "minimum"):
        db.execute(f"ALTER TABLE chunks DROP COLUMN {column}")
    db.commit()
    db.close()
    store = MetadataStore(path, CS)
    assert kept(store) == want
    apply_all(store, [("set_chunk_replicas", {"chunk_id": 1, "replicas": [4, 5]}),
                      ("set_replicas", {"ino": 2, "replicas": 3, "min_replicas": 2, "recursive": False})], first=100)
    assert kept(store) == recount(store)
    store.close()

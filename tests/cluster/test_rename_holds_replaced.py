"""A mount's rename can ask the master to hold the file it replaces (RENAME's `hold`), and only then.

The mount asks when its kernel still has the replaced file (an open of the name on its way, an
``O_PATH`` descriptor): held, the file lives on as an orphan until the mount releases it, as an
unlinked open file does.  A rename that fails holds nothing, and one without `hold` frees the
replaced file in its own commit, as before.  (The mount's side: tests/mount/test_posix_semantics.py.)
"""

from __future__ import annotations

import pytest

from chunkfs.common.errors import Exists, NotFound
from chunkfs.testing.cluster import wait_for

ROOT = 1
SESSION = "test-mount/0001"


def _file(c, name: str, data: bytes) -> int:
    f = c.open(f"/{name}", create=True)
    c.run(f.write(0, data))
    c.run(f.close())
    return int(c.stat(f"/{name}")["ino"])


def test_a_held_replaced_file_lives_until_released(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        old = _file(c, "conf", b"old contents")
        _file(c, "conf.tmp", b"new contents")
        held = c.run(c.client.rename_at(ROOT, "conf.tmp", ROOT, "conf", session=SESSION, hold=7))
        assert held == old
        attr = c.run(c.client.open_ino(old, SESSION, oseq=8))  # as the mount opens it: not by a name
        assert attr["nlink"] == 0
        assert c.run(c.client.read(old, 0, 3, attr["size"])) == b"old"
        c.run(c.client.release_inos(SESSION, {old: 8}))  # the kernel forgot it, its open closed
        wait_for("the replaced file to be freed", lambda: _gone(c, old), timeout=30)
        f = c.open("/conf")
        assert c.run(f.read(0, 100)) == b"new contents"


def test_a_rename_that_fails_or_asks_for_no_hold_holds_nothing(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    with cluster.client() as c:
        target = _file(c, "a", b"a")
        _file(c, "b", b"b")
        with pytest.raises(Exists):
            c.run(c.client.rename_at(ROOT, "b", ROOT, "a", noreplace=True, session=SESSION, hold=3))
        c.unlink("/a")
        assert _gone(c, target), "the failed rename's hold kept the file its name was removed from"
        replaced = _file(c, "a", b"a again")
        assert c.run(c.client.rename_at(ROOT, "b", ROOT, "a")) == 0
        assert _gone(c, replaced), "a rename without a hold left the replaced file behind"


def _gone(c, ino: int) -> bool:
    try:
        c.run(c.client.getattr(ino))
    except NotFound:
        return True
    return False

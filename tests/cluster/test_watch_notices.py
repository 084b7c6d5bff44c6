"""What a watching client hears from the master (WATCH, INVALIDATE), on the wire, without a mount."""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common.config import load_client_config
from chunkfs.common.errors import ProtocolError
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, connect
from chunkfs.testing.cluster import wait_for


def test_a_watcher_hears_of_every_change_another_client_makes_and_of_none_of_its_own(make_cluster) -> None:
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    heard: list[dict[str, Any]] = []

    def take(conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        assert msg == Msg.INVALIDATE
        heard.append(h)

    with cluster.client() as c:
        watcher = c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "client", "watcher"),
                                notice_handler=take))
        c.run(watcher.call(Msg.WATCH, {}))
        c.mkdir("/d")
        d = c.stat("/d")["ino"]
        c.create("/d/f")
        f = c.stat("/d/f")["ino"]
        c.rename("/d/f", "/d/g")
        c.unlink("/d/g")
        wait_for("four notices", lambda: len(heard) >= 4, timeout=10, pause=0.02)
        assert heard[0] == {"entries": [[1, b"d"]], "inodes": [1]}
        assert heard[1] == {"entries": [[d, b"f"]], "inodes": [d, f]}
        assert heard[2] == {"entries": [[d, b"f"], [d, b"g"]], "inodes": [d, f]}
        assert heard[3] == {"entries": [[d, b"g"]], "inodes": [d, f]}
        # The watcher's own change: nothing for it (its kernel knows).
        c.run(watcher.call(Msg.MKDIR, {"parent": 1, "name": b"mine", "mode": 0o755}))
        c.mkdir("/after")
        wait_for("the next notice", lambda: len(heard) >= 5, timeout=10, pause=0.02)
        assert heard[4]["entries"] == [[1, b"after"]]
        watcher.close()


def test_only_clients_may_watch(make_cluster) -> None:
    cluster = make_cluster(n_cs=1)
    config = load_client_config(cluster.name)
    with cluster.client() as c:
        conn = c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "cs", "not-a-mount")))
        with pytest.raises(ProtocolError, match="clients only"):
            c.run(conn.call(Msg.WATCH, {}))
        conn.close()


def test_a_chunk_map_says_the_files_last_cut_to_a_watcher_that_takes_it(make_cluster) -> None:
    """CHUNK_WRITE's `cut` (FEATURE_MAP_CUTS): the file's cut as the master read it with the chunk.

    A mount takes a write through such a map for one made after that cut, whenever the notice of the
    cut reaches it (client/fuse_ops.py `write`).  A watcher that did not name the feature (a mount of an
    earlier version, which would refuse the field) is answered without it.
    """
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    with cluster.client() as c:
        new, old = (c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "client", name),
                                  notice_handler=lambda *_: None)) for name in ("new", "old"))
        c.run(new.call(Msg.WATCH, {"features": ["cuts", "map_cuts"]}))
        c.run(old.call(Msg.WATCH, {"features": ["cuts"]}))
        ino = c.create("/f")["ino"]
        c.write(ino, 0, b"x" * 10_000)

        def map_cut(conn: Connection) -> Any:
            reply, _ = c.run(conn.call(Msg.CHUNK_WRITE, {"ino": ino, "index": 0}))
            return reply.get("cut", "not said")

        assert map_cut(new) == 0  # never cut
        assert map_cut(old) == "not said"
        c.truncate(ino, 5_000)
        cut = c.stat("/f")["cut"]
        assert cut > 0
        assert map_cut(new) == cut
        assert map_cut(old) == "not said"
        new.close()
        old.close()


def test_a_plain_watch_is_answered_without_the_lease_a_mount_of_an_earlier_version_refuses(make_cluster) -> None:
    """A mount of an earlier version refuses WATCH's `lease` in the answer, and then watches again without
    features: answered with it again, it never watched a newer master (an upgrade probe).  A mount that
    names features (every mount since the lease) gets it."""
    cluster = make_cluster(n_cs=1)
    config = load_client_config(cluster.name)
    with cluster.client() as c:
        plain, featured = (c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "client", name),
                                         notice_handler=lambda *_: None)) for name in ("plain", "featured"))
        assert "lease" not in c.run(plain.call(Msg.WATCH, {}))[0]
        assert c.run(featured.call(Msg.WATCH, {"features": ["cuts", "map_cuts"]}))[0]["lease"] is True
        plain.close()
        featured.close()
